"""``mcm_score``: Maximum Concept Matching (shared/SPEC.md §2) on the fused primitive.

    S(x) = max_k softmax_k(c_k / T) = exp(max_k c_k/T − LSE_k(c_k/T))

The fused kernel's online state already holds the running max of the single
segment, so MCM costs one pass and never forms the softmax.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastood.ops._dispatch import check_pair, check_temperature, run_segment_lse
from fastood.ops._segment_lse_backward import score_with_grad
from fastood.ops.neglabel import _forward_fused_grad, _wants_grad_path
from fastood.ops.segment_lse import _segment_lse_op

__all__ = ["mcm_score"]


@torch.library.custom_op("fastood::mcm_score", mutates_args=())
def _mcm_op(
    x: Tensor, id_bank: Tensor, temperature: float, normalize: bool, want_pred: bool, backend: str
) -> tuple[Tensor, Tensor]:
    temperature = check_temperature("temperature", temperature)
    off = torch.tensor([0, id_bank.shape[0]], dtype=torch.int64)
    lse, max0, pred = run_segment_lse(
        x, id_bank, off, 1.0 / temperature, normalize, want_pred, backend, bank_name="id_bank"
    )
    return torch.exp(max0 - lse[:, 0]), pred


@_mcm_op.register_fake
def _(x, id_bank, temperature, normalize, want_pred, backend):
    B = x.shape[0]
    return x.new_empty((B,), dtype=torch.float32), x.new_empty((B if want_pred else 0,), dtype=torch.int64)


def mcm_score(
    x: Tensor,
    id_bank: Tensor,
    *,
    temperature: float = 1.0,
    normalize: bool = True,
    return_pred: bool = False,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """MCM score ``max_k softmax_k(cos_k / T)``, higher = more in-distribution.

    Args:
        x: (B, D) image features (float16 / bfloat16 / float32).
        id_bank: (K, D) unit-norm ID label embeddings on ``x``'s device.
        temperature: T (SPEC: 1, on raw cosine); positive, with ``1/T`` finite in float32 with a
            factor 2 of headroom (T ≥ ≈5.88e-39), else ``ValueError``.
        normalize: L2-normalise ``x`` rows over the whole float range (an all-zero row
            is an error, as is any inf / NaN).
        return_pred: also return ``argmax_k cos_k`` (int64).
        backend: see :func:`fastood.ops.segment_lse`.

    Differentiable with respect to ``x`` when ``x.requires_grad`` (the fused backward; at
    tied maxima the subgradient of the first maximiser). float64 inputs give float64 scores.
    """
    if not (isinstance(x, Tensor) and isinstance(id_bank, Tensor) and torch.float64 in (x.dtype, id_bank.dtype)):
        check_pair(x, id_bank, "x", "id_bank")
    check_temperature("temperature", temperature)
    if _wants_grad_path(x, id_bank):
        if _forward_fused_grad(backend, x):
            # CPU / chunked torch: the gradient pass fused into the forward (one logits GEMM per block)
            score, pred, _ = score_with_grad(x, id_bank, torch.tensor([0, id_bank.shape[0]], dtype=torch.int64),
                                             1.0 / float(temperature), bool(normalize), bool(return_pred), backend,
                                             "mcm")
            return (score, pred) if return_pred else score
        # differentiable (or float64): exp(max0 − lse_0) by autograd over the segment_lse op's
        # fused backward (max0: the subgradient at the first argmax)
        lse, max0, pred = _segment_lse_op(x, id_bank, torch.tensor([0, id_bank.shape[0]], dtype=torch.int64),
                                          1.0 / float(temperature), bool(normalize), bool(return_pred), backend)
        score = torch.exp(max0 - lse[:, 0])
        return (score, pred) if return_pred else score
    score, pred = _mcm_op(x, id_bank, float(temperature), bool(normalize), bool(return_pred), backend)
    return (score, pred) if return_pred else score
