"""pytest-benchmark microbenchmarks of the scoring ops.

Run: ``python -m pytest bench --benchmark-enable`` (timing) or plain
``python -m pytest bench`` (each case runs once, as a smoke test).
"""

from __future__ import annotations

import pytest
import torch

import fastood
from fastood import reference as R
from bench.scores import K, NUM_NEG, torch_best

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B = 4096 if DEVICE == "cuda" else 256
FUSED = [b for b, s in fastood.backends().items() if s and not (DEVICE == "cpu" and b in ("triton", "cuda"))]


@pytest.fixture(scope="module", params=[512])
def inputs(request):
    d = request.param
    gen = torch.Generator().manual_seed(0)
    dtype = torch.float16 if DEVICE == "cuda" else torch.float32
    bank = torch.nn.functional.normalize(torch.randn(K + NUM_NEG, d, generator=gen), dim=1).to(DEVICE, dtype)
    x = torch.randn(B, d, generator=gen).to(DEVICE, dtype)
    return x, bank


def _run(benchmark, fn):
    def call():
        out = fn()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out

    return benchmark(call)


@pytest.mark.parametrize("groups", [1, 100])
def test_official_style(benchmark, inputs, groups):
    x, bank = inputs
    benchmark.group = f"neglabel B={B} G={groups}"
    out = _run(benchmark, lambda: R.neglabel_score_official_style(x, bank, K, groups=groups))
    assert out.shape == (B,)


@pytest.mark.parametrize("groups", [1, 100])
def test_torch_best(benchmark, inputs, groups):
    x, bank = inputs
    benchmark.group = f"neglabel B={B} G={groups}"
    out = _run(benchmark, lambda: torch_best(x, bank, K, groups))
    assert out.shape == (B,)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("groups", [1, 100])
def test_fastood_neglabel(benchmark, inputs, groups, backend):
    x, bank = inputs
    benchmark.group = f"neglabel B={B} G={groups}"
    out = _run(benchmark, lambda: fastood.neglabel_score(x, bank, K, groups=groups, backend=backend))
    ref = torch_best(x.float(), bank.float(), K, groups)
    assert torch.allclose(out.float(), ref, atol=1e-3)


@pytest.mark.parametrize("backend", FUSED)
def test_fastood_mcm(benchmark, inputs, backend):
    x, bank = inputs
    benchmark.group = f"mcm B={B}"
    out = _run(benchmark, lambda: fastood.mcm_score(x, bank[:K], backend=backend))
    assert out.shape == (B,)
