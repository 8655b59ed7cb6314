"""The C++ CPU backend (fastood._C + fastood.ops._cpu_segment_lse) against a float64 truth.

Ground truth, computed inline from the (rounded) inputs:
``L = row_scale.double()[:, None] * x.double() @ bank.double().T``, then
``torch.logsumexp`` per segment and ``max``/``argmax`` on segment 0.

Shapes are deliberately not multiples of the kernel's vector width (8) or of the
row blocks (the default 512 rows, or a block_rows given here). Skipped cleanly when the extension is not built.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

_C = pytest.importorskip("fastood._C", reason="fastood._C is not built (pip install --no-build-isolation -e .)")

from fastood.ops._cpu_segment_lse import segment_lse_cpu  # noqa: E402

ISAS = ["auto", "generic"] + (["avx2"] if _C.cpu_isa() == "avx2-fma" else [])
NEG_INF = float("-inf")


# ----------------------------------------------------------------------------- helpers
def truth(x, bank, offsets, row_scale):
    """float64 (lse, max0, logits) from the inputs as given (already rounded to their dtype)."""
    L = row_scale.double()[:, None] * (x.double() @ bank.double().T)
    return lse_of(L, offsets), seg0_max(L, offsets), L


def lse_of(L, offsets):
    off = [int(o) for o in offsets]
    cols = []
    for lo, hi in zip(off[:-1], off[1:]):
        if hi > lo:
            cols.append(torch.logsumexp(L[:, lo:hi], dim=1))
        else:
            cols.append(torch.full((L.shape[0],), NEG_INF, dtype=L.dtype))
    return torch.stack(cols, dim=1)


def seg0_max(L, offsets):
    n0 = int(offsets[1])
    if n0 == 0:
        return torch.full((L.shape[0],), NEG_INF, dtype=L.dtype)
    return L[:, :n0].max(dim=1).values


def max_err(out, ref):
    """max |out − ref| over finite entries; infinities must match exactly; no NaN."""
    out, ref = out.double(), ref.double()
    assert not torch.isnan(out).any(), "NaN in the output"
    inf = torch.isinf(ref)
    assert torch.equal(inf, torch.isinf(out)), "infinities differ from the truth"
    assert torch.equal(out[inf], ref[inf])
    fin = ~inf
    return (out[fin] - ref[fin]).abs().max().item() if fin.any() else 0.0


def random_offsets(n, gen, n_cuts, with_empty=True, with_single=True):
    """Offsets 0..n with random cuts, plus (when n allows) an empty and a size-1 segment."""
    cuts = torch.randint(0, n + 1, (n_cuts,), generator=gen).tolist()
    if with_empty and n > 0:
        c = int(torch.randint(0, n + 1, (1,), generator=gen))
        cuts += [c, c]  # an empty segment
    if with_single and n > 1:
        c = int(torch.randint(0, n, (1,), generator=gen))
        cuts += [c, c + 1]  # a size-1 segment (unless another cut lands inside)
    return torch.tensor([0] + sorted(cuts) + [n], dtype=torch.int64)


def make_case(b, d, n, gen, dtype=torch.float32, scale=100.0, identical=True):
    x = torch.randn(b, d, generator=gen, dtype=torch.float64)
    bank = torch.nn.functional.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1)
    if identical and n > 0:  # rows that equal bank rows: cos = 1, the largest logit there is
        k = max(1, b // 4)
        x[:k] = bank[torch.randint(0, n, (k,), generator=gen)] * 2.5
    x, bank = x.to(dtype), bank.to(dtype)
    row_scale = (scale / torch.linalg.vector_norm(x.double(), dim=1)).float()
    return x, bank, row_scale


def check_argmax(arg, L, offsets, tol):
    """arg is a (near-)maximiser of segment 0 of the float64 logits."""
    n0 = int(offsets[1])
    if n0 == 0:
        assert torch.equal(arg, torch.zeros_like(arg))
        return
    seg = L[:, :n0]
    assert int(arg.min()) >= 0 and int(arg.max()) < n0
    got = seg.gather(1, arg[:, None])[:, 0]
    assert (seg.max(dim=1).values - got).max().item() <= tol


# --------------------------------------------------------------------------- accuracy
CASES_F32 = [  # (B, D, N, block_rows)
    (1, 32, 67, None),
    (37, 64, 1201, None),
    (129, 512, 2011, 64),
    (301, 768, 2999, None),
    (700, 64, 1531, None),  # two default (512-row) blocks, the last one partial
    (611, 512, 997, 200),  # four blocks
    (203, 32, 3, 50),
]


@pytest.mark.parametrize("B,D,N,block_rows", CASES_F32)
def test_fp32_matches_float64(B, D, N, block_rows):
    gen = torch.Generator().manual_seed(B * 7919 + N)
    x, bank, rs = make_case(B, D, N, gen)
    off = random_offsets(N, gen, n_cuts=min(N, 40))
    lse, max0, arg0 = segment_lse_cpu(x, bank, off, rs, True, block_rows=block_rows)
    assert lse.shape == (B, off.numel() - 1) and lse.dtype == torch.float32
    assert max0.shape == (B,) and max0.dtype == torch.float32
    assert arg0.shape == (B,) and arg0.dtype == torch.int64
    ref_lse, ref_max, L = truth(x, bank, off, rs)
    assert max_err(lse, ref_lse) <= 1e-4
    assert max_err(max0, ref_max) <= 1e-4
    check_argmax(arg0, L, off, tol=2e-4)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("N", [3, 7, 997])  # rows shorter than a vector take another load path
def test_simd_paths_agree_with_truth(isa, N):
    gen = torch.Generator().manual_seed(11 + N)
    x, bank, rs = make_case(77, 64, N, gen)
    off = random_offsets(N, gen, n_cuts=min(N, 60))
    lse, max0, arg0 = segment_lse_cpu(x, bank, off, rs, True, isa=isa, block_rows=32)
    ref_lse, ref_max, L = truth(x, bank, off, rs)
    assert max_err(lse, ref_lse) <= 1e-4
    assert max_err(max0, ref_max) <= 1e-4
    check_argmax(arg0, L, off, tol=2e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,D,N", [(33, 32, 301), (257, 512, 1999), (150, 768, 777)])
def test_low_precision_error_budget(dtype, B, D, N):
    """fp16 / bf16 inputs: error vs the float64 truth OF THE ROUNDED INPUTS ≤ 1e-4.

    Rounded to fp16 / bf16, the inputs are exact in fp32; the kernel multiplies them in
    fp32 and accumulates in fp32, so the only error left is fp32 accumulation — the same
    1e-4 as the fp32 tests (plain fp32 torch on these inputs: ≤ 5.4e-5 at D = 768). A
    budget taken from torch computing in the low dtype (0.01–0.38 nats here) would let a
    GEMM accumulated in bf16 (0.05–0.26 nats) through.
    """
    gen = torch.Generator().manual_seed(B + N + D)
    x, bank, rs = make_case(B, D, N, gen, dtype=dtype)
    off = random_offsets(N, gen, n_cuts=25)
    lse, max0, arg0 = segment_lse_cpu(x, bank, off, rs, True)
    ref_lse, ref_max, L = truth(x, bank, off, rs)
    assert max_err(lse, ref_lse) <= 1e-4
    assert max_err(max0, ref_max) <= 1e-4
    check_argmax(arg0, L, off, tol=2e-4)


def test_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(5)
    B, D, N = 150, 64, 1100
    x_big, bank_big, _ = make_case(2 * B, 2 * D, N, gen, identical=False)
    x = x_big[::2, ::2]  # strided in both dims
    bank = bank_big.T.contiguous().T[:, 1::2]  # column-major storage, then strided
    rs = (100.0 / torch.linalg.vector_norm(x.double(), dim=1)).float()
    off = random_offsets(N, gen, n_cuts=30)
    assert not x.is_contiguous() and not bank.is_contiguous()
    lse, max0, arg0 = segment_lse_cpu(x, bank, off, rs, True, block_rows=64)
    lse_c, max0_c, arg0_c = segment_lse_cpu(x.contiguous(), bank.contiguous(), off, rs, True, block_rows=64)
    ref_lse, ref_max, L = truth(x, bank, off, rs)
    assert max_err(lse, ref_lse) <= 1e-4
    assert max_err(max0, ref_max) <= 1e-4
    check_argmax(arg0, L, off, tol=2e-4)
    assert max_err(lse, lse_c) <= 2e-5  # BLAS may take another path for other layouts
    # fp16 non-contiguous (bank upcast once per call)
    lse_h, _, _ = segment_lse_cpu(x.half(), bank.half(), off, rs, False)
    ref_h, _, _ = truth(x.half(), bank.half(), off, rs)
    assert max_err(lse_h, ref_h) <= 1e-4


def test_fp16_bank_operand_cache_never_serves_a_stale_bank():
    """The fp32 copy of an fp16 bank is reused across calls, but an in-place edit of the
    bank (version counter) or a different bank object must be seen by the next call."""
    gen = torch.Generator().manual_seed(11)
    N, D = 300, 40
    bank = torch.nn.functional.normalize(torch.randn(N, D, generator=gen), dim=1).half()
    x = torch.randn(17, D, generator=gen).half()
    rs = (100.0 / torch.linalg.vector_norm(x.double(), dim=1)).float()
    off = torch.tensor([0, 50, 300])
    first, _, _ = segment_lse_cpu(x, bank, off, rs, False)
    again, _, _ = segment_lse_cpu(x, bank, off, rs, False)
    assert torch.equal(first, again)
    assert max_err(first, truth(x, bank, off, rs)[0]) <= 1e-4
    bank.mul_(-1.0)  # in place: same object, new contents
    flipped, _, _ = segment_lse_cpu(x, bank, off, rs, False)
    assert max_err(flipped, truth(x, bank, off, rs)[0]) <= 1e-4
    assert not torch.allclose(flipped, first)
    other = bank.flip(0).contiguous()  # a new object
    lse_o, _, _ = segment_lse_cpu(x, other, off, rs, False)
    assert max_err(lse_o, truth(x, other, off, rs)[0]) <= 1e-4
    # views: a fresh view object of the same rows reuses the copy; other rows, or an
    # in-place edit of the base seen through the view, do not
    from fastood.ops._cpu_segment_lse import _bank_operand

    first_view = _bank_operand(bank[:250])
    assert _bank_operand(bank[:250]) is first_view
    assert torch.equal(first_view, bank[:250].float())
    assert torch.equal(_bank_operand(bank[10:260]), bank[10:260].float())
    bank.add_(1.0)
    assert torch.equal(_bank_operand(bank[:250]), bank[:250].float())
    off_v = torch.tensor([0, 50, 250])
    lse_v, _, _ = segment_lse_cpu(x, bank[:250], off_v, rs, False)
    assert max_err(lse_v, truth(x, bank[:250], off_v, rs)[0]) <= 1e-4


def test_rows_identical_to_bank_rows_at_scale_100():
    gen = torch.Generator().manual_seed(3)
    N, D = 513, 512
    bank = torch.nn.functional.normalize(torch.randn(N, D, generator=gen, dtype=torch.float64), dim=1).float()
    x = bank[[0, 5, 100, 512, 511, 7]].clone() * 3.0
    rs = 100.0 / torch.linalg.vector_norm(x, dim=1)
    off = torch.tensor([0, 1, 7, 7, 200, 513])
    lse, max0, arg0 = segment_lse_cpu(x, bank, off, rs, True)
    assert torch.isfinite(lse[:, [0, 1, 3, 4]]).all() and torch.isinf(lse[:, 2]).all()
    ref_lse, ref_max, L = truth(x, bank, off, rs)
    assert max_err(lse, ref_lse) <= 1e-4
    assert max_err(max0, ref_max) <= 1e-4
    # row 0 is bank[0]: the only member of segment 0, its logit ≈ 100
    assert abs(max0[0].item() - 100.0) < 1e-3 and arg0[0].item() == 0


def test_deterministic():
    gen = torch.Generator().manual_seed(9)
    x, bank, rs = make_case(333, 96, 2047, gen)
    off = random_offsets(2047, gen, n_cuts=50)
    a = segment_lse_cpu(x, bank, off, rs, True)
    b = segment_lse_cpu(x, bank, off, rs, True)
    c = segment_lse_cpu(x, bank, off, rs, True, num_threads=1)  # thread count does not matter
    for u, v, w in zip(a, b, c):
        assert torch.equal(u, v) and torch.equal(u, w)


def test_want_argmax_false_and_segment_edge_layouts():
    gen = torch.Generator().manual_seed(1)
    x, bank, rs = make_case(20, 32, 50, gen)
    for off in (
        torch.tensor([0, 50]),  # one segment
        torch.tensor([0, 0, 50]),  # empty segment 0
        torch.tensor([0, 50, 50, 50]),  # trailing empties
        torch.arange(51),  # all size-1
        torch.tensor([0, 1, 2, 9, 17, 49, 50]),
    ):
        lse, max0, arg0 = segment_lse_cpu(x, bank, off, rs, False)
        assert arg0.shape == (0,) and arg0.dtype == torch.int64
        ref_lse, ref_max, _ = truth(x, bank, off, rs)
        assert max_err(lse, ref_lse) <= 1e-4
        assert max_err(max0, ref_max) <= 1e-4
        _, _, arg = segment_lse_cpu(x, bank, off, rs, True)
        if int(off[1]) == 0:
            assert torch.equal(arg, torch.zeros(20, dtype=torch.int64))


def test_empty_bank():
    x = torch.randn(4, 8)
    lse, max0, arg0 = segment_lse_cpu(x, torch.empty(0, 8), torch.tensor([0, 0, 0]), torch.ones(4), True)
    assert torch.equal(lse, torch.full((4, 2), NEG_INF))
    assert torch.equal(max0, torch.full((4,), NEG_INF))
    assert torch.equal(arg0, torch.zeros(4, dtype=torch.int64))


# ------------------------------------------------------ the reduction on given logits
def reduce(logits, offsets, isa="auto", want_argmax=True):
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    R, S = logits.shape[0], len(offsets) - 1
    lse = np.empty((R, S), np.float32)
    m = np.empty(R, np.float32)
    a = np.empty(R, np.int64) if want_argmax else None
    _C.segment_lse_reduce(logits, np.asarray(offsets, np.int64), lse, m, a, 2, isa)
    return lse, m, a


@pytest.mark.parametrize("isa", ISAS)
def test_reduce_matches_torch_on_fp32_logits(isa):
    gen = torch.Generator().manual_seed(21)
    L = torch.randn(45, 1003, generator=gen) * 30
    L[3, 17] = NEG_INF
    L[4, :] = NEG_INF  # a fully -inf row
    L[5, 100:300] = NEG_INF
    off = [0, 211, 211, 212, 219, 300, 301, 640, 1003]
    lse, m, a = reduce(L.numpy(), off, isa)
    ref = lse_of(L.double(), off)
    assert max_err(torch.from_numpy(lse), ref) <= 2e-5
    seg0 = L[:, :211]
    assert torch.equal(torch.from_numpy(m), seg0.max(dim=1).values)
    assert torch.equal(torch.from_numpy(a), seg0.argmax(dim=1))


@pytest.mark.parametrize("isa", ISAS)
def test_exp_accuracy_two_element_segments(isa):
    """lse of [0, d] = log(1 + e^d): checks the vector exp over its whole range."""
    d = np.concatenate([-np.geomspace(1e-7, 87.0, 3000), -np.linspace(0, 20, 1001)]).astype(np.float32)
    n = d.size
    logits = np.zeros((1, 2 * n), np.float32)
    logits[0, 1::2] = d
    off = np.arange(0, 2 * n + 1, 2)
    lse, _, _ = reduce(logits, off, isa)
    ref = np.log1p(np.exp(d.astype(np.float64)))
    assert np.abs(lse[0] - ref).max() <= 2e-7


@pytest.mark.parametrize("isa", ISAS)
def test_argmax_ties_take_the_first_index(isa):
    L = np.zeros((4, 40), np.float32)
    L[0, [3, 9, 30]] = 5.0
    L[1, [31, 38]] = 2.0  # tie in the vector tail
    L[2, :] = -1.0  # all equal
    L[3, [0, 39]] = 7.0
    lse, m, a = reduce(L, [0, 40], isa)
    assert a.tolist() == [3, 31, 0, 0]
    assert m.tolist() == [5.0, 2.0, -1.0, 7.0]
    assert a.tolist() == torch.from_numpy(L).argmax(dim=1).tolist()


@pytest.mark.parametrize("isa", ISAS)
def test_nan_and_inf_propagate(isa):
    L = np.random.default_rng(0).normal(size=(6, 21)).astype(np.float32)
    L[0, 4] = np.nan  # NaN in segment 0 → lse NaN, max0 NaN, argmax0 = first NaN
    L[0, 9] = np.nan
    L[1, 15] = np.nan  # NaN in segment 1 only
    L[2, 2] = np.inf  # +inf → lse +inf
    L[3, :] = -np.inf  # all -inf → lse -inf, argmax 0
    L[4, 12] = np.inf
    L[4, 13] = np.nan  # +inf and NaN in one segment → NaN
    L[5, 20] = np.nan  # NaN in a size-1 segment
    off = [0, 11, 20, 21]
    lse, m, a = reduce(L, off, isa)
    ref = torch.from_numpy(L).double()
    for r in range(6):
        for s in range(3):
            got, want = lse[r, s], torch.logsumexp(ref[r, off[s] : off[s + 1]], 0).item()
            if math.isnan(want) or math.isinf(want):
                assert (math.isnan(got) and math.isnan(want)) or got == want, (r, s, got, want)
            else:
                assert abs(got - want) < 1e-5
    t_m, t_a = torch.from_numpy(L[:, :11]).max(dim=1)
    assert torch.equal(torch.from_numpy(m).isnan(), t_m.isnan())
    fin = ~t_m.isnan()
    assert torch.equal(torch.from_numpy(m)[fin], t_m[fin])
    assert a.tolist() == t_a.tolist() == [4, int(t_a[1]), 2, 0, int(t_a[4]), int(t_a[5])]


def test_reduce_rejects_bad_arguments():
    L = np.zeros((3, 10), np.float32)
    lse = np.empty((3, 2), np.float32)
    m = np.empty(3, np.float32)
    with pytest.raises(ValueError):  # does not end at N
        _C.segment_lse_reduce(L, np.array([0, 5, 9]), lse, m)
    with pytest.raises(ValueError):  # decreasing
        _C.segment_lse_reduce(L, np.array([0, 6, 5, 10]), np.empty((3, 3), np.float32), m)
    with pytest.raises(ValueError):  # wrong lse shape
        _C.segment_lse_reduce(L, np.array([0, 5, 10]), np.empty((3, 3), np.float32), m)
    with pytest.raises(TypeError):  # wrong dtype
        _C.segment_lse_reduce(L.astype(np.float64), np.array([0, 5, 10]), lse, m)
    with pytest.raises(ValueError):  # columns not unit-stride
        _C.segment_lse_reduce(np.zeros((3, 20), np.float32)[:, ::2], np.array([0, 5, 10]), lse, m)
    with pytest.raises(ValueError):
        _C.segment_lse_reduce(L, np.array([0, 5, 10]), lse, m, None, 1, "avx9000")


def test_module_info():
    info = _C.build_info()
    assert {"compiler", "openmp", "cuda", "cpu_isa"} <= set(info)
    assert isinstance(_C.cuda_available(), bool) and info["cuda"] == _C.cuda_available()
    assert _C.openmp_threads() >= 1
