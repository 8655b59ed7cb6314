"""MSP linear probe and pseudo-label probing (PLP) — Adaloglou et al., TMLR 2024 (shared/SPEC.md §5).

A linear head on frozen, standardised CLIP image features:

    x̃ = (x − μ) / σ                      per-dimension train mean / population std (zero σ → 1)
    z = W x̃ + b                           W (C, D), b (C,)
    MSP:  S(x) = max_c softmax(z)_c       (default; the predicted label is argmax_c z_c)
    RMD:  S(x) = −min_c (MD_c(x̃) − MD_0(x̃))   on the head's inputs x̃ (``score="rmd"``)
          or on its logits z (``score="rmd_logits"``), with the (pseudo-)labels as classes
          (:class:`fastood.detectors.mahalanobis.RMD`, float64).

Features: the visual tower's *pre-projection* output by default (SPEC §5;
``feature_space="projection"`` uses ``encode_image``). ``μ, σ`` come from
:func:`fastood.detectors.knn.standardize_stats` (float64, ``ddof = 0``).

**Training** (:func:`train_linear_head`): zero-initialised ``W, b``; cross-entropy;
Adam (lr 1e-3, β = (0.9, 0.999), ε = 1e-8, weight decay 0); ``T = epochs·⌈N/batch⌉``
steps, a linear warmup over the first ``W = round(0.1·T)`` steps then a cosine to 0:

    lr_t = lr·(t + 1)/W   (t < W),      lr_t = lr·½(1 + cos(π(t − W)/(T − W)))   (t ≥ W)

Mini-batches of ``train_batch_size`` (4096, "large batch") follow a fresh permutation
per epoch from a seeded CPU generator: training is deterministic on the CPU. The
SPEC fixes the optimiser, lr, warmup and schedule; ``epochs = 20`` and the batch
size are fastood's defaults.

**MSP** (``name = "msp"``) is the supervised linear probe: it needs the true labels.
**PLP** (``name = "plp"``) pseudo-labels every ID training image with zero-shot CLIP
instead: class embeddings ``t_k`` = normalised mean of the normalised embeddings of
the 5-prompt ensemble :data:`fastood.labels.PLP_TEMPLATES`, on the *projected*
features ``u`` (for pre-projection features, ``u = x · proj`` with the visual
tower's own projection — exactly what ``encode_image`` computes):

    p(k | x) = softmax_k(û·t̂_k / T_zs),   ŷ = argmax_k p,   keep x  iff  max_k p ≥ min_confidence

``T_zs = 0.01`` (CLIP's logit scale 100). ``min_confidence = 0`` keeps every image
(the released code); the paper uses 0.9. Labels passed explicitly to
``fit(images, labels)`` / ``fit_features(features, labels)`` replace the
pseudo-labels (PLP then *is* the MSP probe; ``label_source`` says which was used);
labels carried by a DataLoader / ImageFolder are ignored by ``PLP.fit`` — pseudo-labels
are the point.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastood.detectors.base import Detector, NotFittedError
from fastood.detectors.knn import standardize_stats
from fastood.models import ClipBundle

__all__ = ["MSP", "PLP", "train_linear_head", "lr_at", "zero_shot_probs", "SCORES"]

SCORES = ("msp", "rmd", "rmd_logits")


# --------------------------------------------------------------------------- math
def lr_at(step: int, total: int, warmup_steps: int, lr: float) -> float:
    """Learning rate of step ``step`` (0-based) of ``total``: linear warmup, then cosine to 0."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay = max(1, total - warmup_steps)
    return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / decay))


def _check_pos_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return v


def _check_nonneg(name: str, v: Any, *, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {v!r}")
    return float(v)


def train_linear_head(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    *,
    epochs: int = 20,
    lr: float = 1e-3,
    warmup: float = 0.1,
    batch_size: int = 4096,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Tensor, Tensor, list[float]]:
    """Train ``z = x Wᵀ + b`` with cross-entropy on ``x`` (N, D) and labels ``y`` (N,) in ``[0, num_classes)``.

    Returns ``(W (C, D), b (C,), per-epoch mean training loss)``, float32 on ``x``'s
    device. Optimiser and schedule: see the module docstring.
    """
    from fastood.progress import progress as progress_bar  # a tqdm bar on a terminal, plain lines in a log

    _check_pos_int("epochs", epochs)
    _check_pos_int("train_batch_size", batch_size)
    _check_pos_int("num_classes", num_classes)
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not (0.0 <= warmup < 1.0):
        raise ValueError(f"warmup must be a fraction in [0, 1), got {warmup!r}")
    lr = _check_nonneg("lr", lr, positive=True)
    weight_decay = _check_nonneg("weight_decay", weight_decay)
    n, d = x.shape
    if n == 0:
        raise ValueError("no training samples")
    x = x.float()
    y = y.to(device=x.device, dtype=torch.long)
    w = torch.zeros(num_classes, d, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, device=x.device, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr, weight_decay=weight_decay)
    total = epochs * math.ceil(n / batch_size)
    warm = int(round(float(warmup) * total))
    gen = torch.Generator().manual_seed(int(seed))
    history: list[float] = []
    step = 0
    with torch.enable_grad(), progress_bar(total=total, desc="training linear head", unit="step", disable=not progress,
                                   leave=False) as bar:
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen).to(x.device)
            acc = torch.zeros((), dtype=torch.float64, device=x.device)
            for s in range(0, n, batch_size):
                idx = perm[s : s + batch_size]
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, total, warm, lr)
                loss = F.cross_entropy(F.linear(x[idx], w, b), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                acc += loss.detach().double() * idx.numel()
                step += 1
                bar.update(1)
            history.append(float(acc) / n)
    return w.detach(), b.detach(), history


def zero_shot_probs(features: Tensor, class_emb: Tensor, temperature: float = 0.01) -> Tensor:
    """CLIP zero-shot class probabilities ``softmax(û·t̂ᵀ / temperature)``, (N, K) float32."""
    u = F.normalize(features.float(), dim=1)
    t = F.normalize(class_emb.float().to(u.device), dim=1)
    return torch.softmax((u @ t.T) / float(temperature), dim=1)


# ---------------------------------------------------------------------- detectors
class MSP(Detector):
    """Supervised linear probe on standardised features, scored by MSP (or RMD).

    Args:
        clip / model / tokenizer / preprocess / device / batch_size / amp / threshold:
            see :class:`fastood.detectors.Detector`.
        feature_space: ``"pre_projection"`` (SPEC default) or ``"projection"``.
        standardize: standardise with the training mean / std (SPEC default).
        score: ``"msp"`` (max softmax of the head), ``"rmd"`` (RMD on the head's
            standardised inputs) or ``"rmd_logits"`` (RMD on the logits).
        epochs, lr, warmup, train_batch_size, weight_decay, seed: the trainer.
        num_classes: C (default: ``max(label) + 1``).
        ridge: passed to the RMD fit (see :class:`fastood.detectors.RMD`).
        covariance: the RMD's covariance convention, ``"class_mean"`` (the PLP code, default)
            or ``"pooled"`` (OpenOOD); see :mod:`fastood.detectors.mahalanobis`.
        progress: progress bar while training.

    Fitted state: ``mean``, ``std`` (D,) float64, ``weight`` (C, D), ``bias`` (C,)
    float32, ``history`` (per-epoch training loss), ``rmd`` (the fitted RMD, or ``None``).
    """

    name: ClassVar[str] = "msp"
    needs_fit: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = True

    def __init__(
        self,
        clip: ClipBundle | None = None,
        *,
        model: nn.Module | None = None,
        tokenizer: Callable[[Sequence[str]], Tensor] | None = None,
        preprocess: Callable[[Any], Tensor] | None = None,
        feature_space: str = "pre_projection",
        standardize: bool = True,
        score: str = "msp",
        epochs: int = 20,
        lr: float = 1e-3,
        warmup: float = 0.1,
        train_batch_size: int = 4096,
        weight_decay: float = 0.0,
        seed: int = 0,
        num_classes: int | None = None,
        ridge: float = 0.0,
        covariance: str = "class_mean",
        progress: bool = False,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        amp: bool | None = None,
        threshold: float | None = None,
    ) -> None:
        super().__init__(clip, model=model, tokenizer=tokenizer, preprocess=preprocess, device=device,
                         batch_size=batch_size, amp=amp, threshold=threshold)
        self.feature_space = feature_space  # validated by Detector.feature_space
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        _check_pos_int("epochs", epochs)
        _check_pos_int("train_batch_size", train_batch_size)
        if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not (0.0 <= warmup < 1.0):
            raise ValueError(f"warmup must be a fraction in [0, 1), got {warmup!r}")
        if num_classes is not None:
            _check_pos_int("num_classes", num_classes)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.standardize = bool(standardize)
        self.score_method = score
        self.epochs, self.warmup, self.train_batch_size, self.seed = epochs, float(warmup), train_batch_size, seed
        self.lr = _check_nonneg("lr", lr, positive=True)
        self.weight_decay = _check_nonneg("weight_decay", weight_decay)
        self.num_classes = num_classes
        self.ridge = _check_nonneg("ridge", ridge)
        from fastood.detectors.mahalanobis import COVARIANCES

        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        self.covariance = covariance
        self.progress = bool(progress)
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None
        self.history: list[float] = []
        self.rmd: Detector | None = None
        self.label_source = "labels"

    @property
    def feature_dim(self) -> int | None:
        return None if self.weight is None else self.weight.shape[1]

    # --------------------------------------------------------------- transforms
    def standardized(self, features: Tensor) -> Tensor:
        """``(x − μ)/σ`` in float32 (the head's input); ``x`` itself when ``standardize=False``."""
        if self.weight is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: call fit(...) or fit_features(...) first")
        if not self.standardize:
            return features.float()
        return ((features.to(self.device, torch.float64) - self.mean) / self.std).float()

    def logits(self, features: Tensor) -> Tensor:
        """Head logits ``z = W x̃ + b`` (B, C) float32 of raw (B, D) features."""
        return F.linear(self.standardized(features), self.weight, self.bias)

    # ------------------------------------------------------------------- fitting
    def _train(self, features: Tensor, labels: Tensor) -> None:
        f = features.to(self.device)
        if self.standardize:
            self.mean, self.std = standardize_stats(f)
            x = ((f.double() - self.mean) / self.std).float()
        else:
            self.mean = self.std = None
            x = f.float()
        lo, hi = int(labels.min()), int(labels.max())
        c = self.num_classes if self.num_classes is not None else hi + 1
        if lo < 0 or hi >= c:
            raise ValueError(f"labels must lie in [0, {c}) (num_classes={c}), got range [{lo}, {hi}]")
        self.weight, self.bias, self.history = train_linear_head(
            x, labels, c, epochs=self.epochs, lr=self.lr, warmup=self.warmup, batch_size=self.train_batch_size,
            weight_decay=self.weight_decay, seed=self.seed, progress=self.progress)
        self.rmd = None
        if self.score_method != "msp":
            from fastood.detectors.mahalanobis import RMD

            rmd = RMD(device=self.device, ridge=self.ridge, covariance=self.covariance)
            inputs = x if self.score_method == "rmd" else F.linear(x, self.weight, self.bias)
            rmd.fit_features(inputs, labels)
            self.rmd = rmd

    def _fit_features(self, features: Tensor, labels: Tensor | None) -> None:
        assert labels is not None
        self.label_source = "labels"
        self._train(features, labels)

    # ------------------------------------------------------------------- scoring
    def _score_features(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        x = self.standardized(features)
        z = F.linear(x, self.weight, self.bias)
        pred = z.argmax(dim=1)
        if self.score_method == "msp":
            return torch.softmax(z, dim=1).amax(dim=1), pred
        inputs = x if self.score_method == "rmd" else z
        return self.rmd.score_features(inputs), pred

    def _to(self, device: torch.device) -> None:
        if self.rmd is not None:
            self.rmd.to(device)

    def _repr_extra(self) -> str:
        shape = None if self.weight is None else tuple(self.weight.shape)
        return f", score={self.score_method!r}, feature_space={self.feature_space!r}, head={shape}"


class PLP(MSP):
    """Pseudo-label probing: :class:`MSP` trained on zero-shot CLIP pseudo-labels (module docstring).

    Args (beyond :class:`MSP`'s):
        classes: the ID class names (``"imagenet1k"``, a list, or a file).
        templates: the zero-shot prompt ensemble (default :data:`fastood.labels.PLP_TEMPLATES`).
        min_confidence: keep images whose zero-shot max probability is ≥ this
            (0 = keep all, the released code; the paper uses 0.9).
        zero_shot_temperature: ``T_zs`` of the zero-shot softmax (0.01 = CLIP's scale 100).
        class_embeddings: precomputed (K, D_proj) class embeddings (then no text encoding
            happens; needed to pseudo-label with ``fit_features`` on a model-less detector).

    After fitting: ``pseudo_labels`` (N,) and ``pseudo_confidence`` (N,) of every training
    image, ``kept`` (N,) bool, ``label_source`` (``"pseudo"`` or ``"labels"``).
    """

    name: ClassVar[str] = "plp"
    needs_labels: ClassVar[bool] = False

    def __init__(
        self,
        clip: ClipBundle | None = None,
        *,
        classes: str | Sequence[str] | Any = "imagenet1k",
        templates: Sequence[str] | None = None,
        min_confidence: float = 0.0,
        zero_shot_temperature: float = 0.01,
        class_embeddings: Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        from fastood.labels import PLP_TEMPLATES, load_classnames

        super().__init__(clip, **kwargs)
        self.classes = load_classnames(classes)
        self.templates = list(PLP_TEMPLATES if templates is None else templates)
        if not self.templates or any(not isinstance(t, str) or t.count("{}") != 1 for t in self.templates):
            raise ValueError(f"templates must be a non-empty list of strings with one '{{}}' slot, got {templates!r}")
        if isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, float)) \
                or not (0.0 <= min_confidence <= 1.0):
            raise ValueError(f"min_confidence must be a probability in [0, 1], got {min_confidence!r}")
        self.min_confidence = float(min_confidence)
        self.zero_shot_temperature = _check_nonneg("zero_shot_temperature", zero_shot_temperature, positive=True)
        if self.num_classes is not None and self.num_classes != len(self.classes):
            raise ValueError(f"num_classes={self.num_classes} does not match the {len(self.classes)} classes")
        self.num_classes = len(self.classes)
        if class_embeddings is not None:
            if not isinstance(class_embeddings, Tensor) or class_embeddings.dim() != 2 \
                    or class_embeddings.shape[0] != len(self.classes):
                raise ValueError(f"class_embeddings must be a ({len(self.classes)}, D) tensor, got "
                                 f"{getattr(class_embeddings, 'shape', type(class_embeddings).__name__)}")
            class_embeddings = F.normalize(class_embeddings.detach().float(), dim=1).to(self.device)
        self.class_embeddings: Tensor | None = class_embeddings
        self.pseudo_labels: Tensor | None = None
        self.pseudo_confidence: Tensor | None = None
        self.kept: Tensor | None = None

    # ------------------------------------------------------------- zero-shot
    def zero_shot_embeddings(self) -> Tensor:
        """(K, D_proj) unit class embeddings: normalised mean of the normalised template embeddings."""
        if self.class_embeddings is None:
            from fastood.models import encode_texts

            clip = self.clip
            if clip is None or clip.tokenizer is None:
                raise ValueError("PLP needs a model with its tokenizer (clip= or model= + tokenizer=) or "
                                 "class_embeddings= to pseudo-label; or pass labels= to fit on given labels")
            acc = None
            for t in self.templates:
                e = encode_texts(clip.model, clip.tokenizer, [t.format(c) for c in self.classes],
                                 device=self.device, progress=self.progress, desc="encoding PLP prompts")
                acc = e if acc is None else acc + e
            self.class_embeddings = F.normalize(acc, dim=1).to(self.device)
        return self.class_embeddings

    def project(self, features: Tensor) -> Tensor:
        """Features in the joint image–text space: ``x · proj`` for pre-projection features, else ``x``."""
        if self.feature_space == "projection":
            return features.float()
        clip = self.clip
        visual = None if clip is None else getattr(clip.model, "visual", None)
        proj = getattr(visual, "proj", None)
        with torch.no_grad():
            if isinstance(proj, Tensor):
                if proj.shape[0] != features.shape[1]:
                    raise ValueError(f"features have width D={features.shape[1]} but the visual projection expects "
                                     f"D={proj.shape[0]} (pre-projection features of this model)")
                return features.float() @ proj.detach().float().to(features.device)
            if visual is not None and hasattr(visual, "trunk") and hasattr(visual, "head"):
                return visual.head(features.to(self.device)).float()
        raise ValueError("cannot map pre-projection features to the joint space for zero-shot pseudo-labels: "
                         "pass a model whose visual tower has a linear `proj` (open_clip ViT) or a timm `head`, "
                         "use feature_space='projection', or pass labels=")

    def pseudo_label(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(argmax_k p, max_k p)`` of the zero-shot probabilities of (N, D) raw features."""
        emb = self.zero_shot_embeddings()
        u = self.project(features.to(self.device))
        if u.shape[1] != emb.shape[1]:
            raise ValueError(f"projected features have width {u.shape[1]} but the class embeddings have "
                             f"{emb.shape[1]}")
        conf, labels = zero_shot_probs(u, emb, self.zero_shot_temperature).max(dim=1)
        return labels, conf

    # ------------------------------------------------------------------- fitting
    def _fit_features(self, features: Tensor, labels: Tensor | None) -> None:
        if labels is not None:
            self.label_source = "labels"
            self.pseudo_labels = self.pseudo_confidence = self.kept = None
            self._train(features, labels)
            return
        y, conf = self.pseudo_label(features)
        keep = conf >= self.min_confidence
        n_keep = int(keep.sum())
        if n_keep == 0:
            raise ValueError(f"no training image has a zero-shot confidence >= min_confidence={self.min_confidence} "
                             f"(max {float(conf.max()):.4f}): lower min_confidence")
        self.label_source = "pseudo"
        self.pseudo_labels, self.pseudo_confidence, self.kept = y, conf, keep
        f = features.to(self.device)
        self._train(f[keep] if n_keep < f.shape[0] else f, y[keep] if n_keep < f.shape[0] else y)

    def fit(self, images_or_loader: Any, labels: Any = None, **kw: Any) -> "PLP":
        """Fit on ID training images with zero-shot pseudo-labels.

        Labels carried by the input (``(x, y)`` batches, ImageFolder) are ignored; pass
        ``labels=`` explicitly to train on given labels instead.
        """
        ex = self.extract(images_or_loader, **kw)
        return self.fit_features(ex.features, labels)

    def _repr_extra(self) -> str:
        return super()._repr_extra() + f", classes={len(self.classes)}, min_confidence={self.min_confidence:g}"
