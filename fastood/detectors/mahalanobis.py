"""Mahalanobis and Relative Mahalanobis (RMD) detectors (shared/SPEC.md §5), float64.

Fit on labelled ID training features ``x_i`` with classes ``c = 1..C``:

    μ_c = mean of class c (n_c samples, N in all),   μ_0 = mean of all training features

The shared covariance Σ and RMD's background covariance Σ_0 follow one of two
published conventions (``covariance``):

    "class_mean" (default; the PLP / CLIP-kNN code, Adaloglou et al.):
        Σ_c = (1/(n_c − 1)) Σ_{i∈c} (x_i − μ_c)(x_i − μ_c)ᵀ      (unbiased, per class)
        Σ   = (1/C) Σ_c Σ_c,      Σ_0 = (1/(N − 1)) Σ_i (x_i − μ_0)(x_i − μ_0)ᵀ
    "pooled" (OpenOOD's ``mds`` / ``rmds``: ``sklearn.covariance.EmpiricalCovariance``):
        Σ   = (1/N) Σ_i (x_i − μ_{y_i})(x_i − μ_{y_i})ᵀ              (one pooled, biased covariance
                                                               of the class-centred features)
        Σ_0 = (1/N) Σ_i (x_i − μ_0)(x_i − μ_0)ᵀ                    (biased)

With equal class sizes n_c = N/C, ``Σ_pooled = Σ_class_mean · (N − C)/N``, so the
Mahalanobis score differs by the factor ``N/(N − C)`` (same ranking); RMD's
difference ``MD_c − MD_0`` mixes two normalisers and its ranking changes.
fastood computes both in float64; OpenOOD fits and scores in float32, so
``"pooled"`` equals OpenOOD's scores up to its float32 rounding. (OpenOOD predicts
the label from the network's logits; fastood predicts ``argmin_c MD_c``.)

    MD_c(x) = (x − μ_c)ᵀ Σ⁻¹ (x − μ_c),   MD_0(x) = (x − μ_0)ᵀ Σ_0⁻¹ (x − μ_0)
    Mahalanobis:  S(x) = −min_c MD_c(x)
    RMD:          S(x) = −min_c (MD_c(x) − MD_0(x)) = MD_0(x) − min_c MD_c(x)

The predicted label is ``argmin_c MD_c``. With ``"class_mean"`` every class needs ≥ 2
samples (the unbiased covariance is undefined otherwise: ``ValueError``); ``"pooled"``
needs ``N > C``.

**Inverse.** ``Σ + ρ·(tr Σ / D)·I`` with ``ridge = ρ`` (default 0) is factored by
Cholesky, ``Σ = L Lᵀ``, and distances are ``||L⁻¹(x − μ)||²``. A covariance that is
not positive definite (fewer samples than dimensions, collinear features) makes
Cholesky fail; then, with ``pinv_fallback=True`` (default), a warning is issued and
the Moore–Penrose pseudo-inverse is used: ``Σ = V diag(λ) Vᵀ``, eigenvalues
``λ ≤ D·eps·λ_max`` dropped, ``MD = ||diag(λ⁻½) Vᵀ (x − μ)||²`` — the
``sklearn.covariance.EmpiricalCovariance`` / OpenOOD convention. With
``pinv_fallback=False`` it is a ``ValueError`` suggesting ``ridge``.

**Chunked.** Statistics are accumulated over row chunks in float64 (two passes);
scoring whitens a row block, ``z = W x``, and computes all C distances as
``||z||² − 2 z·m_c + ||m_c||²`` (``m_c = W μ_c``) with the live (rows × C) float64
block capped at ``block_bytes``. Scores are returned as float32.

Features: SPEC §5's pre-projection features by default (``feature_space``);
standardisation is not offered because Mahalanobis distances are invariant to any
invertible affine map of the features. ``normalize=True`` L2-normalises features
first (a common variant on CLIP embeddings; it does change the distances).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from fastood.detectors.base import Detector
from fastood.models import ClipBundle

__all__ = ["Mahalanobis", "RMD", "whitening", "COVARIANCES"]

COVARIANCES = ("class_mean", "pooled")

ROWS_PER_PASS = 65536


def whitening(cov: Tensor, *, ridge: float = 0.0, pinv_fallback: bool = True, what: str = "covariance") -> Tensor:
    """``W`` (r × D) with ``||W v||² = vᵀ Σ⁺ v`` (r = D when Σ is positive definite).

    Cholesky of ``Σ + ridge·(tr Σ/D)·I`` → ``W = L⁻¹``; if that fails, the pseudo-inverse's
    square root from ``eigh`` (with a warning), or a ``ValueError`` if ``pinv_fallback`` is off.
    """
    d = cov.shape[0]
    cov = cov.double()
    if ridge:
        cov = cov + ridge * (torch.diagonal(cov).mean().clamp_min(torch.finfo(torch.float64).tiny)) * torch.eye(
            d, dtype=cov.dtype, device=cov.device)
    L, info = torch.linalg.cholesky_ex(cov)
    if int(info) == 0:
        eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
        return torch.linalg.solve_triangular(L, eye, upper=False)
    lam, vec = torch.linalg.eigh(cov)
    rank = int((lam > d * torch.finfo(torch.float64).eps * lam.max().clamp_min(0)).sum())
    if not pinv_fallback:
        raise ValueError(f"the {what} is singular or not positive definite (numerical rank {rank} < D={d}), e.g. "
                         "fewer training samples than feature dimensions: pass ridge= (e.g. 1e-6) or "
                         "pinv_fallback=True")
    warnings.warn(f"the {what} is singular (numerical rank {rank} < D={d}): using its pseudo-inverse "
                  "(pass ridge= to regularise instead)", RuntimeWarning, stacklevel=3)
    keep = lam > d * torch.finfo(torch.float64).eps * lam.max().clamp_min(0)
    return (vec[:, keep] / lam[keep].sqrt()).T.contiguous()


class Mahalanobis(Detector):
    """Class-conditional Gaussian (shared covariance) detector: ``S = −min_c MD_c``.

    Args:
        clip / model / tokenizer / preprocess / device / batch_size / amp / threshold:
            see :class:`fastood.detectors.Detector`.
        feature_space: ``"pre_projection"`` (SPEC default) or ``"projection"``.
        normalize: L2-normalise features before fitting and scoring.
        covariance: ``"class_mean"`` (mean of per-class unbiased covariances, unbiased global;
            the PLP code) or ``"pooled"`` (one pooled biased covariance of the class-centred
            features, biased global; OpenOOD). Stored as ``covariance_type`` (``covariance`` is
            the fitted Σ).
        ridge: relative ridge ``ρ`` added as ``ρ·(tr Σ/D)·I`` before inversion (0 = none).
        pinv_fallback: pseudo-inverse (with a warning) when a covariance is singular.
        block_bytes: cap on the live (rows × classes) float64 distance block (64 MiB).
    """

    name: ClassVar[str] = "mahalanobis"
    needs_fit: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = True
    relative: ClassVar[bool] = False

    def __init__(
        self,
        clip: ClipBundle | None = None,
        *,
        model: nn.Module | None = None,
        tokenizer: Callable[[Sequence[str]], Tensor] | None = None,
        preprocess: Callable[[Any], Tensor] | None = None,
        feature_space: str = "pre_projection",
        normalize: bool = False,
        covariance: str = "class_mean",
        ridge: float = 0.0,
        pinv_fallback: bool = True,
        block_bytes: int = 64 << 20,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        amp: bool | None = None,
        threshold: float | None = None,
    ) -> None:
        super().__init__(clip, model=model, tokenizer=tokenizer, preprocess=preprocess, device=device,
                         batch_size=batch_size, amp=amp, threshold=threshold)
        self.feature_space = feature_space  # validated by Detector.feature_space
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not (0 <= ridge < float("inf")):
            raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
        if isinstance(block_bytes, bool) or not isinstance(block_bytes, int) or block_bytes < 8:
            raise ValueError(f"block_bytes must be an int >= 8, got {block_bytes!r}")
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        self.normalize = bool(normalize)
        self.covariance_type = covariance
        self.ridge = float(ridge)
        self.pinv_fallback = bool(pinv_fallback)
        self.block_bytes = block_bytes
        self.classes_: Tensor | None = None      # (C,) int64 label values, sorted
        self.class_counts: Tensor | None = None  # (C,) int64
        self.means: Tensor | None = None         # (C, D) float64 μ_c
        self.covariance: Tensor | None = None    # (D, D) float64 shared Σ
        self.global_mean: Tensor | None = None   # (D,) float64 μ_0
        self.global_covariance: Tensor | None = None  # (D, D) float64 Σ_0
        self.W: Tensor | None = None             # whitening of Σ
        self.W0: Tensor | None = None            # whitening of Σ_0 (RMD)
        self._m: Tensor | None = None            # (C, r) W μ_c
        self._m_sq: Tensor | None = None         # (C,) ||W μ_c||²
        self._m0: Tensor | None = None           # (r0,) W0 μ_0

    @property
    def feature_dim(self) -> int | None:
        return None if self.means is None else self.means.shape[1]

    def _rows(self, x: Tensor) -> Tensor:
        x = x.to(self.device, torch.float64)
        if self.normalize:
            norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
            if bool((norms == 0).any()):
                raise ValueError(f"features row {int(torch.nonzero(norms[:, 0] == 0)[0, 0])} has zero norm: "
                                 "it cannot be L2-normalised (normalize=True)")
            x = x / norms
        return x

    def _fit_features(self, features: Tensor, labels: Tensor | None) -> None:
        assert labels is not None
        classes, inverse, counts = torch.unique(labels, sorted=True, return_inverse=True, return_counts=True)
        pooled = self.covariance_type == "pooled"
        if pooled and features.shape[0] <= classes.numel():
            raise ValueError(f"covariance='pooled' needs more training samples than classes, got "
                             f"{features.shape[0]} samples for {classes.numel()} classes")
        if not pooled and bool((counts < 2).any()):
            bad = classes[counts < 2].tolist()
            raise ValueError(f"every class needs at least 2 training samples for its unbiased covariance; "
                             f"class(es) {bad[:10]} have 1")
        n, d = features.shape
        C = classes.numel()
        dev, f64 = self.device, torch.float64
        sums = torch.zeros(C, d, dtype=f64, device=dev)
        for i in range(0, n, ROWS_PER_PASS):
            sums.index_add_(0, inverse[i : i + ROWS_PER_PASS], self._rows(features[i : i + ROWS_PER_PASS]))
        counts64 = counts.to(f64)
        means = sums / counts64[:, None]
        mean0 = sums.sum(0) / n
        # class_mean: each class's scatter / (n_c − 1), averaged over C; pooled: all scatter / N
        weight = torch.ones_like(counts64) if pooled else 1.0 / (counts64 - 1.0)
        acc = torch.zeros(d, d, dtype=f64, device=dev)
        acc0 = torch.zeros(d, d, dtype=f64, device=dev)
        for i in range(0, n, ROWS_PER_PASS):
            x = self._rows(features[i : i + ROWS_PER_PASS])
            y = inverse[i : i + ROWS_PER_PASS]
            dc = (x - means[y]) * weight[y].sqrt()[:, None]
            acc.addmm_(dc.T, dc)
            d0 = x - mean0
            acc0.addmm_(d0.T, d0)
        self.classes_, self.class_counts = classes, counts
        self.means, self.covariance = means, acc / (n if pooled else C)
        self.global_mean, self.global_covariance = mean0, acc0 / (n if pooled else n - 1)
        self.W = whitening(self.covariance, ridge=self.ridge, pinv_fallback=self.pinv_fallback,
                           what="shared class covariance")
        self._m = means @ self.W.T
        self._m_sq = self._m.square().sum(1)
        if self.relative:
            self.W0 = whitening(self.global_covariance, ridge=self.ridge, pinv_fallback=self.pinv_fallback,
                                what="global covariance")
            self._m0 = self.W0 @ mean0

    def distances(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(min_c MD_c, argmin_c (index into classes_), MD_0 or None)`` for (B, D) features, float64.

        Chunked over rows so the (rows × C) block stays under ``block_bytes``.
        """
        self._check_fitted()
        f = self._prepare(features)
        C = self._m.shape[0]
        rows = max(1, self.block_bytes // (8 * max(C, 1)))
        out_min = torch.empty(f.shape[0], dtype=torch.float64, device=self.device)
        out_arg = torch.empty(f.shape[0], dtype=torch.int64, device=self.device)
        out_0 = torch.empty(f.shape[0], dtype=torch.float64, device=self.device) if self.relative else None
        for i in range(0, f.shape[0], rows):
            x = self._rows(f[i : i + rows])
            z = x @ self.W.T
            md = (z.square().sum(1, keepdim=True) - 2.0 * (z @ self._m.T) + self._m_sq).clamp_min_(0.0)
            v, a = md.min(dim=1)
            out_min[i : i + rows], out_arg[i : i + rows] = v, a
            if out_0 is not None:
                out_0[i : i + rows] = (x @ self.W0.T - self._m0).square().sum(1)
        return out_min, out_arg, out_0

    def _score_features(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        md_min, arg, md0 = self.distances(features)
        score = -md_min if md0 is None else md0 - md_min
        return score.float(), self.classes_[arg]

    def _repr_extra(self) -> str:
        c = None if self.classes_ is None else self.classes_.numel()
        return (f", classes={c}, covariance={self.covariance_type!r}, feature_space={self.feature_space!r}, "
                f"normalize={self.normalize}, ridge={self.ridge:g}")


class RMD(Mahalanobis):
    """Relative Mahalanobis distance: ``S = −min_c (MD_c − MD_0)`` (see the module docstring)."""

    name: ClassVar[str] = "rmd"
    relative: ClassVar[bool] = True
