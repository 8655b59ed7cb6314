"""pytest-benchmark cases for the CMA loss: forward, and forward + backward, pair mode and
class-bank mode, fused backends against the materialised (eager) formulation.

Run: ``pytest bench --benchmark-enable`` / ``pytest bench`` (smoke). Sizes: :mod:`bench.shapes`.
Every case also checks its loss (and ∂image) against the float64 eager computation.
"""

from __future__ import annotations

import pytest
import torch

import fastood
from fastood import reference_cma as R
from fastood.losses import cma_loss
from bench.shapes import DEVICE, shapes, timed

S = shapes()
B, D, K = S["cma_B"], S["cma_D"], S["cma_K"]
LAM = 0.001
BACKENDS = ["torch"] + (["triton"] if DEVICE == "cuda" and fastood.backends()["triton"] else [])
CANDIDATES = [f"fastood-{b}" for b in BACKENDS] + ["eager"]


def _loss_fn(name: str):
    if name == "eager":
        return lambda x, t, s, labels: R.cma_loss(x, t, s, lam=LAM, labels=labels)
    backend = name.split("-", 1)[1]
    return lambda x, t, s, labels: cma_loss(x, t, s, lam=LAM, labels=labels, backend=backend)


@pytest.fixture(scope="module", params=["pair", "bank"])
def case(request):
    """(mode, image features, text features, labels): texts near their images, as in training."""
    gen = torch.Generator().manual_seed(0)
    n = B if request.param == "pair" else K
    t = torch.randn(n, D, generator=gen)
    labels = None if request.param == "pair" else torch.randint(0, K, (B,), generator=gen)
    x = (t if labels is None else t[labels]) + 0.8 * torch.randn(B, D, generator=gen)
    dev = lambda v: None if v is None else v.to(DEVICE)  # noqa: E731
    return request.param, dev(x), dev(t), dev(labels)


def _truth(x, t, labels):
    xd = x.double().requires_grad_(True)
    loss = R.cma_loss(xd, t.double(), torch.tensor(100.0, dtype=torch.float64), lam=LAM, labels=labels)
    loss.backward()
    return loss.detach(), xd.grad


@pytest.mark.parametrize("name", CANDIDATES)
def test_cma_fwd(benchmark, case, name):
    mode, x, t, labels = case
    fn = _loss_fn(name)
    scale = torch.tensor(100.0, device=DEVICE)
    benchmark.group = f"cma fwd {mode} B={B} N={t.shape[0]} D={D}"
    with torch.no_grad():
        loss = timed(benchmark, lambda: fn(x, t, scale, labels))
    truth, _ = _truth(x, t, labels)
    assert abs(float(loss) - float(truth)) < 1e-4 * max(1.0, abs(float(truth)))


@pytest.mark.parametrize("name", CANDIDATES)
def test_cma_fwd_bwd(benchmark, case, name):
    mode, x0, t0, labels = case
    fn = _loss_fn(name)
    x = x0.clone().requires_grad_(True)
    t = t0.clone().requires_grad_(True)
    log_scale = torch.tensor(100.0, device=DEVICE).log().requires_grad_(True)
    benchmark.group = f"cma fwd+bwd {mode} B={B} N={t.shape[0]} D={D}"

    def step():
        x.grad = t.grad = log_scale.grad = None
        loss = fn(x, t, log_scale.exp(), labels)
        loss.backward()
        return loss.detach(), x.grad

    loss, grad = timed(benchmark, step)
    truth, gtruth = _truth(x0, t0, labels)
    assert abs(float(loss) - float(truth)) < 1e-4 * max(1.0, abs(float(truth)))
    assert (grad.double() - gtruth).abs().max() < 1e-4 * gtruth.abs().max() + 1e-8
