"""Textual inversion of image features into CLIP's text space (InterNeg, shared/SPEC.md §4).

An image feature ``v`` (the projected, L2-normalised ``encode_image`` output) is
turned into a text embedding by learning one *pseudo-token* embedding
``p ∈ R^width`` (``width`` = the text transformer's token width) that, placed in
the class slot of a prompt template, makes the text tower produce ``v``:

    t(p, τ) = normalize(g(template τ with its class word's token embedding := p))
    p* = argmin_p  (1 − cos(t(p, τ_s), v))      τ_s ~ U(80 CLIP ImageNet templates), one per step

with ``p₀ ~ N(0, init_std²)`` and ``steps`` AdamW updates (lr, weight decay).
The text tower ``g`` is open_clip's ``encode_text`` taken apart so the pseudo
embedding can be injected: token ids → ``token_embedding`` (row of the slot
replaced by ``p``) → ``+ positional_embedding`` → ``transformer`` (causal mask) →
``ln_final`` → pooling at the EOT token → ``text_projection``.

Batched: ``n`` images are inverted at once with one ``(n, width)`` parameter;
each image draws its own template per step. The optimised loss is the *sum*
over images of ``1 − cos`` (the reported loss is the mean): the per-image
gradients, and with AdamW's per-element state the whole trajectories, are then
exactly those of ``n`` separate single-image inversions with the same draws.
Only ``p`` receives gradients (``torch.autograd.grad``): the model's parameters
and their ``.grad`` are never touched.

The tower is :class:`fastood.models.TextTower` (shared with
:func:`fastood.models.encode_texts`): open_clip ``CLIP`` models and
``CustomTextCLIP`` models with a plain ``TextTransformer``; other towers (HF,
class-token towers such as CoCa) raise ``ValueError``.

Speed: with a causal attention mask the EOT output only depends on the tokens
before it, so sequences are cut right after the longest template's EOT token
(12 tokens instead of 77 for the 80 templates with CLIP's tokenizer); this gives
the same numbers as the full context (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastood.models import TextTower, _text_tower

__all__ = ["TextInverter", "InversionResult", "DEFAULT_FINAL_TEMPLATE"]

DEFAULT_FINAL_TEMPLATE = "a photo of a {}."
# two single-token words; their positions differ in exactly the class slot
_PROBES = ("dog", "cat")


@dataclass
class InversionResult:
    """What :meth:`TextInverter.invert` returns.

    Attributes:
        embeddings: (n, D) float32 unit-norm text embeddings of the learned
            pseudo-tokens in the final template(s).
        pseudo_tokens: (n, width) float32 learned token embeddings ``p``.
        losses: (steps,) float32 mean loss ``mean_i (1 − cos)`` *before* each update.
        final_loss: (n,) float32 ``1 − cos(embeddings_i, v_i)``.
    """

    embeddings: Tensor
    pseudo_tokens: Tensor
    losses: Tensor
    final_loss: Tensor


class TextInverter:
    """Invert image features into text embeddings through a pseudo-token (see module docs).

    Args:
        model: an open_clip model (its text tower is used, frozen).
        tokenizer: its tokenizer (``ClipBundle.tokenizer``).
        templates: format strings with one ``{}`` slot each (default: CLIP's 80
            ImageNet templates, :func:`fastood.labels.clip_imagenet_templates`).
        final_template: the template whose text embedding is returned after the
            optimisation; ``None`` = the normalised mean over all ``templates``.
            (The SPEC does not fix this; fastood's default is ``"a photo of a {}."``.)
        steps, lr, weight_decay, init_std: the optimisation (SPEC: 10, 2e-2, 0.01, 0.02).
        amp: fp16 autocast of the text tower on CUDA (default: on for CUDA).
        truncate: cut sequences after the longest EOT (exact with a causal mask).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[[Sequence[str]], Tensor],
        templates: Sequence[str] | None = None,
        *,
        final_template: str | None = DEFAULT_FINAL_TEMPLATE,
        steps: int = 10,
        lr: float = 2e-2,
        weight_decay: float = 0.01,
        init_std: float = 0.02,
        amp: bool | None = None,
        truncate: bool = True,
    ) -> None:
        if templates is None:
            from fastood.labels.prompts import clip_imagenet_templates

            templates = clip_imagenet_templates()
        templates = list(templates)
        if not templates:
            raise ValueError("templates is empty: need at least one prompt template with a '{}' slot")
        for t in templates + ([final_template] if final_template is not None else []):
            if not isinstance(t, str) or t.count("{}") != 1:
                raise ValueError(f"every template must be a string with exactly one '{{}}' slot, got {t!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative int, got {steps!r}")
        for name, v in (("lr", lr), ("init_std", init_std)):
            if not (float(v) > 0 and float(v) < float("inf")):
                raise ValueError(f"{name} must be positive and finite, got {v!r}")
        if not (float(weight_decay) >= 0 and float(weight_decay) < float("inf")):
            raise ValueError(f"weight_decay must be non-negative and finite, got {weight_decay!r}")
        self.model = model
        tower, why = _text_tower(model)
        if tower is None:
            raise ValueError(f"textual inversion needs an open_clip text transformer (CLIP, or CustomTextCLIP with "
                             f"a TextTransformer): {why}")
        self.tower: TextTower = tower
        self.tokenizer = tokenizer
        self.templates = templates
        self.final_template = final_template
        self.steps, self.lr, self.weight_decay, self.init_std = steps, float(lr), float(weight_decay), float(init_std)
        self.amp = amp
        self.truncate = bool(truncate)
        self.ids, self.slots, self.pool = self._tokenize(templates)
        if final_template is None:
            self.final_ids, self.final_slots, self.final_pool = self.ids, self.slots, self.pool
        else:
            self.final_ids, self.final_slots, self.final_pool = self._tokenize([final_template])

    @property
    def width(self) -> int:
        """The pseudo-token width (the text transformer's token width)."""
        return self.tower.width

    def _tokenize(self, templates: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Token ids (T, L) with the probe word in the slot, the slot positions (T,) and pooled positions (T,).

        With ``truncate`` (and a cuttable tower) ``L`` ends after the last pooled
        (EOT) token, and never before the last slot.
        """
        a = self.tokenizer([t.format(_PROBES[0]) for t in templates])
        b = self.tokenizer([t.format(_PROBES[1]) for t in templates])
        if not isinstance(a, Tensor) or a.dim() != 2:
            raise TypeError("tokenizer must return a 2-D tensor of token ids")
        diff = a != b
        per_row = diff.sum(dim=1)
        bad = torch.nonzero(per_row != 1).flatten().tolist()
        if bad:
            raise ValueError(f"cannot locate the class slot of template {templates[bad[0]]!r} as one token "
                             "(the tokenizer splits it or truncates it)")
        slots = diff.int().argmax(dim=1)
        pool = self.tower.pool_positions(a)
        if self.truncate:
            cut = max(self.tower.cut_length(pool, a.shape[1]), int(slots.max()) + 1)
            a = a[:, :cut]
        return a.contiguous(), slots, pool

    def _device(self) -> torch.device:
        return self.tower.token_embedding.weight.device

    def _autocast(self, device: torch.device):
        use = device.type == "cuda" and (self.amp is None or bool(self.amp))
        return torch.autocast(device.type, dtype=torch.float16, enabled=use)

    def encode(self, pseudo: Tensor, template_idx: Tensor | None = None, *, final: bool = False) -> Tensor:
        """Unnormalised text features (n, D) of ``pseudo`` (n, width) in templates ``template_idx`` (n,).

        Differentiable with respect to ``pseudo``. ``final=True`` uses the final
        template (``template_idx`` is then an index into the final templates,
        default 0).
        """
        ids_all, slots_all, pool_all = ((self.final_ids, self.final_slots, self.final_pool) if final
                                        else (self.ids, self.slots, self.pool))
        if pseudo.dim() != 2 or pseudo.shape[1] != self.width:
            raise ValueError(f"pseudo must be (n, {self.width}), got {tuple(pseudo.shape)}")
        n = pseudo.shape[0]
        if template_idx is None:
            template_idx = torch.zeros(n, dtype=torch.long)
        template_idx = template_idx.to("cpu", torch.long)
        device = self._device()
        ids = ids_all[template_idx].to(device)
        slots = slots_all[template_idx].to(device)
        with self._autocast(device):
            emb = self.tower.embed(ids)
            rows = torch.arange(n, device=device)
            emb = emb.index_put((rows, slots), pseudo.to(device=device, dtype=emb.dtype))
            out = self.tower.forward(emb, pool_all[template_idx].to(device))
        return out.float()

    def embed(self, pseudo: Tensor) -> Tensor:
        """Unit-norm (n, D) text embeddings of learned pseudo-tokens in the final template(s)."""
        with torch.no_grad():
            if self.final_template is not None:
                return F.normalize(self.encode(pseudo, final=True), dim=1)
            acc = None
            for t in range(len(self.templates)):
                idx = torch.full((pseudo.shape[0],), t, dtype=torch.long)
                e = F.normalize(self.encode(pseudo, idx), dim=1)
                acc = e if acc is None else acc + e
            return F.normalize(acc, dim=1)

    def invert(self, image_features: Tensor, *, generator: torch.Generator | None = None, seed: int = 0,
               init: Tensor | None = None, template_idx: Tensor | None = None) -> InversionResult:
        """Invert (n, D) image features (normalised here) into (n, D) unit-norm text embeddings.

        ``generator`` (a CPU ``torch.Generator``; a fresh one seeded with
        ``seed`` if not given) draws the initial ``p`` (n, width) first, then the
        template indices (steps, n). ``init`` / ``template_idx`` override those
        draws (for reproducing a run; the generator is then not advanced for them).
        """
        if not isinstance(image_features, Tensor) or image_features.dim() != 2:
            raise ValueError(f"image_features must be a 2-D (n, D) tensor, got "
                             f"{getattr(image_features, 'shape', type(image_features).__name__)}")
        device = self._device()
        v = F.normalize(image_features.detach().to(device=device, dtype=torch.float32), dim=1)
        n = v.shape[0]
        if generator is None:
            generator = torch.Generator().manual_seed(int(seed))
        if init is None:
            p0 = torch.randn(n, self.width, generator=generator) * self.init_std
        else:
            if not isinstance(init, Tensor) or tuple(init.shape) != (n, self.width):
                raise ValueError(f"init must be a ({n}, {self.width}) tensor, got {getattr(init, 'shape', init)!r}")
            p0 = init.detach().float().cpu()
        if template_idx is None:
            picks = torch.randint(len(self.templates), (self.steps, n), generator=generator)
        else:
            picks = torch.as_tensor(template_idx, dtype=torch.long).cpu()
            if tuple(picks.shape) != (self.steps, n) or bool((picks < 0).any() | (picks >= len(self.templates)).any()):
                raise ValueError(f"template_idx must be ({self.steps}, {n}) indices into the "
                                 f"{len(self.templates)} templates")
        if n == 0:
            e = torch.empty(0, v.shape[1])
            return InversionResult(e, p0, torch.zeros(self.steps), torch.empty(0))
        p = p0.to(device=device, copy=True).requires_grad_(True)  # never alias the caller's init
        opt = torch.optim.AdamW([p], lr=self.lr, weight_decay=self.weight_decay)
        losses = []
        with torch.enable_grad():
            for s in range(self.steps):
                feat = self.encode(p, picks[s])
                if feat.shape[1] != v.shape[1]:
                    raise ValueError(f"image_features have width {v.shape[1]} but the text tower outputs {feat.shape[1]}")
                per = 1.0 - F.cosine_similarity(feat, v, dim=1)
                losses.append(per.detach().mean())
                (grad,) = torch.autograd.grad(per.sum(), [p])
                p.grad = grad
                opt.step()
                p.grad = None
        p = p.detach()
        emb = self.embed(p)
        if emb.shape[1] != v.shape[1]:
            raise ValueError(f"image_features have width {v.shape[1]} but the text tower outputs {emb.shape[1]}")
        final = 1.0 - (emb * v).sum(dim=1)
        hist = torch.stack(losses).float().cpu() if losses else torch.zeros(0)
        return InversionResult(emb.float(), p.float(), hist, final.float())
