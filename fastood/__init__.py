"""fastood: fused-kernel out-of-distribution detection for CLIP-like models.

The fused ops (``segment_lse``, ``neglabel_score``, ``mcm_score``) are imported
eagerly; the model-level API — :func:`load`, :func:`score` and the detector
classes (``NegLabel``, ``MCM``, ``KNN``, ``Mahalanobis``, ``RMD``, ``MSP``,
``PLP``, ``InterNeg``, ``Detector``, ``Prediction``) — is imported on first
use, so ``import fastood`` stays fast and works without open_clip.
"""

from __future__ import annotations

import importlib
from typing import Any

from fastood._backends import BackendStatus, backends
from fastood.ops import mcm_score, neglabel_score, segment_lse

__version__ = "0.1.0"

# name -> module it lives in (imported lazily by __getattr__)
_LAZY = {
    "load": "fastood.api",
    "score": "fastood.api",
    "Detector": "fastood.detectors",
    "Prediction": "fastood.detectors",
    "DETECTORS": "fastood.detectors",
    "NegLabel": "fastood.detectors",
    "MCM": "fastood.detectors",
    "KNN": "fastood.detectors",
    "Mahalanobis": "fastood.detectors",
    "RMD": "fastood.detectors",
    "MSP": "fastood.detectors",
    "PLP": "fastood.detectors",
    "InterNeg": "fastood.detectors",
}

__all__ = ["__version__", "backends", "BackendStatus", "segment_lse", "neglabel_score", "mcm_score", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastood' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = getattr(mod, name, None)
    if value is None:  # optional detectors (MSP/PLP, InterNeg) are only in the registry
        value = next((c for c in getattr(mod, "DETECTORS", {}).values() if c.__name__ == name), None)
    if value is None:
        raise AttributeError(f"module 'fastood' has no attribute {name!r} ({module} does not define it)")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
