r"""fastood detectors as `pytorch-ood <https://github.com/kkirchheim/pytorch-ood>`_ detectors.

:class:`PytorchOODDetector` **is** a ``pytorch_ood.api.FeaturesDetector`` (hence a
``pytorch_ood.api.Detector``): it drops into pytorch-ood's benchmark code, its
``OODMetrics`` and its ``GridSearch`` unchanged.

Sign convention. fastood scores are *higher = more in-distribution*; pytorch-ood's
``predict`` returns *outlier scores*, higher = more OOD. The adapter returns

.. math::  o(x) = -S(x)

so ``OODMetrics().update(adapter.predict(x), y)`` (OOD rows labelled ``y < 0``) sees the
detector exactly as fastood does.

Metric correspondence (pytorch-ood 0.4; checked by ``tests/test_pytorch_ood.py``):

* ``AUROC`` = :func:`fastood.metrics.auroc` (both tie-aware, OOD-positive AUROC on ``o``
  equals ID-positive AUROC on ``S``).
* ``AUPR-IN`` / ``AUPR-OUT`` = :func:`fastood.metrics.aupr_in` / :func:`~fastood.metrics.aupr_out`
  with ``method="trapezoid"`` (pytorch-ood integrates the precision–recall curve by the
  trapezoidal rule, ending at (recall 0, precision 1) — OpenOOD's ``auc(recall, precision)``).
* ``FPR95TPR``: OOD positive on ``o``, the FPR of the **first** ROC point whose TPR ≥ 0.95,
  i.e. the fraction of ID images flagged OOD when 95 % of OOD images are caught — fastood's
  ``convention="openood"``. One difference: pytorch-ood keeps every threshold of the ROC
  curve, while OpenOOD (and fastood's ``"openood"``, which follows sklearn's
  ``roc_curve(drop_intermediate=True)``) drops points inside straight runs. The two agree
  whenever the first point with TPR ≥ 0.95 is not inside a run of equal *diagonal* steps
  (thresholds each shared by ID and OOD scores in the same proportion); on untied scores
  every step is horizontal or vertical and they are always equal. On tied blocks (e.g.
  NegLabel's fp32 score saturating at 1.0) pytorch-ood's number can be the lower one.
  It is neither ``"neglabel"`` nor ``"interp"``.

Usage::

    from fastood.detectors import KNN
    from fastood.integrations.pytorch_ood import PytorchOODDetector
    from pytorch_ood.metrics import OODMetrics

    det = PytorchOODDetector(KNN(clip)).fit(train_loader)      # loader of (x, y)
    metrics = OODMetrics()
    for x, y in test_loader:                                     # y < 0 marks OOD
        metrics.update(det(x), y)
    print(metrics.compute())
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

try:
    from pytorch_ood.api import FeaturesDetector, RequiresFittingException
except ImportError as exc:  # pragma: no cover - exercised only where pytorch-ood is absent
    raise ImportError("fastood.integrations.pytorch_ood needs pytorch-ood (pip install pytorch-ood); "
                      "fastood's own detectors work without it") from exc

from fastood.detectors import Detector as FastoodDetector
from fastood.detectors import NotFittedError, create

__all__ = ["PytorchOODDetector", "as_pytorch_ood"]


class PytorchOODDetector(FeaturesDetector):
    """A fastood :class:`~fastood.detectors.Detector` behind pytorch-ood's detector API.

    Args:
        detector: the fastood detector to wrap (any registered one: NegLabel, MCM, KNN,
            Mahalanobis, RMD, MSP, PLP, InterNeg, or a user subclass).

    Methods (all return *outlier* scores, higher = more OOD, ``= −detector.score``):

    * ``predict(x)``: images (anything the detector's ``score`` takes; pytorch-ood passes
      preprocessed float batches) → (B,) ``−S(x)``.
    * ``predict_features(z)``: (B, D) features → (B,) ``−S``.
    * ``fit(data_loader)``: fits on a loader of ``(x, y)`` (zero-shot detectors: no-op).
    * ``fit_features(z, y=None)``: fits on features (and labels where the detector needs them).

    ``requires_fit`` mirrors ``detector.needs_fit``; predicting with an unfitted detector raises
    pytorch-ood's ``RequiresFittingException``.
    """

    def __init__(self, detector: FastoodDetector) -> None:
        if not isinstance(detector, FastoodDetector):
            raise TypeError(f"detector must be a fastood.detectors.Detector, got {type(detector).__name__}")
        self.detector = detector
        self.requires_fit = bool(detector.needs_fit)
        # pytorch-ood infers .device from tensor/module attributes; the wrapped detector is neither
        self._device = detector.device

    # ------------------------------------------------------------------ fitting
    def fit(self, data_loader: Any, labels: Any = None, **kw: Any) -> "PytorchOODDetector":
        """Fit the wrapped detector on a loader of ``(x, y)`` (or images + ``labels``); returns ``self``."""
        self.detector.fit(data_loader, labels, **kw)
        return self

    def fit_features(self, x: Tensor, y: Tensor | None = None) -> "PytorchOODDetector":
        """Fit on (N, D) features ``x`` and (N,) labels ``y`` (``None`` for label-free detectors)."""
        self.detector.fit_features(x, y)
        return self

    # ------------------------------------------------------------------ scoring
    def _guard(self) -> None:
        if self.detector.needs_fit and not self.detector.fitted:
            raise RequiresFittingException(
                f"{type(self.detector).__name__} must be fitted first: call fit(loader) or fit_features(x, y)")

    @torch.no_grad()
    def predict(self, x: Any, **kw: Any) -> Tensor:
        """(B,) outlier scores ``−S(x)`` of the images ``x``."""
        self._guard()
        try:
            return -self.detector.score(x, **kw)
        except NotFittedError as exc:  # detectors whose fitted state is more than needs_fit
            raise RequiresFittingException(str(exc)) from exc

    @torch.no_grad()
    def predict_features(self, x: Tensor) -> Tensor:
        """(B,) outlier scores ``−S`` of (B, D) features ``x``."""
        self._guard()
        try:
            return -self.detector.score_features(x)
        except NotFittedError as exc:
            raise RequiresFittingException(str(exc)) from exc

    # ------------------------------------------------------------------ devices
    def to(self, device: str | torch.device) -> "PytorchOODDetector":
        """Move the wrapped detector (model and state) to ``device``."""
        self.detector.to(device)
        self._device = self.detector.device
        return self

    def __repr__(self) -> str:
        return f"PytorchOODDetector({self.detector!r})"


def as_pytorch_ood(detector: FastoodDetector | str, **kwargs: Any) -> PytorchOODDetector:
    """Wrap a fastood detector, or build one by name (``as_pytorch_ood("knn", clip=clip, k=1)``)."""
    if isinstance(detector, str):
        detector = create(detector, **kwargs)
    elif kwargs:
        raise TypeError("keyword arguments are only accepted with a detector name, "
                        f"got a {type(detector).__name__} instance and {sorted(kwargs)}")
    return PytorchOODDetector(detector)
