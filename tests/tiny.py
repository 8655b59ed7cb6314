"""The tiny randomly initialised open_clip model the tests build (no weights, no network)."""

from __future__ import annotations

import torch

from fastood.models import ClipBundle, load_clip

#: ViT-B-32's layout shrunk: 32×32 input, one vision / one text layer, 32-d embeddings.
TINY_KWARGS = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_clip(seed: int = 0, **overrides) -> ClipBundle:
    """``ViT-B-32`` with :data:`TINY_KWARGS` (``overrides`` replace top-level keys), seeded, on the CPU."""
    torch.manual_seed(seed)
    return load_clip("ViT-B-32", pretrained="", device="cpu", **{**TINY_KWARGS, **overrides})
