"""OOD detectors on CLIP models: one base class, one detector per file.

=============  ==================================  ============================
name           class                               module
=============  ==================================  ============================
``neglabel``   :class:`NegLabel`                   ``fastood.detectors.neglabel``
``mcm``        :class:`MCM`                        ``fastood.detectors.mcm``
``knn``        :class:`KNN`                        ``fastood.detectors.knn``
``mahalanobis`` :class:`Mahalanobis`               ``fastood.detectors.mahalanobis``
``rmd``        :class:`RMD`                        ``fastood.detectors.mahalanobis``
``msp``        :class:`MSP`                        ``fastood.detectors.plp``
``plp``        :class:`PLP`                        ``fastood.detectors.plp``
``interneg``   :class:`InterNeg`                   ``fastood.detectors.interneg``
=============  ==================================  ============================

``create("neglabel", clip=..., **options)`` builds one by name. Every subclass of
:class:`Detector` that defines its own ``name`` is registered in :data:`DETECTORS`
when its module is imported (user subclasses included).
"""

from __future__ import annotations

from typing import Any

from fastood.detectors.base import (
    FEATURE_SPACES,
    Detector,
    Extracted,
    NotFittedError,
    Prediction,
    _REGISTRY,
    threshold_at_tpr,
)

DETECTORS: dict[str, type[Detector]] = _REGISTRY  # name -> class; filled as detector modules are imported

from fastood.detectors.interneg import InterNeg  # noqa: E402
from fastood.detectors.knn import KNN  # noqa: E402
from fastood.detectors.mahalanobis import RMD, Mahalanobis  # noqa: E402
from fastood.detectors.mcm import MCM  # noqa: E402
from fastood.detectors.neglabel import NegLabel  # noqa: E402
from fastood.detectors.plp import MSP, PLP  # noqa: E402


def create(method: str, **kwargs: Any) -> Detector:
    """Build the detector registered under ``method`` (e.g. ``"neglabel"``) with ``kwargs``.

    Unknown names raise ``ValueError`` listing the known ones.
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    key = method.lower()
    if key not in DETECTORS:
        raise ValueError(f"unknown detector {method!r}; known: {', '.join(sorted(DETECTORS))}")
    return DETECTORS[key](**kwargs)


__all__ = ["Detector", "Prediction", "Extracted", "NotFittedError", "FEATURE_SPACES", "threshold_at_tpr",
           "DETECTORS", "create", "NegLabel", "MCM", "KNN", "Mahalanobis", "RMD", "MSP", "PLP", "InterNeg"]
