"""fastood.ops against the float64 reference, on every backend this machine has.

The Triton backend runs under the CPU interpreter here, so its shapes are kept
small; the cpu/torch backends get the issue's full shape set.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings, example
from hypothesis import strategies as st

import fastood
from fastood import reference as R
from fastood.ops import mcm_score, neglabel_score, segment_lse
from tests.numerics import assert_error_budget, assert_pred_matches, max_abs_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
AVAILABLE = [name for name in ("torch", "cpu", "triton", "cuda") if fastood.backends()[name]]
if DEVICE == "cpu":
    AVAILABLE = [b for b in AVAILABLE if b != "cuda"]
    if "cpu" not in AVAILABLE and os.environ.get("FASTOOD_REQUIRE_EXT") == "1":  # set by .ci/run
        pytest.fail(f"the cpu backend is unavailable: {fastood.backends()['cpu'].reason}", pytrace=False)
SLOW_ON_CPU = {"triton"}  # interpreter: small shapes only
# Budgets (DESIGN's testing rules): error vs the float64 truth OF THE ROUNDED INPUTS
# ≤ 2 × the error of plain torch computing in fp32 on those same rounded inputs + EPS.
# fp16/bf16 inputs are exact in fp32 and every backend multiplies and accumulates in
# fp32, so the baseline is fp32 for every input dtype: a baseline computed in the low
# dtype itself (0.26–0.63 nats for bf16 LSE) would let a bf16-accumulated GEMM through.
EPS = {torch.float32: 2e-5, torch.float16: 2e-5, torch.bfloat16: 2e-5}
# The predicted label must attain the max cosine OF THE ROUNDED INPUTS up to this near-tie
# slack (fp32 accumulation: √D·2⁻²⁴ ≈ 2e-6 at D = 768; tensor cores on a GPU sum in another
# order, hence 1e-5 for fp16/bf16 inputs; the old 1e-3 was the size of a bf16 rounding of a cosine).
PRED_TOL = {torch.float32: 1e-6, torch.float16: 1e-5, torch.bfloat16: 1e-5}


def dtypes_for(backend: str) -> list[torch.dtype]:
    # The Triton interpreter cannot run bf16 tl.dot (the launcher upcasts), so
    # bf16 is covered on the cpu / torch backends and on GPUs; the bf16 tl.dot path's
    # compilation is checked ahead of time by tests/test_static_compile.py.
    if backend == "triton" and DEVICE == "cpu":
        return [torch.float32, torch.float16]
    return [torch.float32, torch.float16, torch.bfloat16]


def unit_rows(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1)


def make_case(b: int, d: int, n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=gen, dtype=torch.float64) * 3
    bank = unit_rows(n, d, gen)
    # make some rows identical to bank rows: cos = 1, the largest logit there is
    k = min(max(1, b // 3), n)
    x[:k] = bank[:k] * 2.5
    return x, bank


def shapes(backend: str) -> list[tuple[int, int, int]]:
    if backend in SLOW_ON_CPU and DEVICE == "cpu":
        return [(1, 32, 67), (7, 40, 333), (13, 64, 530)]
    return [(1, 32, 67), (37, 64, 1201), (129, 512, 2011), (300, 768, 3003)]


def in_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).to(DEVICE)


@pytest.mark.parametrize("backend", AVAILABLE)
def test_segment_lse_matches_float64_reference(backend):
    for b, d, n in shapes(backend):
        x, bank = make_case(b, d, n, seed=b + d + n)
        # ragged segments: a big first one, an empty one, a size-1 one, the rest
        offsets = [0, n // 3, n // 3, n // 3 + 1, (2 * n) // 3, n]
        for dtype in dtypes_for(backend):
            xq, bq = in_dtype(x, dtype), in_dtype(bank, dtype)
            out = segment_lse(xq, bq, offsets, scale=100.0, backend=backend)
            assert out.dtype == torch.float32 and out.shape == (b, 5)
            truth = R.segment_lse(xq.double().cpu(), bq.double().cpu(), offsets, scale=100.0)
            baseline = R.segment_lse(xq.float().cpu(), bq.float().cpu(), offsets, scale=100.0)
            assert torch.isinf(out[:, 1]).all() and (out[:, 1] < 0).all()
            assert_error_budget(out.cpu(), truth, baseline, EPS[dtype])


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("groups", [1, 5, 100])
def test_neglabel_score_matches_float64_reference(backend, groups):
    small = backend in SLOW_ON_CPU and DEVICE == "cpu"
    for b, d, num_id, num_neg in ([(5, 32, 20, 503), (9, 64, 37, 419)] if small else [(1, 32, 20, 503), (65, 512, 131, 1777), (33, 768, 1000, 2403)]):
        if groups > num_neg:
            continue
        assert num_neg % groups != 0 or groups == 1  # a remainder to drop
        x, bank = make_case(b, d, num_id + num_neg, seed=groups + b)
        for dtype in dtypes_for(backend):
            xq, bq = in_dtype(x, dtype), in_dtype(bank, dtype)
            score, pred = neglabel_score(xq, bq, num_id, groups=groups, return_pred=True, backend=backend)
            assert score.dtype == torch.float32 and score.shape == (b,)
            assert pred.dtype == torch.int64 and pred.shape == (b,)
            truth = R.neglabel_score(xq.double().cpu(), bq.double().cpu(), num_id, groups=groups)
            baseline = R.neglabel_score(xq.float().cpu(), bq.float().cpu(), num_id, groups=groups)
            assert_error_budget(score.cpu(), truth, baseline, 1e-6)
            assert_pred_matches(pred, xq.double().cpu(), bq.double().cpu()[:num_id], PRED_TOL[dtype])


@pytest.mark.parametrize("backend", AVAILABLE)
def test_mcm_score_matches_float64_reference(backend):
    b, d, k = (6, 40, 45) if backend in SLOW_ON_CPU and DEVICE == "cpu" else (77, 512, 1000)
    x, bank = make_case(b, d, k, seed=3)
    for dtype in dtypes_for(backend):
        for temperature in (1.0, 0.01):
            xq, bq = in_dtype(x, dtype), in_dtype(bank, dtype)
            score, pred = mcm_score(xq, bq, temperature=temperature, return_pred=True, backend=backend)
            truth = R.mcm_score(xq.double().cpu(), bq.double().cpu(), temperature=temperature)
            baseline = R.mcm_score(xq.float().cpu(), bq.float().cpu(), temperature=temperature)
            # fp32 baseline on rounded inputs: the kernels accumulate in fp32 too
            # s = exp(max/T − LSE): a logit error δ moves s by ≤ δ·s; fp32 accumulation gives
            # δ ≈ (1/T)·√D·2⁻²⁴ ≲ 1e-5 at T = 0.01. For fp16/bf16 inputs the kernels take
            # another multiplication path (tl.dot on the low dtype) than torch's fp32 GEMM, so
            # their rounding is not torch's: ε = 1e-5 there (measured 2.6e-6), 1e-6 otherwise
            low = dtype != torch.float32 and temperature != 1.0
            assert_error_budget(score.cpu(), truth, baseline, 1e-5 if low else 1e-6)
            assert_pred_matches(pred, xq.double().cpu(), bq.double().cpu(), PRED_TOL[dtype])


@pytest.mark.parametrize("backend", AVAILABLE)
def test_non_contiguous_inputs(backend):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(11, 2 * 64, generator=gen)[:, ::2]  # strided columns
    xt = torch.randn(64, 11, generator=gen).T  # a transposed view
    bank = unit_rows(300, 64, gen).float()
    bank_view = bank.T.contiguous().T  # same values, column-major strides
    assert not x.is_contiguous() and not xt.is_contiguous() and not bank_view.is_contiguous()
    for xx in (x, xt):
        for bk in (bank, bank_view):
            out = segment_lse(xx.to(DEVICE), bk.to(DEVICE), [0, 100, 300], backend=backend)
            truth = R.segment_lse(xx.double(), bk.double(), [0, 100, 300])
            assert max_abs_err(out.cpu(), truth) < 1e-4
            s = neglabel_score(xx.to(DEVICE), bk.to(DEVICE), 50, groups=7, backend=backend)
            assert max_abs_err(s.cpu(), R.neglabel_score(xx.double(), bk.double(), 50, groups=7)) < 1e-5


@pytest.mark.parametrize("backend", AVAILABLE)
def test_extreme_logits_no_overflow(backend):
    """Rows equal to bank rows at τ = 0.01 and at τ = 0.001 (logits of 1000)."""
    gen = torch.Generator().manual_seed(1)
    bank = unit_rows(257, 64, gen).float()
    x = bank[:9].clone() * 7.0
    for temperature in (0.01, 0.001):
        s = neglabel_score(x.to(DEVICE), bank.to(DEVICE), 9, groups=4, temperature=temperature, backend=backend)
        truth = R.neglabel_score(x.double(), bank.double(), 9, groups=4, temperature=temperature)
        assert torch.isfinite(s).all()
        assert max_abs_err(s.cpu(), truth) < 1e-5
        m = mcm_score(x.to(DEVICE), bank[:9].to(DEVICE), temperature=temperature, backend=backend)
        assert torch.isfinite(m).all()
        assert max_abs_err(m.cpu(), R.mcm_score(x.double(), bank[:9].double(), temperature=temperature)) < 1e-5


@pytest.mark.parametrize("backend", AVAILABLE)
def test_deterministic(backend):
    x, bank = make_case(17, 64, 431, seed=9)
    x, bank = x.float().to(DEVICE), bank.float().to(DEVICE)
    a = neglabel_score(x, bank, 31, groups=8, return_pred=True, backend=backend)
    b = neglabel_score(x, bank, 31, groups=8, return_pred=True, backend=backend)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("backend", AVAILABLE)
def test_autocast_does_not_lower_the_precision(backend):
    """Under the caller's autocast the ops still compute in the inputs' dtype (fp32 here):
    at τ = 0.01 a bf16 GEMM would move the LSE by ~0.1."""
    x, bank = make_case(9, 64, 301, seed=21)
    x, bank = x.float().to(DEVICE), bank.float().to(DEVICE)
    plain = segment_lse(x, bank, [0, 40, 301], backend=backend)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        under = segment_lse(x, bank, [0, 40, 301], backend=backend)
        score = neglabel_score(x, bank, 40, groups=3, backend=backend)
    assert under.dtype == torch.float32
    assert torch.equal(under, plain)
    assert torch.equal(score, neglabel_score(x, bank, 40, groups=3, backend=backend))


def test_backends_agree_with_each_other():
    x, bank = make_case(12, 64, 500, seed=4)
    x, bank = x.float().to(DEVICE), bank.float().to(DEVICE)
    outs = {b: neglabel_score(x, bank, 40, groups=9, backend=b).cpu() for b in AVAILABLE}
    ref = outs["torch"]
    for name, out in outs.items():
        assert torch.allclose(out, ref, atol=1e-5, rtol=0), name


def test_normalize_false_uses_raw_dot_products():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 32, generator=gen) * 0.05
    bank = unit_rows(90, 32, gen).float()
    for backend in AVAILABLE:
        out = segment_lse(x.to(DEVICE), bank.to(DEVICE), [0, 40, 90], scale=10.0, normalize=False, backend=backend)
        truth = R.segment_lse(x.double(), bank.double(), [0, 40, 90], scale=10.0, normalize=False)
        assert max_abs_err(out.cpu(), truth) < 1e-5, backend


def test_zero_norm_row_is_an_error_only_when_normalizing():
    bank = torch.nn.functional.normalize(torch.randn(20, 8), dim=1)
    x = torch.randn(3, 8)
    x[1] = 0
    with pytest.raises(ValueError, match=r"x row 1 has zero norm"):
        segment_lse(x, bank, [0, 20])
    out = segment_lse(x, bank, [0, 10, 20], normalize=False, backend="torch")
    # a zero row has all-zero logits: lse = log(segment size)
    assert torch.allclose(out[1], torch.log(torch.tensor([10.0, 10.0])))


def test_official_style_reference_equals_stable_form():
    x, bank = make_case(9, 32, 20 + 311, seed=2)
    for g in (1, 3, 10):
        a = R.neglabel_score_official_style(x, bank, 20, groups=g)
        b = R.neglabel_score(x, bank, 20, groups=g)
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


def test_reference_hand_computed_case():
    """Two ID labels, four negatives in G = 2 groups, one negative dropped, τ = 1."""
    bank = torch.eye(3, dtype=torch.float64)[[0, 1, 2, 2, 1, 0, 2]]  # K=2, M=5 → drop 1
    x = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)  # cos: [1,0 | 0,0 | 1,1 | 0]
    e = torch.e
    id_sum = e + 1
    g1 = id_sum / (id_sum + 1 + 1)
    g2 = id_sum / (id_sum + 1 + e)
    expected = (g1 + g2) / 2
    got = R.neglabel_score(x, bank, 2, groups=2, temperature=1.0)
    assert abs(got.item() - expected) < 1e-12
    for backend in AVAILABLE:
        out = neglabel_score(x.float().to(DEVICE), bank.float().to(DEVICE), 2, groups=2, temperature=1.0, backend=backend)
        assert abs(out.item() - expected) < 1e-6, backend


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    b=st.integers(1, 40),
    d=st.integers(1, 70),
    sizes=st.lists(st.integers(0, 60), min_size=1, max_size=12),
    scale=st.floats(0.5, 200.0),
    seed=st.integers(0, 2**16),
)
@example(b=40, d=45, sizes=[10], scale=189.0, seed=281)  # torch's own error lucky (1.8e-5), kernels 6e-5
def test_property_segment_lse_all_backends(b, d, sizes, scale, seed):
    n = sum(sizes)
    if n == 0:
        sizes, n = sizes + [1], n + 1
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    x, bank = make_case(b, d, n, seed)
    truth = R.segment_lse(x.float().double(), bank.float().double(), offsets, scale=scale)
    baseline = R.segment_lse(x.float(), bank.float(), offsets, scale=scale)
    for backend in AVAILABLE:
        if backend in SLOW_ON_CPU and DEVICE == "cpu" and b * n > 4000:
            continue
        out = segment_lse(x.float().to(DEVICE), bank.float().to(DEVICE), offsets, scale=scale, backend=backend)
        # fp32 accumulation: each logit scale·x̂·t carries ~√D·u32 relative rounding of the dot
        assert_error_budget(out.cpu(), truth, baseline, 2e-5, floor=4 * 2.0**-24 * scale * d**0.5)


def test_custom_ops_registered_and_traceable():
    x, bank = make_case(4, 16, 60, seed=0)
    x, bank = x.float(), bank.float()
    for op, args in [
        (torch.ops.fastood.segment_lse.default, (x, bank, torch.tensor([0, 10, 60]), 100.0, True, True, "torch")),
        (torch.ops.fastood.neglabel_score.default, (x, bank, 10, 5, 0.01, True, True, "torch")),
        (torch.ops.fastood.mcm_score.default, (x, bank[:10], 1.0, True, False, "torch")),
    ]:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))

    def f(x, bank):
        return neglabel_score(x, bank, 10, groups=5)

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert torch.allclose(compiled(x, bank), f(x, bank))
