"""Prompt templates and class-name loading.

Every template is a ``str.format`` string with one ``{}`` slot. Which method uses
which (shared/SPEC.md):

=====================================  =========================================
NegLabel, ID labels and noun negatives  ``NEGLABEL_ID_TEMPLATE``, ``NEGLABEL_NOUN_TEMPLATE``  ("the nice {}")
NegLabel, adjective negatives           ``NEGLABEL_ADJ_TEMPLATE``  ("This is a {} photo")
InterNeg (with a final period)          ``INTERNEG_ID_TEMPLATE``, ``INTERNEG_NOUN_TEMPLATE``, ``INTERNEG_ADJ_TEMPLATE``
MCM                                     ``MCM_TEMPLATE``  ("a photo of a {}")
CMA training / test time                ``CMA_TRAIN_TEMPLATE`` / ``CMA_TEST_TEMPLATE``  ("The nice {}")
PLP zero-shot pseudo-labels             ``PLP_TEMPLATES`` (5-prompt ensemble)
CSP ensembles                           ``CSP_NOUN_TEMPLATES`` (8), ``CSP_ADJ_TEMPLATES`` (4)
CLIP's 80 ImageNet templates            :func:`clip_imagenet_templates` (InterNeg inversion)
=====================================  =========================================

:func:`clip_imagenet_templates` returns the 80 templates as format strings,
obtained at runtime from ``open_clip.OPENAI_IMAGENET_TEMPLATES`` (callables) by
calling each with ``"{}"``.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from typing import Iterable, Sequence

__all__ = [
    "NEGLABEL_ID_TEMPLATE", "NEGLABEL_NOUN_TEMPLATE", "NEGLABEL_ADJ_TEMPLATE",
    "INTERNEG_ID_TEMPLATE", "INTERNEG_NOUN_TEMPLATE", "INTERNEG_ADJ_TEMPLATE",
    "MCM_TEMPLATE", "CMA_TRAIN_TEMPLATE", "CMA_TEST_TEMPLATE",
    "PLP_TEMPLATES", "CSP_NOUN_TEMPLATES", "CSP_ADJ_TEMPLATES",
    "CLASSNAME_PRESETS",
    "clip_imagenet_templates", "imagenet1k_classnames", "load_classnames", "format_prompts",
]

NEGLABEL_ID_TEMPLATE = "the nice {}"
NEGLABEL_NOUN_TEMPLATE = "the nice {}"
NEGLABEL_ADJ_TEMPLATE = "This is a {} photo"

INTERNEG_ID_TEMPLATE = "The nice {}."
INTERNEG_NOUN_TEMPLATE = "The nice {}."
INTERNEG_ADJ_TEMPLATE = "This is a {} photo."

MCM_TEMPLATE = "a photo of a {}"

CMA_TRAIN_TEMPLATE = "a photo of a {}"
CMA_TEST_TEMPLATE = "The nice {}"

PLP_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of many {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
)

# CSP's prompt ensembles: nouns, and adjective phrases ("<adj> <suffix>").
CSP_NOUN_TEMPLATES: tuple[str, ...] = (
    "a close-up photo of the nice {}.",
    "a photo with the nice {}.",
    "a good photo with the nice {}.",
    "a photo of the nice {}.",
    "{}",
    "the {}",
    "the good {}",
    "the nice {}",
)
CSP_ADJ_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a nice photo of {}",
    "a good photo of {}",
    "a close-up photo of {}",
)

CLASSNAME_PRESETS: tuple[str, ...] = ("imagenet1k",)


def clip_imagenet_templates() -> list[str]:
    """CLIP's 80 ImageNet prompt templates as format strings (from open_clip)."""
    import open_clip

    return [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]


def imagenet1k_classnames() -> list[str]:
    """CLIP's curated ImageNet-1k class names (``open_clip.IMAGENET_CLASSNAMES``)."""
    import open_clip

    return list(open_clip.IMAGENET_CLASSNAMES)


def format_prompts(template: str, words: Iterable[str]) -> list[str]:
    """``[template.format(w) for w in words]``."""
    return [template.format(w) for w in words]


def _read_classname_file(path: str) -> list[str]:
    names = []
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            names.append(s)
    return names


def _is_preset(spec: object, names: list[str]) -> bool:
    """Whether ``spec`` names a preset, or ``names`` is exactly a preset's list."""
    if isinstance(spec, str) and spec in CLASSNAME_PRESETS:
        return True
    return names == imagenet1k_classnames()


def load_classnames(spec: str | os.PathLike | Sequence[str]) -> list[str]:
    """ID class names from a preset, a list, or a text file.

    ``spec`` is ``"imagenet1k"`` (CLIP's curated names), a sequence of names, or a
    path to a UTF-8 text file with one name per line (surrounding whitespace
    stripped; blank lines and lines whose first non-blank character is ``#`` are
    ignored). Order is kept. An empty result raises ``ValueError``; duplicate
    names raise a warning that names them (they are kept). CLIP's curated
    ImageNet list itself has two duplicates ("missile", "sunglasses": two
    ImageNet classes each); the preset keeps them without a warning, also when
    it is passed on as the list it resolves to (callers resolve the preset and
    hand the names on).
    """
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if isinstance(spec, str):
        if spec in CLASSNAME_PRESETS:
            names = imagenet1k_classnames()
        elif os.path.isfile(spec):
            names = _read_classname_file(spec)
        else:
            raise ValueError(
                f"class names {spec!r}: not a preset ({', '.join(CLASSNAME_PRESETS)}) and not an existing file")
    else:
        names = list(spec)
        bad = [n for n in names if not isinstance(n, str)]
        if bad:
            raise TypeError(f"class names must be strings, got {bad[:3]!r}")
        names = [n.strip() for n in names]
        if any(not n for n in names):
            raise ValueError("class names must be non-empty")
    if not names:
        raise ValueError(f"no class names in {spec!r}")
    dups = [n for n, c in Counter(names).items() if c > 1]
    if dups and not _is_preset(spec, names):
        warnings.warn(f"duplicate class names (kept in order): {dups}", stacklevel=2)
    return names
