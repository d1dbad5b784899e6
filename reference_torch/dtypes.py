"""The torch dtype of each harness precision, for every family's glue (one definition)."""

import torch

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
