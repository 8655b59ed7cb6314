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


def test_loops_and_mma_flops_by_hand():
    sass = """
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


@pytest.mark.parametrize("splits", [1, 3])
def test_launcher_work_counts_what_the_sm90_launcher_enqueues(splits):
    # The Hopper launcher at a small shape, kernels stubbed: its three kernels (+ the two merge
    # kernels when split), and the fills whose sizes are known by hand: lse = −inf (B·S fp32),
    # max0 = −inf (B fp32), the row-block flags (⌈B/128⌉ int32).
    B, N, D, G = 300, 1000, 64, 4
    S = G + 1
    w = sol.launcher_work("fastood.ops._triton_segment_lse_sm90", B, N, D, G, blocks=(128, 128, 64), splits=splits)
    names = [n for n, _, _ in w.triton]
    expected = {"_sm90_segment_lse_fwd_kernel", "_sm90_segment0_kernel", "_sm90_segment_lse_exact_kernel"}
    assert expected <= set(names)
    assert ("_segment_lse_merge_kernel" in names) == (splits > 1)
    grids = {n: g for n, g, _ in w.triton}
    assert grids["_sm90_segment_lse_fwd_kernel"] == (math.ceil(B / 128), splits)
    fills = [b for n, b in w.other if n == "full"]
    assert B * S * 4 in fills and B * 4 in fills
    assert ("zeros", math.ceil(B / 128) * 4) in w.other
    # Costing: one launch each plus bytes at 90 % of HBM; the modelled kernels cost nothing here.
    expect = sum(5e-6 + b / (0.9 * 3.35e12) for n, g, b in w.triton if n not in expected) + \
        sum(5e-6 + b / (0.9 * 3.35e12) for _, b in w.other)
    assert w.seconds(H100, expected) == pytest.approx(expect)
    assert w.seconds(H100, expected) >= 5e-6 * (len(w.other) + (2 if splits > 1 else 0))


def test_classify():
    assert [sol.classify(o) for o in ("HGMMA", "MUFU", "FFMA", "IMAD", "LDS", "F2FP", "UIADD3", "BRA")] == \
        ["mma", "mufu", "fp32", "int", "mio", "conv", "uniform", "control"]
