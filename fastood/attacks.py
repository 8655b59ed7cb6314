"""Adversarial attacks on OOD detectors, in pixel space (shared/SPEC.md §9).

Two attacks, both on pixels ``x ∈ [0, 1]^{3×H×W}`` at the model's input size (the
geometric part of the preprocess — resize, center crop — is applied once, outside the
graph; the per-channel normalisation ``(x − μ)/σ`` is applied *inside* the graph):

**End-to-end PGD on the detector's score** (Madry et al.; Azizmalayeri et al. 2022 for OOD),
:func:`pgd`. With ``s = +1`` for ``target="id"`` (push OOD images to look ID: raise the
score ``S``) and ``s = −1`` for ``target="ood"`` (push ID images to look OOD: lower it)::

    δ_0 ~ U(−ε, ε)  (L∞)   or   uniform in the L2 ball  (random_start), else δ_0 = 0
    g_t = ∇_x s·S(x_0 + δ_t)
    L∞: δ_{t+1} = clip_[−ε, ε](δ_t + α·sign(g_t))
    L2: δ_{t+1} = Π_{||δ||₂ ≤ ε}(δ_t + α·g_t/||g_t||₂)
    and x_0 + δ_{t+1} is clipped to the box [0, 1]

with the step ``α = 2.5·ε/steps`` by default (SPEC §9). The last iterate is returned.

**Feature-based manipulation** (Adaloglou et al., TMLR 2024, §5), :func:`feature_match`:
detector-agnostic; each source image ``x`` is paired with a target image ``y`` (its
``i mod n``-th) and PGD (L∞ sign steps, same projection) maximises
``cos(f(x + δ), f(y))`` for the image embedding ``f`` (``encode_image``, or a detector's
feature space). Any detector is then evaluated on the result.

**Quantisation.** The result is returned as a uint8 tensor: ``δ`` is rounded to whole
1/255 steps and clamped to ``±⌊255·ε⌋`` (L∞), or truncated toward zero (L2, so that
``||δ||₂`` cannot grow), then ``x_0 + δ`` is clamped to [0, 255]. The clean image is
uint8-exact too (float input is rounded to 1/255 first), so the adversarial image satisfies
the ε-ball and the box *exactly*, saves losslessly as PNG and re-scores to the same value.
The final scores are the detector's :meth:`~fastood.detectors.Detector.score_pixels` of the
quantised images.

**Gradients.** The score is differentiated end to end: image tower, then the detector's
score (:meth:`Detector.score_pixels`; the fused ops' backward for NegLabel / MCM /
InterNeg — InterNeg with its test-time bank frozen — kNN with its neighbours re-read,
Mahalanobis / RMD, MSP / PLP). A detector whose score has no gradient raises ``TypeError``.
Parameter gradients are never accumulated (``torch.autograd.grad`` w.r.t. the pixels only).
fp16 autocast on CUDA when the detector's ``amp`` is on. Deterministic for a given ``seed``
(and batch size): the random start is drawn from a CPU generator seeded with ``seed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

__all__ = ["AttackResult", "pgd", "feature_match", "embed_targets", "parse_eps", "parse_eps_list", "load_pixels",
           "iter_pixels", "save_png", "NORMS", "TARGETS"]

NORMS = ("linf", "l2")
TARGETS = ("id", "ood")


@dataclass
class AttackResult:
    """What an attack returns.

    Attributes:
        images: (B, 3, H, W) uint8 adversarial images at the model's input size.
        scores: (B,) float32 final scores of ``images`` (the detector's score for :func:`pgd`;
            the cosine to the paired target embedding for :func:`feature_match`).
        clean_scores: (B,) float32, the same quantity for the clean images.
        clean: (B, 3, H, W) uint8 clean images the attack started from.
        names: image names (file paths or ``"<input i>"``).
        eps, steps, step_size, norm, target: the attack's settings (``eps`` in [0, 1] pixel scale).
    """

    images: Tensor
    scores: Tensor
    clean_scores: Tensor
    clean: Tensor
    names: list[str] = field(default_factory=list)
    eps: float = 0.0
    steps: int = 0
    step_size: float = 0.0
    norm: str = "linf"
    target: str = "id"


# ----------------------------------------------------------------------- arguments
def parse_eps(value: Any, name: str = "eps") -> float:
    """One radius in [0, 1] (pixel scale): a number or a string such as ``"8/255"`` / ``"0.03"``."""
    if isinstance(value, str):
        try:
            v = float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{name} must be a number in [0, 1] or a fraction like '8/255', got {value!r}") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1] (pixel scale) or a string like '8/255', "
                        f"got {type(value).__name__}")
    else:
        v = float(value)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"{name} must be in [0, 1] (pixels scaled to [0, 1]; e.g. 8/255), got {value!r}")
    return v


def parse_eps_list(spec: Any, name: str = "eps") -> list[float]:
    """``"1/255,2/255"`` or a sequence of radii → a list of floats in [0, 1] (see :func:`parse_eps`)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not items or (isinstance(spec, str) and not spec.strip()):
        raise ValueError(f"{name} must list at least one radius, got {spec!r}")
    return [parse_eps(v, name) for v in items]


def _check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    return steps


def _check_step_size(step_size: Any, eps: float, steps: int) -> float:
    if step_size is None:
        return 2.5 * eps / steps  # SPEC §9
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not (
            math.isfinite(step_size) and step_size >= 0):
        raise ValueError(f"step_size must be a finite number >= 0 (pixel scale), got {step_size!r}")
    return float(step_size)


def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _check_batch(batch_size: Any, name: str = "batch_size") -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{name} must be an int >= 1, got {batch_size!r}")
    return batch_size


# -------------------------------------------------------------------------- pixels
def _model_size(clip: Any) -> tuple[int, int]:
    from fastood.images import preprocess_config

    return tuple(preprocess_config(clip)["size"])  # type: ignore[return-value]


def _pil_to_01(preprocess: Any, cfg: dict[str, Any]) -> Callable[[Any], Tensor]:
    """PIL image → (3, h, w) float pixels in [0, 1] (multiples of 1/255): the model's preprocess
    without its Normalize step, so clean images are exactly what ordinary scoring sees."""
    transforms = getattr(preprocess, "transforms", None)
    if isinstance(transforms, (list, tuple)) and any(type(t).__name__ == "Normalize" for t in transforms):
        steps = [t for t in transforms if type(t).__name__ != "Normalize"]

        def run(img: Any) -> Tensor:
            for t in steps:
                img = t(img)
            return img
        return run
    from fastood.images import preprocess_uint8

    plain = {**cfg, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}

    def fallback(img: Any) -> Tensor:
        import numpy as np

        a = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
        return preprocess_uint8(a[None], plain)[0]
    return fallback


def iter_pixels(clip: Any, images: Any, *, chunk: int = 1024,
                name: str = "images") -> Iterator[tuple[Tensor, list[str]]]:
    """``images`` → chunks of ((b, 3, h, w) uint8 pixels at the model's input size, names), b ≤ ``chunk``.

    Accepts a uint8 tensor (B, 3, H, W) / (3, H, W) (resized / center-cropped as the model's
    preprocess does), a float tensor of pixels in [0, 1] at the model's size (rounded to 1/255),
    or paths / directories / PIL images / iterables of them (the model's preprocess without its
    normalisation). A float tensor outside [0, 1] is refused: it looks already normalised, and
    the attack needs pixels.
    """
    from fastood.images import iter_image_batches, preprocess_config, preprocess_uint8

    chunk = _check_batch(chunk, "chunk")
    cfg = preprocess_config(clip)
    size = tuple(cfg["size"])
    if isinstance(images, Tensor):
        x = images[None] if images.dim() == 3 else images
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} must be (B, 3, H, W) or (3, H, W) pixels, got shape {tuple(images.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(images.shape)})")
        if x.dtype != torch.uint8:
            if not x.dtype.is_floating_point:
                raise TypeError(f"{name} must be uint8 pixels or float pixels in [0, 1], got a {x.dtype} tensor")
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name} has non-finite values")
            lo, hi = float(x.min()), float(x.max())
            if lo < 0.0 or hi > 1.0:
                raise ValueError(
                    f"{name} is a float tensor with values in [{lo:.3g}, {hi:.3g}]: it looks already normalised "
                    "(the model's mean/std applied); the attack needs raw pixels in [0, 1] (float) or uint8 "
                    "[0, 255], because the ε-ball and the [0, 1] box are defined on pixels")
            if tuple(x.shape[-2:]) != size:
                raise ValueError(f"{name}: float pixels must be at the model's input size {size[0]}×{size[1]}, got "
                                 f"{x.shape[-2]}×{x.shape[-1]}; pass uint8 pixels or files to have them resized")
        plain = {**cfg, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
        for i in range(0, x.shape[0], chunk):
            part = x[i : i + chunk]
            if part.dtype == torch.uint8:
                x01 = preprocess_uint8(part, plain) if tuple(part.shape[-2:]) != size else part.float() / 255.0
            else:
                x01 = part.detach().float()
            yield ((x01.cpu() * 255.0).round().clamp(0, 255).to(torch.uint8),
                   [f"<input {j}>" for j in range(i, i + part.shape[0])])
        return
    to01 = _pil_to_01(getattr(clip, "preprocess", None), cfg)
    seen = False
    for batch in iter_image_batches(images, to01, batch_size=chunk, on_error="raise"):
        p = batch.pixels
        if float(p.min()) < 0.0 or float(p.max()) > 1.0:
            raise ValueError(f"{name}: the preprocess produced float input outside [0, 1]: it looks already "
                             "normalised; the attack needs raw pixels (uint8 or [0, 1])")
        if tuple(p.shape[-2:]) != size:
            raise ValueError(f"{name}: images came out {p.shape[-2]}×{p.shape[-1]}, the model takes {size}")
        seen = True
        yield (p * 255.0).round().clamp(0, 255).to(torch.uint8), list(batch.names)
    if not seen:
        raise ValueError(f"{name} is empty")


def load_pixels(clip: Any, images: Any, *, name: str = "images") -> tuple[Tensor, list[str]]:
    """All of ``images`` as ((B, 3, h, w) uint8 pixels at the model's input size, names); see :func:`iter_pixels`."""
    pixels, names = [], []
    for px, nm in iter_pixels(clip, images, name=name):
        pixels.append(px)
        names += nm
    return torch.cat(pixels), names


# --------------------------------------------------------------------- PGD kernel
def _random_start(shape: tuple[int, ...], eps: float, norm: str, gen: torch.Generator) -> Tensor:
    if norm == "linf":
        return (torch.rand(shape, generator=gen) * 2.0 - 1.0) * eps
    d = torch.randn(shape, generator=gen)
    d = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    r = torch.rand((shape[0],), generator=gen) ** (1.0 / math.prod(shape[1:]))  # uniform in the ball
    return d * (eps * r).view(-1, 1, 1, 1)


def _project(delta: Tensor, x0: Tensor, eps: float, norm: str) -> Tensor:
    """Into the ε-ball, then so that ``x0 + δ`` lies in [0, 1]."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = delta * torch.where(n > eps, eps / n.clamp_min(1e-12), torch.ones_like(n))
    return (x0 + delta).clamp(0.0, 1.0) - x0  # the box clip only moves toward x0, so the ball still holds


def _quantise(x0_u8: Tensor, delta: Tensor, eps: float, norm: str) -> Tensor:
    """uint8 ``x0 + δ`` with ``|δ|`` rounded to whole 1/255 steps inside the ball and box (see module docs)."""
    d = delta.detach().float().cpu() * 255.0
    if norm == "linf":
        k = math.floor(eps * 255.0 + 1e-6)  # 8/255·255 may land a hair under 8
        d = d.round().clamp(-k, k)
    else:
        d = d.trunc()  # |trunc(d)| ≤ |d| elementwise, so ||·||₂ cannot grow
    return (x0_u8.to(torch.int16) + d.to(torch.int16)).clamp(0, 255).to(torch.uint8)


def _run_pgd(objective: Callable[[Tensor, slice], Tensor], x0_u8: Tensor, *, eps: float, steps: int, alpha: float,
             norm: str, random_start: bool, seed: int, batch_size: int, device: torch.device,
             progress: bool, desc: str) -> Tensor:
    """Maximise ``objective(x, rows)`` (a (b,) tensor per image) by PGD; returns quantised uint8 images."""
    from fastood.progress import progress as progress_bar

    gen = torch.Generator().manual_seed(int(seed))
    out = torch.empty_like(x0_u8)
    bar = progress_bar(total=x0_u8.shape[0], desc=desc, unit="img", disable=not progress)
    try:
        for i in range(0, x0_u8.shape[0], batch_size):
            rows = slice(i, min(i + batch_size, x0_u8.shape[0]))
            x0 = x0_u8[rows].to(device, torch.float32) / 255.0
            delta = _random_start(tuple(x0.shape), eps, norm, gen).to(device) if random_start and eps > 0 \
                else torch.zeros_like(x0)
            delta = _project(delta, x0, eps, norm)
            if eps > 0 and alpha > 0:
                for _ in range(steps):
                    delta.requires_grad_(True)
                    obj = objective(x0 + delta, rows)
                    if not obj.requires_grad:
                        raise TypeError("the attacked score has no gradient with respect to the pixels")
                    (grad,) = torch.autograd.grad(obj.sum(), delta)  # images are independent: Σ gives each its own
                    with torch.no_grad():
                        grad = torch.nan_to_num(grad.float(), nan=0.0, posinf=0.0, neginf=0.0)  # fp16 overflow: no step
                        if norm == "linf":
                            step = alpha * grad.sign()
                        else:
                            gn = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                            step = alpha * grad / gn
                        delta = _project(delta.detach() + step, x0, eps, norm)
            out[rows] = _quantise(x0_u8[rows], delta, eps, norm)
            bar.update(rows.stop - rows.start)
    finally:
        bar.close()
    return out


def _no_grad_message(detector: Any, exc: BaseException | None = None) -> str:
    why = f" ({type(exc).__name__}: {str(exc).splitlines()[0]})" if exc is not None else ""
    return (f"detector: {type(detector).__name__}'s score is not differentiable with respect to the image{why}; "
            "pgd needs a detector whose score has a gradient (NegLabel, MCM, InterNeg, kNN, Mahalanobis/RMD, "
            "MSP/PLP); use feature_match for a detector-agnostic attack")


def _scores_of(detector: Any, x_u8: Tensor, batch_size: int) -> Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, x_u8.shape[0], batch_size):
            out.append(detector.score_pixels(x_u8[i : i + batch_size].float() / 255.0).detach().float().cpu())
    return torch.cat(out)


def pgd(
    detector: Any,
    images: Any,
    *,
    eps: float | str,
    steps: int,
    step_size: float | None = None,
    norm: str = "linf",
    target: str = "id",
    random_start: bool = True,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
) -> AttackResult:
    """End-to-end PGD on ``detector``'s score in pixel space (see the module docstring for the math).

    Args:
        detector: a fitted :class:`fastood.detectors.Detector` with a model, whose score is differentiable.
        images: uint8 tensor (B, 3, H, W), float pixels in [0, 1] at the model's size, or
            paths / directories / PIL images (see :func:`load_pixels`).
        eps: radius in [0, 1] pixel scale (``"8/255"`` accepted).
        steps: PGD iterations (≥ 1).
        step_size: α; default ``2.5·eps/steps``.
        norm: ``"linf"`` or ``"l2"`` (the L2 ball is over the whole image).
        target: ``"id"`` raises the score (OOD images made to look ID), ``"ood"`` lowers it.
        random_start: start from a uniform point of the ball (else from the clean image).
        seed: seed of the random start.
        batch_size: images per attack batch (default the detector's).
        progress: a progress bar (:func:`fastood.progress.progress`).

    Returns:
        :class:`AttackResult` (uint8 adversarial images, their final scores, the clean scores).
    """
    from fastood.detectors.base import Detector

    if not isinstance(detector, Detector):
        raise TypeError(f"detector must be a fastood Detector, got {type(detector).__name__}")
    eps = parse_eps(eps)
    steps = _check_steps(steps)
    alpha = _check_step_size(step_size, eps, steps)
    norm = _check_choice(norm, "norm", NORMS)
    target = _check_choice(target, "target", TARGETS)
    batch_size = _check_batch(detector.batch_size if batch_size is None else batch_size)
    detector._check_fitted()
    clip = detector._require_model()
    x0, names = load_pixels(clip, images)
    sign = 1.0 if target == "id" else -1.0

    def objective(x: Tensor, rows: slice) -> Tensor:
        return sign * detector.score_pixels(x)

    # a detector without gradients fails here, before any work, with a clear message
    probe = x0[:1].float().div(255.0).to(detector.device).requires_grad_(True)
    try:
        s = detector.score_pixels(probe)
        if not s.requires_grad:
            raise TypeError(_no_grad_message(detector))
        torch.autograd.grad(s.sum(), probe)
    except RuntimeError as exc:  # e.g. an op with no autograd formula
        raise TypeError(_no_grad_message(detector, exc)) from exc
    adv = _run_pgd(objective, x0, eps=eps, steps=steps, alpha=alpha, norm=norm, random_start=random_start,
                   seed=seed, batch_size=batch_size, device=detector.device, progress=progress,
                   desc=f"PGD ε={eps:.4g} → {target}")
    return AttackResult(images=adv, scores=_scores_of(detector, adv, batch_size),
                        clean_scores=_scores_of(detector, x0, batch_size), clean=x0, names=names, eps=eps,
                        steps=steps, step_size=alpha, norm=norm, target=target)


# ------------------------------------------------------------------ feature match
def _embedder(model: Any) -> tuple[Any, Callable[[Tensor], Tensor], torch.device, int]:
    """(clip bundle, differentiable pixels01 → raw features, device, batch size) of a model / bundle / detector."""
    from fastood.detectors.base import Detector, encode_images_grad
    from fastood.images import preprocess_config
    from fastood.models import ClipBundle

    if isinstance(model, Detector):
        clip = model._require_model()
        device, amp, space, bs = model.device, model.amp, model.feature_space, model.batch_size
    elif isinstance(model, ClipBundle):
        clip, device, space, bs = model, model.device, "projection", 64
        amp = device.type == "cuda"
    else:
        raise TypeError(f"model must be a fastood.models.ClipBundle or a fastood Detector, got {type(model).__name__}")
    cfg = preprocess_config(clip)
    mean = torch.tensor(cfg["mean"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def embed(x01: Tensor) -> Tensor:  # keeps the graph when grad is enabled
        return encode_images_grad(clip.model, (x01.to(device, torch.float32) - mean) / std, device=device,
                                  amp=amp, feature_space=space).float()
    return clip, embed, device, bs


def feature_match(
    model: Any,
    ood_images: Any,
    id_images: Any,
    *,
    eps: float | str,
    steps: int,
    step_size: float | None = None,
    random_start: bool = True,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
) -> AttackResult:
    """The seed paper's feature-based manipulation: move each OOD image's embedding toward its paired ID image's.

    Image ``i`` of ``ood_images`` is paired with image ``i mod n_id`` of ``id_images``; L∞ PGD
    within ``eps`` maximises ``cos(f(x_i + δ), f(y_{i mod n}))`` (see the module docstring).
    Detector-agnostic: evaluate any detector on ``result.images``.

    Args:
        model: a :class:`fastood.models.ClipBundle` (``encode_image`` features) or a Detector
            (its model, device, amp and feature space).
        ood_images / id_images: as :func:`pgd`'s ``images``.
        eps, steps, step_size, random_start, seed, batch_size, progress: as :func:`pgd` (L∞ only).

    Returns:
        :class:`AttackResult` whose ``scores`` / ``clean_scores`` are the cosines to the paired ID embedding.
    """
    eps = parse_eps(eps)
    steps = _check_steps(steps)
    clip, _, _, default_bs = _embedder(model)
    batch_size = _check_batch(default_bs if batch_size is None else batch_size)
    x0, names = load_pixels(clip, ood_images, name="ood_images")
    targets = embed_targets(model, id_images, batch_size=batch_size, name="id_images")
    return _feature_match(model, x0, names, targets, eps=eps, steps=steps, step_size=step_size,
                          random_start=random_start, seed=seed, batch_size=batch_size, progress=progress)


def embed_targets(model: Any, images: Any, *, batch_size: int | None = None, name: str = "id_images") -> Tensor:
    """(n, D) unit embeddings of ``images`` (no grad) in ``model``'s feature space: feature_match's targets."""
    clip, embed, _, default_bs = _embedder(model)
    bs = _check_batch(default_bs if batch_size is None else batch_size)
    out = []
    with torch.no_grad():
        for px, _ in iter_pixels(clip, images, chunk=bs, name=name):
            out.append(torch.nn.functional.normalize(embed(px.float() / 255.0), dim=1))
    return torch.cat(out)


def _feature_match(model: Any, x0: Tensor, names: list[str], targets: Tensor, *, eps: float, steps: int,
                   step_size: float | None, random_start: bool, seed: int, batch_size: int, progress: bool,
                   offset: int = 0) -> AttackResult:
    """feature_match on uint8 pixels ``x0`` whose image ``i`` targets ``targets[(offset + i) mod n]``."""
    alpha = _check_step_size(step_size, eps, steps)
    _, embed, device, _ = _embedder(model)
    targets = targets.to(device)
    pair = ((torch.arange(x0.shape[0]) + offset) % targets.shape[0]).to(device)

    def cosine(x: Tensor, rows: slice) -> Tensor:
        f = torch.nn.functional.normalize(embed(x), dim=1)
        return (f * targets[pair[rows]]).sum(dim=1)

    adv = _run_pgd(cosine, x0, eps=eps, steps=steps, alpha=alpha, norm="linf", random_start=random_start, seed=seed,
                   batch_size=batch_size, device=device, progress=progress, desc=f"feature match ε={eps:.4g}")

    def cos_of(x_u8: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.cat([cosine(x_u8[i : i + batch_size].float() / 255.0, slice(i, i + batch_size))
                              .float().cpu() for i in range(0, x_u8.shape[0], batch_size)])
    return AttackResult(images=adv, scores=cos_of(adv), clean_scores=cos_of(x0), clean=x0, names=names, eps=eps,
                        steps=steps, step_size=alpha, norm="linf", target="id")


def save_png(images: Tensor, paths: Sequence[str]) -> None:
    """Write (B, 3, H, W) uint8 images as lossless PNG files."""
    from PIL import Image

    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    for img, p in zip(images, paths):
        Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()).save(p, format="PNG")
