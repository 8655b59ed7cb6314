"""pytest-benchmark cases for the fused scoring ops at the op level: ``segment_lse`` and
the NegLabel / MCM heads, forward and (once it lands) backward, every available backend.

Run: ``pytest bench --benchmark-enable`` (timing, ``--benchmark-autosave`` to keep a run,
``--benchmark-compare`` to compare with the last saved one) or ``pytest bench`` (each case
once, a smoke test with a correctness check). Sizes: :mod:`bench.shapes`.
"""

from __future__ import annotations

import pytest
import torch

import fastood
from fastood import reference as R
from bench.shapes import DEVICE, shapes, timed

S = shapes()
B, D, K, M = S["score_B"], S["score_D"], S["score_K"], S["score_M"]
GROUPS = 10 if M >= 10 else 1
TAG = f"B={B} D={D} K={K} M={M}"
# Triton on a CPU only runs under the interpreter: correct, far too slow to time
BACKENDS = [b for b, ok in fastood.backends().items() if ok and not (DEVICE == "cpu" and b in ("triton", "cuda"))]


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(0)
    dtype = torch.float16 if DEVICE == "cuda" else torch.float32
    bank = torch.nn.functional.normalize(torch.randn(K + M, D, generator=gen), dim=1)
    x = torch.randn(B, D, generator=gen)
    return x.to(DEVICE, dtype), bank.to(DEVICE, dtype)


def _tol(x):
    return 2e-2 if x.dtype == torch.float16 else 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_segment_lse_fwd(benchmark, inputs, backend):
    x, bank = inputs
    per = M // GROUPS
    offsets = [0, K] + [K + per * (g + 1) for g in range(GROUPS)]
    benchmark.group = f"segment_lse fwd {TAG} G={GROUPS}"
    out = timed(benchmark, lambda: fastood.segment_lse(x, bank[: offsets[-1]], offsets, backend=backend))
    logits = 100.0 * torch.nn.functional.normalize(x.double(), dim=1) @ bank[: offsets[-1]].double().T
    truth = torch.stack([logits[:, a:b].logsumexp(1) for a, b in zip(offsets[:-1], offsets[1:])], 1)
    assert (out.double() - truth).abs().max() < _tol(x) * 100


@pytest.mark.parametrize("backend", BACKENDS)
def test_neglabel_score_fwd(benchmark, inputs, backend):
    x, bank = inputs
    benchmark.group = f"neglabel fwd {TAG} G={GROUPS}"
    out = timed(benchmark, lambda: fastood.neglabel_score(x, bank, K, groups=GROUPS, backend=backend))
    truth = R.neglabel_score(x.double(), bank.double(), K, groups=GROUPS)
    assert (out.double() - truth).abs().max() < _tol(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mcm_score_fwd(benchmark, inputs, backend):
    x, bank = inputs
    benchmark.group = f"mcm fwd {TAG}"
    out = timed(benchmark, lambda: fastood.mcm_score(x, bank[:K], backend=backend))
    truth = R.mcm_score(x.double(), bank[:K].double())
    assert (out.double() - truth).abs().max() < _tol(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_neglabel_score_grad(benchmark, inputs, backend):
    """Forward + backward to the image features; skipped until the scores' autograd formula lands."""
    x0, bank = inputs
    x = x0.float().clone().requires_grad_(True)
    try:
        fastood.neglabel_score(x, bank.float(), K, groups=GROUPS, backend=backend).sum().backward()
    except RuntimeError as exc:
        if "no autograd formula was registered" in str(exc):
            pytest.skip("neglabel_score has no backward yet (scores grad has not landed)")
        raise
    benchmark.group = f"neglabel fwd+bwd {TAG} G={GROUPS}"

    def step():
        x.grad = None
        fastood.neglabel_score(x, bank.float(), K, groups=GROUPS, backend=backend).sum().backward()
        return x.grad

    grad = timed(benchmark, step)
    xd = x.detach().double().requires_grad_(True)
    R.neglabel_score(xd, bank.double(), K, groups=GROUPS).sum().backward()
    assert (grad.double() - xd.grad).abs().max() < 1e-3 * xd.grad.abs().max() + 1e-6
