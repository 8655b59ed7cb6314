"""``segment_lse``: segmented log-sum-exp over a normalised similarity GEMM.

    lse[i, s] = log Σ_{j ∈ [offsets[s], offsets[s+1])} exp(scale · x̂_i · bank_j),   x̂ = x / ||x||

computed without writing the B×N logits (fused kernels keep an online
running-max / rescaled-sum state per row and segment, in fp32). Registered as
the custom op ``torch.ops.fastood.segment_lse`` with a fake implementation, so
``torch.compile`` and ``torch.export`` see one node.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from fastood.ops._dispatch import as_offsets, resolve_backend, run_segment_lse
from fastood.ops._segment_lse_backward import register as _register_backward, segment_lse_float64

__all__ = ["segment_lse", "segment_lse_max"]


@torch.library.custom_op("fastood::segment_lse", mutates_args=())
def _segment_lse_op(
    x: Tensor, bank: Tensor, offsets: Tensor, scale: float, normalize: bool, want_argmax: bool, backend: str
) -> tuple[Tensor, Tensor, Tensor]:
    if x.dtype == torch.float64 or bank.dtype == torch.float64:
        # the fused forward kernels are fp32-only: float64 (gradient checks) is chunked torch in float64
        resolve_backend(backend, x.device)
        return segment_lse_float64(x, bank, offsets, scale, normalize, want_argmax)
    return run_segment_lse(x, bank, offsets, scale, normalize, want_argmax, backend)


@_segment_lse_op.register_fake
def _(x, bank, offsets, scale, normalize, want_argmax, backend):
    B, S = x.shape[0], offsets.shape[0] - 1
    out = torch.float64 if torch.float64 in (x.dtype, bank.dtype) else torch.float32
    return (
        x.new_empty((B, S), dtype=out),
        x.new_empty((B,), dtype=out),
        x.new_empty((B if want_argmax else 0,), dtype=torch.int64),
    )


def _offsets_tensor(offsets: Sequence[int] | Tensor, bank: Tensor) -> Tensor:
    if not isinstance(bank, Tensor):
        raise TypeError(f"bank must be a torch.Tensor, got {type(bank).__name__}")
    if bank.dim() != 2:
        raise ValueError(f"bank must be 2-D (N, D), got shape {tuple(bank.shape)}")
    return as_offsets(offsets, bank.shape[0])


def segment_lse(
    x: Tensor,
    bank: Tensor,
    offsets: Sequence[int] | Tensor,
    *,
    scale: float = 100.0,
    normalize: bool = True,
    backend: str = "auto",
) -> Tensor:
    """Segmented log-sum-exp of ``scale · x̂ · bankᵀ`` over column segments.

    Args:
        x: (B, D) image features, float16 / bfloat16 / float32, any strides.
        bank: (N, D) label embeddings on ``x``'s device. Rows are used as given:
            unit norm is the caller's contract (a :class:`fastood.bank.TextBank`
            guarantees it).
        offsets: S+1 non-decreasing ints from 0 to N (a sequence or an integer
            tensor); segment s is bank rows ``[offsets[s], offsets[s+1])``.
        scale: multiplies the cosine (``1 / temperature``); positive, at most
            ``FLT_MAX/2`` (≈1.7e38: the fp32 kernels form ``scale · log2(e) · cos``).
        normalize: L2-normalise the rows of ``x`` first, over the whole float range
            (rows are rescaled by an exact power of two where ``||x||²`` would over- or
            underflow in fp32: ``x·1e30`` and ``x·1e-30`` give the result of ``x``). An
            all-zero row is then an error (its cosine is undefined).
        backend: ``"auto"``, ``"triton"``, ``"cuda"``, ``"cpu"`` or ``"torch"``
            (see :func:`fastood.backends`).

    Returns:
        (B, S) float32; an empty segment gives ``-inf``.

    Mixed input dtypes compute in ``torch.promote_types(x.dtype, bank.dtype)``.
    Non-finite values in ``x`` raise ``ValueError``; non-finite values in
    ``bank`` are not checked here (that would read the whole bank on every call)
    and propagate as NaN/inf.

    Differentiable with respect to ``x`` (``bank`` is a constant: one that requires grad
    is refused), by a fused backward pass that never forms the B×N logits
    (``fastood.ops._segment_lse_backward``). float64 inputs give a float64 result (forward
    in chunked float64 torch on every backend, for gradient checks).
    """
    off = _offsets_tensor(offsets, bank)
    lse, _, _ = _segment_lse_op(x, bank, off, float(scale), bool(normalize), False, backend)
    return lse


def segment_lse_max(
    x: Tensor,
    bank: Tensor,
    offsets: Sequence[int] | Tensor,
    *,
    scale: float = 100.0,
    normalize: bool = True,
    want_argmax: bool = True,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`segment_lse` plus the max (and first argmax) of the logits in segment 0.

    Returns ``(lse (B, S) f32, max0 (B,) f32, argmax0 (B,) int64)``; ``argmax0`` is
    empty unless ``want_argmax``. ``max0`` is in logit units (``scale · cos``).
    """
    off = _offsets_tensor(offsets, bank)
    return _segment_lse_op(x, bank, off, float(scale), bool(normalize), bool(want_argmax), backend)


_register_backward(_segment_lse_op)  # the fused backward (d/dx; the bank is constant)
