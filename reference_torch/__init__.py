"""PyTorch reference of Open-Sora-Plan v1.3 ``OpenSoraT2V_v1_3`` (the parity harness's reference side).

``modeling_opensora`` is the model, written with upstream's class, attribute and method names (so upstream
checkpoints load with strict key match and probes are captured the same way on both); it imports only torch.
``streaming`` is opt-in memory machinery for real sizes (attention in query slices, feed-forward chunks, token-
streamed blocks); ``harness`` is what the parity CLI calls (build, run, capture).

torch is imported lazily: importing this package alone does not need torch.
"""

__all__ = ["OpenSoraT2V_v1_3", "OpenSoraT2V_v1_3_2B_122"]


def __getattr__(name):
    if name in __all__:
        from . import modeling_opensora
        return getattr(modeling_opensora, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
