"""The detector base class: images → features → scores → thresholded predictions.

Every detector maps an image to a score, **higher = more in-distribution (ID)**,
and exposes the same surface:

    score(images) / score_features(features)              (B,) float32
    predict(images) / predict_features(features)           Prediction(labels, scores, is_ood)
    calibrate(id_images_or_scores, tpr=0.95)               sets and returns .threshold
    outlier_score(images) / outlier_score_features(f)      = −score (higher = more OOD)
    fit(images_or_loader, labels=None) / fit_features(features, labels=None)
    score_pixels(pixels01)                                 (B,) differentiable, pixels in [0, 1] (attacks)
    to(device), reset()

``images`` is anything :func:`fastood.images.iter_image_batches` accepts (paths,
directories, PIL images, uint8 / preprocessed float tensors, DataLoaders of ``(x, y)``).

**Calibration.** For ID scores ``s_1 ≥ … ≥ s_n`` (sorted) and ``k = ⌈tpr·n⌉``,
the threshold is ``θ = s_k``: the largest value with ``#{s_i ≥ θ}/n ≥ tpr``. Then
``is_ood = score < θ``.

**Writing a detector.** Subclass :class:`Detector`, set the class attributes
``name``, ``needs_fit``, ``needs_labels`` (a subclass that defines ``name`` in its own
body is registered in :data:`fastood.detectors.DETECTORS`), and implement the hooks

- ``_score_features(features) -> (scores, labels | None)``: ``features`` already
  validated (2-D, finite, float32, on ``self.device``, width ``self.feature_dim`` when
  that is known); return (B,) float32 scores and (B,) int64 predicted labels or ``None``;
- ``_fit_features(features, labels) -> None`` for detectors that fit
  (``labels`` is a (B,) int64 tensor on ``self.device`` or ``None``); set ``self.fitted = True``
  is done for you after it returns;
- optionally ``feature_dim`` (the expected width) and ``_to(device)`` (move state
  that is not a plain tensor attribute; tensor attributes are moved automatically);
- optionally ``_score_for_grad(features) -> (B,) scores`` with an autograd graph to ``features``
  when ``_score_features`` is not differentiable as written (default: ``_score_features``'s
  scores; :mod:`fastood.attacks` differentiates it through :meth:`Detector.score_pixels`).

The public methods validate, move and dispatch; subclasses may also override them
(e.g. a streaming detector overriding ``score_features`` and ``reset``).

**Feature spaces.** ``feature_space = "projection"`` (default) is
``model.encode_image``: the joint image–text embedding. ``"pre_projection"`` is the
visual tower's pooled output *before* its final linear projection (SPEC §5, the
CLIP-kNN / RMD features): for open_clip's ``VisionTransformer`` the tower's own
stages are called in order and the projection is skipped —
``pooled = _pool(transformer(_embeds(pixels)))[0]`` (the pooled,
``ln_post``-normalised token), which is ``forward`` without ``pooled @ proj``;
for ``TimmModel`` towers the ``trunk`` output (before ``head``) is taken. The
model is never modified, so detectors sharing one model may score from several
threads at once (each in projection or pre-projection space). Other towers
(e.g. ``ModifiedResNet``, whose attention pool includes the projection, or a
``VisionTransformer`` subclass with its own ``forward``) raise ``ValueError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence, TypeVar

import torch
from torch import Tensor, nn

from fastood.images import iter_image_batches
from fastood.models import ClipBundle

__all__ = [
    "Detector",
    "ZeroShotDetector",
    "Prediction",
    "Extracted",
    "NotFittedError",
    "FEATURE_SPACES",
    "check_features",
    "as_labels",
    "threshold_at_tpr",
    "encode_images",
    "encode_images_grad",
    "pre_projection",
]

FEATURE_SPACES = ("projection", "pre_projection")
_REGISTRY: dict[str, type["Detector"]] = {}

D = TypeVar("D", bound="Detector")


class NotFittedError(ValueError, AttributeError):
    """A detector that needs ``fit`` was used before fitting (like sklearn's ``NotFittedError``)."""


@dataclass
class Prediction:
    """What ``predict`` returns.

    Attributes:
        labels: (B,) int64 predicted ID class (argmax over ID labels for text detectors,
            nearest class for Mahalanobis, nearest neighbour's label for KNN), or ``None``
            when the detector has no class notion.
        scores: (B,) float32, higher = more in-distribution.
        is_ood: (B,) bool ``scores < threshold``; ``None`` when no threshold is set.
        names: the images' names (file path or ``"<input i>"``) when predicted from images.
    """

    labels: Tensor | None
    scores: Tensor
    is_ood: Tensor | None
    names: list[str] | None = None

    def __len__(self) -> int:
        return self.scores.shape[0]


@dataclass
class Extracted:
    """Features of an image stream: (B, D) float32, labels (B,) int64 or ``None``, names."""

    features: Tensor
    labels: Tensor | None
    names: list[str]


# ------------------------------------------------------------------------- helpers
def check_features(features: Any, name: str = "features", dim: int | None = None,
                   dim_source: str = "the detector") -> Tensor:
    """A non-empty, finite, floating 2-D tensor (of width ``dim`` when given); returns it."""
    if not isinstance(features, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, D), got {type(features).__name__}")
    if not features.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating tensor, got {features.dtype}")
    if features.dim() != 2:
        raise ValueError(f"{name} must be 2-D (B, D), got shape {tuple(features.shape)}")
    if features.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(features.shape)}): expected at least one row")
    if features.shape[1] == 0:
        raise ValueError(f"{name} has zero feature width (shape {tuple(features.shape)})")
    if dim is not None and features.shape[1] != dim:
        raise ValueError(f"{name} has width D={features.shape[1]} but {dim_source} expects D={dim}")
    step = max(1, (1 << 24) // features.shape[1])  # bounded temporaries for very large inputs
    for i in range(0, features.shape[0], step):
        finite = torch.isfinite(features[i : i + step]).all(dim=1)
        if not bool(finite.all()):
            raise ValueError(f"{name} has non-finite values (first in row {i + int(torch.nonzero(~finite)[0, 0])})")
    return features


def as_labels(labels: Any, n: int, name: str = "labels") -> Tensor:
    """Integer class labels as a (n,) int64 CPU tensor (tensor / array / sequence of ints)."""
    if isinstance(labels, Tensor):
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise TypeError(f"{name} must be integers, got a {labels.dtype} tensor")
        out = labels.detach().to("cpu", torch.int64)
    else:
        if type(labels).__module__ == "numpy" and getattr(labels, "dtype", None) is not None:
            if labels.dtype.kind not in "iu":
                raise TypeError(f"{name} must be integers, got a {labels.dtype} array")
            values = labels.tolist()
        else:
            try:
                values = list(labels)
            except TypeError:
                raise TypeError(f"{name} must be a tensor or sequence of ints, got {type(labels).__name__}") from None
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise TypeError(f"{name} must contain ints, got {values[:3]!r}")
        out = torch.tensor(values, dtype=torch.int64)
    if out.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(out.shape)}")
    if out.shape[0] != n:
        raise ValueError(f"{name} has {out.shape[0]} entries but features has {n} rows: they must match")
    return out


def threshold_at_tpr(scores: Tensor, tpr: float = 0.95) -> float:
    """The largest ``θ`` with ``mean(scores ≥ θ) ≥ tpr``: the ``⌈tpr·n⌉``-th largest score."""
    if isinstance(tpr, bool) or not isinstance(tpr, (int, float)) or not (0 < float(tpr) <= 1):
        raise ValueError(f"tpr must be a number in (0, 1], got {tpr!r}")
    s = scores.detach().double().reshape(-1).cpu()
    n = s.numel()
    if n == 0:
        raise ValueError("no ID scores to calibrate on")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("ID scores contain non-finite values")
    k = max(1, min(n, math.ceil(float(tpr) * n - 1e-9)))  # 1e-9: 0.95·100 is 95.00000000000001 in floats
    return float(torch.sort(s, descending=True).values[k - 1])


def _stock_vit(visual: nn.Module) -> bool:
    """Whether ``visual`` is an open_clip ``VisionTransformer`` whose ``forward`` is open_clip's own
    (``_embeds`` → ``transformer`` → ``_pool`` → ``@ proj``), so its stages can be called without the projection."""
    try:
        from open_clip.transformer import VisionTransformer
    except ImportError:  # pragma: no cover - open_clip is a dependency
        return False
    return (isinstance(visual, VisionTransformer) and type(visual).forward is VisionTransformer.forward
            and all(callable(getattr(visual, a, None)) for a in ("_embeds", "_pool")))


def pre_projection(model: nn.Module, pixels: Tensor) -> Tensor:
    """The visual tower's pooled output before its final projection (see module docs).

    Read-only on ``model``: the tower's stages are called directly instead of
    switching its projection off, so concurrent callers never see a half-changed model.
    """
    visual = getattr(model, "visual", model)
    if _stock_vit(visual):
        pooled, _ = visual._pool(visual.transformer(visual._embeds(pixels)))
        return pooled
    if hasattr(visual, "trunk") and hasattr(visual, "head"):
        out = visual.trunk(pixels)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out
    raise ValueError(
        f"feature_space='pre_projection' is supported for open_clip's VisionTransformer (its own forward) and "
        f"TimmModel (`trunk`) towers, not {type(visual).__name__}; use feature_space='projection'")


def model_image_size(model: nn.Module) -> tuple[int, int] | None:
    """``(H, W)`` an open_clip ``VisionTransformer`` tower takes (its ``image_size``: the positional
    embedding fixes it), or ``None`` for other towers (which may accept several sizes)."""
    try:
        from open_clip.transformer import VisionTransformer
    except ImportError:  # pragma: no cover - open_clip is a dependency
        return None
    visual = getattr(model, "visual", model)
    if not isinstance(visual, VisionTransformer):
        return None
    size = getattr(visual, "image_size", None)
    if isinstance(size, int) and not isinstance(size, bool):
        return (size, size)
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) for s in size):
        return (int(size[0]), int(size[1]))
    return None


def check_pixels(model: nn.Module, pixels: Tensor) -> None:
    """Preprocessed pixels must be (B, 3, H, W) at the model's input size: a clear error instead of one
    from deep inside the tower (a fixed-size ViT fails on its positional embedding)."""
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"preprocessed pixels must be (B, 3, H, W), got shape {tuple(pixels.shape)}")
    want = model_image_size(model)
    if want is not None and tuple(pixels.shape[-2:]) != want:
        raise ValueError(
            f"preprocessed float pixels are {pixels.shape[-2]}×{pixels.shape[-1]} but the model takes "
            f"{want[0]}×{want[1]} (expected (B, 3, {want[0]}, {want[1]})): pass uint8 images, PIL images or files "
            "(resized for you), or apply the detector's preprocess")


def check_array_input(images: Any, name: str = "images") -> None:
    """A numpy array given as a whole batch must be uint8 images: a float / int array of 4 or more
    dimensions is refused naming its shape and dtype (iterating it would only name one item's shape)."""
    if type(images).__module__ == "numpy" and type(images).__name__ == "ndarray" and images.ndim >= 4 \
            and images.dtype.name != "uint8":
        raise ValueError(
            f"{name} is a numpy {images.dtype} array of shape {tuple(images.shape)}: numpy images must be uint8 "
            "(H, W) or (H, W, 1|3|4) (a batch: (B, H, W, 3) uint8); for preprocessed float pixels (B, 3, H, W) "
            "pass torch.from_numpy(array)")


@torch.no_grad()
def encode_images(model: nn.Module, pixels: Tensor, *, device: torch.device, amp: bool,
                  feature_space: str = "projection") -> Tensor:
    """(B, 3, H, W) pixels → (B, D) float32 raw (not normalised) image features on ``device``."""
    return encode_images_grad(model, pixels, device=device, amp=amp, feature_space=feature_space)


def encode_images_grad(model: nn.Module, pixels: Tensor, *, device: torch.device, amp: bool,
                       feature_space: str = "projection") -> Tensor:
    """:func:`encode_images` under the caller's grad mode: the autograd graph to ``pixels`` is kept when
    grad is enabled (adversarial attacks differentiate through the image tower)."""
    check_pixels(model, pixels)
    pixels = pixels.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
        if feature_space == "projection":
            out = model.encode_image(pixels)
        elif feature_space == "pre_projection":
            out = pre_projection(model, pixels)
        else:
            raise ValueError(f"feature_space must be one of {FEATURE_SPACES}, got {feature_space!r}")
    return out.float()


# ------------------------------------------------------------------------ Detector
class Detector:
    """Base class of every fastood OOD detector (see the module docstring for the contract).

    Args:
        clip: a :class:`fastood.models.ClipBundle` (model, tokenizer, preprocess), or
            ``None`` with ``model=`` / ``tokenizer=`` / ``preprocess=`` given separately,
            or nothing at all for a features-only detector (``score_features`` etc.).
        device: where features are computed and state lives (default: the model's
            device, else CPU). The model is moved there.
        batch_size: images per forward pass.
        amp: fp16 autocast for the image tower on CUDA (default: on for CUDA).
        threshold: a preset decision threshold (``calibrate`` sets one).
    """

    name: ClassVar[str] = "detector"
    needs_fit: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    _feature_space: str = "projection"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__ and isinstance(cls.__dict__["name"], str):
            _REGISTRY[cls.name] = cls

    def __init__(
        self,
        clip: ClipBundle | None = None,
        *,
        model: nn.Module | None = None,
        tokenizer: Callable[[Sequence[str]], Tensor] | None = None,
        preprocess: Callable[[Any], Tensor] | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        amp: bool | None = None,
        threshold: float | None = None,
    ) -> None:
        if clip is not None and not isinstance(clip, ClipBundle):
            raise TypeError(f"clip must be a fastood.models.ClipBundle (see fastood.models.load_clip), "
                            f"got {type(clip).__name__}; pass a bare open_clip model as model=")
        if clip is not None and model is not None:
            raise TypeError("pass either clip= or model= (with tokenizer= / preprocess=), not both")
        if clip is None and model is not None:
            if not isinstance(model, nn.Module):
                raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
            clip = ClipBundle(model, tokenizer, preprocess, name=type(model).__name__)
        elif clip is not None and (tokenizer is not None or preprocess is not None):
            clip = ClipBundle(clip.model, tokenizer or clip.tokenizer, preprocess or clip.preprocess,
                              name=clip.name, pretrained=clip.pretrained)
        self.clip = clip
        if device is None:
            device = clip.device if clip is not None else torch.device("cpu")
        self.device = torch.device(device)
        if clip is not None and clip.device != self.device:
            clip.model.to(self.device)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        self._amp = None if amp is None else bool(amp)
        self.threshold = None if threshold is None else self._check_threshold(threshold)
        self.fitted = False

    # ---------------------------------------------------------------- properties
    @property
    def feature_space(self) -> str:
        """Which image features the detector works on: ``"projection"`` or ``"pre_projection"``."""
        return self._feature_space

    @feature_space.setter
    def feature_space(self, value: str) -> None:
        if value not in FEATURE_SPACES:
            raise ValueError(f"feature_space must be one of {FEATURE_SPACES}, got {value!r}")
        self._feature_space = value

    @property
    def feature_dim(self) -> int | None:
        """The feature width this detector expects (``None`` = not known yet)."""
        return None

    @property
    def amp(self) -> bool:
        """fp16 autocast for the image tower (only ever applied on CUDA); default on for CUDA."""
        return (self.device.type == "cuda") if self._amp is None else self._amp

    @amp.setter
    def amp(self, value: bool | None) -> None:
        self._amp = None if value is None else bool(value)

    @property
    def preprocess(self) -> Callable[[Any], Tensor] | None:
        return None if self.clip is None else self.clip.preprocess

    def __repr__(self) -> str:
        thr = "None" if self.threshold is None else f"{self.threshold:.6g}"
        return f"{type(self).__name__}(device={self.device}, threshold={thr}{self._repr_extra()})"

    def _repr_extra(self) -> str:
        return ""

    @staticmethod
    def _check_threshold(threshold: Any) -> float:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        return float(threshold)

    # ------------------------------------------------------------------ features
    def _require_model(self) -> ClipBundle:
        if self.clip is None:
            raise ValueError(f"{type(self).__name__} was built without a model: it can only score features "
                             "(score_features / predict_features); pass clip= or model= to score images")
        return self.clip

    def encode_images(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) preprocessed pixels → (B, D) float32 raw features in ``self.feature_space``."""
        clip = self._require_model()
        return encode_images(clip.model, pixels, device=self.device, amp=self.amp, feature_space=self.feature_space)

    def extract(self, images: Any, *, on_error: str = "raise", skipped: list[tuple[str, str]] | None = None,
                progress: bool = False, num_workers: int = 0, batch_size: int | None = None) -> Extracted:
        """Features, labels (when the input carries them) and names of ``images``.

        ``batch_size``: images per forward pass for this call only (default ``self.batch_size``).
        """
        clip = self._require_model()
        check_array_input(images)
        if batch_size is None:
            batch_size = self.batch_size
        elif isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        feats, labels, names = [], [], []
        for batch in iter_image_batches(images, clip.preprocess, batch_size=batch_size, on_error=on_error,
                                        skipped=skipped, progress=progress, num_workers=num_workers):
            feats.append(self.encode_images(batch.pixels))
            labels.append(batch.labels)
            names.extend(batch.names)
        if not feats:
            raise ValueError("no images to process: the input was empty"
                             + (" (every file was unreadable and skipped)" if skipped else ""))
        lab = None
        if all(t is not None for t in labels):
            lab = torch.cat(labels)
        elif any(t is not None for t in labels):
            raise ValueError("some input batches carry labels and some do not")
        return Extracted(torch.cat(feats), lab, names)

    def features(self, images: Any, *, on_error: str = "raise", skipped: list[tuple[str, str]] | None = None,
                 progress: bool = False, num_workers: int = 0, batch_size: int | None = None) -> Tensor:
        """(B, D) float32 raw image features of ``images`` (see :func:`fastood.images.iter_image_batches`)."""
        return self.extract(images, on_error=on_error, skipped=skipped, progress=progress,
                            num_workers=num_workers, batch_size=batch_size).features

    # ------------------------------------------------------------------- scoring
    def _prepare(self, features: Any, name: str = "features") -> Tensor:
        f = check_features(features, name, self.feature_dim, f"{type(self).__name__}")
        return f.to(self.device, torch.float32)

    def _check_fitted(self) -> None:
        if self.needs_fit and not self.fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: call fit(id_images_or_loader"
                                 f"{', labels' if self.needs_labels else ''}) or fit_features(features"
                                 f"{', labels' if self.needs_labels else ''}) first")

    def _score_features(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError(f"{type(self).__name__} must implement _score_features")

    def score_features(self, features: Tensor) -> Tensor:
        """(B,) float32 scores of (B, D) features, higher = more in-distribution."""
        self._check_fitted()
        return self._score_features(self._prepare(features))[0]

    def score(self, images: Any, **kw: Any) -> Tensor:
        """(B,) float32 scores of ``images`` (``on_error``, ``skipped``, ``progress``, ``batch_size`` as in :meth:`features`)."""
        self._check_fitted()
        return self.score_features(self.features(images, **kw))

    def _score_for_grad(self, features: Tensor) -> Tensor:
        """Hook: the (B,) score that attacks differentiate (default ``_score_features``); stateful
        detectors return it without updating their state (e.g. InterNeg's frozen test-time bank)."""
        return self._score_features(features)[0]

    def score_pixels(self, pixels: Tensor) -> Tensor:
        """Differentiable (B,) float32 scores of (B, 3, H, W) pixels in [0, 1] at the model's input size.

        ``S(x) = score(f((x − μ)/σ))`` with the preprocess's per-channel mean ``μ`` / std ``σ``
        applied inside the autograd graph, so ``∂S/∂x`` is taken in pixel space (used by
        :mod:`fastood.attacks`); the graph is kept when grad is enabled (the caller's grad mode).
        fp16 autocast on CUDA when ``amp``. Does not update streaming state.
        """
        from fastood.images import preprocess_config

        self._check_fitted()
        clip = self._require_model()
        if not isinstance(pixels, Tensor) or not pixels.dtype.is_floating_point:
            raise TypeError(f"pixels must be a floating tensor (B, 3, H, W) in [0, 1], got "
                            f"{getattr(pixels, 'dtype', type(pixels).__name__)}")
        cfg = preprocess_config(clip)
        mean = torch.tensor(cfg["mean"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(cfg["std"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        x = (pixels.to(self.device, torch.float32) - mean) / std
        feats = encode_images_grad(clip.model, x, device=self.device, amp=self.amp, feature_space=self.feature_space)
        return self._score_for_grad(self._prepare(feats)).float()

    def outlier_score_features(self, features: Tensor) -> Tensor:
        """``−score_features``: higher = more out-of-distribution (OpenOOD / pytorch-ood convention)."""
        return -self.score_features(features)

    def outlier_score(self, images: Any, **kw: Any) -> Tensor:
        """``−score``: higher = more out-of-distribution."""
        return -self.score(images, **kw)

    def _prediction(self, scores: Tensor, labels: Tensor | None, names: list[str] | None = None) -> Prediction:
        is_ood = None if self.threshold is None else scores < self.threshold
        return Prediction(labels=labels, scores=scores, is_ood=is_ood, names=names)

    def predict_features(self, features: Tensor) -> Prediction:
        """Scores, predicted ID labels and ``is_ood = score < threshold`` of (B, D) features."""
        self._check_fitted()
        scores, labels = self._score_features(self._prepare(features))
        return self._prediction(scores, labels)

    def predict(self, images: Any, **kw: Any) -> Prediction:
        """:meth:`predict_features` of ``images``' features, with their names."""
        self._check_fitted()
        ex = self.extract(images, **kw)
        pred = self.predict_features(ex.features)
        pred.names = ex.names
        return pred

    # --------------------------------------------------------------- calibration
    def calibrate(self, id_images_or_scores: Any, tpr: float = 0.95, **kw: Any) -> float:
        """Set ``threshold`` so that a fraction ≥ ``tpr`` of the given ID data scores ≥ it.

        ``id_images_or_scores``: a 1-D tensor / array / list of ID *scores*, or ID images
        (anything :meth:`score` takes; ``kw`` are passed on). The threshold is the
        ``⌈tpr·n⌉``-th largest score (see :func:`threshold_at_tpr`).
        """
        x = id_images_or_scores
        if type(x).__module__ == "numpy" and getattr(x, "ndim", None) == 1:
            x = torch.as_tensor(x)
        elif isinstance(x, (list, tuple)) and x and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in x):
            x = torch.tensor(x, dtype=torch.float64)
        if isinstance(x, Tensor) and x.dim() == 1:
            if not x.dtype.is_floating_point:
                x = x.double()
            scores = x
        else:
            scores = self.score(x, **kw)
        self.threshold = threshold_at_tpr(scores, tpr)
        return self.threshold

    # ------------------------------------------------------------------- fitting
    def _fit_features(self, features: Tensor, labels: Tensor | None) -> None:
        """Default: nothing to fit (zero-shot detectors)."""

    def fit_features(self: D, features: Tensor, labels: Any = None) -> D:
        """Fit on ID training features (B, D) (and labels (B,) for detectors that need them)."""
        f = check_features(features, "features", self._fit_dim(), type(self).__name__)
        lab = None
        if labels is not None:
            lab = as_labels(labels, f.shape[0]).to(self.device)
        elif self.needs_labels:
            raise ValueError(f"{type(self).__name__} needs class labels to fit: pass labels= "
                             "(or a DataLoader / dataset yielding (x, y))")
        self._fit_features(f, lab)
        self.fitted = True
        return self

    def _fit_dim(self) -> int | None:
        """Width required when fitting (``None``: any; fitting sets it)."""
        return None

    def fit(self: D, images_or_loader: Any, labels: Any = None, **kw: Any) -> D:
        """Fit on ID training images (a DataLoader / dataset of ``(x, y)`` carries labels).

        Explicit ``labels`` win over labels carried by the input.
        """
        if not self.needs_fit and type(self)._fit_features is Detector._fit_features:
            self.fitted = True  # zero-shot: nothing to learn, do not encode the images
            return self
        ex = self.extract(images_or_loader, **kw)
        return self.fit_features(ex.features, ex.labels if labels is None else labels)

    # ------------------------------------------------------------------- devices
    def to(self: D, device: str | torch.device) -> D:
        """Move the model and every tensor of the detector's state to ``device``."""
        device = torch.device(device)
        if self.clip is not None:
            self.clip.model.to(device)
        for key, value in list(vars(self).items()):
            if isinstance(value, Tensor):
                setattr(self, key, value.to(device))
        self._to(device)
        self.device = device
        return self

    def _to(self, device: torch.device) -> None:
        """Hook: move state that is not a plain tensor attribute."""

    def reset(self) -> None:
        """Forget streaming state (test-time adaptive detectors); a no-op here."""

    # ------------------------------------------------------------------- OpenOOD
    def as_openood_postprocessor(self, config: Any = None) -> Any:
        """An OpenOOD ``BasePostprocessor`` backed by this detector (needs ``openood``).

        ``postprocess(net, data)`` returns ``(pred, conf)`` with ``conf = score`` (higher =
        ID, OpenOOD's convention for ``conf``); ``net`` is ignored, the detector's own model
        encodes ``data`` (preprocessed float tensors). ``setup`` fits detectors that need
        it on ``id_loader_dict["train"]`` (OpenOOD batches are dicts with ``data`` / ``label``).
        """
        try:
            from openood.postprocessors import BasePostprocessor
        except ImportError as exc:
            raise ImportError(
                "as_openood_postprocessor() needs OpenOOD, which is not installed "
                "(pip install git+https://github.com/Jingkang50/OpenOOD); fastood's detectors work without it"
            ) from exc
        det = self

        class FastoodPostprocessor(BasePostprocessor):  # type: ignore[misc, valid-type]
            def __init__(self, cfg: Any = None) -> None:
                super().__init__(cfg)
                self.detector = det
                self.APS_mode = False
                self.setup_flag = False

            def setup(self, net: Any, id_loader_dict: dict, ood_loader_dict: dict) -> None:
                if det.needs_fit and not det.fitted and not self.setup_flag:
                    det.fit(id_loader_dict["train"])
                self.setup_flag = True

            @torch.no_grad()
            def postprocess(self, net: Any, data: Tensor) -> tuple[Tensor, Tensor]:
                p = det.predict(data)
                labels = p.labels if p.labels is not None else torch.zeros_like(p.scores, dtype=torch.int64)
                return labels, p.scores

        return FastoodPostprocessor(config)


# ----------------------------------------------------------------- zero-shot base
class ZeroShotDetector(Detector):
    """Base of the text-bank (zero-shot) detectors: NegLabel, MCM, InterNeg.

    Holds a :class:`fastood.bank.TextBank` ``bank`` (``[ID | negatives]``, unit-norm
    rows; kept on the CPU) and its embeddings on ``self.device`` (``bank_embeddings``).
    Exposes ``classes`` (the K ID names), ``num_id`` (K), ``temperature``, ``groups`` and
    ``head(features) -> (scores, pred)``; ``_score_features`` is ``head``.
    Subclasses implement ``head``.
    """

    needs_fit: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False

    def _set_bank(self, bank: Any, temperature: float, groups: int) -> None:
        from fastood.bank import TextBank
        from fastood.ops._dispatch import check_temperature

        if not isinstance(bank, TextBank):
            raise TypeError(f"bank must be a fastood.bank.TextBank, got {type(bank).__name__}")
        self.bank = bank
        self.temperature = check_temperature("temperature", temperature)
        self.groups = groups
        self.bank_embeddings = bank.embeddings.to(self.device)
        if self.clip is not None:
            width = _model_embed_dim(self.clip.model)
            if width is not None and width != bank.dim:
                raise ValueError(f"the bank has width D={bank.dim} but the model's image embeddings have D={width}: "
                                 "the bank was built with another model")

    @property
    def classes(self) -> list[str]:
        return list(self.bank.id_labels)

    @property
    def num_id(self) -> int:
        return self.bank.num_id

    @property
    def feature_dim(self) -> int | None:
        return self.bank.dim

    def head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(B, D) raw features → ((B,) float32 scores, (B,) int64 ID predictions)."""
        raise NotImplementedError

    def _score_features(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.head(features)

    def _score_for_grad(self, features: Tensor) -> Tensor:
        return self.head(features)[0]  # the current bank, no test-time update (InterNeg's bank stays frozen)

    def _repr_extra(self) -> str:
        return f", num_id={self.num_id}, bank={tuple(self.bank.embeddings.shape)}, temperature={self.temperature:g}"


def _model_embed_dim(model: nn.Module) -> int | None:
    """The width of ``model.encode_image`` outputs when it can be read off the model."""
    visual = getattr(model, "visual", None)
    out = getattr(visual, "output_dim", None)
    if isinstance(out, int):
        return out
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, Tensor) and proj.dim() == 2:
        return int(proj.shape[1])
    return None
