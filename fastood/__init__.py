"""fastood: fused-kernel out-of-distribution detection for CLIP-like models."""

from fastood._backends import BackendStatus, backends
from fastood.ops import mcm_score, neglabel_score, segment_lse

__version__ = "0.1.0"

__all__ = ["__version__", "backends", "BackendStatus", "segment_lse", "neglabel_score", "mcm_score"]
