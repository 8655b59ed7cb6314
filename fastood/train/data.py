"""ImageFolder data for CMA fine-tuning: discovery, seeded augmentation, global-batch sampling,
and a collate that drops unreadable images.

Layout (torchvision's ImageFolder)::

    DIR/<class folder>/**/<image>.{jpg,jpeg,png,bmp,gif,webp,tif,tiff}

Classes are the sorted sub-folder names; label ``k`` is the k-th of them.

**Exact resumption.** Nothing in the input pipeline reads a global RNG. Each epoch
draws, from one sampler generator, a permutation of the N samples and one 63-bit seed
per sample; the training crop of sample ``i`` in that epoch is a pure function of its
seed. The global batch ``b`` of an epoch is ``perm[b·G:(b+1)·G]`` and rank ``r`` of
``W`` loads the slice ``[r·G/W, (r+1)·G/W)`` of it. So the pixels of global batch
``b`` do not depend on the number of ranks, on data-loader workers, on gradient
accumulation, or on whether the run was interrupted: a checkpoint stores the
generator's state at the start of the current epoch and the number of batches done.

**Listing** is :func:`fastood.images.scan_image_files`, the one shared with ``fastood
score``: only regular files are images (FIFOs, sockets and devices are never opened),
symbolic links to directories inside a class folder are not followed, broken links and
link loops are left out — all of them reported (``dataset.skipped`` and a warning). A
class folder with no image is an error when the classes are discovered (training).

**Unreadable images** (corrupt, truncated, not an image) are not fatal: the dataset
returns a :class:`Failed` record naming the file and the reason, and
:func:`collate_skip_failed` leaves it out of the batch and lists it in
``Batch.failed`` for the trainer to report and count.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from fastood.images import IMAGE_EXTENSIONS, UnreadableImageError  # one listing and decoder for scoring and training

__all__ = [
    "IMAGE_EXTENSIONS", "EmptyDatasetError", "Failed", "Batch", "TrainTransform", "ImageFolderDataset",
    "ImageListDataset", "GlobalBatchSampler", "collate_skip_failed", "find_classes", "list_images",
    "random_resized_crop_params",
]



class EmptyDatasetError(ValueError):
    """A data folder holds no usable images (or no class folders)."""


def list_images(root: str | os.PathLike, skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """Every image file under ``root`` (recursive, sorted, hidden names left out).

    The listing is :func:`fastood.images.scan_image_files`, shared with ``fastood score``:
    only regular files are images (FIFOs, sockets and devices are never opened),
    symbolic links to directories are not followed (``ln -s .. cat/up`` would list every
    image again under the wrong class), broken links and link loops are left out. What was
    left out is appended to ``skipped`` as ``(path, reason)``, or, with ``skipped=None``,
    announced with a ``UserWarning``.
    """
    from fastood.images import scan_image_files

    root = Path(root).expanduser()
    if not os.path.lexists(root):
        raise FileNotFoundError(f"data folder {str(root)!r} does not exist")
    if not root.is_dir() and os.path.splitext(root.name)[1].lower() not in IMAGE_EXTENSIONS:
        return []
    files, bad = scan_image_files([root], include_hidden=False)
    if skipped is not None:
        skipped.extend(bad)
    elif bad:
        _warn_skipped(bad)
    return files


def _warn_skipped(bad: Sequence[tuple[str, str]]) -> None:
    shown = "; ".join(f"{p}: {r}" for p, r in bad[:5])
    warnings.warn(f"{len(bad)} path(s) under the data folder are not readable images and are left out: {shown}"
                  f"{' …' if len(bad) > 5 else ''}", stacklevel=3)


def find_classes(root: str | os.PathLike) -> list[str]:
    """Sorted names of the (non-hidden) sub-folders of ``root``."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"data folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"data folder {str(root)!r} is not a directory")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_class_links(root: Path, classes: Sequence[str]) -> None:
    """A class folder may be a symbolic link, but not to the data folder, one of its parents, or
    the same folder as another class: its images would be listed again under the wrong label."""
    top = os.path.realpath(root)
    seen: dict[str, str] = {}
    for c in classes:
        target = os.path.realpath(root / c)
        if top == target or top.startswith(target.rstrip(os.sep) + os.sep):
            raise ValueError(f"class folder {str(root / c)!r} links back to the data folder or one of its parents "
                             f"({target!r}): its images would be listed under the wrong class; remove the link")
        if target in seen:
            raise ValueError(f"class folders {seen[target]!r} and {c!r} are the same folder ({target!r}): "
                             "each image would get two labels; remove one")
        seen[target] = c


@dataclass
class Failed:
    """An image that could not be read or transformed."""

    path: str
    reason: str


@dataclass
class Batch:
    """A collated batch: the readable samples, and the ones left out."""

    pixels: Tensor  # (B, 3, H, W) float32; (0,) when nothing was readable
    labels: Tensor  # (B,) int64
    indices: Tensor  # (B,) int64 dataset indices
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def collate_skip_failed(items: Sequence[tuple[Tensor, int, int] | Failed]) -> Batch:
    """Stack the readable samples; list the :class:`Failed` ones in ``Batch.failed``."""
    good = [it for it in items if not isinstance(it, Failed)]
    failed = [(it.path, it.reason) for it in items if isinstance(it, Failed)]
    if not good:
        empty = torch.empty(0, dtype=torch.int64)
        return Batch(torch.empty(0), empty, empty.clone(), failed)
    return Batch(
        torch.stack([g[0] for g in good]),
        torch.tensor([g[1] for g in good], dtype=torch.int64),
        torch.tensor([g[2] for g in good], dtype=torch.int64),
        failed,
    )


# ---------------------------------------------------------------------- augmentation
def random_resized_crop_params(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator,
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop covering a fraction ``∈ scale`` of the image
    area with aspect ratio ``w/h ∈ ratio`` (log-uniform), the usual RandomResizedCrop
    rule: up to ``attempts`` draws, then a centred crop with the ratio clamped to ``ratio``.
    Every draw comes from ``generator``."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(height - h, int(u[2] * (height - h + 1)))
            left = min(width - w, int(u[3] * (width - w + 1)))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class TrainTransform:
    """CMA's training transform: ``RandomResizedCrop(size, scale, ratio, interpolation)`` →
    tensor → ``Normalize(mean, std)``; no flip. Seeded per sample: ``transform(img, seed)``.

    Args:
        size: output side (the model's input size; 224 for ViT-B/16).
        scale: crop area fraction range (CMA: (0.9, 1.0)).
        ratio: crop aspect-ratio range (torchvision's default (3/4, 4/3)).
        interpolation: ``"bicubic"`` (CMA) or ``"bilinear"``.
        mean, std: per-channel normalisation (the model's, CLIP's by default).
    """

    def __init__(self, size: int, *, scale: tuple[float, float] = (0.9, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), interpolation: str = "bicubic",
                 mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
                 std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711)):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {tuple(scale)}")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {tuple(ratio)}")
        if interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
        self.size, self.scale, self.ratio, self.interpolation = size, tuple(scale), tuple(ratio), interpolation
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def __repr__(self) -> str:
        return (f"TrainTransform(size={self.size}, scale={self.scale}, ratio={tuple(round(r, 4) for r in self.ratio)}, "
                f"interpolation={self.interpolation!r})")

    def __call__(self, img, seed: int | None = None) -> Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        gen = torch.Generator()
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(seed))
        top, left, h, w = random_resized_crop_params(img.width, img.height, self.scale, self.ratio, gen)
        mode = InterpolationMode.BICUBIC if self.interpolation == "bicubic" else InterpolationMode.BILINEAR
        img = TF.resized_crop(img, top, left, h, w, [self.size, self.size], interpolation=mode, antialias=True)
        return TF.normalize(TF.to_tensor(img), self.mean, self.std)


# --------------------------------------------------------------------------- datasets
def _load_rgb(path: Path):
    """The image as RGB, decoded fully (truncated files fail here, not later); only regular
    files are opened, and 16-bit images are scaled to 8 bits (``fastood.images.load_image``)."""
    from fastood.images import load_image

    return load_image(path)


class ImageFolderDataset(torch.utils.data.Dataset):
    """``DIR/<class>/**/<image>`` with labels by sorted class folder.

    ``dataset[i]`` or ``dataset[(i, seed)]`` returns ``(pixels, label, i)`` or a
    :class:`Failed` record. With ``seed`` the transform is called as
    ``transform(img, seed)`` (:class:`TrainTransform`), else ``transform(img)``
    (e.g. open_clip's eval preprocess).

    Args:
        root: the folder.
        transform: PIL image → tensor.
        classes: the class folder names to use, in label order (default: all
            sub-folders, sorted). A sub-folder not in ``classes`` is an error (an
            evaluation folder must use the training classes), a class without a
            folder is allowed (it just has no samples here).

    Raises:
        FileNotFoundError / NotADirectoryError: ``root`` is missing or a file.
        EmptyDatasetError: no class folders, or no image in any of them.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, *,
                 classes: Sequence[str] | None = None):
        self.root = Path(root).expanduser()
        found = find_classes(self.root)
        if not found:
            loose = list_images(self.root)
            hint = (f" ({len(loose)} images lie directly in it: put them in one sub-folder per class)"
                    if loose else "")
            raise EmptyDatasetError(
                f"data folder {str(self.root)!r} has no class sub-folders{hint}; expected DIR/<class>/<image>")
        given = classes
        if classes is None:
            classes = found
        else:
            classes = list(classes)
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise ValueError(f"data folder {str(self.root)!r} has class folders that are not training classes: "
                                 f"{unknown[:5]}{' …' if len(unknown) > 5 else ''}")
        self.classes: list[str] = list(classes)
        _check_class_links(self.root, found)
        index = {c: k for k, c in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        #: (path, reason) of what the listing left out: special files, broken links, directory links
        self.skipped: list[tuple[str, str]] = []
        empty = []
        for c in found:
            files = list_images(self.root / c, self.skipped)
            if not files:
                empty.append(c)
            self.samples.extend((p, index[c]) for p in files)
        if not self.samples:
            raise EmptyDatasetError(
                f"data folder {str(self.root)!r} has {len(found)} class folder(s) but no images "
                f"(extensions: {' '.join(IMAGE_EXTENSIONS)})")
        if empty:
            what = (f"class folder(s) without any image under {str(self.root)!r}: "
                    f"{empty[:10]}{' …' if len(empty) > 10 else ''}")
            if given is None:  # training: such a class would be a label no image carries
                raise EmptyDatasetError(f"{what}; add images or remove the folder(s)")
            warnings.warn(what + " (their classes get no samples here)", stacklevel=2)
        if self.skipped:
            _warn_skipped(self.skipped)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def class_counts(self) -> list[int]:
        counts = [0] * len(self.classes)
        for _, y in self.samples:
            counts[y] += 1
        return counts

    def __getitem__(self, key: int | tuple[int, int]):
        index, seed = (key if isinstance(key, tuple) else (key, None))
        path, label = self.samples[index]
        try:
            img = _load_rgb(path)
            if self.transform is None:
                from torchvision.transforms.functional import to_tensor

                pixels = to_tensor(img)
            elif seed is None:
                pixels = self.transform(img)
            else:
                pixels = self.transform(img, seed)
        except UnreadableImageError as exc:
            return Failed(str(path), exc.reason)
        except Exception as exc:  # noqa: BLE001 - any decoder/transform failure is "unreadable"
            return Failed(str(path), f"{type(exc).__name__}: {exc}")
        return pixels, label, index


class ImageListDataset(ImageFolderDataset):
    """All images under a folder (recursive), unlabelled (label −1): OOD evaluation sets."""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None):  # noqa: D107
        self.root = Path(root).expanduser()
        self.skipped = []
        files = list_images(self.root, self.skipped)
        if self.skipped:
            _warn_skipped(self.skipped)
        if not files:
            raise EmptyDatasetError(
                f"folder {str(self.root)!r} has no images (extensions: {' '.join(IMAGE_EXTENSIONS)})")
        self.classes = []
        self.samples = [(p, -1) for p in files]
        self.transform = transform


# ---------------------------------------------------------------------------- sampler
class GlobalBatchSampler:
    """Global batches of ``G`` samples per step, split over ``world`` ranks (see module doc).

    Epochs are drawn in order from one generator: at the start of epoch ``e`` the
    sampler records the generator state, then draws ``randperm(N)`` and N sample seeds.
    ``steps_per_epoch = N // G`` (the last partial batch is dropped: contrastive
    batches are equal-sized).
    """

    def __init__(self, num_samples: int, global_batch: int, *, world: int = 1, rank: int = 0, seed: int = 0):
        if global_batch < 1 or global_batch % world:
            raise ValueError(f"global batch {global_batch} must be a positive multiple of the world size {world}")
        if num_samples < global_batch:
            raise ValueError(f"the dataset has {num_samples} images, fewer than one global batch of {global_batch}: "
                             "lower --batch-size or add data")
        self.num_samples, self.global_batch, self.world, self.rank = num_samples, global_batch, world, rank
        self.local_batch = global_batch // world
        self.steps_per_epoch = num_samples // global_batch
        self.generator = torch.Generator().manual_seed(int(seed))
        self.epoch = -1
        self.epoch_start_state: Tensor = self.generator.get_state()
        self._perm: Tensor | None = None
        self._seeds: Tensor | None = None

    def _draw(self) -> None:
        self.epoch += 1
        self.epoch_start_state = self.generator.get_state()
        self._perm = torch.randperm(self.num_samples, generator=self.generator)
        self._seeds = torch.randint(0, 2**63 - 1, (self.num_samples,), generator=self.generator)

    def set_epoch(self, epoch: int) -> None:
        """Advance to ``epoch`` (drawing the epochs in between, in order)."""
        if epoch < self.epoch:
            raise ValueError(f"cannot go back from epoch {self.epoch} to {epoch}")
        while self.epoch < epoch:
            self._draw()

    def batches(self, start: int = 0) -> Iterator[list[tuple[int, int]]]:
        """This rank's ``(index, seed)`` lists for batches ``start, start+1, …`` of the current epoch."""
        if self._perm is None:
            raise RuntimeError("call set_epoch() first")
        lo_r = self.rank * self.local_batch
        for b in range(start, self.steps_per_epoch):
            sl = self._perm[b * self.global_batch + lo_r: b * self.global_batch + lo_r + self.local_batch]
            yield list(zip(sl.tolist(), self._seeds[sl].tolist()))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "epoch_start_state": self.epoch_start_state.clone(),
                "num_samples": self.num_samples, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        if state["num_samples"] != self.num_samples or state["global_batch"] != self.global_batch:
            raise ValueError(
                f"the checkpoint was taken with {state['num_samples']} images and global batch {state['global_batch']}, "
                f"this run has {self.num_samples} and {self.global_batch}: the data position would not match")
        self.generator.set_state(state["epoch_start_state"])
        self._perm = self._seeds = None
        self.epoch = -1
        if state["epoch"] >= 0:
            self.epoch = int(state["epoch"]) - 1
            self._draw()
