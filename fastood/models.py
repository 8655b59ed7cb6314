"""open_clip model loading (hub tag, local checkpoint file, local open_clip directory)
and batched text encoding.

Text encoding runs open_clip's causal text towers on sequences cut after the
batch's last pooled (EOT) token instead of the full context (77 tokens for
prompts of 5–17): see :class:`TextTower`, :func:`encode_tokens_cut` and
:func:`encode_texts`.

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
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "ClipBundle", "load_clip", "encode_texts", "encode_tokens_cut", "TextTower", "text_tower", "text_weights_hash",
    "default_device", "UnsafeCheckpointError", "unsafe_checkpoint_error", "pickle_refusal_reason",
]

DEFAULT_MODEL = "ViT-B-16-quickgelu"
DEFAULT_PRETRAINED = "openai"


class UnsafeCheckpointError(ValueError):
    """A pickled checkpoint that needs more than tensors and plain containers: refused, its code never run."""


def unsafe_checkpoint_error(what: str, exc: BaseException) -> UnsafeCheckpointError:
    """The refusal for a pickle that ``torch.load(weights_only=True)`` rejected (``exc``).

    torch's own message advises re-running with ``weights_only=False``, which would run
    the file's code; this one keeps only the concrete reason (the global the pickle
    wants to import) and says what to do instead.
    """
    return UnsafeCheckpointError(f"{what} was refused: {pickle_refusal_reason(exc)}")


def pickle_refusal_reason(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a pickle, without torch's advice to disable the check."""
    found = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
    reason = f"its pickle wants to import {found.group(1)}" if found else type(exc).__name__
    return (f"it is not a plain tensor checkpoint ({reason}); fastood unpickles checkpoints with "
            "torch.load(weights_only=True) and never runs code from one: save the weights as a state dict of "
            "tensors, or as .safetensors")


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
    except pickle.UnpicklingError as exc:  # open_clip's torch.load(weights_only=True) refused it
        raise unsafe_checkpoint_error(f"pretrained checkpoint {weights!r}", exc) from None
    except RuntimeError as exc:
        mismatch = _first_size_mismatch(str(exc))
        if mismatch is not None:
            raise ValueError(f"checkpoint {weights!r} does not fit {model!r}: {mismatch} "
                             "(the checkpoint is for another architecture or model_kwargs)") from None
        if weights and not Path(weights).exists():
            raise RuntimeError(
                f"could not load pretrained weights {weights!r} for {model!r} ({exc}). Hub tags need network: "
                "pass a local checkpoint file or open_clip directory, or set FASTOOD_PRETRAINED"
            ) from exc
        raise RuntimeError(f"could not load checkpoint {weights!r} into {model!r}: {exc}") from exc
    tokenizer = open_clip.get_tokenizer(name)
    net.eval()
    return ClipBundle(net, tokenizer, preprocess, name=model, pretrained=pretrained)


def _first_size_mismatch(message: str) -> str | None:
    """The first ``size mismatch for NAME: … checkpoint … current model …`` line of a
    ``load_state_dict`` error, as one line naming the tensor and both shapes; ``None`` if absent."""
    found = re.search(r"size mismatch for ([^:\s]+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from "
                      r"checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)", message)
    if found is None:
        return None
    name, got, want = found.groups()
    more = message.count("size mismatch for ") - 1
    return (f"tensor {name!r} has shape ({got}) in the checkpoint but ({want}) in the model"
            + (f" (and {more} more mismatched tensor{'s' if more > 1 else ''})" if more > 0 else ""))


_POOL_TYPES = ("argmax", "eos", "first", "last")


def _is_causal(mask: Tensor | None) -> bool:
    """True if a 2-D attention mask blocks every key after its query (``mask[i, j]``, ``j > i``).

    Float masks are additive (``-inf`` blocks), bool masks block where ``True``
    (``nn.MultiheadAttention``'s conventions). Entries on and below the diagonal
    may be anything: slicing keeps them for the positions that remain.
    """
    if mask is None or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    upper = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu_(1)
    vals = mask[upper]
    if mask.dtype == torch.bool:
        return bool(vals.all())
    return bool(torch.isneginf(vals).all())


class TextTower:
    """An open_clip text transformer taken apart, so it can run on cut sequences and on edited embeddings.

    Covers the towers whose forward is exactly (open_clip 3.x ``CLIP.encode_text``,
    and ``TextTransformer.forward`` without a class token or padding mask)::

        x = E[ids].to(cast_dtype) + P[:L]                  ids (B, L), E token_embedding, P positional_embedding
        h = transformer(x, attn_mask = M[:L, :L])          M[i, j] = -inf for j > i when causal
        f_b = ln_final(h[b, p_b]) · W                      W text_projection (Linear, (width, D) Parameter or none)

    with the pooled position ``p_b`` (open_clip's ``text_global_pool``):
    ``argmax`` → ``argmax_j ids[b, j]`` (CLIP's EOT token has the largest id),
    ``eos`` → the first ``j`` with ``ids[b, j] == eos_id`` (0 if none),
    ``first`` → 0, ``last`` → ``L - 1`` of the *full* sequence.

    With a causal mask ``h[b, p]`` depends on ``x[b, :p+1]`` only, so the
    sequence may be cut after ``max_b p_b`` (:meth:`cut_length`) with the same
    result up to float rounding (different GEMM shapes). Not cuttable: ``last``
    pooling (the last position sees all the padding) and non-causal towers.

    The module references are read at use time, so the tower follows
    ``model.to(...)``. Build one with :func:`text_tower`.
    """

    def __init__(self, module: nn.Module, pool_type: str, eos_id: int | None) -> None:
        self.module = module  # open_clip CLIP, or the TextTransformer of a CustomTextCLIP
        self.pool_type = pool_type
        self.eos_id = eos_id
        self.causal = _is_causal(getattr(module, "attn_mask", None))

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.module.token_embedding

    @property
    def width(self) -> int:
        """The transformer's token width."""
        return int(self.module.token_embedding.weight.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.module.positional_embedding.shape[0])

    @property
    def can_cut(self) -> bool:
        """Whether sequences may be cut after the pooled token (causal mask, pooling other than ``last``)."""
        return self.causal and self.pool_type != "last"

    def cast_dtype(self) -> torch.dtype:
        """open_clip's ``transformer.get_cast_dtype()`` (the residual stream's dtype)."""
        get = getattr(self.module.transformer, "get_cast_dtype", None)
        return get() if get is not None else self.module.token_embedding.weight.dtype

    def embed(self, ids: Tensor) -> Tensor:
        """Token embeddings ``E[ids]`` in the cast dtype, (B, L, width)."""
        return self.module.token_embedding(ids).to(self.cast_dtype())

    def pool_positions(self, ids: Tensor) -> Tensor:
        """(B,) int64 pooled positions ``p_b`` of the full token ids (B, L) (see the class docs)."""
        if self.pool_type == "argmax":
            return ids.argmax(dim=-1)
        if self.pool_type == "eos":
            return (ids == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "first":
            return torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)

    def cut_length(self, positions: Tensor, full_length: int) -> int:
        """The shortest exact sequence length: ``max_b p_b + 1`` when :attr:`can_cut`, else ``full_length``."""
        if not self.can_cut or positions.numel() == 0:
            return int(full_length)
        return min(int(positions.max()) + 1, int(full_length))

    def forward(self, embeds: Tensor, positions: Tensor) -> Tensor:
        """Unnormalised text features (B, D) from token embeddings (B, L, width) and pooled positions (B,).

        ``embeds`` are :meth:`embed` outputs (possibly edited, possibly cut to
        ``L >=`` :meth:`cut_length`); ``positions`` come from
        :meth:`pool_positions` on the full ids and must be ``< L``.
        """
        m = self.module
        L = embeds.shape[1]
        if L > m.positional_embedding.shape[0]:
            raise ValueError(f"sequence length {L} exceeds the text tower's context length {m.positional_embedding.shape[0]}")
        x = embeds + m.positional_embedding[:L].to(embeds.dtype)
        mask = m.attn_mask
        if mask is not None:
            mask = mask[:L, :L]
        x = m.transformer(x, attn_mask=mask)
        x = x[torch.arange(x.shape[0], device=x.device), positions.to(x.device)]
        x = m.ln_final(x)  # per position: pooling first gives the same rows
        proj = m.text_projection
        if proj is None:
            return x
        if isinstance(proj, nn.Linear):
            return proj(x)
        return x @ proj


def _text_tower(model: nn.Module) -> tuple[TextTower | None, str]:
    """(tower, "") for a supported open_clip model, else (None, why not)."""
    try:
        from open_clip.model import CLIP, CustomTextCLIP
        from open_clip.transformer import TextTransformer
    except ImportError:  # pragma: no cover - open_clip is a dependency
        return None, "open_clip is not installed"
    if isinstance(model, CLIP):
        if type(model).encode_text is not CLIP.encode_text:
            return None, f"{type(model).__name__} overrides encode_text"
        module, pool, eos = model, getattr(model, "text_pool_type", "argmax"), getattr(model, "text_eos_id", None)
    elif isinstance(model, CustomTextCLIP):
        text = model.text
        if type(model).encode_text is not CustomTextCLIP.encode_text:
            return None, f"{type(model).__name__} overrides encode_text"
        if not isinstance(text, TextTransformer) or type(text).forward is not TextTransformer.forward:
            return None, f"the text tower is a {type(text).__name__}, not open_clip's TextTransformer"
        if text.cls_emb is not None:
            return None, "the text tower has a class token"
        if text.use_pad_mask:
            return None, "the text tower uses a padding mask"
        if text.output_tokens:
            return None, "the text tower outputs tokens"
        module, pool, eos = text, text.pool_type, getattr(text, "eos_id", None)
    else:
        return None, f"{type(model).__name__} is not an open_clip CLIP / CustomTextCLIP model"
    if pool not in _POOL_TYPES:
        return None, f"text pooling {pool!r} is not one of {_POOL_TYPES}"
    if pool == "eos" and eos is None:
        return None, "text pooling 'eos' without an eos id"
    return TextTower(module, pool, eos), ""


def text_tower(model: nn.Module) -> TextTower | None:
    """The :class:`TextTower` of an open_clip model, or ``None`` where it is not supported.

    Supported: ``open_clip.CLIP`` (its own ``encode_text``), and
    ``open_clip.CustomTextCLIP`` whose text tower is a plain ``TextTransformer``
    (no class token, no padding mask, no token output), with pooling
    ``argmax`` / ``eos`` / ``first`` / ``last``. Everything else (HF text
    towers, CoCa and other class-token towers, subclasses overriding
    ``encode_text``, non-open_clip models) gives ``None``: callers then use
    ``model.encode_text``.
    """
    return _text_tower(model)[0]


def encode_tokens_cut(model: nn.Module, tokens: Tensor, *, tower: TextTower | None = None) -> Tensor:
    """``model.encode_text(tokens)`` run on the tokens cut after the last pooled (EOT) position.

    For a causal open_clip text tower (:class:`TextTower`) the pooled output of
    row ``b`` depends on ``tokens[b, :p_b + 1]`` only, so running on
    ``tokens[:, :max_b p_b + 1]`` gives the same features (unnormalised, (B, D),
    the model's dtype) up to float rounding. Falls back to ``model.encode_text``
    when there is nothing to cut or the tower is not supported (see
    :func:`text_tower`: HF / class-token / non-causal towers, ``last`` pooling).
    Runs under the caller's grad / autocast mode.
    """
    if not isinstance(tokens, Tensor) or tokens.dim() != 2:
        raise TypeError(f"tokens must be a 2-D tensor of token ids, got {getattr(tokens, 'shape', type(tokens).__name__)}")
    if tower is None:
        tower = text_tower(model)
    if tower is None or not tower.can_cut or tokens.shape[0] == 0:
        return model.encode_text(tokens)
    pos = tower.pool_positions(tokens)
    cut = tower.cut_length(pos, tokens.shape[1])
    if cut >= tokens.shape[1]:
        return model.encode_text(tokens)
    return tower.forward(tower.embed(tokens[:, :cut]), pos)


def _tokenize(tokenizer: Callable[[Sequence[str]], Tensor], texts: Sequence[str]) -> Tensor:
    ids = tokenizer(list(texts))
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.shape[0] != len(texts):
        raise TypeError(f"tokenizer must return a ({len(texts)}, L) tensor of token ids, got "
                        f"{getattr(ids, 'shape', type(ids).__name__)}")
    return ids


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
    """Unit-norm text embeddings (len(texts), D) float32 on the CPU, in the order of ``texts``.

    With a cuttable open_clip text tower (:class:`TextTower`: causal mask,
    pooling at the EOT token) the prompts are tokenised, stably sorted by their
    pooled position ``p`` (the EOT index: 5–17 tokens for NegLabel's prompts),
    encoded ``batch_size`` at a time with each batch cut after its longest
    ``p`` (:meth:`TextTower.forward`), and put back in the original order.
    This equals ``model.encode_text`` on the full context (77 tokens) up to
    float rounding, at a fraction of the cost. Other models (see
    :func:`text_tower`) go through ``model.encode_text`` batch by batch.

    Runs on ``device`` (the model's device by default), under fp16 autocast on
    CUDA unless ``amp=False``.
    """
    from fastood.progress import progress as progress_bar  # a tqdm bar on a terminal, plain lines in a log

    if len(texts) == 0:
        raise ValueError("texts is empty: nothing to encode")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    use_amp = (device.type == "cuda") if amp is None else (amp and device.type == "cuda")
    n = len(texts)
    tower = text_tower(model)

    def run(ids: Tensor, pos: Tensor | None) -> Tensor:
        ids = ids.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            emb = model.encode_text(ids) if pos is None else tower.forward(tower.embed(ids), pos.to(device))
        return torch.nn.functional.normalize(emb.float(), dim=1).cpu()

    with progress_bar(total=n, desc=desc, unit="prompt", disable=not progress, leave=False) as bar:
        if tower is None or not tower.can_cut:
            out = []
            for i in range(0, n, batch_size):
                out.append(run(_tokenize(tokenizer, texts[i : i + batch_size]), None))
                bar.update(out[-1].shape[0])
            return torch.cat(out)

        # 1. tokenise, keeping each chunk up to its last pooled position
        bar.set_description(f"{desc} (tokenizing)")
        chunks, positions = [], []
        for i in range(0, n, batch_size):
            ids = _tokenize(tokenizer, texts[i : i + batch_size])
            pos = tower.pool_positions(ids)
            chunks.append(ids[:, : tower.cut_length(pos, ids.shape[1])])
            positions.append(pos)
            bar.update(ids.shape[0])
        pos = torch.cat(positions)
        ids = torch.zeros(n, max(c.shape[1] for c in chunks), dtype=chunks[0].dtype)
        row = 0
        for c in chunks:  # columns past a row's own chunk width lie after its pooled position: never seen
            ids[row : row + c.shape[0], : c.shape[1]] = c
            row += c.shape[0]
        del chunks
        # 2. encode in order of length, each batch cut after its longest pooled position
        order = torch.argsort(pos, stable=True)
        bar.reset(total=n)
        bar.set_description(desc)
        out_sorted = []
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            p = pos[idx]
            out_sorted.append(run(ids[idx, : int(p.max()) + 1], p))
            bar.update(idx.numel())
    emb = torch.cat(out_sorted)
    out = torch.empty_like(emb)
    out[order] = emb
    return out
