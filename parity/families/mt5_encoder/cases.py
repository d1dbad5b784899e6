"""Built-in cases: small random-weight mT5 encoders and tokenizer-like inputs, each runnable in any precision.

Weights come from the reference glue (transformers' own init under ``torch.manual_seed(weights_seed)``);
inputs from a numpy generator seeded with ``inputs_seed``. Each prompt is ``valid`` random tokens, then EOS
(id 1), then padding (id 0) with mask 0 — what a T5 tokenizer returns with ``padding="max_length"``. Row 0 is
the short negative prompt and row 1 the positive one, the CFG batch order of the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parity.errors import ParityError

FIRST_WORD_ID = 2  # ids 0 and 1 are pad and EOS

_TINY = dict(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_heads=4, relative_attention_num_buckets=8,
             relative_attention_max_distance=16, dropout_rate=0.1, layer_norm_epsilon=1e-6,
             feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
             decoder_start_token_id=0, initializer_factor=1.0, model_type="mt5")


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    config: dict
    seq_len: int
    valid: tuple                 # words per prompt (EOS added after them)
    weights_seed: int = 0
    inputs_seed: int = 1

    def make_inputs(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.inputs_seed)
        ids = np.zeros((len(self.valid), self.seq_len), np.int64)
        mask = np.zeros_like(ids)
        for b, n in enumerate(self.valid):
            n = min(n, self.seq_len - 1)
            ids[b, :n] = rng.integers(FIRST_WORD_ID, self.config["vocab_size"], n)
            ids[b, n] = self.config["eos_token_id"]
            mask[b, : n + 1] = 1
        return {"input_ids": ids, "attention_mask": mask}


CASES: dict[str, Case] = {c.name: c for c in (
    Case("tiny-mt5", "3 layers, D=32 (4 heads x 8), gated-gelu, 8 buckets / max distance 16, L=24: exact, "
         "logarithmic and clipped buckets; a short negative and a longer positive prompt",
         dict(_TINY), seq_len=24, valid=(5, 17)),
    Case("tiny-mt5-relu", "2 layers, ReLU feed-forward (wi/wo, the T5 v1.0 layout), inner width 3x12 != D, "
         "an unpadded row", dict(_TINY, num_layers=2, feed_forward_proj="relu", num_heads=3, d_kv=12, d_model=24),
         seq_len=12, valid=(11, 4)),
    Case("tiny-mt5-xxl-buckets", "2 layers at D=64, the released 32 buckets / max distance 128 and L=160 "
         "(every bucket in use)", dict(_TINY, num_layers=2, d_model=64, d_kv=16, d_ff=96,
                                       relative_attention_num_buckets=32, relative_attention_max_distance=128),
         seq_len=160, valid=(20, 150)),
)}

DEFAULT_CASE = "tiny-mt5"


def get_case(name: str) -> Case:
    try:
        return CASES[name]
    except KeyError:
        raise ParityError(f"unknown case {name!r}; built-in mT5 cases: {', '.join(CASES)}") from None
