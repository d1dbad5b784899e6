"""MindSpore port of Open-Sora-Plan v1.3 ``OpenSoraT2V_v1_3`` (the parity harness's subject side).

The model: ``modeling_opensora`` (upstream's names, batch-first hidden states), with its helper modules ``attention``
(the attention seam: portable / Ascend flash-attention / CPU emulation of the Ascend kernel), ``kernels`` (the kernel
seam; ``cpu_kernels`` is the CPU build's policy), ``precision`` (precisions and the bf16 emulation) and ``tables``
(host-side constant tables). Beside it, opt-in: ``streaming`` (memory machinery for real sizes). Harness side:
``harness`` (what the parity CLI calls), ``convert`` (strict weight conversion), ``mutants`` (deliberately wrong
variants for the teeth tests). Nothing here imports torch; the model and its helpers import no ``parity``.
"""
