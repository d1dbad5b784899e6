"""Open-Sora-Plan v1.3 ``OpenSoraT2V_v1_3``: shared, framework-free knowledge used by both implementations."""

from .config import OpenSoraConfig, load_config  # noqa: F401
