r"""The one-call API: :func:`load` a detector, :func:`score` images.

    import fastood
    det = fastood.load("neglabel")                      # CLIP ViT-B/16 + NegLabel bank (mined once, cached)
    s = det.score("photos/")                            # (B,) float32, higher = more in-distribution
    s = fastood.score(["a.jpg", "b.png"])               # the same, detector cached per arguments

For NegLabel (SPEC §1) a score is

.. math::
    S(x) = \frac1G \sum_{g=1}^{G} \sigma\big(\mathrm{LSE}_{k\le K}(c_k/\tau)
           - \mathrm{LSE}_{j\in g}(c_j/\tau)\big),\qquad c = \hat u\cdot t

with ``u`` the image feature, ``t`` the unit text embeddings of the K ID labels
and of the mined negatives in G groups, τ = 0.01; :mod:`fastood.detectors` has
the other methods. Images may be paths, directories, PIL images, uint8 / float
tensors or any iterable / DataLoader of them (:func:`fastood.images.iter_image_batches`).

``pretrained`` (:func:`fastood.models.load_clip`): a hub tag (needs network), a
local checkpoint file, or a local open_clip directory; ``None`` means
``$FASTOOD_PRETRAINED`` or else ``"openai"``. ``"none"`` (or ``""``) builds the
architecture with **random weights** — only for tests and demos: scores are
meaningless — seeded by ``seed`` so that every process gets the same model.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import threading
import warnings
from collections import OrderedDict
from typing import Any

import torch

from fastood.models import DEFAULT_MODEL, DEFAULT_PRETRAINED, ClipBundle, load_clip

__all__ = [
    "load",
    "score",
    "load_model",
    "clear_cache",
    "is_random",
    "RANDOM_PRETRAINED",
    "TINY_MODEL",
    "TINY_MODEL_KWARGS",
    "DEFAULT_METHOD",
]

DEFAULT_METHOD = "neglabel"
#: ``pretrained`` values that mean "random initialisation".
RANDOM_PRETRAINED = ("none", "random", "")
RANDOM_TAG = "none (random init)"

#: A small open_clip CLIP (ViT-B-32 layout shrunk: 64-d embeddings, 64×64 input,
#: 2-layer vision / 1-layer text transformer). With random weights it is what
#: ``fastood demo`` runs when no checkpoint is given, and what the tests and the
#: CPU image benchmark use.
TINY_MODEL = "ViT-B-32"
TINY_MODEL_KWARGS: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def is_random(pretrained: Any) -> bool:
    """True when ``pretrained`` asks for random initialisation (``"none"``, ``"random"``, ``""``)."""
    return isinstance(pretrained, str) and pretrained.strip().lower() in RANDOM_PRETRAINED


def load_model(
    model: str = DEFAULT_MODEL,
    pretrained: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    model_kwargs: dict[str, Any] | None = None,
    interpolation: str | None = None,
    precision: str = "fp32",
    seed: int = 0,
    warn_random: bool = True,
) -> ClipBundle:
    """:func:`fastood.models.load_clip`, plus seeded random initialisation for ``pretrained="none"``.

    Random weights are drawn from ``torch.manual_seed(seed)`` inside
    ``torch.random.fork_rng`` (the caller's RNG state is left alone), so two
    processes asking for the same random model get the same weights. The bundle's
    ``pretrained`` is then ``"none (random init)"``.
    """
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict of open_clip overrides, got {type(model_kwargs).__name__}")
    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be an open_clip architecture name, got {model!r}")
    kwargs = dict(model_kwargs or {})
    if is_random(pretrained):
        if warn_random:
            warnings.warn(f"pretrained={pretrained!r}: {model} has RANDOM WEIGHTS; scores are meaningless "
                          "(pass a checkpoint or set FASTOOD_PRETRAINED for real results)", stacklevel=3)
        quiet = _DropLog("No pretrained weights loaded")  # open_clip's notice; we warned above
        logging.getLogger().addFilter(quiet)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                clip = load_clip(model, "", device=device, precision=precision, interpolation=interpolation, **kwargs)
        finally:
            logging.getLogger().removeFilter(quiet)
        clip.pretrained = RANDOM_TAG
        return clip
    return load_clip(model, pretrained, device=device, precision=precision, interpolation=interpolation, **kwargs)


class _DropLog(logging.Filter):
    """Drops log records containing ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _accepts(cls: type, name: str) -> bool:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def load(
    method: str = DEFAULT_METHOD,
    *,
    model: str = DEFAULT_MODEL,
    pretrained: str | os.PathLike | None = None,
    classes: Any = "imagenet1k",
    device: str | torch.device | None = None,
    model_kwargs: dict[str, Any] | None = None,
    interpolation: str | None = None,
    precision: str = "fp32",
    seed: int = 0,
    clip: ClipBundle | None = None,
    **method_options: Any,
):
    """Load a CLIP model and build an OOD detector on it.

    Args:
        method: ``"neglabel"`` (default), ``"mcm"``, ``"knn"``, ``"mahalanobis"``,
            ``"rmd"``, ``"msp"``/``"plp"``, ``"interneg"`` — :data:`fastood.detectors.DETECTORS`.
        model: open_clip architecture (default ``"ViT-B-16-quickgelu"``, OpenAI's CLIP ViT-B/16).
        pretrained: hub tag, local checkpoint file or local open_clip directory;
            ``None`` → ``$FASTOOD_PRETRAINED``, else ``"openai"`` (a download);
            ``"none"`` → random weights (tests and demos only).
        classes: ID class names for the zero-shot (text) detectors: ``"imagenet1k"``,
            a list of names, or a file with one name per line. Ignored by detectors
            that take no class names (kNN, Mahalanobis, RMD: they are fitted).
        device: default CUDA when available; AMP (fp16 autocast) is used on CUDA.
        model_kwargs: open_clip config overrides (``embed_dim``, ``vision_cfg``,
            ``text_cfg``) for custom / tiny models.
        interpolation: image resize interpolation (``"bilinear"`` = the NegLabel
            reference preprocessing; open_clip's default is bicubic).
        precision: open_clip precision of the weights (``"fp32"``, ``"fp16"``, …).
        seed: seed of the random initialisation when ``pretrained="none"``.
        clip: an already-loaded :class:`fastood.models.ClipBundle` (e.g. a
            fine-tuned model); ``model``/``pretrained``/``model_kwargs`` are then unused.
        method_options: forwarded to the detector's constructor (``groups``,
            ``temperature``, ``corpus``, ``bank``, ``cache``, ``threshold``,
            ``batch_size``, ``amp``, …; SPEC defaults otherwise).

    Returns:
        a :class:`fastood.detectors.Detector`. Detectors with ``needs_fit`` must be
        fitted (``det.fit(id_train_images, labels)``) before scoring.
    """
    from fastood.detectors import DETECTORS, create

    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    key = method.lower()
    if key not in DETECTORS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(sorted(DETECTORS))}")
    cls = DETECTORS[key]
    opts = dict(method_options)
    if _accepts(cls, "classes"):
        opts["classes"] = classes
    unknown = [k for k in opts if not _accepts(cls, k)]
    if unknown:  # before loading any weights
        raise TypeError(f"method {key!r} ({cls.__name__}) does not take option(s) {unknown}")
    if clip is None:
        clip = load_model(model, pretrained, device=device, model_kwargs=model_kwargs,
                          interpolation=interpolation, precision=precision, seed=seed)
    elif not isinstance(clip, ClipBundle):
        raise TypeError(f"clip must be a fastood.models.ClipBundle, got {type(clip).__name__}")
    return create(key, clip=clip, device=device, **opts)


# ----------------------------------------------------------------------------- fastood.score


class _Unhashable(Exception):
    pass


def _freeze(v: Any, keep: list) -> Any:
    """A hashable, value-based key for a load argument (``keep`` holds objects keyed by identity)."""
    if isinstance(v, dict):
        return ("dict", tuple(sorted((str(k), _freeze(x, keep)) for k, x in v.items())))
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, tuple(_freeze(x, keep) for x in v))
    if isinstance(v, (set, frozenset)):
        return ("set", tuple(sorted(repr(_freeze(x, keep)) for x in v)))
    if isinstance(v, torch.Tensor):
        t = v.detach().cpu().contiguous()
        return ("tensor", str(t.dtype), tuple(t.shape), hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy()).hexdigest())
    if isinstance(v, os.PathLike):
        return ("path", os.fspath(v))
    if isinstance(v, torch.device):
        return ("device", str(v))
    sha = getattr(v, "sha256", None)
    if callable(sha):
        try:
            return ("sha256", type(v).__name__, sha())
        except TypeError:
            pass
    try:
        hash(v)
        return v
    except TypeError:
        keep.append(v)  # keyed by identity; the cache entry keeps it alive so the id stays unique
        return ("id", type(v).__name__, id(v))


_CACHE: "OrderedDict[Any, tuple[Any, list]]" = OrderedDict()
_CACHE_SIZE = 2
_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget the detectors :func:`score` has cached."""
    with _LOCK:
        _CACHE.clear()


def _cached(load_kwargs: dict[str, Any]):
    keep: list = []
    kwargs = dict(load_kwargs)
    if kwargs.get("pretrained") is None and kwargs.get("clip") is None:
        # the default follows the environment: key on what it resolves to now
        kwargs["pretrained"] = os.environ.get("FASTOOD_PRETRAINED") or DEFAULT_PRETRAINED
    key = _freeze(kwargs, keep)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit[0]
    det = load(**load_kwargs)
    with _LOCK:
        _CACHE[key] = (det, keep)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return det


def score(
    images: Any,
    *,
    on_error: str = "raise",
    skipped: list[tuple[str, str]] | None = None,
    progress: bool = False,
    batch_size: int | None = None,
    **load_kwargs: Any,
) -> torch.Tensor:
    """Score ``images`` in one call: ``(B,) float32`` on the CPU, higher = more in-distribution.

    ``load_kwargs`` are :func:`load`'s arguments; the detector they build is cached
    (the two most recent argument sets, compared by value: lists, dicts, tensors and
    corpora by content), so repeated calls pay for the model and the bank once.
    ``images``: a path (file or directory), a list of paths, a PIL image or a list
    of them, a uint8 RGB tensor (B,3,H,W)/(3,H,W), an already-preprocessed float
    tensor (B,3,H,W), or an iterable / DataLoader of such tensors or (tensor, label)
    pairs. Images are encoded in batches of ``batch_size`` (default: the detector's),
    under fp16 autocast on CUDA. ``on_error``, ``skipped``, ``progress`` and
    ``batch_size`` are per-call: they are checked before any detector is built or
    cached and never stored on the cached detector.

    An unreadable image raises :class:`fastood.images.UnreadableImageError` naming the
    file; with ``on_error="skip"`` it is left out (so fewer scores than files) and
    ``(path, reason)`` is appended to ``skipped``.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    from fastood.detectors import DETECTORS

    method = load_kwargs.get("method", DEFAULT_METHOD)
    cls = DETECTORS.get(method.lower()) if isinstance(method, str) else None
    if cls is not None and getattr(cls, "needs_fit", False):
        raise ValueError(f"method {method!r} must be fitted on ID training images first: "
                         f"det = fastood.load({method!r}, ...); det.fit(images, labels); det.score(...)")
    det = _cached(load_kwargs)
    # per-call options go to this call only: the cached detector is shared by later calls
    out = det.score(images, on_error=on_error, skipped=skipped, progress=progress, batch_size=batch_size)
    return out.detach().float().cpu()

