"""``torch.nn`` modules over fastood's fused ops.

- :class:`CMALoss` — the fused CMA / CLIP contrastive loss with open_clip's
  ``ClipLoss`` call signature, optionally over the global batch of a
  ``torch.distributed`` job (``gather=True``).
- :func:`all_gather_with_grad` — a differentiable all-gather (concatenation in rank
  order) whose backward sums the incoming gradients over ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fastood.ops.cma_loss import CMA_BACKENDS, cma_loss

__all__ = ["CMALoss", "all_gather_with_grad"]


def _distributed(group) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


class _AllGather(torch.autograd.Function):
    """Forward: concatenate every rank's tensor along dim 0, in rank order (ranks may
    hold different numbers of rows). Backward: all-reduce (sum) the gradient of the
    concatenation and return this rank's rows of it.

    The sum is what makes the gathered loss right under DDP: when every rank computes
    the same global loss ℓ from the gathered features, each rank's slice of the summed
    gradient is ``world_size · ∂ℓ/∂x_rank``; DDP then averages parameter gradients over
    ``world_size`` ranks, giving ``Σ_r ∂ℓ/∂x_r · ∂x_r/∂θ = ∂ℓ/∂θ`` — the
    single-process gradient of the global-batch loss.
    """

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        world = dist.get_world_size(group)
        rank = dist.get_rank(group)
        n = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
        sizes = [torch.empty_like(n) for _ in range(world)]
        dist.all_gather(sizes, n, group=group)
        sizes = [int(s) for s in torch.cat(sizes).tolist()]
        top = max(sizes)
        padded = x.contiguous()
        if x.shape[0] < top:
            padded = torch.cat([padded, padded.new_zeros((top - x.shape[0], *x.shape[1:]))])
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=group)
        ctx.group, ctx.sizes, ctx.rank = group, sizes, rank
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        lo = sum(ctx.sizes[: ctx.rank])
        return grad[lo : lo + ctx.sizes[ctx.rank]], None


def all_gather_with_grad(x: Tensor, group=None) -> Tensor:
    """Concatenate ``x`` from every rank of ``group`` (dim 0, rank order), differentiably.

    Without an initialised process group of more than one rank, returns ``x``.
    Integer tensors (labels) are gathered without a gradient.
    """
    if not _distributed(group):
        return x
    if not x.dtype.is_floating_point:
        with torch.no_grad():
            return _AllGather.apply(x, group)
    return _AllGather.apply(x, group)


class CMALoss(nn.Module):
    """The fused CMA loss as a module, called like open_clip's ``ClipLoss``.

    ``loss = CMALoss()(image_features, text_features, logit_scale)`` where
    ``logit_scale`` is the multiplicative scale (``model.logit_scale.exp()``).
    See :func:`fastood.losses.cma_loss` for the definition of both modes; pass
    ``labels=`` (keyword) for the class-bank mode. ``lam=0`` in pair mode is
    ``ClipLoss``.

    ``gather=True`` under ``torch.distributed`` (any backend; NCCL needs CUDA
    tensors) all-gathers the features *with gradients* and computes the loss of the
    **global** batch on every rank — every rank returns the same value, the
    single-process loss of the concatenated batch (rank order). Pair mode gathers
    images and texts; class-bank mode gathers images and labels (the K class
    prompts are the same on every rank and are not gathered). Gradients are then
    right after DDP's averaging: the gather's backward sums over ranks (see
    :func:`all_gather_with_grad`), so the DDP-averaged parameter gradient equals the
    gradient of the global-batch loss in one process, and ``logit_scale`` (computed
    identically on each rank) gets the full global gradient on every rank. Each rank
    does the whole B_global² work (like ``ClipLoss`` without ``local_loss``); ranks
    may hold different batch sizes. Without an initialised process group (or with
    one rank) ``gather`` does nothing.

    Args:
        lam: the alignment-regulariser weight λ (CMA's reference 0.001).
        normalize: L2-normalise both feature sets inside the op.
        gather: all-gather over the default process group (or ``group``) first.
        backend: ``"auto"``, ``"triton"`` or ``"torch"``.
        group: the process group to gather over (default: the world).
    """

    def __init__(self, lam: float = 0.001, normalize: bool = True, gather: bool = False,
                 backend: str = "auto", group=None):
        super().__init__()
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be a number in [0, 1], got {lam!r}")
        if backend not in CMA_BACKENDS:
            raise ValueError(f"backend must be one of {CMA_BACKENDS}, got {backend!r}")
        self.lam = float(lam)
        self.normalize = bool(normalize)
        self.gather = bool(gather)
        self.backend = backend
        self.group = group

    def extra_repr(self) -> str:
        return f"lam={self.lam}, normalize={self.normalize}, gather={self.gather}, backend={self.backend!r}"

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float,
                output_dict: bool = False, *, labels: Tensor | None = None):
        if self.gather and _distributed(self.group):
            if not isinstance(image_features, Tensor) or not isinstance(text_features, Tensor):
                raise TypeError("image_features and text_features must be tensors")
            # Check what would otherwise fail on one rank only (and leave the others waiting).
            if labels is None and image_features.shape[0] != text_features.shape[0]:
                raise ValueError(
                    f"pair mode needs one text per image on each rank, got {image_features.shape[0]} image_features "
                    f"and {text_features.shape[0]} text_features"
                )
            image_features = all_gather_with_grad(image_features, self.group)
            if labels is None:
                text_features = all_gather_with_grad(text_features, self.group)
            elif isinstance(labels, Tensor):
                labels = all_gather_with_grad(labels, self.group)
        loss = cma_loss(image_features, text_features, logit_scale, lam=self.lam, labels=labels,
                        normalize=self.normalize, backend=self.backend)
        return {"contrastive_loss": loss} if output_dict else loss
