"""The error criterion of shared/DESIGN.md's testing rules.

A kernel's error against the float64 truth must be at most ~2× the error of the
plain torch computation in the same dtype, plus a small epsilon (a fixed atol
does not work at τ = 0.01, where every cosine error is multiplied by 100).
"""

from __future__ import annotations

import torch
from torch import Tensor


def max_abs_err(out: Tensor, truth: Tensor) -> float:
    out, truth = out.double(), truth.double()
    inf_t = torch.isinf(truth)
    assert torch.equal(inf_t, torch.isinf(out)), "infinities differ from the truth"
    assert torch.equal(truth[inf_t], out[inf_t]), "infinities of different sign"
    assert not torch.isnan(out).any(), "NaN in the output"
    fin = ~inf_t
    return (out[fin] - truth[fin]).abs().max().item() if fin.any() else 0.0


def assert_error_budget(out: Tensor, truth: Tensor, baseline: Tensor, eps: float, factor: float = 2.0) -> None:
    """``max|out − truth| ≤ factor · max|baseline − truth| + eps``."""
    err = max_abs_err(out, truth)
    base = max_abs_err(baseline, truth)
    assert err <= factor * base + eps, f"error {err:.3e} > {factor} × torch's {base:.3e} + {eps:.1e}"


def assert_pred_matches(pred: Tensor, x64: Tensor, bank64: Tensor, tol: float) -> None:
    """``pred`` is the argmax of the cosines, up to near-ties within ``tol``."""
    cos = torch.nn.functional.normalize(x64, dim=1) @ bank64.T
    best = cos.max(dim=1).values
    got = cos.gather(1, pred.cpu()[:, None])[:, 0]
    assert (best - got).max().item() <= tol, "prediction is not a (near-)maximiser"
