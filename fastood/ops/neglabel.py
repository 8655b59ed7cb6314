"""``neglabel_score``: the NegLabel grouped score (shared/SPEC.md §1) on the fused primitive.

Bank layout ``[ID (K) | negatives (M)]``. The last ``M mod G`` negatives are
dropped; the remaining ``G·m`` rows form G contiguous groups of ``m = M // G``.
With ``L_id = LSE_{k≤K}(c_k/τ)`` and ``L_g = LSE_{j∈g}(c_j/τ)``:

    S(x) = (1/G) Σ_g Σ_k e^{c_k/τ} / (Σ_k e^{c_k/τ} + Σ_{j∈g} e^{c_j/τ})
         = mean_g sigmoid(L_id − L_g)

The sigmoid of an LSE difference never forms a ratio of exponentials, so it does
not overflow at τ = 0.01. ``G = 1`` is the ungrouped softmax score.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from fastood.ops._dispatch import check_int, check_pair, check_temperature, run_segment_lse
from fastood.ops._segment_lse_backward import score_with_grad
from fastood.ops.segment_lse import _segment_lse_op


def _forward_fused_grad(backend: object, x: Tensor) -> bool:
    """The cpu / torch backends (``auto`` on CPU tensors is one of them) compute the score's
    gradient in the forward pass; Triton / CUDA run the fused backward after it. Decided from
    the arguments alone (no backend probing), so torch.compile traces it; the op validates."""
    return backend in ("cpu", "torch") or (backend == "auto" and x.device.type == "cpu")


def _wants_grad_path(x: Tensor, bank: Tensor) -> bool:
    """True when the score must be differentiable in ``x`` (or the inputs are float64)."""
    if not (isinstance(x, Tensor) and isinstance(bank, Tensor)):
        return False  # the op's checks name the bad argument
    return (torch.float64 in (x.dtype, bank.dtype)) or (torch.is_grad_enabled() and x.requires_grad)

__all__ = ["neglabel_score", "neglabel_offsets"]


def neglabel_offsets(num_id: int, num_bank: int, groups: int) -> list[int]:
    """``[0, K, K+m, …, K+G·m]`` with ``m = (N − K) // G``; validates the layout."""
    check_int("num_id", num_id, 1, num_bank - 1)
    num_neg = num_bank - num_id
    check_int("groups", groups, 1, num_neg)
    m = num_neg // groups
    return [0] + [num_id + g * m for g in range(groups + 1)]


@functools.lru_cache(maxsize=64)
def _offsets_on(num_id: int, num_bank: int, groups: int, device: str) -> Tensor:
    return torch.tensor(neglabel_offsets(num_id, num_bank, groups), dtype=torch.int64, device=device)


@torch.library.custom_op("fastood::neglabel_score", mutates_args=())
def _neglabel_op(
    x: Tensor, bank: Tensor, num_id: int, groups: int, temperature: float, normalize: bool, want_pred: bool, backend: str
) -> tuple[Tensor, Tensor]:
    check_pair(x, bank)
    temperature = check_temperature("temperature", temperature)
    off = _offsets_on(num_id, bank.shape[0], groups, "cpu")
    kept = bank[: int(off[-1])]  # drop the last M mod G negatives
    lse, _, pred = run_segment_lse(x, kept, off, 1.0 / temperature, normalize, want_pred, backend)
    score = torch.sigmoid(lse[:, :1] - lse[:, 1:]).mean(dim=1)
    return score, pred


@_neglabel_op.register_fake
def _(x, bank, num_id, groups, temperature, normalize, want_pred, backend):
    B = x.shape[0]
    return x.new_empty((B,), dtype=torch.float32), x.new_empty((B if want_pred else 0,), dtype=torch.int64)


def neglabel_score(
    x: Tensor,
    bank: Tensor,
    num_id: int,
    *,
    groups: int = 1,
    temperature: float = 0.01,
    normalize: bool = True,
    return_pred: bool = False,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """NegLabel score, higher = more in-distribution.

    Args:
        x: (B, D) image features (float16 / bfloat16 / float32).
        bank: (N, D) unit-norm text embeddings ``[ID | negatives]`` on ``x``'s device;
            grouping is contiguous (permuting negatives is the bank builder's job).
        num_id: K, the number of ID rows at the top of ``bank`` (1 ≤ K < N).
        groups: G ≥ 1 and ≤ the number of negatives; the remainder is dropped.
        temperature: τ, logits are ``cos / τ`` in fp32: positive, with ``1/τ`` finite in
            float32 with a factor 2 of headroom (τ ≥ ≈5.88e-39), else ``ValueError``.
        normalize: L2-normalise ``x`` rows over the whole float range (``x·1e30`` and
            ``x·1e-30`` score as ``x``); an all-zero row is an error, as is any inf / NaN.
        return_pred: also return the ID prediction ``argmax_{k<K} cos`` (int64).
        backend: see :func:`fastood.ops.segment_lse`.

    Returns:
        scores (B,) float32, or ``(scores, pred)`` with ``return_pred``.

    Differentiable with respect to ``x`` when ``x.requires_grad``: the fused
    ``segment_lse`` backward (never the B×N logits) and autograd through
    ``mean_g sigmoid(L_id − L_g)``. float64 inputs give float64 scores (gradient checks).
    """
    if not isinstance(bank, Tensor) or bank.dim() != 2:
        check_pair(x, bank)
    off = neglabel_offsets(num_id, bank.shape[0], groups)  # argument errors before the op
    check_temperature("temperature", temperature)
    if _wants_grad_path(x, bank):
        if _forward_fused_grad(backend, x):
            # CPU / chunked torch: the gradient pass fused into the forward (one logits GEMM per block)
            score, pred, _ = score_with_grad(x, bank[: off[-1]], torch.tensor(off, dtype=torch.int64),
                                             1.0 / float(temperature), bool(normalize), bool(return_pred), backend,
                                             "neglabel")
            return (score, pred) if return_pred else score
        # differentiable (or float64): the segment_lse op, whose fused backward gives d lse / dx,
        # then autograd through the cheap (B, S) formula
        # the op itself (not segment_lse_max): its offsets are checked inside the op, so
        # torch.compile traces no data-dependent .item() here
        lse, _, pred = _segment_lse_op(x, bank[: off[-1]], torch.tensor(off, dtype=torch.int64),
                                       1.0 / float(temperature), bool(normalize), bool(return_pred), backend)
        score = torch.sigmoid(lse[:, :1] - lse[:, 1:]).mean(dim=1)
        return (score, pred) if return_pred else score
    score, pred = _neglabel_op(x, bank, num_id, groups, float(temperature), bool(normalize), bool(return_pred), backend)
    return (score, pred) if return_pred else score
