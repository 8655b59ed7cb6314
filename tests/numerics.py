"""The error criterion of shared/DESIGN.md's testing rules, and the float64 truth of
the segmented-LSE kernels (shared by the Triton, CUDA and CUDA-emulator tests).

A kernel's error against the float64 truth must be at most ~2× the error of the
plain torch computation in the same dtype, plus a small epsilon (a fixed atol
does not work at τ = 0.01, where every cosine error is multiplied by 100).
"""

from __future__ import annotations

import torch
from torch import Tensor


NEG_INF = float("-inf")


def max_abs_err(out: Tensor, truth: Tensor) -> float:
    """Max |out − truth| over finite entries; infinities must match exactly, no NaN."""
    out, truth = out.detach().double().cpu(), truth.double().cpu()
    inf_t = torch.isinf(truth)
    assert torch.equal(inf_t, torch.isinf(out)), "infinities differ from the truth"
    assert torch.equal(truth[inf_t], out[inf_t]), "infinities of different sign"
    assert not torch.isnan(out).any(), "NaN in the output"
    fin = ~inf_t
    return (out[fin] - truth[fin]).abs().max().item() if fin.any() else 0.0


def assert_error_budget(out: Tensor, truth: Tensor, baseline: Tensor, eps: float, factor: float = 2.0,
                        floor: float = 0.0) -> None:
    """``max|out − truth| ≤ max(factor · max|baseline − truth|, floor) + eps``.

    ``floor`` is the a-priori fp32-accumulation bound of the case (e.g. ``4·u32·scale·√D`` for
    logits ``scale·x̂·t``): torch's own error is one sample of that rounding and can be lucky,
    so "2× torch" alone fails correct kernels now and then; the floor keeps the bound at fp32
    level, far below what a bf16/TF32 GEMM would give (``scale·2⁻⁸`` / ``scale·2⁻¹¹``)."""
    err = max_abs_err(out, truth)
    base = max_abs_err(baseline, truth)
    bound = max(factor * base, floor) + eps
    assert err <= bound, f"error {err:.3e} > max({factor} × torch's {base:.3e}, {floor:.1e}) + {eps:.1e}"


def assert_pred_matches(pred: Tensor, x64: Tensor, bank64: Tensor, tol: float) -> None:
    """``pred`` is the argmax of the cosines, up to near-ties within ``tol``."""
    cos = torch.nn.functional.normalize(x64, dim=1) @ bank64.T
    best = cos.max(dim=1).values
    got = cos.gather(1, pred.cpu()[:, None])[:, 0]
    assert (best - got).max().item() <= tol, "prediction is not a (near-)maximiser"


# ------------------------------------------------------------- segmented-LSE kernels
def torch_fp32_segment_lse(x: Tensor, bank: Tensor, offsets: list[int], row_scale: Tensor) -> Tensor:
    """Plain torch in fp32 on the same inputs (-inf for an empty segment): the error yardstick."""
    logits32 = row_scale[:, None] * (x @ bank.T)
    return torch.stack([torch.logsumexp(logits32[:, lo:hi], 1) for lo, hi in zip(offsets[:-1], offsets[1:])], 1)


def segment_truth(x: Tensor, bank: Tensor, offsets: list[int], row_scale: Tensor):
    """float64 truth of the inputs as given: (lse (B, S), max0 (B,), argmax0 (B,), logits)."""
    logits = row_scale.double().cpu()[:, None] * (x.double().cpu() @ bank.double().cpu().T)
    B = logits.shape[0]
    cols = []
    for lo, hi in zip(offsets[:-1], offsets[1:]):
        if hi > lo:
            cols.append(torch.logsumexp(logits[:, lo:hi], dim=1))
        else:
            cols.append(torch.full((B,), NEG_INF, dtype=torch.float64))
    lse = torch.stack(cols, dim=1)
    seg0 = logits[:, offsets[0] : offsets[1]]
    if seg0.shape[1] == 0:
        return lse, torch.full((B,), NEG_INF, dtype=torch.float64), torch.zeros(B, dtype=torch.int64), logits
    return lse, seg0.max(dim=1).values, seg0.argmax(dim=1), logits


def unit_rows(n: int, d: int, gen: torch.Generator) -> Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1)


def neglabel_offsets(k: int, groups: int, size: int) -> list[int]:
    return [0] + [k + g * size for g in range(groups + 1)]


def check_argmax(arg: Tensor, ref_arg: Tensor, logits: Tensor, offsets: list[int], tol: float) -> None:
    """The returned index is in segment 0 and attains the max up to ``tol`` (near-ties)."""
    arg = arg.cpu()
    seg0 = logits[:, offsets[0] : offsets[1]]
    if seg0.shape[1] == 0:
        assert torch.equal(arg, torch.zeros_like(arg))
        return
    assert ((arg >= 0) & (arg < seg0.shape[1])).all()
    got = seg0.gather(1, arg[:, None])[:, 0]
    assert (seg0.max(dim=1).values - got).max().item() <= tol
    # Where the maximum is clear, the index must be exactly torch's first argmax.
    top2 = seg0.topk(min(2, seg0.shape[1]), dim=1).values
    clear = (top2[:, 0] - top2[:, -1]) > tol if seg0.shape[1] > 1 else torch.ones(len(arg), dtype=torch.bool)
    assert torch.equal(arg[clear], ref_arg[clear])
