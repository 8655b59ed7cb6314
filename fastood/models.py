"""open_clip model loading (hub tag, local checkpoint file, local open_clip directory)
and batched text encoding.

``pretrained`` may be:
- a hub tag such as ``"openai"`` (downloads: needs network);
- a local checkpoint file (``.safetensors``, or a state dict loaded with
  ``torch.load(weights_only=True)``);
- a local open_clip directory (``open_clip_config.json`` + weights), loaded via
  open_clip's ``local-dir:`` schema (the ``model`` name is then ignored).
``FASTOOD_PRETRAINED`` names the default when ``pretrained`` is not given.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["ClipBundle", "load_clip", "encode_texts", "text_weights_hash", "default_device"]

DEFAULT_MODEL = "ViT-B-16-quickgelu"
DEFAULT_PRETRAINED = "openai"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class ClipBundle:
    """An open_clip model with its tokenizer and image transform."""

    model: nn.Module
    tokenizer: Callable[[Sequence[str]], Tensor]
    preprocess: Callable[[Any], Tensor] | None
    name: str = "custom"
    pretrained: str | None = None
    _text_hash: str | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def text_hash(self) -> str:
        """sha256 of the text tower's weights (cached; recompute after training)."""
        if self._text_hash is None:
            self._text_hash = text_weights_hash(self.model)
        return self._text_hash


def text_weights_hash(model: nn.Module) -> str:
    """sha256 over every non-``visual.*`` tensor of the state dict (name, dtype, shape, bytes).

    Text banks depend on the text tower only, so image-tower changes keep them valid.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if name.startswith("visual."):
            continue
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_clip(
    model: str = DEFAULT_MODEL,
    pretrained: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    interpolation: str | None = None,
    **model_kwargs: Any,
) -> ClipBundle:
    """Create an open_clip model, its tokenizer and preprocess, in eval mode.

    Args:
        model: open_clip architecture name (e.g. ``"ViT-B-16-quickgelu"``).
        pretrained: hub tag, local file or local directory (see module docs);
            ``None`` → ``$FASTOOD_PRETRAINED`` or ``"openai"``.
        device: defaults to CUDA when available.
        precision: open_clip precision string (``"fp32"``, ``"fp16"``, ``"amp"`` …).
        interpolation: image resize interpolation override (``"bilinear"`` for the
            NegLabel reference preprocessing; open_clip's default is bicubic).
        model_kwargs: forwarded to open_clip (e.g. ``embed_dim``, ``vision_cfg``,
            ``text_cfg`` for tiny test models with ``pretrained=""``).
    """
    import open_clip

    if pretrained is None:
        pretrained = os.environ.get("FASTOOD_PRETRAINED") or DEFAULT_PRETRAINED
    pretrained = str(pretrained) if pretrained else None
    device = torch.device(device) if device is not None else default_device()
    name = model
    kwargs: dict[str, Any] = dict(precision=precision, device=device, **model_kwargs)
    if interpolation is not None:
        kwargs["image_interpolation"] = interpolation
    weights = pretrained
    if pretrained and Path(pretrained).expanduser().is_dir():
        name, weights = f"local-dir:{Path(pretrained).expanduser()}", None
    elif pretrained and (os.sep in pretrained or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors")):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained checkpoint {str(path)!r} does not exist")
        if not os.access(path, os.R_OK):
            raise PermissionError(f"pretrained checkpoint {str(path)!r} is not readable")
        weights = str(path)
    try:
        net, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights, **kwargs)
    except RuntimeError as exc:
        if weights and not Path(weights).exists():
            raise RuntimeError(
                f"could not load pretrained weights {weights!r} for {model!r} ({exc}). Hub tags need network: "
                "pass a local checkpoint file or open_clip directory, or set FASTOOD_PRETRAINED"
            ) from exc
        raise RuntimeError(f"could not load checkpoint {weights!r} into {model!r}: {exc}") from exc
    tokenizer = open_clip.get_tokenizer(name)
    net.eval()
    return ClipBundle(net, tokenizer, preprocess, name=model, pretrained=pretrained)


@torch.no_grad()
def encode_texts(
    model: nn.Module,
    tokenizer: Callable[[Sequence[str]], Tensor],
    texts: Sequence[str],
    *,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    progress: bool = True,
    desc: str = "encoding prompts",
) -> Tensor:
    """Unit-norm text embeddings (len(texts), D) float32 on the CPU.

    Batched through ``model.encode_text`` on ``device`` (the model's device by
    default), under fp16 autocast on CUDA unless ``amp=False``.
    """
    from tqdm.auto import tqdm

    if len(texts) == 0:
        raise ValueError("texts is empty: nothing to encode")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    use_amp = (device.type == "cuda") if amp is None else (amp and device.type == "cuda")
    out = []
    with tqdm(total=len(texts), desc=desc, unit="prompt", disable=not progress, leave=False) as bar:
        for i in range(0, len(texts), batch_size):
            tokens = tokenizer(list(texts[i : i + batch_size])).to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                emb = model.encode_text(tokens)
            out.append(torch.nn.functional.normalize(emb.float(), dim=1).cpu())
            bar.update(tokens.shape[0])
    return torch.cat(out)
