"""Image inputs → batches of preprocessed model input.

Everything in fastood that takes "images" goes through :func:`iter_image_batches`,
which accepts:

- a path (``str`` / ``os.PathLike``) to an image file or a directory (expanded
  recursively, sorted, files with an :data:`IMAGE_EXTENSIONS` suffix), or a list of them;
- a ``PIL.Image.Image`` or a list of them (any mode: grayscale, RGBA, palette … are
  converted to RGB) — and ``numpy`` ``uint8`` arrays (H, W) / (H, W, 3|4), which are
  turned into PIL images;
- a ``uint8`` tensor (B, 3, H, W) or (3, H, W): *raw* RGB pixels in [0, 255]. They get
  the model's resize / center-crop / normalize (read from the preprocess with
  :func:`preprocess_config`), done on tensors (antialiased resize, so it matches the
  PIL pipeline to within interpolation rounding, not bit for bit);
- a floating tensor (B, 3, H, W) or (3, H, W): *already preprocessed* model input,
  used as is (cast to float32);
- any iterable (a ``DataLoader``, a ``Dataset`` such as torchvision's ``ImageFolder``,
  a generator) yielding any of the above, or ``(x, y)`` pairs whose ``y`` are integer
  labels, or OpenOOD-style dicts ``{"data": x, "label": y}``.

Batches come out as :class:`ImageBatch` (pixels, names, labels). Single items are
collected into batches of ``batch_size``; tensor batches larger than ``batch_size``
are split; order is preserved. Unreadable files raise :class:`UnreadableImageError`
naming the file, or with ``on_error="skip"`` are left out and recorded in ``skipped``.
"""

from __future__ import annotations

import concurrent.futures
import errno
import math
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor

__all__ = [
    "UnreadableImageError",
    "IMAGE_EXTENSIONS",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "ImageBatch",
    "list_image_files",
    "scan_image_files",
    "iter_image_batches",
    "preprocess_config",
    "make_preprocess",
    "load_image",
    "preprocess_uint8",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
RESIZE_MODES = ("shortest", "longest", "squash")


class UnreadableImageError(ValueError):
    """An image file could not be opened or decoded. ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path!r}: {reason}")


@dataclass
class ImageBatch:
    """One batch of model input.

    Attributes:
        pixels: (B, 3, H, W) float32, preprocessed (resized, cropped, normalized).
        names: B names: the file path, or ``"<input i>"`` (i = position in the input stream).
        labels: (B,) int64 when the input carried labels ((x, y) pairs), else ``None``.
    """

    pixels: Tensor
    names: list[str]
    labels: Tensor | None = None

    def __len__(self) -> int:
        return self.pixels.shape[0]


# --------------------------------------------------------------------------- files
def _fspath(p: Any, what: str = "paths") -> str:
    """``str`` of a path given as ``str``, ``bytes`` or ``os.PathLike`` (bytes → surrogate-escaped str).

    Linux file names are bytes; ``os.fsdecode`` maps the bytes that are not UTF-8 to lone
    surrogates (U+DC80…U+DCFF) and ``os.fsencode`` maps them back, so nothing is lost.
    """
    if isinstance(p, (str, bytes, os.PathLike)) and not isinstance(p, bool):
        p = os.fspath(p)
        return os.fsdecode(p) if isinstance(p, bytes) else p
    raise TypeError(f"{what} must be str, bytes or os.PathLike, got {type(p).__name__}")


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def _not_regular(mode: int) -> str:
    """Why a file of this ``st_mode`` is not an image (reading a FIFO or device could block forever)."""
    for test, what in _KINDS:
        if test(mode):
            return f"not a regular file: {what} (not opened)"
    return "not a regular file (not opened)"


def _stat_error(path: str, exc: OSError) -> str:
    """The reason a path could not be stat'ed: broken link, symlink loop, permission, …"""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return f"broken symbolic link (to {os.readlink(path)!r})"
    return f"cannot stat: {exc.strerror or exc}"


def scan_image_files(
    paths: str | bytes | os.PathLike | Iterable[str | bytes | os.PathLike],
    *,
    recursive: bool = True,
    include_hidden: bool = True,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """List image files without opening any: ``(files, skipped)``, ``skipped`` = ``(path, reason)`` pairs.

    The one listing used by :func:`list_image_files`, :func:`iter_image_batches`, the
    ``fastood`` commands and the trainer (``fastood.train.data``):

    - a path given explicitly is kept whatever its suffix if it is a regular file (after
      following symbolic links); a directory is walked; a path that does not exist raises
      ``FileNotFoundError`` naming it;
    - in a directory, files whose lowercase suffix is in :data:`IMAGE_EXTENSIONS` are kept
      (sorted by path) when ``os.stat`` says they are *regular* files. FIFOs, sockets and
      devices with an image suffix are skipped with the reason, never opened (opening a FIFO
      blocks until a writer appears); so are broken symbolic links and link loops;
    - **symbolic links to directories are not followed** (a link to a parent, ``ln -s ..
      cat/up``, would list every image again, under the wrong folder); each is reported in
      ``skipped``. Sub-directories that cannot be listed are reported too;
    - names starting with ``.`` are left out when ``include_hidden=False`` (the trainer);
    - ``bytes`` paths are accepted; names that are not UTF-8 are kept, surrogate-escaped
      (``os.fsdecode``), so ``os.fsencode(str(path))`` gives the original bytes back.
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for p in paths:
        top = os.path.expanduser(_fspath(p))
        try:
            st = os.stat(top)
        except OSError as exc:
            if not os.path.lexists(top):
                raise FileNotFoundError(f"image path {top!r} does not exist") from None
            skipped.append((top, _stat_error(top, exc)))
            continue
        if stat.S_ISDIR(st.st_mode):
            found: list[Path] = []
            bad: list[tuple[str, str]] = []
            _walk(top, recursive, include_hidden, found, bad)
            files.extend(sorted(found))
            skipped.extend(sorted(bad, key=lambda b: Path(b[0])))
        elif stat.S_ISREG(st.st_mode):
            files.append(Path(top))
        else:
            skipped.append((top, _not_regular(st.st_mode)))
    return files, skipped


def _walk(top: str, recursive: bool, include_hidden: bool, out: list[Path], skipped: list[tuple[str, str]]) -> None:
    """Depth-first listing of ``top`` (see :func:`scan_image_files`); never follows a directory link."""
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError as exc:
            skipped.append((d, f"cannot list the directory: {exc.strerror or exc}"))
            continue
        for e in entries:
            if not include_hidden and e.name.startswith("."):
                continue
            is_image = os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            try:
                is_link = e.is_symlink()
                st = os.stat(e.path)  # follows a file link; never opens
            except OSError as exc:
                if is_image or e.is_symlink():
                    skipped.append((e.path, _stat_error(e.path, exc)))
                continue
            if stat.S_ISDIR(st.st_mode):
                if is_link:
                    if recursive:
                        skipped.append((e.path, "symbolic link to a directory: not followed (it could loop or "
                                                "list images twice); pass its target explicitly to include it"))
                elif recursive:
                    stack.append(e.path)
            elif is_image:
                if stat.S_ISREG(st.st_mode):
                    out.append(Path(e.path))
                else:
                    skipped.append((e.path, _not_regular(st.st_mode)))


def list_image_files(
    paths: str | bytes | os.PathLike | Iterable[str | bytes | os.PathLike],
    *,
    recursive: bool = True,
    skipped: list[tuple[str, str]] | None = None,
) -> list[Path]:
    """Expand ``paths`` into image files (see :func:`scan_image_files` for the rules).

    Entries that are not readable images (special files, broken links, link loops,
    directory links, unlistable directories) are appended to ``skipped`` as
    ``(path, reason)``; with ``skipped=None`` a ``UserWarning`` names how many and the first.
    """
    files, bad = scan_image_files(paths, recursive=recursive)
    if skipped is not None:
        skipped.extend(bad)
    elif bad:
        warnings.warn(f"{len(bad)} path(s) skipped while listing images, e.g. {bad[0][0]!r}: {bad[0][1]}",
                      stacklevel=2)
    return files


def _to_rgb(img: Any) -> Any:
    """PIL image in RGB (palette with transparency goes through RGBA first; alpha is dropped).

    High-bit-depth grey images are scaled to 8 bits first (PIL's own ``convert`` clips
    them, so a 16-bit gradient comes out nearly all white):

    - ``I;16`` / ``I;16L`` / ``I;16B`` / ``I;16N`` (16-bit): ``v8 = round(v16 / 257)``,
      i.e. ``(v16 + 128) // 257`` — the exact inverse of the usual 8 → 16-bit expansion
      ``v16 = 257·v8`` (0 → 0, 65535 → 255);
    - ``I`` (32-bit signed int; PIL's mode for 16-bit PGM and 32-bit TIFF): read as 16-bit
      (the same ``/ 257``) when every value lies in 0…65535, else refused (ValueError);
    - ``F`` (32-bit float): ``round(255 · v)`` when every value lies in [0, 1], else refused.
    """
    if img.mode == "RGB":
        return img
    if img.mode in _HIGH_DEPTH:
        img = _to_8bit(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


_HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _to_8bit(img: Any) -> Any:
    """A 16-bit / 32-bit-int / float grey image as mode ``L`` (see :func:`_to_rgb`)."""
    import numpy as np
    from PIL import Image

    a = np.asarray(img)
    if img.mode == "F":
        a = a.astype(np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if not (np.isfinite(a).all() and lo >= 0.0 and hi <= 1.0):
            raise ValueError(f"a float (mode F) image must hold values in [0, 1], got [{lo:g}, {hi:g}]"
                             f"{' and non-finite values' if not np.isfinite(a).all() else ''}: its range is "
                             "unknown, convert it to 8 or 16 bits first")
        out = np.floor(a * 255.0 + 0.5)
    else:
        a = a.astype(np.int64)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ValueError(f"a 32-bit integer (mode {img.mode}) image must hold values in 0…65535 (16-bit), got "
                             f"{lo}…{hi}: its range is unknown, convert it to 8 or 16 bits first")
        out = (a + 128) // 257
    return Image.fromarray(out.astype(np.uint8))


def _open_regular(path: str) -> Any:
    """Open ``path`` for reading only if it is a regular file, never blocking.

    ``os.stat`` first (a FIFO is refused without being opened); then ``O_NONBLOCK`` and
    ``fstat`` of the opened descriptor, in case the file was swapped for a FIFO or a
    device in between (a FIFO opened with ``O_NONBLOCK`` for reading returns at once).
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(_not_regular(st.st_mode))
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(_not_regular(st.st_mode))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def load_image(path: str | bytes | os.PathLike) -> Any:
    """Open, fully decode and convert an image file to RGB; :class:`UnreadableImageError` otherwise.

    Only regular files are opened (FIFOs, sockets and devices are refused without
    blocking); high-bit-depth images are scaled to 8 bits (see :func:`_to_rgb`).
    """
    from PIL import Image

    path = _fspath(path, "path")
    try:
        with _open_regular(path) as f, Image.open(f) as im:
            im.load()
            return _to_rgb(im)
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError…)
        reason = str(exc) if isinstance(exc, OSError) and str(exc).startswith("not a regular file") \
            else f"{type(exc).__name__}: {exc}"
        raise UnreadableImageError(path, reason) from exc


# --------------------------------------------------------------------- preprocessing
class _ToRGB:
    """Transform step: any PIL mode → RGB."""

    def __call__(self, img: Any) -> Any:
        return _to_rgb(img)

    def __repr__(self) -> str:
        return "ToRGB()"


def make_preprocess(
    image_size: int | tuple[int, int] = 224,
    mean: Sequence[float] = OPENAI_MEAN,
    std: Sequence[float] = OPENAI_STD,
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
) -> Callable[[Any], Tensor]:
    """A PIL → (3, H, W) float32 transform: Resize → CenterCrop → RGB → ToTensor → Normalize.

    ``interpolation="bilinear"`` with the defaults is the NegLabel reference pipeline
    (SPEC §1: Resize(224, bilinear) → CenterCrop(224) → CLIP mean/std); open_clip's
    default is bicubic. ``resize_mode``: ``"shortest"`` (shorter side to the size, then
    center crop), ``"squash"`` (resize to exactly H×W), ``"longest"`` (longer side to the
    size, then center crop-or-pad with black).
    """
    from torchvision import transforms as T

    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    h, w = _size_pair(image_size)
    mean, std = _check_mean_std(mean, std)
    mode = T.InterpolationMode(interpolation)
    if resize_mode == "squash":
        steps = [T.Resize((h, w), interpolation=mode, antialias=True)]
    elif resize_mode == "shortest":
        steps = [T.Resize(min(h, w) if h == w else (h, w), interpolation=mode, antialias=True), T.CenterCrop((h, w))]
    else:
        from open_clip.transform import CenterCropOrPad, ResizeKeepRatio

        steps = [ResizeKeepRatio((h, w), longest=1.0, interpolation=mode), CenterCropOrPad((h, w), fill=0)]
    return T.Compose([_ToRGB(), *steps, T.ToTensor(), T.Normalize(mean=mean, std=std)])


def _size_pair(size: Any) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise ValueError(f"image_size must be a positive int or an (H, W) pair, got {size!r}")
    return int(size[0]), int(size[1])


def _check_mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std must have 3 entries (RGB), got {len(mean)} and {len(std)}")
    if any(not math.isfinite(s) or s <= 0 for s in std):
        raise ValueError(f"std entries must be positive, got {std}")
    return mean, std


def preprocess_config(preprocess_or_model: Any) -> dict[str, Any]:
    """The image preprocessing parameters of a transform, an open_clip model or a bundle.

    Returns ``{"image_size": int (H; = W for square inputs), "size": (H, W),
    "mean": (3,), "std": (3,), "interpolation": str, "resize_mode": str}``.

    Accepts a torchvision ``Compose`` (open_clip's or :func:`make_preprocess`'s:
    Resize / ResizeKeepRatio, CenterCrop / CenterCropOrPad, Normalize are read), an
    open_clip model or its ``visual`` tower (``preprocess_cfg``), a
    :class:`fastood.models.ClipBundle`, or a dict of those keys.
    """
    obj = preprocess_or_model
    if isinstance(obj, dict):
        cfg = dict(obj)
        size = _size_pair(cfg.get("size", cfg.get("image_size")))
        return _finish_cfg(size, cfg.get("mean", OPENAI_MEAN), cfg.get("std", OPENAI_STD),
                           cfg.get("interpolation", "bicubic"), cfg.get("resize_mode", "shortest"))
    if hasattr(obj, "preprocess") and hasattr(obj, "model") and not callable(getattr(obj, "transforms", None)):
        # a ClipBundle: its transform wins (it carries load-time overrides), else the model
        return preprocess_config(obj.preprocess if obj.preprocess is not None else obj.model)
    transforms = getattr(obj, "transforms", None)
    if isinstance(transforms, (list, tuple)):
        return _config_from_transforms(transforms)
    visual = getattr(obj, "visual", obj)
    pcfg = getattr(visual, "preprocess_cfg", None)
    if isinstance(pcfg, dict):
        size = pcfg.get("size", getattr(visual, "image_size", 224))
        return _finish_cfg(_size_pair(tuple(size) if isinstance(size, (list, tuple)) else size),
                           pcfg.get("mean", OPENAI_MEAN), pcfg.get("std", OPENAI_STD),
                           pcfg.get("interpolation", "bicubic"), pcfg.get("resize_mode", "shortest"))
    raise TypeError(
        "cannot read a preprocessing config from "
        f"{type(obj).__name__}: pass a torchvision Compose, an open_clip model, a ClipBundle or a dict")


def _finish_cfg(size: tuple[int, int], mean: Any, std: Any, interpolation: Any, resize_mode: Any) -> dict[str, Any]:
    mean, std = _check_mean_std(mean, std)
    interpolation = getattr(interpolation, "value", interpolation)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    return {"image_size": size[0], "size": size, "mean": mean, "std": std,
            "interpolation": str(interpolation), "resize_mode": str(resize_mode)}


def _config_from_transforms(transforms: Sequence[Any]) -> dict[str, Any]:
    resize_size = crop_size = None
    mean, std, interp, mode = OPENAI_MEAN, OPENAI_STD, "bicubic", "shortest"
    for t in transforms:
        kind = type(t).__name__
        if kind == "Resize":
            resize_size = t.size
            interp = getattr(t.interpolation, "value", t.interpolation)
            mode = "squash" if isinstance(t.size, (list, tuple)) and len(t.size) == 2 else "shortest"
        elif kind == "ResizeKeepRatio":
            resize_size = t.size
            interp = getattr(t.interpolation, "value", t.interpolation)
            mode = "longest" if float(getattr(t, "longest", 0.0)) >= 0.5 else "shortest"
        elif kind in ("CenterCrop", "CenterCropOrPad"):
            crop_size = t.size
        elif kind == "Normalize":
            mean, std = t.mean, t.std
    size = crop_size if crop_size is not None else resize_size
    if size is None:
        raise TypeError("the transform has no Resize / CenterCrop step: cannot tell the model's image size")
    if isinstance(size, (list, tuple)) and len(size) == 1:
        size = size[0]
    return _finish_cfg(_size_pair(tuple(size) if isinstance(size, (list, tuple)) else size), mean, std, interp, mode)


def preprocess_uint8(pixels: Tensor, config: dict[str, Any]) -> Tensor:
    """Raw uint8 RGB (B, 3, H, W) → model input (B, 3, h, w) float32 per ``config``.

    Resize (antialiased, ``config["interpolation"]``) per ``resize_mode``, center
    crop (zero padding where the image is smaller, i.e. black), scale to [0, 1],
    normalize with mean / std. Done on the tensor's device.
    """
    from torchvision.transforms.v2 import functional as F

    h, w = config["size"]
    mode = config["resize_mode"]
    interp = F.InterpolationMode(config["interpolation"])
    H, W = pixels.shape[-2:]
    if H == 0 or W == 0:  # nothing to resize (and the scale below would divide by zero)
        raise ValueError(f"a uint8 image tensor has a zero-pixel side: shape {tuple(pixels.shape)} (B, 3, H, W); "
                         "images need H >= 1 and W >= 1")
    if mode == "squash":
        out = F.resize(pixels, [h, w], interpolation=interp, antialias=True)
    else:
        if mode == "shortest":
            s = max(h / H, w / W)
        else:  # longest
            s = min(h / H, w / W)
        new = [max(1, round(H * s)), max(1, round(W * s))]
        out = F.resize(pixels, new, interpolation=interp, antialias=True) if new != [H, W] else pixels
        out = F.center_crop(out, [h, w])
    out = out.float().div_(255.0)
    mean = torch.tensor(config["mean"], dtype=torch.float32, device=out.device).view(1, 3, 1, 1)
    std = torch.tensor(config["std"], dtype=torch.float32, device=out.device).view(1, 3, 1, 1)
    return (out - mean) / std


# ---------------------------------------------------------------------- iteration
class _Item:
    """One image of the stream: an unread path, a PIL image, or a preprocessed (3, H, W) tensor."""

    __slots__ = ("kind", "value", "name", "label")

    def __init__(self, kind: str, value: Any, name: str, label: int | None):
        self.kind, self.value, self.name, self.label = kind, value, name, label


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return False
    return isinstance(x, Image.Image)


def _is_ndarray(x: Any) -> bool:
    return type(x).__module__ == "numpy" and type(x).__name__ == "ndarray"


def _label_list(y: Any, n: int) -> list[int]:
    """Integer labels of a batch (tensor / array / list / int) as a list of n ints."""
    if isinstance(y, Tensor):
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise TypeError(f"labels must be integers, got a {y.dtype} tensor")
        y = y.reshape(-1).tolist()
    elif _is_ndarray(y):
        if y.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers, got a {y.dtype} array")
        y = y.reshape(-1).tolist()
    elif isinstance(y, int) and not isinstance(y, bool):
        y = [y]
    else:
        y = list(y)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in y):
        raise TypeError(f"labels must be integers, got {y[:3]!r}")
    if len(y) != n:
        raise ValueError(f"a batch has {n} images but {len(y)} labels")
    return y


def _is_label(y: Any) -> bool:
    if isinstance(y, bool):
        return False
    if isinstance(y, int):
        return True
    if isinstance(y, Tensor):
        return not (y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool) and y.dim() <= 1
    if _is_ndarray(y):
        return y.dtype.kind in "iu" and y.ndim <= 1
    return False


class _Stream:
    """Turns the many accepted input forms into a flat stream of blocks.

    A block is either a list of single items (to be collated) or a ready
    (pixels, names, labels) batch from a tensor input.
    """

    def __init__(self, preprocess: Callable[[Any], Tensor] | None, batch_size: int):
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.count = 0  # position in the stream, for "<input i>" names
        self._cfg: dict[str, Any] | None = None

    def config(self) -> dict[str, Any]:
        if self._cfg is None:
            if self.preprocess is None:
                raise ValueError("uint8 (raw pixel) tensors need the model's preprocess to resize and normalize them; "
                                 "pass preprocess= (or a model / ClipBundle), or pass already preprocessed float tensors")
            self._cfg = preprocess_config(self.preprocess)
        return self._cfg

    def _names(self, n: int) -> list[str]:
        names = [f"<input {self.count + i}>" for i in range(n)]
        self.count += n
        return names

    def tensor_batch(self, x: Tensor, labels: list[int] | None) -> Iterator[tuple[Tensor, list[str], list[int] | None]]:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"image tensors must be (B, 3, H, W) or (3, H, W) RGB, got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return
        if labels is not None and len(labels) != x.shape[0]:
            raise ValueError(f"a batch has {x.shape[0]} images but {len(labels)} labels")
        for i in range(0, x.shape[0], self.batch_size):
            chunk = x[i : i + self.batch_size]
            if chunk.dtype == torch.uint8:
                chunk = preprocess_uint8(chunk, self.config())
            elif chunk.dtype.is_floating_point:
                chunk = chunk.float()
            else:
                raise TypeError(f"image tensors must be uint8 (raw RGB) or floating (preprocessed), got {chunk.dtype}")
            yield chunk, self._names(chunk.shape[0]), None if labels is None else labels[i : i + self.batch_size]

    def single_tensor(self, x: Tensor, label: int | None) -> _Item:
        """One (3, H, W) tensor: uint8 → preprocessed now; floating → used as is."""
        if x.shape[0] != 3:
            raise ValueError(f"image tensors must be (B, 3, H, W) or (3, H, W) RGB, got shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = preprocess_uint8(x.unsqueeze(0), self.config())[0]
        elif x.dtype.is_floating_point:
            x = x.float()
        else:
            raise TypeError(f"image tensors must be uint8 (raw RGB) or floating (preprocessed), got {x.dtype}")
        return _Item("tensor", x, self._names(1)[0], label)

    def single(self, x: Any, label: int | None) -> _Item:
        if isinstance(x, (str, bytes, os.PathLike)):
            x = _fspath(x)
            if os.path.isdir(x):
                raise TypeError(f"a directory ({x!r}) cannot be one item of a labelled pair")
            files, bad = scan_image_files([x])
            self.count += 1
            if bad:  # a special file or a broken link: refused (or skipped) like an unreadable image
                return _Item("bad", bad[0][1], bad[0][0], label)
            return _Item("path", files[0], str(files[0]), label)
        if _is_ndarray(x):
            from PIL import Image

            if x.dtype.name != "uint8" or x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] not in (1, 3, 4)):
                raise ValueError(f"numpy images must be uint8 (H, W) or (H, W, 1|3|4), got {x.dtype} {x.shape}")
            x = Image.fromarray(x[..., 0] if x.ndim == 3 and x.shape[2] == 1 else x)
        if _is_pil(x):
            return _Item("pil", x, self._names(1)[0], label)
        raise TypeError(f"unsupported image input of type {type(x).__name__}: expected a path, a PIL image, "
                        "a uint8 / float tensor, or an iterable of those (optionally as (x, label) pairs)")


def _path_items(path: str | bytes | os.PathLike, stream: _Stream) -> Iterator[_Item]:
    """The files of one path (a file or a directory), in listing order; entries the listing
    refused (special files, broken links, directory links) come first as ``"bad"`` items,
    which fail like unreadable images (raised, or skipped with their reason)."""
    files, bad = scan_image_files([path])
    for name, reason in bad:
        stream.count += 1
        yield _Item("bad", reason, name, None)
    for f in files:
        stream.count += 1
        yield _Item("path", f, str(f), None)


def _iter_blocks(images: Any, stream: _Stream) -> Iterator[Any]:
    """Yield ``_Item`` singles and ``(pixels, names, labels)`` ready batches, in input order."""
    if isinstance(images, (str, bytes, os.PathLike)):
        yield from _path_items(images, stream)
        return
    if isinstance(images, Tensor):
        yield from stream.tensor_batch(images, None)
        return
    if (isinstance(images, tuple) and len(images) == 2 and isinstance(images[0], Tensor) and images[0].dim() == 4
            and _is_label(images[1])):
        images = [images]  # one (x, y) batch
    if _is_pil(images) or _is_ndarray(images) and images.ndim in (2, 3):  # one image (any dtype: refused by name)
        yield stream.single(images, None)
        return
    if isinstance(images, dict):
        raise TypeError("a dict is not an image input (OpenOOD-style {'data', 'label'} dicts are accepted as "
                        "items of an iterable such as a DataLoader)")
    try:
        it = iter(images)
    except TypeError:
        raise TypeError(f"unsupported image input of type {type(images).__name__}: expected a path, a PIL image, "
                        "a tensor, or an iterable / DataLoader of those") from None
    for item in it:
        label: Any = None
        if isinstance(item, dict):
            if "data" not in item:
                raise TypeError(f"dict items must have a 'data' key (OpenOOD style), got keys {sorted(item)}")
            item, label = item["data"], item.get("label")
        elif isinstance(item, (tuple, list)) and len(item) == 2 and _is_label(item[1]) and not isinstance(item[0], int):
            item, label = item
        if isinstance(item, Tensor) and item.dim() == 3:
            yield stream.single_tensor(item, None if label is None else _label_list(label, 1)[0])
        elif isinstance(item, Tensor):
            yield from stream.tensor_batch(item, None if label is None else _label_list(label, item.shape[0]))
        elif isinstance(item, (str, bytes, os.PathLike)) and label is None:
            yield from _path_items(item, stream)
        elif isinstance(item, (list, tuple)) and label is not None:
            labels = _label_list(label, len(item))
            for x, y in zip(item, labels):
                yield stream.single(x, y)
        else:
            yield stream.single(item, None if label is None else _label_list(label, 1)[0])


def _preprocess_item(item: _Item, preprocess: Callable[[Any], Tensor] | None) -> Tensor:
    if item.kind == "tensor":
        return item.value
    if item.kind == "bad":
        raise UnreadableImageError(item.name, item.value)
    img = load_image(item.value) if item.kind == "path" else _to_rgb(item.value)
    if preprocess is None:
        raise ValueError("file / PIL image inputs need the model's preprocess transform (preprocess=)")
    try:
        out = preprocess(img)
    except Exception as exc:
        if item.kind == "path":
            raise UnreadableImageError(item.value, f"preprocess failed: {type(exc).__name__}: {exc}") from exc
        raise
    if not isinstance(out, Tensor) or out.dim() != 3:
        raise TypeError(f"preprocess must return a (3, H, W) tensor, got {getattr(out, 'shape', type(out))}")
    return out.float()


def iter_image_batches(
    images: Any,
    preprocess: Callable[[Any], Tensor] | None,
    *,
    batch_size: int = 64,
    on_error: str = "raise",
    skipped: list[tuple[str, str]] | None = None,
    progress: bool = False,
    num_workers: int = 0,
) -> Iterator[ImageBatch]:
    """Iterate over ``images`` (see the module docstring) as preprocessed :class:`ImageBatch` es.

    Args:
        images: paths, directories, PIL images, uint8 / float tensors, or an iterable
            (``DataLoader``, ``Dataset``, generator) of those or of ``(x, y)`` pairs.
        preprocess: the model's PIL → tensor transform (also read for uint8 tensors
            with :func:`preprocess_config`); ``None`` is fine for float tensors only.
        batch_size: images per batch (tensor batches larger than this are split).
        on_error: ``"raise"`` (:class:`UnreadableImageError` naming the file) or
            ``"skip"`` (leave the file out; append ``(path, reason)`` to ``skipped``).
        progress: show a tqdm bar (counts images).
        num_workers: decode + preprocess files in a pool of this many threads, created once per
            call (PIL's decoders and resizes and torch's ops release the GIL).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    from fastood.shards import Shards, is_shard_spec

    if is_shard_spec(images) or (isinstance(images, (list, tuple)) and images and all(map(is_shard_spec, images))):
        images = Shards(images)  # WebDataset tars: 'shards/{000000..000099}.tar', local paths or brace patterns
    hook = getattr(images, "__fastood_image_batches__", None)
    if hook is not None:  # a source that batches itself, e.g. fastood.shards.Shards (WebDataset tars)
        yield from hook(preprocess, batch_size=batch_size, on_error=on_error, skipped=skipped, progress=progress,
                        num_workers=num_workers)
        return
    from fastood.progress import progress as progress_bar  # a tqdm bar on a terminal, plain lines in a log

    total = None
    try:
        if isinstance(images, Tensor):
            total = 1 if images.dim() == 3 else images.shape[0]
        elif hasattr(images, "dataset") and hasattr(images.dataset, "__len__"):
            total = len(images.dataset)
        elif isinstance(images, (list, tuple)):
            total = len(images)
    except TypeError:
        total = None
    stream = _Stream(preprocess, batch_size)
    bar = progress_bar(total=total, desc="images", unit="img", disable=not progress, leave=False)
    pending: list[_Item] = []
    pool: concurrent.futures.ThreadPoolExecutor | None = None

    def flush() -> Iterator[ImageBatch]:
        items = list(pending)
        pending.clear()
        results: Iterable[tuple[Tensor | None, str | None]]
        if num_workers > 0 and len(items) > 1 and any(it.kind == "path" for it in items):
            nonlocal pool
            if pool is None:  # one pool for the whole call, not one per batch
                pool = concurrent.futures.ThreadPoolExecutor(num_workers, thread_name_prefix="fastood-decode")
            results = pool.map(_safe, items)  # in order
        else:
            results = (_safe(it) for it in items)
        pixels, names, labels = [], [], []
        for item, (px, err) in zip(items, results):
            if px is None:
                if on_error == "raise":
                    raise UnreadableImageError(item.name if item.kind == "bad" else item.value, str(err))
                if skipped is not None:
                    skipped.append((item.name, str(err)))
                continue
            pixels.append(px)
            names.append(item.name)
            labels.append(item.label)
        bar.update(len(items))
        if not pixels:
            return
        shapes = {tuple(p.shape) for p in pixels}
        if len(shapes) > 1:
            raise ValueError(f"preprocess produced images of different shapes {sorted(shapes)}: it must resize/crop "
                             "to one size")
        lab = None
        if all(v is not None for v in labels):
            lab = torch.tensor(labels, dtype=torch.int64)
        elif any(v is not None for v in labels):
            raise ValueError("some images of a batch carry labels and some do not")
        yield ImageBatch(torch.stack(pixels), names, lab)

    def _safe(item: _Item) -> tuple[Tensor | None, str | None]:
        try:
            return _preprocess_item(item, preprocess), None
        except UnreadableImageError as exc:
            return None, exc.reason

    try:
        for block in _iter_blocks(images, stream):
            if isinstance(block, _Item):
                pending.append(block)
                if len(pending) >= batch_size:
                    yield from flush()
            else:
                if pending:
                    yield from flush()
                px, names, lab = block
                bar.update(px.shape[0])
                yield ImageBatch(px, names, None if lab is None else torch.tensor(lab, dtype=torch.int64))
        if pending:
            yield from flush()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
