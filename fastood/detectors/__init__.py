"""OOD detectors on CLIP models: one base class, one detector per file.

=============  ==================================  ============================
name           class                               module
=============  ==================================  ============================
``neglabel``   :class:`NegLabel`                   ``fastood.detectors.neglabel``
``mcm``        :class:`MCM`                        ``fastood.detectors.mcm``
``knn``        :class:`KNN`                        ``fastood.detectors.knn``
``mahalanobis`` :class:`Mahalanobis`               ``fastood.detectors.mahalanobis``
``rmd``        :class:`RMD`                        ``fastood.detectors.mahalanobis``
``msp``/``plp`` MSP / PLP (when present)           ``fastood.detectors.plp``
``interneg``   InterNeg (when present)             ``fastood.detectors.interneg``
=============  ==================================  ============================

``create("neglabel", clip=..., **options)`` builds one by name. Every subclass of
:class:`Detector` that defines its own ``name`` is registered in :data:`DETECTORS`
when its module is imported (user subclasses included).
"""

from __future__ import annotations

import importlib
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

_OPTIONAL = {"plp": ("msp", "plp"), "interneg": ("interneg",)}
_IMPORT_ERRORS: dict[str, BaseException] = {}

from fastood.detectors.knn import KNN  # noqa: E402
from fastood.detectors.mahalanobis import RMD, Mahalanobis  # noqa: E402
from fastood.detectors.mcm import MCM  # noqa: E402
from fastood.detectors.neglabel import NegLabel  # noqa: E402

for _module, _names in _OPTIONAL.items():
    try:
        importlib.import_module(f"fastood.detectors.{_module}")
    except ImportError as _exc:  # absent, or failing to import: create() reports why
        if not (isinstance(_exc, ModuleNotFoundError) and _exc.name == f"fastood.detectors.{_module}"):
            for _n in _names:
                _IMPORT_ERRORS[_n] = _exc


def create(method: str, **kwargs: Any) -> Detector:
    """Build the detector registered under ``method`` (e.g. ``"neglabel"``) with ``kwargs``.

    Unknown names raise ``ValueError`` listing the known ones.
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    key = method.lower()
    if key not in DETECTORS:
        if key in _IMPORT_ERRORS:
            raise ImportError(f"detector {method!r} could not be imported: {_IMPORT_ERRORS[key]}") from _IMPORT_ERRORS[key]
        raise ValueError(f"unknown detector {method!r}; known: {', '.join(sorted(DETECTORS))}")
    return DETECTORS[key](**kwargs)


__all__ = ["Detector", "Prediction", "Extracted", "NotFittedError", "FEATURE_SPACES", "threshold_at_tpr",
           "DETECTORS", "create", "NegLabel", "MCM", "KNN", "Mahalanobis", "RMD"]
