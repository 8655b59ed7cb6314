"""The speed-of-light model (bench/sol.py) on hand-countable kernels.

Two toy kernels are compiled for sm_90 by the real compiler (no GPU): one whose loop is
pure tensor-core work, one whose loop is pure exp2. Their SASS is counted by the model
and compared with a hand count, and the model's cycles with hand-computed cycles from
the H100 per-SM throughputs (4096 dense fp16 FLOP/clk, 16 MUFU lanes/clk). Then the
end-to-end formulas (waves, torch.compile, ideal) against hand arithmetic.
"""

from __future__ import annotations

import math

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from bench import sol  # noqa: E402
from fastood.ops import _aot  # noqa: E402
from fastood.ops._aot_spec import AotSpec  # noqa: E402

H100 = sol.GPUS["h100"]


@triton.jit
def _pure_mma_kernel(a_ptr, b_ptr, c_ptr, n, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """acc += A·B, n times, with A (BM×BK) and B (BK×BN) loaded once: the loop is only MMA."""
    rm = tl.arange(0, BM)
    rn = tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a = tl.load(a_ptr + rm[:, None] * BK + rk[None, :])
    b = tl.load(b_ptr + rk[:, None] * BN + rn[None, :])
    acc = tl.zeros([BM, BN], tl.float32)
    for _ in range(n):
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rm[:, None] * BN + rn[None, :], acc)


@triton.jit
def _pure_exp2_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    """x ← 2^x, n times, on BLOCK fp32 values held in registers: the loop is only exp2."""
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    for _ in range(n):
        x = tl.math.exp2(x)
    tl.store(y_ptr + offs, x)


def aot_specs(arch: int, dtype: torch.dtype, *, full: bool) -> list[AotSpec]:
    return [
        AotSpec(name="pure_mma[64x128x64 w4]", fn=_pure_mma_kernel,
                signature={"a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp32", "n": "i32"},
                constexprs={"BM": 64, "BN": 128, "BK": 64}, num_warps=4, num_stages=1,
                aligned=("a_ptr", "b_ptr", "c_ptr"), intended_mma="wgmma"),
        AotSpec(name="pure_exp2[1024 w4]", fn=_pure_exp2_kernel,
                signature={"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32"}, constexprs={"BLOCK": 1024},
                num_warps=4, num_stages=1, aligned=("x_ptr", "y_ptr")),
    ]


@pytest.fixture(scope="module")
def toys():
    reps = _aot.compile_specs(90, ["float16"], full=False, modules=["tests.test_sol"], jobs=1, want_sass=True)
    return {r.name.split("[")[0]: r for r in reps}


def _loop_unroll(rep) -> int:
    """How many source iterations one SASS loop iteration holds (ptxas unrolls simple loops):
    the step of the loop counter, i.e. the ``VIADD/IADD3 Rc, Rc, ±u`` whose register the
    loop's ``ISETP`` compares."""
    instrs, loop = sol.tile_loop(rep.sass)
    body = [i for i in instrs if loop.start <= i[0] <= loop.end]
    compared = {ops.split(",")[2].strip() for _, op, _, ops in body if op == "ISETP" and ops.count(",") >= 3}
    for _, op, _, ops in body:
        parts = [p.strip() for p in ops.split(",")]
        if op in ("VIADD", "IADD3") and parts[0] in compared and parts[0] == parts[1]:
            hexes = [q for q in parts[2:] if q.startswith("0x")]
            if hexes:
                imm = int(hexes[0], 16)
                imm = imm - (1 << 32) if imm >= 1 << 31 else imm
                if 0 < abs(imm) <= 16:
                    return abs(imm)
    return 1


def test_pure_mma_counts_and_cycles_by_hand(toys):
    rep = toys["pure_mma"]
    assert rep.error is None and rep.mma == "wgmma"
    tc = sol.tile_counts(rep.sass, flop_per_tile=None, warps=4, warps_per_mma=4)
    u = _loop_unroll(rep)
    # By hand: one 64×128×64 fp16 dot per iteration for the single warpgroup = 64/16 = 4 HGMMA.64x128x16.
    assert tc.mma_shapes == {"HGMMA.64x128x16": 4 * u}
    assert tc.mma_flop_per_warp == 4 * u * 2 * 64 * 128 * 16
    # Cycles: 2·64·128·64 FLOP / 4096 FLOP/clk = 256 clk per iteration on the tensor cores.
    p = sol.predict_tile(tc, H100, warps=4, warps_per_mma=4, mma_kind="wgmma", l2_bytes=0,
                         blocks_per_sm=1, chains=1, refill=False)
    assert p.pipes["mma"] == 256 * u
    assert p.pipes["mufu"] == 0
    # One chain: MMA then the loop's few bookkeeping instructions (≤ 10 %).
    assert 256 * u <= p.cycles <= 1.1 * 256 * u
    # Two independent blocks: the tensor pipe is the floor, exactly.
    p2 = sol.predict_tile(tc, H100, warps=4, warps_per_mma=4, mma_kind="wgmma", l2_bytes=0,
                          blocks_per_sm=2, chains=1, refill=False)
    assert p2.cycles == 256 * u and p2.bound == "mma"


def test_pure_exp2_counts_and_cycles_by_hand(toys):
    rep = toys["pure_exp2"]
    assert rep.error is None and rep.mma == "none"
    tc = sol.tile_counts(rep.sass, flop_per_tile=None, warps=4, warps_per_mma=4)
    u = _loop_unroll(rep)
    # By hand: 1024 values over 4 warps × 32 lanes = 8 exp2 per thread per iteration = 8 MUFU.EX2 per warp.
    assert tc.per_warp.get("mufu") == 8 * u
    assert tc.per_warp.get("mma", 0) == 0
    # Cycles: 4 warps × 8 × 32 lanes / 16 lanes/clk = 64 clk per iteration on the MUFU pipe,
    # which bounds it (the range-reduction FP32 ops around ex2 cost ≤ 3 per value: ≤ 24 clk).
    p = sol.predict_tile(tc, H100, warps=4, warps_per_mma=4, mma_kind="wgmma", l2_bytes=0,
                         blocks_per_sm=1, chains=1, refill=False)
    assert p.pipes["mufu"] == 64 * u
    assert p.pipes["fp32"] <= 24 * u
    assert p.cycles == 64 * u


# A hand-written loop nest: the tile loop [0x10, 0x60] holds a K loop [0x30, 0x40].
TOY_SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   HGMMA.64x128x16.F32 R24, gdesc[UR8], R24 ;
        /*0020*/                   MUFU.EX2 R3, R3 ;
        /*0030*/                   HGMMA.64x64x16.F32 R24, gdesc[UR8], R24 ;
        /*0040*/              @P0 BRA 0x30 ;
        /*0050*/                   FADD R2, R2, R3 ;
        /*0060*/              @P1 BRA 0x10 ;
        /*0070*/                   EXIT ;
        /*0080*/                   BRA 0x80;
    """


def test_loops_and_mma_flops_by_hand():
    sass = TOY_SASS
    ins = sol.instructions(sass)
    roots = sol.find_loops(ins)
    assert [(r.start, r.end) for r in roots] == [(0x10, 0x60)]
    assert [(c.start, c.end) for c in roots[0].children] == [(0x30, 0x40)]
    # Tile loop own: HGMMA 64x128x16, MUFU, FADD, BRA; inner loop (K loop, has MMA): HGMMA 64x64x16, BRA.
    # flop_per_tile = 2·64·128·16 + 3 × 2·64·64·16 for one warpgroup → the K loop runs 3 times.
    f = 2 * 64 * 128 * 16 + 3 * 2 * 64 * 64 * 16
    tc = sol.tile_counts(sass, flop_per_tile=f, warps=4, warps_per_mma=4)
    assert tc.k_trips == 3
    assert tc.per_warp["mufu"] == 1 and tc.per_warp["fp32"] == 1 and tc.per_warp["mma"] == 4
    assert sol.mma_flop("HMMA", ".16816.F32") == 2 * 16 * 8 * 16


def test_waves_time_and_torch_compile_by_hand():
    # 300 programs, 2 per SM → 264 per wave: one full wave (10 tiles × 2 × 1000 clk), then 36 programs
    # at 1 per SM (10 tiles × 1 × cycles(1) = 10 × 1500 clk). Total 35000 clk at 1.83 GHz + 5 µs.
    t = sol.predict_time(lambda k: {1: 1500.0, 2: 1000.0}[k], H100, programs=300, tiles_per_program=10,
                         blocks_per_sm=2)
    assert t == pytest.approx(35000 / 1.83e9 + 5e-6)
    B, N, D = 65536, 11400, 512
    flop = 2 * B * N * D
    assert H100.peak_flops == pytest.approx(132 * 4096 * 1.83e9)
    assert sol.ideal_time(H100, B, N, D) == pytest.approx(flop / (132 * 4096 * 1.83e9))
    # torch.compile: GEMM at 70 % (compute-bound here), then reading 2·B·N bytes at 90 % of 3.35 TB/s.
    gemm = flop / (0.7 * 132 * 4096 * 1.83e9)
    assert gemm > 2 * B * N / 3.35e12
    # ... and two launches (GEMM, reduction) of 5 µs, as every fastood kernel is charged.
    assert sol.torch_compile_time(H100, B, N, D) == pytest.approx(gemm + 2 * B * N / (0.9 * 3.35e12) + 10e-6)
    assert math.isclose(sol.torch_compile_time(sol.GPUS["h200"], B, N, D),
                        gemm + 2 * B * N / (0.9 * 4.8e12) + 10e-6)


SM90 = "fastood.ops._triton_segment_lse_sm90"
SM90_MODELLED = {"_sm90_segment_lse_fwd_kernel", "_sm90_segment0_kernel", "_sm90_segment_lse_exact_kernel"}


@pytest.mark.parametrize("splits", [1, 3])
def test_launcher_work_counts_what_the_sm90_launcher_enqueues(splits):
    # The Hopper launcher at a small shape, kernels stubbed. N = 1,400, G = 4: segment 0 =
    # 1,400 − ⌊400/4⌋·4 = 1,000 columns, then 4 segments of 100. The hot kernel runs stream-K on a
    # 1-D grid: ⌈300/128⌉ = 3 row blocks × ⌈400/128⌉ = 4 tiles = 12 units < 132 SMs → 12 programs.
    # The segment-0 kernel on (3 row blocks, `splits` forced) (+ its merge when split), the exact
    # kernel on the 3 row blocks. No split merge of the hot kernel and nothing else: no flag fill
    # (zeros) and no −inf fill (no segment is empty).
    B, N, D, G = 300, 1400, 64, 4
    w = sol.launcher_work(SM90, B, N, D, G, blocks=(128, 128, 64), splits=splits)
    names = [n for n, _, _ in w.triton]
    assert sorted(names) == sorted(SM90_MODELLED | ({"_sm90_segment0_merge_kernel"} if splits > 1 else set()))
    grids = {n: g for n, g, _ in w.triton}
    assert grids["_sm90_segment_lse_fwd_kernel"] == (12,)
    assert grids["_sm90_segment0_kernel"] == (3, splits)
    assert grids["_sm90_segment_lse_exact_kernel"] == (3,)
    assert w.other == []
    # Costing: one launch each plus bytes at 90 % of HBM; the modelled kernels cost nothing here.
    expect = sum(5e-6 + b / (0.9 * 3.35e12) for n, g, b in w.triton if n not in SM90_MODELLED)
    assert w.seconds(H100, SM90_MODELLED) == pytest.approx(expect)
    assert w.seconds(H100, SM90_MODELLED) >= 5e-6 * (1 if splits > 1 else 0)


def test_launcher_work_counts_the_sm90_fills_of_empty_segments():
    # N = 1,000, G = 4: segment 0 holds every column, segments 1..4 are empty: the launcher pre-fills
    # lse = −inf (B·S fp32) and max0 = −inf (B fp32); argmax0 is not wanted (0 elements: no launch).
    B, N, D, G = 300, 1000, 64, 4
    w = sol.launcher_work(SM90, B, N, D, G, blocks=(128, 128, 64), splits=1)
    assert sorted(b for n, b in w.other) == sorted([B * (G + 1) * 4, B * 4])
    assert {n for n, _ in w.other} == {"full"}
    assert "_segment_lse_merge_kernel" not in [n for n, _, _ in w.triton]
    assert w.seconds(H100, SM90_MODELLED) == pytest.approx(
        sum(5e-6 + b / (0.9 * 3.35e12) for _, b in w.other))


def test_sm90_stream_k_rule_is_what_its_launcher_runs():
    # The model's rule for the Hopper hot kernel, by hand, and the grid its launcher enqueues.
    from fastood.ops import _triton_segment_lse_sm90 as m

    assert m.SOL_KERNELS["segment_lse_sm90_fwd"]["programs"] == "sol_programs"
    # Headline: 512 row blocks × ⌈10,400/128⌉ = 82 tiles = 41,984 units on 2·132 = 264 slots, ⌈41,984/264⌉ = 160.
    assert m.sol_programs(65536, 11400, 101, 1000, 132, 128, 128, 2) == (264, 160)
    # 3 × 4 = 12 units < 264: one per program; no unit at all: (0, 0).
    assert m.sol_programs(300, 1400, 5, 1000, 132, 128, 128, 2) == (12, 1)
    assert m.sol_programs(65536, 1000, 101, 1000, 132, 128, 128, 2) == (0, 0)
    # The launcher (as on a 132-SM GPU) runs the same rule: 2 resident blocks on the register-capped
    # path (128 registers), else 1 → 264 or 132 programs, each ⌈41,984/P⌉ tiles.
    k = 2 if m.CAP_REGISTERS else 1
    w = sol.launcher_work(SM90, 65536, 11400, 64, 100, blocks=(128, 128, 64))
    grids = {n: g for n, g, _ in w.triton}
    assert grids["_sm90_segment_lse_fwd_kernel"] == (k * 132,)
    assert m.sol_programs(65536, 11400, 101, 1000, 132, 128, 128, k)[0] == k * 132


def test_classify():
    assert [sol.classify(o) for o in ("HGMMA", "MUFU", "FFMA", "IMAD", "LDS", "F2FP", "UIADD3", "BRA")] == \
        ["mma", "mufu", "fp32", "int", "mio", "conv", "uniform", "control"]


# ------------------------------------------------ stream-K (persistent) grids: point 6
# TOY_SASS as a 128×128 tile at D = 512 with 8 warps (2 warpgroups), by hand: each warpgroup does
# 2·128·128·512 / 2 = 8,388,608 FLOP per tile = one HGMMA.64x128x16 (262,144) + the K loop's
# HGMMA.64x64x16 (131,072) × 62 trips → tensor pipe 2 · 8,388,608 / 4096 = 4,096 clk. Per warp
# 4 + 2·62 = 128 instructions → issue 128·8/4 = 256 clk; MUFU 8·32/16 = 16 clk. L2 → SM:
# (128 + 128)·512·2 = 262,144 B at 48 B/clk = 5,461.3 clk. Chain 600 + 4,096 + 256 = 4,952 clk
# (÷ k blocks). So the tile costs 262,144 / 48 clk at k = 1 and k = 2: L2-bound.
TOY_TILE_CLK = 262144 / 48


def _fake_streamk(monkeypatch, calls: list) -> sol.ConfigModel:
    """A kernel module (in sys.modules) whose SOL_KERNELS entry names its stream-K rule."""
    import sys
    import types

    def sol_programs(B, N, S, end0, sms, block_b, block_n, blocks_per_sm):
        # The Hopper launcher's rule (issue #10): T_r hot tiles per row block from column end0.
        calls.append((B, N, S, end0, sms, block_b, block_n, blocks_per_sm))
        units = -(-B // block_b) * -(-(N - end0) // block_n)
        if units == 0:
            return 0, 0
        p = min(blocks_per_sm * sms, units)
        return p, -(-units // p)

    mod = types.ModuleType("fake_streamk_kernels")
    mod.sol_programs = sol_programs
    mod.SOL_KERNELS = {"fake_fwd": {"chains": 1, "refill": True, "columns": "after_segment0",
                                    "programs": "sol_programs"}}
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return sol.ConfigModel("fake_fwd[128x128x64 w8 s3 tma]", mod.__name__, "fake_fwd",
                           {"BLOCK_B": 128, "BLOCK_N": 128, "BLOCK_D": 64}, warps=8, blocks_per_sm=2,
                           registers=128, mma="wgmma", sass=TOY_SASS,
                           desc=sol._descriptor(mod.__name__, "fake_fwd"), fn_name="_fake_fwd_kernel")


def test_toy_tile_cycles_by_hand():
    tc = sol.tile_counts(TOY_SASS, flop_per_tile=2 * 128 * 128 * 512, warps=8, warps_per_mma=4)
    assert tc.k_trips == 62 and tc.per_warp["all"] == 128
    for k in (1, 2):
        p = sol.predict_tile(tc, H100, warps=8, warps_per_mma=4, mma_kind="wgmma", l2_bytes=262144,
                             blocks_per_sm=k, chains=1, refill=True)
        assert p.pipes["mma"] == 4096 and p.pipes["issue"] == 256 and p.chain == 600 + 4096 + 256
        assert p.cycles == pytest.approx(TOY_TILE_CLK) and p.bound == "l2"


def test_stream_k_headline_one_wave_by_hand(monkeypatch):
    # B = 65,536, N = 11,400, G = 100: end0 = 11,400 − ⌊10,400/100⌋·100 = 1,000; T_r = ⌈10,400/128⌉ = 82
    # hot tiles per row block, 512 row blocks → U = 512·82 = 41,984 units; P = min(2·132, U) = 264
    # programs of ⌈41,984/264⌉ = 160 tiles: one wave, 2 blocks per SM.
    calls: list = []
    cm = _fake_streamk(monkeypatch, calls)
    r = sol.model_config(cm, H100, 65536, 11400, 512, 101)
    assert calls == [(65536, 11400, 101, 1000, 132, 128, 128, 2)]
    assert (r["programs"], r["tiles_per_program"]) == (264, 160)
    assert r["time_s"] == pytest.approx(160 * 2 * TOY_TILE_CLK / 1.83e9 + 5e-6)


@pytest.mark.parametrize("B, resident", [(128, 1), (256, 2)])
def test_stream_k_fewer_units_than_slots_by_hand(monkeypatch, B, resident):
    # ⌈B/128⌉ row blocks × 82 tiles = 82 (B = 128) or 164 (B = 256) units < 264 slots: one program
    # per unit (P = U, 1 tile each), on ⌈U/132⌉ = 1 or 2 blocks per SM.
    cm = _fake_streamk(monkeypatch, [])
    r = sol.model_config(cm, H100, B, 11400, 512, 101)
    assert (r["programs"], r["tiles_per_program"]) == (82 * B // 128, 1)
    assert r["time_s"] == pytest.approx(1 * resident * TOY_TILE_CLK / 1.83e9 + 5e-6)


def test_stream_k_no_units_costs_the_launch_alone(monkeypatch):
    # N = 1,000 with G = 100: end0 = 1,000 − 0 = N, no hot tile (U = 0): (0, 0) and the 5 µs launch
    # (the launcher still launches one program, which exits).
    calls: list = []
    cm = _fake_streamk(monkeypatch, calls)
    r = sol.model_config(cm, H100, 65536, 1000, 512, 101)
    assert calls[0][3] == 1000
    assert (r["programs"], r["tiles_per_program"]) == (0, 0)
    assert r["time_s"] == pytest.approx(5e-6)


def test_stream_k_rule_must_exist(monkeypatch):
    cm = _fake_streamk(monkeypatch, [])
    cm.desc["programs"] = "no_such_rule"
    with pytest.raises(ValueError, match="programs"):
        sol.model_config(cm, H100, 65536, 11400, 512, 101)


def test_after_segment0_columns_start_at_end0():
    # end0 = 1,000 (not on a 128 boundary): the hot kernel starts at column 1,000, not at the tile
    # holding it (896): ⌈10,400/128⌉ = 82 tiles (not ⌈10,504/128⌉ = 83); in 2 splits ⌈5,200/128⌉ = 41.
    assert sol.column_tiles("after_segment0", 11400, 101, 128, 1) == 82
    assert sol.column_tiles("after_segment0", 11400, 101, 128, 2) == 41
    # Without the stream-K rule (split kernels, split_rows): 512 programs of 82 tiles = a full wave of
    # 264 and 248 at 2 per SM → 2·82·2 tile-times.
    t = sol.predict_time(lambda k: TOY_TILE_CLK, H100, programs=512,
                         tiles_per_program=sol.column_tiles("after_segment0", 11400, 101, 128, 1), blocks_per_sm=2)
    assert t == pytest.approx(2 * 82 * 2 * TOY_TILE_CLK / 1.83e9 + 5e-6)


def test_launcher_work_records_1d_and_callable_grids(monkeypatch):
    # A persistent launcher launches on a 1-D grid, possibly given as a function of the launch's
    # arguments (Triton calls it with them by name): recorded as the tuple the GPU would get.
    import sys
    import types

    def launch(x, bank, offsets, scale, want_argmax, num_splits=None, blocks=None):
        y = torch.empty_like(scale)
        _pure_exp2_kernel[(7,)](scale, y, 3, BLOCK=1024)
        _pure_exp2_kernel[lambda meta: (triton.cdiv(meta["n"], 4),)](scale, y, 10, BLOCK=1024)
        return y

    mod = types.ModuleType("fake_persistent_launcher")
    mod.launch = launch
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(sol.LAUNCHERS, mod.__name__, "launch")
    w = sol.launcher_work(mod.__name__, 16, 64, 8, 2, blocks=(16, 16, 16))
    # Both launches, with the scale (16 fp32 = 64 B) and y (64 B) they touch; ⌈10/4⌉ = 3 programs.
    assert w.triton == [("_pure_exp2_kernel", (7,), 128), ("_pure_exp2_kernel", (3,), 128)]
    assert w.other == []  # torch.empty_like launches nothing
