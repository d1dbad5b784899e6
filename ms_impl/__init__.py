"""MindSpore port of Open-Sora-Plan v1.3 ``OpenSoraT2V_v1_3`` (the parity harness's subject side).

``modeling_opensora`` is the model (upstream's names, batch-first hidden states), ``attention`` the attention seam
(portable / Ascend flash-attention / CPU emulation of the Ascend kernel), ``precision`` the precisions and the
bf16 emulation, ``convert`` the strict weight conversion, ``harness`` what the parity CLI calls, ``mutants`` the
deliberately wrong variants for the teeth tests. Nothing here imports torch.
"""
