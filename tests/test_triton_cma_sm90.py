"""The Hopper CMA kernels (fastood/ops/_triton_cma_sm90.py) against float64.

CPU: Triton's interpreter runs the pointer-load variant of the same kernel bodies on
tiny shapes (not multiples of the tiles, forced split-N, row blocks whose diagonal
straddles two column tiles, a tile that takes the exact column path because its
logits spread over more than 96 log2 units). The truth is the chunked torch launcher
in float64 (itself tested against the materialised reference in tests/test_cma_loss.py).
GPU (``-m gpu``, sm_90 only): the TMA/wgmma path at fp16/bf16 against the same truth,
and the routing from ``cma_loss(..., backend="triton")``.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fastood  # noqa: E402
from fastood.ops import cma_loss as cma_mod  # noqa: E402
from tests.numerics import max_abs_err  # noqa: E402
from tests.test_cma_loss import make_inputs  # noqa: E402

HAS_TRITON = bool(fastood.backends()["triton"])
pytestmark = pytest.mark.skipif(not HAS_TRITON, reason=fastood.backends()["triton"].reason)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("row_lse", "row_ce", "row_comp", "col_lse", "col_ce", "col_comp")


def _truth(x64, t64, labels, s, alpha, beta):
    rx, rt = 1 / x64.norm(dim=1), 1 / t64.norm(dim=1)
    st = cma_mod.cma_fwd_torch(x64, t64, rx, rt, s, labels)
    a, at = cma_mod.cma_bwd_torch(x64, t64, rx, rt, s, *st[0:3:2], *st[3:6:2], labels, alpha, beta, True, True)
    return rx, rt, st, a, at


def _run(x, t, rx, rt, s, lab, alpha, beta, **kw):
    from fastood.ops._triton_cma_sm90 import cma_bwd_triton_sm90, cma_fwd_triton_sm90

    fkw = {k: v for k, v in kw.items() if k != "bwd_blocks"}
    bkw = {**fkw, "blocks": kw.get("bwd_blocks")} if "bwd_blocks" in kw else fkw
    st = cma_fwd_triton_sm90(x, t, rx, rt, s, lab, **fkw)
    a, at = cma_bwd_triton_sm90(x, t, rx, rt, s, *st[0:3:2], *st[3:6:2], lab, alpha, beta, True, True, **bkw)
    return (*st, a, at)


def _check(out, st64, a64, at64, tol_fwd, tol_bwd):
    for name, o, r in zip(NAMES, out, st64):
        assert o.shape == r.shape, name
        if o.numel():
            err = max_abs_err(o.cpu(), r)
            assert err < tol_fwd * max(1.0, r.abs().max().item()), (name, err)
    assert max_abs_err(out[6].cpu(), a64) < tol_bwd * max(1.0, a64.abs().max().item())
    assert max_abs_err(out[7].cpu(), at64) < tol_bwd * max(1.0, at64.abs().max().item())


@pytest.mark.skipif(DEVICE != "cpu", reason="interpreter test")
@pytest.mark.parametrize("mode", ["pair", "class"])
@pytest.mark.parametrize("splits", [1, 3])
def test_interpreter_against_float64(mode, splits):
    """Pair mode B = 40 (row blocks of 16: the diagonal of block 1, rows 16–31, meets two
    column tiles when the tiles are 16 wide and split-N moves their start), class mode
    K = 17; D = 40 (two and a half D chunks of the forward); s = 80. The backward's default
    interpreter tiles (BLOCK_DO 64 >= D) take the fused path (one zero-padded K step from the
    resident row block); the rectangular-tile test below takes the K loop over D."""
    pair = mode == "pair"
    x64, t64, labels = make_inputs(40, 40, K=None if pair else 17, seed=3)
    s = torch.tensor(80.0, dtype=torch.float64)
    alpha, beta = (0.45, 0.45) if pair else (0.9, 0.0)
    rx, rt, st64, a64, at64 = _truth(x64, t64, labels, s, alpha, beta)
    f = lambda v: v.float()  # noqa: E731
    out = _run(f(x64), f(t64), f(rx), f(rt), f(s), labels, alpha, beta, num_splits=splits)
    _check(out, st64, a64, at64, 1e-4, 1e-4)
    again = _run(f(x64), f(t64), f(rx), f(rt), f(s), labels, alpha, beta, num_splits=splits)
    assert all(torch.equal(u, v) for u, v in zip(out, again))


@pytest.mark.skipif(DEVICE != "cpu", reason="interpreter test")
def test_interpreter_offset_diagonal_tiles():
    """Rectangular tiles (BLOCK_M 16, BLOCK_N 8): the diagonal of a row block spans two
    column tiles, each of which must take the target path for its part."""
    x64, t64, _ = make_inputs(24, 24, seed=4)
    s = torch.tensor(50.0, dtype=torch.float64)
    rx, rt, st64, a64, at64 = _truth(x64, t64, None, s, 0.3, 0.6)
    f = lambda v: v.float()  # noqa: E731
    out = _run(f(x64), f(t64), f(rx), f(rt), f(s), None, 0.3, 0.6, blocks=(16, 8, 16), bwd_blocks=(16, 8, 16, 16))
    _check(out, st64, a64, at64, 1e-4, 1e-4)


@pytest.mark.skipif(DEVICE != "cpu", reason="interpreter test")
def test_interpreter_exact_column_path():
    """An off-diagonal tile whose logits spread over > 126 log2 units: every image points
    along e0, text 20 along e0 (cosine ≈ 1: the tile reference R ≈ 144 at s = 100) and
    text 25 along −e0 (cosine ≈ −1, ≈ −144). Against the shared reference column 25's
    partial sum flushes to 0 in every row block; the tile must take the exact path
    (per-column max). Without it the merged col_lse of column 25 is off by ≈ 190."""
    gen = torch.Generator().manual_seed(5)
    D = 16
    e0 = torch.zeros(D, dtype=torch.float64)
    e0[0] = 1.0
    x64 = e0 + 0.05 * torch.randn(48, D, generator=gen, dtype=torch.float64)
    t64 = torch.randn(48, D, generator=gen, dtype=torch.float64)
    t64[20], t64[25] = e0, -e0
    s = torch.tensor(100.0, dtype=torch.float64)
    rx, rt, st64, a64, at64 = _truth(x64, t64, None, s, 0.5, 0.5)
    f = lambda v: v.float()  # noqa: E731
    out = _run(f(x64), f(t64), f(rx), f(rt), f(s), None, 0.5, 0.5)
    assert torch.isfinite(out[3]).all()
    _check(out, st64, a64, at64, 1e-4, 1e-4)


def test_bad_inputs():
    from fastood.ops._triton_cma_sm90 import cma_fwd_triton_sm90

    x = torch.randn(4, 8)
    one = torch.ones(4)
    with pytest.raises(TypeError, match="x and t"):
        cma_fwd_triton_sm90(x, x.double(), one, one, torch.tensor(1.0), None)
    with pytest.raises(ValueError, match="one D"):
        cma_fwd_triton_sm90(x, torch.randn(4, 6), one, one, torch.tensor(1.0), None)
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="num_splits"):
            cma_fwd_triton_sm90(x, x, one, one, torch.tensor(1.0), None, num_splits=0)


def test_aot_specs_contract():
    """sm_90 fp16/bf16: the forward × (pair, labels), the fix-up, the row merge and both
    backward tiles × their three flag sets, wgmma intended for every main loop; nothing
    for sm_80 or fp32 (not routed there)."""
    from fastood.ops import _aot
    from fastood.ops._triton_cma_sm90 import BWD_CONFIG, BWD_SLICED_CONFIG, FUSED_BWD, SOL_KERNELS, aot_specs

    assert "fastood.ops._triton_cma_sm90" in _aot.KERNEL_MODULES
    specs = aot_specs(90, torch.float16, full=False)
    names = [s.name for s in specs]
    assert len(names) == len(set(names)) == 2 + 1 + 1 + 2 * 3
    assert all(s.intended_mma == "wgmma" for s in specs if s.main_loop)
    assert [s.name for s in specs if not s.main_loop] == ["cma_sm90_row_merge[256]"]
    assert {n.split("[")[0] for n in names} | ({"cma_sm90_bwd_fused"} if not FUSED_BWD else set()) == \
        set(SOL_KERNELS) | {"cma_sm90_row_merge"}
    for cfg in (BWD_CONFIG, BWD_SLICED_CONFIG):
        assert sum("{}x{}x{} do{}".format(*cfg[:4]) in n for n in names) == 3
    # The fused backward (one K = BLOCK_DO step, no K loop) where the installed Triton compiles it.
    fused = [n for n in names if n.startswith("cma_sm90_bwd_fused[")]
    assert len(fused) == (3 if FUSED_BWD else 0)
    assert all(BWD_CONFIG[2] == BWD_CONFIG[3] for _ in fused)
    assert aot_specs(80, torch.float16, full=True) == [] and aot_specs(90, torch.float32, full=True) == []
    with pytest.raises(TypeError, match="dtype"):
        aot_specs(90, torch.int8, full=False)


# --------------------------------------------------------------------------------- GPU
def _is_sm90() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


@pytest.mark.gpu
@pytest.mark.skipif(not _is_sm90(), reason="needs an sm_90 GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["pair", "class"])
def test_gpu_tma_path_against_float64(dtype, mode):
    """The TMA/wgmma path at a shape that is not a multiple of the tiles, vs float64 on
    the same rounded inputs; the fp32-accumulating kernel is held to 1e-3 (fwd) and 2e-3
    (bwd, one fp16/bf16 rounding of G~·rb per term) relative to the largest value."""
    pair = mode == "pair"
    x64, t64, labels = make_inputs(1000, 512, K=None if pair else 300, seed=7)
    x64, t64 = x64.to(dtype).double(), t64.to(dtype).double()
    s = torch.tensor(100.0, dtype=torch.float64)
    alpha, beta = (0.4995, 0.4995) if pair else (0.999, 0.0)
    rx, rt, st64, a64, at64 = _truth(x64, t64, labels, s, alpha, beta)
    c = lambda v: v.float().cuda()  # noqa: E731
    out = _run(x64.to(dtype).cuda(), t64.to(dtype).cuda(), c(rx), c(rt), c(s),
               None if labels is None else labels.cuda(), alpha, beta)
    tol_b = 2e-3 if dtype == torch.float16 else 1e-2
    _check(out, st64, a64, at64, 1e-3, tol_b)


@pytest.mark.gpu
@pytest.mark.skipif(not _is_sm90(), reason="needs an sm_90 GPU")
def test_gpu_routing(monkeypatch):
    """cma_loss(backend='triton') on fp16 CUDA runs the Hopper forward; FASTOOD_TRITON_SM90=0
    keeps the portable one."""
    from fastood.losses import cma_loss
    from fastood.ops import _triton_cma_sm90 as H

    calls = []
    orig = H.cma_fwd_triton_sm90
    monkeypatch.setattr(H, "cma_fwd_triton_sm90", lambda *a, **k: calls.append(1) or orig(*a, **k))
    x = torch.randn(256, 512, device="cuda", dtype=torch.float16)
    cma_loss(x, x + 0.1, 100.0, backend="triton")
    assert calls
    calls.clear()
    monkeypatch.setenv("FASTOOD_TRITON_SM90", "0")
    cma_loss(x, x + 0.1, 100.0, backend="triton")
    assert not calls


def test_sol_weights_the_rare_recompute_loop():
    """A hand-written SASS tile loop: an 8-trip K loop (one HGMMA.64x128x16 = 262,144 FLOP
    per trip) and a second MMA loop of the same shape taken in a quarter of the tiles.
    bench/sol.py's plain count gives the tile's FLOPs to the first loop and 0 trips to the
    second (the recompute is free); the weighted count charges 8 + 0.25·8 = 10 trips, and
    the other instructions the same way: own 3 (FADD, MUFU, BRA) + 3 per trip."""
    from bench import sol
    from fastood.ops._triton_cma_sm90 import _weighted_tile_counts

    sass = "\n".join([
        "/*0000*/ MOV R1, R2 ;",
        "/*0010*/ FADD R3, R3, R4 ;",
        "/*0020*/ HGMMA.64x128x16.F32 R8, gdesc[UR4], R8 ;",
        "/*0030*/ IADD3 R5, R5, 0x1, RZ ;",
        "/*0040*/ @P0 BRA 0x20 ;",
        "/*0050*/ MUFU.EX2 R6, R6 ;",
        "/*0060*/ HGMMA.64x128x16.F32 R8, gdesc[UR4], R8 ;",
        "/*0070*/ IADD3 R5, R5, 0x1, RZ ;",
        "/*0080*/ @P1 BRA 0x60 ;",
        "/*0090*/ @P2 BRA 0x10 ;",
        "/*00a0*/ EXIT ;",
    ])
    flop = 8 * 2.0 * 64 * 128 * 16
    tc = _weighted_tile_counts(sass, flop, warps=4, warps_per_mma=4, rare=0.25)
    assert tc.k_trips == 8
    assert tc.mma_flop_per_warp == 10 * 2.0 * 64 * 128 * 16
    assert tc.per_warp["all"] == 3 + 3 * 8 + 3 * 2
    assert tc.per_warp["mufu"] == 1 and tc.per_warp["int"] == 10
    plain = sol.tile_counts(sass, flop_per_tile=flop, warps=4, warps_per_mma=4)
    assert plain.mma_flop_per_warp == 8 * 2.0 * 64 * 128 * 16  # the recompute uncounted


def test_portable_launchers_route_to_the_hopper_kernels(monkeypatch):
    """fastood.ops._triton_cma's launchers hand over to the Hopper ones whenever
    cma_sm90_supported says so (stubbed here: no GPU), keep tests' fixed tiles
    (``blocks=``) on the portable kernels, and pass every argument through unchanged."""
    from fastood.ops import _triton_cma as K
    from fastood.ops import _triton_cma_sm90 as H

    calls = []
    monkeypatch.setattr(H, "cma_sm90_supported", lambda x: True)
    monkeypatch.setattr(H, "cma_fwd_triton_sm90", lambda *a, **k: calls.append(("fwd", len(a), k)) or "hopper")
    monkeypatch.setattr(H, "cma_bwd_triton_sm90", lambda *a, **k: calls.append(("bwd", len(a), k)) or "hopper")
    x = torch.randn(4, 8)
    assert K.cma_fwd_triton(x, x, 1, 2, 3, None, num_splits=2) == "hopper"
    assert K.cma_bwd_triton(x, x, *range(12)) == "hopper"
    assert calls == [("fwd", 6, {"num_splits": 2}), ("bwd", 14, {"num_splits": None})]
    monkeypatch.setattr(K, "_prepare", lambda *a: (_ for _ in ()).throw(RuntimeError("portable")))
    with pytest.raises(RuntimeError, match="portable"):
        K.cma_fwd_triton(x, x, 1, 2, 3, None, blocks=(16, 16, 16))
    monkeypatch.setattr(H, "cma_sm90_supported", lambda x: False)
    with pytest.raises(RuntimeError, match="portable"):
        K.cma_fwd_triton(x, x, 1, 2, 3, None)


def test_sm90_supported_only_for_cuda_half_types(monkeypatch):
    from fastood.ops._triton_cma_sm90 import cma_sm90_supported

    assert not cma_sm90_supported(torch.randn(2, 2).half())  # CPU
    assert not cma_sm90_supported("not a tensor")
    if torch.cuda.is_available():
        monkeypatch.setenv("FASTOOD_TRITON_SM90", "0")
        assert not cma_sm90_supported(torch.randn(2, 2, device="cuda").half())
