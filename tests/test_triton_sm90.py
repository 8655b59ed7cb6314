"""The Hopper scoring kernel (fastood/ops/_triton_segment_lse_sm90.py) against a float64 truth.

Without CUDA these run its pointer-load path in Triton's CPU interpreter (the same kernel
body as the TMA path, selected by a constexpr), with small tiles (16×32×16) so that the
one-hot window (8 segments), the split-N merge, the tile-spread underflow fallback and
the > 8-segments-per-tile path are all exercised. ``@pytest.mark.gpu`` cases run the
real sm_90 launch (TMA descriptors, 128×128×64 tiles) when an H100-class GPU is present.
The packed bf16 hi/lo split of the GPU path (inline PTX) has no interpreter twin: the GPU
cases run it, and its PTX text is evaluated instruction by instruction on CPU.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

triton = pytest.importorskip("triton")

from fastood.ops._triton_segment_lse_sm90 import (  # noqa: E402
    column_segments, segment_lse_triton_sm90, sm90_supported,
)
from tests.numerics import check_argmax, max_abs_err, neglabel_offsets, segment_truth, torch_fp32_segment_lse, unit_rows  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_SM90 = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


def run(x, bank, offsets, row_scale, want_argmax=True, **kw):
    off = torch.tensor(offsets, dtype=torch.int64, device=x.device)
    return segment_lse_triton_sm90(x, bank, off, row_scale, want_argmax, **kw)


def check(out, x, bank, offsets, row_scale, tol=1e-4):
    lse, max0, arg0 = out
    ref_lse, ref_max, ref_arg, logits = segment_truth(x, bank, offsets, row_scale)
    assert lse.shape == (x.shape[0], len(offsets) - 1) and lse.dtype == torch.float32
    assert max_abs_err(lse, ref_lse) <= tol
    assert max_abs_err(max0, ref_max) <= tol
    if arg0.numel():
        check_argmax(arg0, ref_arg, logits, offsets, tol=tol)


LAYOUTS = [
    ("one_segment_G1", 77, [0, 77]),
    ("neglabel_G1", 90, neglabel_offsets(50, 1, 40)),
    ("empty_and_size1", 100, [0, 0, 30, 31, 31, 70, 100, 100]),
    ("neglabel", 260, neglabel_offsets(60, 8, 25)),
    ("wider_than_tile", 150, [0, 70, 150]),
    ("size1_run_over_window", 70, list(range(0, 40)) + [40, 40, 70]),  # 32 segments in a tile > 8
    ("empty_first", 129, [0, 0, 64, 64, 96, 128, 129]),
    # Segment 0 over several splits (3 splits: chunk 96): its partials merge across splits.
    ("wide_segment0", 230, [0, 200, 201, 230]),
]


@pytest.mark.parametrize("name,N,offsets", LAYOUTS, ids=[c[0] for c in LAYOUTS])
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("programs", [None, 5, 64])
def test_fp32_matches_float64(name, N, offsets, splits, programs):
    """``programs``: the hot kernel's stream-K grid — one per row block (None in the
    interpreter), 5 (pieces that start and stop inside row blocks and segments), 64 (more
    programs than tiles: empty ranges)."""
    _check_layout(N, offsets, splits, seed=17 * N + splits, programs=programs)


def _check_layout(N: int, offsets: list[int], splits: int, seed: int, programs: int | None = None) -> None:
    """19 fp32 unit rows of D = 40 at scales 1..100 against float64, with ``splits`` segment-0
    splits and ``programs`` hot-kernel programs."""
    gen = torch.Generator().manual_seed(seed)
    B, D = 19, 40
    x, bank = unit_rows(B, D, gen).float(), unit_rows(N, D, gen).float()
    row_scale = torch.linspace(1.0, 100.0, B)
    out = run(x.to(DEVICE), bank.to(DEVICE), offsets, row_scale.to(DEVICE), num_splits=splits,
              num_programs=programs)
    check(out, x, bank, offsets, row_scale)


PADDED = [c for c in LAYOUTS if c[0] in ("neglabel", "empty_and_size1", "size1_run_over_window", "wide_segment0")]


@pytest.mark.parametrize("name,N,offsets", PADDED, ids=[c[0] for c in PADDED])
@pytest.mark.parametrize("splits", [1, 3])
def test_padded_onehot_matches_float64(monkeypatch, name, N, offsets, splits):
    """The one-hot product taken 2·W wide (segment k in column 2k, zero odd columns, σ read
    from the even columns): Triton 3.6's route to a wgmma, forced here on the installed
    Triton. Same float64 bound as the 8-wide product; several segments share each 32-column
    tile, so a wrong column order would move sums between segments."""
    from fastood.ops import _triton_segment_lse_sm90 as m

    monkeypatch.setattr(m, "ONEHOT_PAD", True)
    _check_layout(N, offsets, splits, seed=5 * N + splits, programs=5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("splits", [1, 4])
def test_low_precision_matches_float64_of_rounded_inputs(dtype, splits):
    """fp32 accumulation and bf16 hi/lo segment sums: within 1e-4 of the float64 truth of
    the rounded inputs (the same bound as the portable kernel's tests)."""
    gen = torch.Generator().manual_seed(11 + splits)
    B, N, D = 13, 260, 64
    offsets = neglabel_offsets(60, 8, 25)
    x, bank = unit_rows(B, D, gen).to(dtype), unit_rows(N, D, gen).to(dtype)
    row_scale = torch.full((B,), 100.0)
    out = run(x.to(DEVICE), bank.to(DEVICE), offsets, row_scale.to(DEVICE), want_argmax=False, num_splits=splits,
              num_programs=3 * splits)
    lse, max0, arg0 = out
    assert arg0.shape == (0,)
    ref_lse, ref_max, _, _ = segment_truth(x, bank, offsets, row_scale)
    assert max_abs_err(lse, ref_lse) <= 1e-4
    assert max_abs_err(max0, ref_max) <= 1e-4


@pytest.mark.parametrize("splits,programs", [(1, None), (2, None), (1, 2), (2, 7)])
def test_underflow_fallback_segments_far_below_the_tile_max(splits, programs):
    """One tile holds a segment whose logits are ~190 (log2) below the tile max: with one
    shared reference its exp2 sum would flush to 0 (lse = -inf or garbage); the spread
    test flags that row block and the exact kernel redoes it, while the other row blocks
    (rows 16.. here: 16-row blocks in the interpreter) stay on the fast path."""
    gen = torch.Generator().manual_seed(23)
    B, N, D = 40, 64, 32
    offsets = [0, 10, 20, 40, 64]            # segments 1 and 2 share the first 32-column tile
    x = unit_rows(B, D, gen).float()
    bank = unit_rows(N, D, gen).float()
    bank[10:20] = -x[0]                       # cos = -1 for row 0 on segment 1
    bank[20:26] = x[0]                        # cos = +1 for row 0 at the start of segment 2
    row_scale = torch.full((B,), 100.0)       # spread 200 nats ≈ 289 log2 units
    out = run(x.to(DEVICE), bank.to(DEVICE), offsets, row_scale.to(DEVICE), num_splits=splits,
              num_programs=programs)
    check(out, x, bank, offsets, row_scale)
    assert torch.isfinite(out[0]).all()


# ------------------------------------------------------------------ the stream-K schedule
def test_stream_k_owner_is_the_program_whose_range_holds_the_unit():
    """Program q walks units [⌊qU/P⌋, ⌊(q+1)U/P⌋); ``stream_k_owner`` (the kernels' ``_owner``)
    must name the one holding u, for every u, also with empty ranges (P > U)."""
    from fastood.ops._triton_segment_lse_sm90 import stream_k_owner

    for U in range(1, 40):
        for P in range(1, 50):
            start = [q * U // P for q in range(P + 1)]
            for u in range(U):
                q = stream_k_owner(u, U, P)
                assert start[q] <= u < start[q + 1], (u, U, P, q)


def test_stream_k_grid_by_hand():
    """Headline shape: 512 row blocks × ⌈(11,400 − 1,000)/128⌉ = 82 tiles = 41,984 units on
    2 × 132 slots → 264 programs of ⌈41,984/264⌉ = 160 tiles (the row-block grid: 512
    programs, a second wave of 248). Fewer units than slots: one per unit. No hot columns
    (segment 0 is everything): nothing to launch."""
    from fastood.ops._triton_segment_lse_sm90 import sol_programs, stream_k_programs

    assert sol_programs(65536, 11400, 101, 1000, 132, 128, 128, 2) == (264, 160)
    assert sol_programs(256, 11400, 101, 1000, 132, 128, 128, 2) == (164, 1)   # 2 × 82 units
    assert sol_programs(4096, 1000, 1, 1000, 132, 128, 128, 2) == (0, 0)
    assert stream_k_programs(3, 0, 264) == 1


@pytest.mark.parametrize("offsets", [[0, 10, 300], [0, 10, 150, 151, 300], [0, 0, 300]],
                         ids=["one_wide_segment", "wide_then_narrow", "empty_segment0"])
@pytest.mark.parametrize("programs", [2, 4, 7, 29, 30, 31, 100])
def test_stream_k_segments_cut_by_many_pieces(offsets, programs):
    """3 row blocks of 16 × 10 tiles of 32 columns = 30 units (9 for segment 0 ∪ 290 hot
    columns) over 2–100 programs: a segment of 290 columns is cut at every boundary inside
    each row block (up to 11 pieces per row block at 31 programs, ranges of 0 or 1 tile at
    100) and its partials merge in column order."""
    gen = torch.Generator().manual_seed(programs)
    B, N, D = 40, 300, 24
    x, bank = unit_rows(B, D, gen).float(), unit_rows(N, D, gen).float()
    row_scale = torch.linspace(1.0, 60.0, B)
    out = run(x.to(DEVICE), bank.to(DEVICE), offsets, row_scale.to(DEVICE), num_programs=programs)
    check(out, x, bank, offsets, row_scale)


@pytest.mark.parametrize("programs", [1, 2, 3])
def test_stream_k_marked_piece_inside_a_row_block(programs):
    """The spread hazard in a tile of a piece that starts inside its row block (programs 2 and
    3: the second program's range starts at hot tile 4 or 3 of the one row block): that piece
    marks its boundary slot (``bflag``), and the exact kernel must redo the row block — a
    mark lost there leaves row 0's segment 2 (cos = −1 on all its columns, ~289 log2 units
    below the tile's max) at its underflowed fast-path value."""
    gen = torch.Generator().manual_seed(31)
    B, N, D = 16, 266, 32
    offsets = [0, 10, 140, 150, 200, 266]     # hot columns 10..265: 8 tiles of 32
    x = unit_rows(B, D, gen).float()
    # A bank of near-copies of one vector: every tile's spread is small (no mark) ...
    v = unit_rows(1, D, gen).float()
    bank = torch.nn.functional.normalize(v + 0.02 * torch.randn(N, D, generator=gen), dim=1)
    bank[140:150] = -x[0]                     # ... but tile 4 = columns 138..169 (segments 1, 2, 3)
    bank[150:156] = x[0]
    row_scale = torch.full((B,), 100.0)
    out = run(x.to(DEVICE), bank.to(DEVICE), offsets, row_scale.to(DEVICE), num_programs=programs)
    check(out, x, bank, offsets, row_scale)
    assert torch.isfinite(out[0]).all()


@pytest.mark.parametrize("scale", [1e-3, 3e4])
def test_extreme_scale(scale):
    """Tiny and huge logits (up to ~3e4 nats): no overflow/NaN; the error stays within 2× torch fp32."""
    gen = torch.Generator().manual_seed(9)
    B, N, D = 6, 90, 32
    offsets = [0, 40, 41, 90]
    x, bank = unit_rows(B, D, gen).float(), unit_rows(N, D, gen).float()
    row_scale = torch.full((B,), scale)
    ref_lse, ref_max, _, _ = segment_truth(x, bank, offsets, row_scale)
    torch_lse = torch_fp32_segment_lse(x, bank, offsets, row_scale)
    budget = 2 * max_abs_err(torch_lse, ref_lse) + 1e-4 * max(1.0, scale / 100)
    lse, max0, _ = run(x.to(DEVICE), bank.to(DEVICE), offsets, row_scale.to(DEVICE))
    assert max_abs_err(lse, ref_lse) <= budget
    assert max_abs_err(max0, ref_max) <= budget


@pytest.mark.parametrize("splits", [1, 2, 4])
def test_argmax_ties_first_index_across_tiles_and_splits(splits):
    gen = torch.Generator().manual_seed(13)
    N, D = 140, 32
    offsets = [0, 130, 140]
    bank = unit_rows(N, D, gen).float()
    bank[[6, 70, 100]] = bank[5].clone()
    x = bank[5:6].clone().repeat(3, 1)
    row_scale = torch.tensor([100.0, 1.0, 10.0])
    _, _, arg0 = run(x.to(DEVICE), bank.to(DEVICE), offsets, row_scale.to(DEVICE), num_splits=splits)
    assert arg0.cpu().tolist() == [5, 5, 5]


def test_argmax_tie_across_strided_segment0_splits():
    """Segment-0 splits take strided tiles (16×32 tiles, 2 splits: split 0 = tiles 0, 2, 4,
    split 1 = tiles 1, 3): a maximum tied at columns 40 (tile 1, split 1) and 70 (tile 2,
    split 0) must give 40, although split 0 comes first in the merge."""
    gen = torch.Generator().manual_seed(21)
    N, D = 140, 32
    offsets = [0, 130, 140]
    bank = unit_rows(N, D, gen).float()
    bank[70] = bank[40].clone()
    x = bank[40:41].clone().repeat(3, 1)
    row_scale = torch.tensor([100.0, 1.0, 10.0])
    out = run(x.to(DEVICE), bank.to(DEVICE), offsets, row_scale.to(DEVICE), num_splits=2)
    assert out[2].cpu().tolist() == [40, 40, 40]
    check(out, x, bank, offsets, row_scale)


@pytest.mark.parametrize("layout", ["x_strided", "bank_transposed"])
def test_non_contiguous_inputs(layout):
    gen = torch.Generator().manual_seed(3)
    B, N, D = 10, 150, 40
    offsets = [0, 60, 61, 100, 150]
    x, bank = unit_rows(B, D, gen).float(), unit_rows(N, D, gen).float()
    xk, bk = x, bank
    if layout == "x_strided":
        big = torch.zeros(B, 2 * D)
        big[:, ::2] = x
        xk = big[:, ::2]
    else:
        bk = bank.T.contiguous().T
    row_scale = torch.full((B,), 50.0)
    out = run(xk.to(DEVICE), bk.to(DEVICE), offsets, row_scale.to(DEVICE), num_splits=2)
    check(out, x, bank, offsets, row_scale)


def test_split_heuristic_fills_two_blocks_per_sm(monkeypatch):
    """Hand-computed, the wave rule (fastood/ops/_split_plan.py) on 132 SMs × 2 blocks: B = 4096
    gives 32 row blocks of 128 → 8 splits (256 programs, one wave of ⌈90/8⌉ + 1 = 13 tile
    times; 9 splits would be 288 programs: a full wave and a 24-program one, (10 + 1)·1.78 =
    19.6); B = 65,536 (512 row blocks) needs none; the 64 MB workspace bound caps S."""
    import fastood.ops._triton_segment_lse_sm90 as m

    monkeypatch.setattr(m, "_sm_count", lambda index: 132)
    cuda = torch.device("cuda", 0)
    assert m._choose_splits_sm90(4096, 11400, 101, cuda, False, 128, 128) == 8
    assert m._choose_splits_sm90(65536, 11400, 101, cuda, False, 128, 128) == 1
    assert m._choose_splits_sm90(4096, 11400, 5000, cuda, False, 128, 128) == 1  # 64 MB / (4096·5000·8) < 1
    assert m._choose_splits_sm90(300, 256, 3, cuda, False, 128, 128) == 2       # at most one split per tile


def test_segment0_gets_its_own_split_at_small_batches(monkeypatch):
    """Segment 0 (1,000 columns) was walked by ⌈B/128⌉ programs of 8 tiles each whatever the
    batch (32 programs on 132 SMs at B = 4,096). Its own split, strided over its tiles and
    sized on all N columns when end0 is not on the host (offsets on the device: no sync): the
    wave rule's 8 at B = 4,096 (one tile each), 90 (one per tile of N: 180 programs, one
    round of 1 + 1 tile times) at B = 256; 512 row blocks fill the GPU alone."""
    from fastood.ops import _triton_segment_lse_sm90 as m

    monkeypatch.setattr(m, "_sm_count", lambda index: 132)
    dev = torch.device("cuda", 0)
    assert m._segment0_splits(4096, 11400, dev, False, 128, 128, None) == 8
    assert m._segment0_splits(256, 11400, dev, False, 128, 128, None) == 90
    assert m._segment0_splits(65536, 11400, dev, False, 128, 128, None) == 1
    assert m._segment0_splits(64, 130, dev, True, 16, 32, 3) == 3       # forced (tests)


def test_small_batches_keep_the_portable_kernel():
    """Below 1,024 rows the portable kernel (bench/sol.py: B = 768, 0.038 vs 0.062 ms on an H100;
    the threshold is kept until measured, see SM90_MIN_ROWS); fp32 and non-Hopper GPUs never
    take this kernel."""
    from fastood.ops._triton_segment_lse_sm90 import SM90_MIN_ROWS, sm90_wanted

    assert SM90_MIN_ROWS == 1024
    assert not sm90_wanted(512, torch.float16, 9) and not sm90_wanted(1023, torch.bfloat16, 9)
    assert sm90_wanted(1024, torch.float16, 9) and sm90_wanted(65536, torch.bfloat16, 9)
    assert not sm90_wanted(65536, torch.float32, 9) and not sm90_wanted(65536, torch.float16, 8)


def test_column_segments_names_only_nonempty_segments():
    off = torch.tensor([0, 0, 3, 3, 4, 6, 6])
    assert column_segments(off, 6).tolist() == [1, 1, 1, 3, 4, 4]


def test_bad_inputs_raise():
    x = torch.zeros(2, 4)
    off = torch.tensor([0, 3])
    with pytest.raises(TypeError, match="dtype"):
        segment_lse_triton_sm90(x, torch.zeros(3, 4, dtype=torch.float64), off, torch.ones(2), False)
    with pytest.raises(ValueError, match="D"):
        segment_lse_triton_sm90(x, torch.zeros(3, 5), off, torch.ones(2), False)
    with pytest.raises(ValueError, match="row_scale"):
        segment_lse_triton_sm90(x, torch.zeros(3, 4), off, torch.ones(3), False)
    with pytest.raises(ValueError, match="num_splits"):
        segment_lse_triton_sm90(x, torch.zeros(3, 4), off, torch.ones(2), False, num_splits=0)
    assert not sm90_supported(x)  # CPU tensors never take the sm_90 route


# ------------------------------------------------- how bench/sol reads this kernel (no GPU)
def test_sol_finds_the_k_loop_past_cold_code_that_jumps_back():
    """ptxas puts cold code (a BRA.DIV handler, an mbarrier retry) after the body, jumping
    back into the K loop. That branch closes no loop; the tile loop keeps its K loop (the
    hot kernel's SASS was read as K trips 1.0, MMA 640 clk instead of 4,224)."""
    from bench import sol

    sass = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   BRA.DIV UR8, 0x90 ;
        /*0020*/                   HGMMA.64x8x16.F32.BF16 R24, R28, gdesc[UR8], R24 ;
        /*0030*/                   HGMMA.64x128x16.F32 R24, gdesc[UR8], R24 ;
        /*0040*/              @P0 BRA 0x30 ;
        /*0050*/                   MUFU.EX2 R3, R3 ;
        /*0060*/              @P1 BRA 0x10 ;
        /*0070*/                   EXIT ;
        /*0080*/                   BRA 0x80;
        /*0090*/                   MOV R2, R3 ;
        /*00a0*/                   BRA 0x30 ;
    """
    ins = sol.instructions(sass)
    roots = sol.find_loops(ins, sol.guarded_addresses(sass))
    assert [(r.start, r.end) for r in roots] == [(0x10, 0x60)]
    assert [(c.start, c.end) for c in roots[0].children] == [(0x30, 0x40)]
    # One warpgroup, K = 64: four 64x128x16 K-loop trips; the one-hot 64x8x16 is declared extra.
    gemm, extra = 2 * 64 * 128 * 64, 2 * 64 * 8 * 16
    tc = sol.tile_counts(sass, flop_per_tile=gemm + extra, warps=4, warps_per_mma=4)
    assert tc.k_trips == 4 and tc.per_warp["mma"] == 5 and tc.per_warp["mufu"] == 1
    assert tc.mma_flop_per_warp == gemm + extra


def test_sol_column_ranges_of_the_three_kernels():
    """Headline shape N = 11,400, G = 100: segment 0 = 11,400 − 104·100 = 1,000 columns, so
    the segment-0 kernel walks ⌈1000/128⌉ = 8 tiles, the hot kernel the ⌈(11,400 − 1,000)/128⌉ = 82
    from column 1,000 on, the exact kernel none (nothing flagged)."""
    from bench import sol
    from fastood.ops import _triton_segment_lse_sm90 as m

    assert sol.segment0_end(11400, 100) == 1000
    tiles = {k: sol.column_tiles(v.get("columns", "all"), 11400, 101, 128, 1) for k, v in m.SOL_KERNELS.items()}
    assert tiles == {"segment_lse_sm90_fwd": 82, "segment_lse_sm90_seg0": 8, "segment_lse_sm90_exact": 0}
    assert sol.column_tiles("all", 11400, 101, 128, 1) == 90
    # The one-hot sums: p_hi @ H and p_lo @ H, [BB, BN] @ [BN, n] each; n = 8 (16 padded on Triton < 3.8).
    assert m.SOL_KERNELS["segment_lse_sm90_fwd"]["extra_mma_flops"] == 2 * 2 * 128 * 128 * m.ONEHOT_N
    assert m.ONEHOT_N == (16 if m._triton_version() < (3, 8) else 8)
    with pytest.raises(ValueError, match="columns"):
        sol.column_tiles("some", 11400, 101, 128, 1)


# ------------------------------------------- the GPU's packed bf16 split, evaluated on CPU
def _bf16_rne_bits(bits):
    """Round-to-nearest-even bf16 of fp32 bit patterns (torch's CPU cast), as uint32 in [0, 2¹⁶)."""
    import numpy as np

    f = torch.from_numpy(bits.view(np.float32).copy())
    return f.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).astype(np.uint32)


def _eval_ptx(ptx, a, b):
    """Run the PTX of SPLIT_BF16_PTX on fp32 arrays a ($2), b ($3) with the PTX ISA's meaning
    of its four instructions: ``cvt.rn.bf16x2.f32 d, x, y`` puts RNE bf16(x) in the upper and
    bf16(y) in the lower half of d; ``shl.b32`` / ``and.b32`` on bits; ``sub.f32`` in fp32.
    Returns the bit patterns of $0 and $1; any other instruction fails."""
    import numpy as np

    regs = {"$2": a.view(np.uint32), "$3": b.view(np.uint32)}
    for line in ptx.splitlines():
        line = line.strip().rstrip(";")
        if line in ("", "{", "}") or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        d, *src = [t.strip() for t in rest.split(",")]
        if op == "cvt.rn.bf16x2.f32":
            regs[d] = (_bf16_rne_bits(regs[src[0]]) << np.uint32(16)) | _bf16_rne_bits(regs[src[1]])
        elif op == "shl.b32":
            regs[d] = regs[src[0]] << np.uint32(int(src[1], 0))
        elif op == "and.b32":
            regs[d] = regs[src[0]] & np.uint32(int(src[1], 0))
        elif op == "sub.f32":
            regs[d] = (regs[src[0]].view(np.float32) - regs[src[1]].view(np.float32)).view(np.uint32)
        else:
            raise AssertionError(f"unexpected PTX instruction {op}")
    return regs["$0"], regs["$1"]


def test_packed_bf16_split_ptx_gives_round_to_nearest_hi_and_lo():
    """The inline PTX of the GPU path (no interpreter twin), evaluated instruction by
    instruction: for each pair (a, b) of fp32 p values, $0 holds (bf16(a), bf16(b)) and $1
    (bf16(a − hi_a), bf16(b − hi_b)), the first of each pair in the low half (Triton's
    packing order), as torch's round-to-nearest-even casts give them; hi + lo is within
    2⁻¹⁷·p of p in float64 (lo rounds |p − hi| < 2⁻⁸·p to 8 bits; plus 2⁻¹³⁴ where lo is a
    bf16 subnormal). Values: (0, 1] down to 2⁻¹²⁰, bf16-exact values, exact ties."""
    import numpy as np

    from fastood.ops._triton_segment_lse_sm90 import SPLIT_BF16_PTX

    gen = torch.Generator().manual_seed(31)
    p = torch.exp2(-torch.rand(4096, generator=gen, dtype=torch.float64) * 120).float()
    p[:64] = torch.rand(64, generator=gen).to(torch.bfloat16).float()               # hi exact, lo = 0
    ties = torch.rand(64, generator=gen).to(torch.bfloat16).float().numpy().view(np.uint32) | np.uint32(0x8000)
    p[64:128] = torch.from_numpy(ties.view(np.float32))                              # exactly halfway
    a, b = p[0::2].numpy(), p[1::2].numpy()
    hi, lo = _eval_ptx(str(getattr(SPLIT_BF16_PTX, "value", SPLIT_BF16_PTX)), a.copy(), b.copy())
    hi_ref = p.to(torch.bfloat16)
    lo_ref = (p - hi_ref.float()).to(torch.bfloat16)
    bits = lambda t: t.view(torch.int16).numpy().view(np.uint16).astype(np.uint32)  # noqa: E731
    assert (hi & 0xFFFF == bits(hi_ref[0::2])).all() and (hi >> 16 == bits(hi_ref[1::2])).all()
    assert (lo & 0xFFFF == bits(lo_ref[0::2])).all() and (lo >> 16 == bits(lo_ref[1::2])).all()
    as_f64 = lambda w: torch.from_numpy((w << np.uint32(16)).view(np.float32).copy()).double()  # noqa: E731
    for half, q in ((lambda w: w & 0xFFFF, p[0::2].double()), (lambda w: w >> 16, p[1::2].double())):
        err = (as_f64(half(hi)) + as_f64(half(lo)) - q).abs()
        assert (err <= 2.0 ** -17 * q + 2.0 ** -134).all()  # + half the bf16 subnormal spacing


# ----------------------------------------------- registers: the version gate and ptxas
def test_register_cap_and_onehot_width_by_triton_version():
    """The table of the module's version gates, from ptxas (sm_90a, the hot kernel, fp16 and
    bf16, split or not, maxnreg=128): TMA path Triton 3.8 127–128 registers, 3.6 125–127
    (with the 16-wide one-hot and the packed split; 60–88 B of spill before), pointer path
    128 on both, all 0 spill bytes; 3.7 and older than 3.6 unchecked, so uncapped. The
    model's blocks per SM follows the cap."""
    from fastood.ops import _triton_segment_lse_sm90 as m

    versions = [(3, 5), (3, 6), (3, 7), (3, 8), (3, 9), (4, 0)]
    assert [m._cap_registers(v) for v in versions] == [False, True, False, True, True, True]
    assert [m._onehot_pad(v) for v in versions] == [True, True, True, False, False, False]
    assert m.CAP_REGISTERS == m._cap_registers(m._triton_version())
    assert m.WARP_ORGANISATION["blocks_per_sm"] == (2 if m.CAP_REGISTERS else 1)


def test_installed_triton_compiles_the_hot_kernel_to_the_blocks_per_sm_the_model_assumes():
    """ptxas' report for the installed Triton (CI: 3.8; with PYTHONPATH pointing at a 3.6 the
    same test checks 3.6): the hot kernel's fp16 launches, TMA and pointer paths, spill
    nothing and fit the blocks per SM that WARP_ORGANISATION gives bench/sol (two under the
    cap). Two compiles."""
    from fastood.ops import _aot
    from fastood.ops import _triton_segment_lse_sm90 as m

    names = {"segment_lse_sm90_fwd[128x128x64 w8 s3 tma]", "segment_lse_sm90_fwd[128x128x64 w8 s3 ptr]"}
    reps = _aot.compile_specs(90, ["float16"], full=False, jobs=2, modules=["fastood.ops._triton_segment_lse_sm90"],
                              select=lambda mod, spec: spec.name in names)
    assert {r.name for r in reps} == names
    for rep in reps:
        assert rep.error is None, rep.error
        assert rep.spill_stores == 0 and rep.spill_loads == 0, rep.name
        assert rep.mma == "wgmma"
        assert rep.blocks_per_sm == m.WARP_ORGANISATION["blocks_per_sm"], (rep.name, rep.registers)
        if m.CAP_REGISTERS:
            assert 0 < rep.registers <= 128


# ------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.skipif(not ON_SM90, reason="needs a compute-capability-9.x GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("use_tma", [True, False])
@pytest.mark.parametrize("B,splits", [(300, 1), (37, None)])
def test_gpu_sm90_matches_float64(dtype, use_tma, B, splits):
    gen = torch.Generator().manual_seed(B)
    N, D = 2 * 1040 + 1000, 512
    offsets = neglabel_offsets(1000, 20, 104)
    x, bank = unit_rows(B, D, gen).to(dtype), unit_rows(N, D, gen).to(dtype)
    row_scale = torch.full((B,), 100.0)
    out = run(x.cuda(), bank.cuda(), offsets, row_scale.cuda(), num_splits=splits, use_tma=use_tma)
    check(out, x, bank, offsets, row_scale)
    # Batches this small stay on the portable kernel (SM90_MIN_ROWS); the dispatcher's rule:
    assert not sm90_supported(x.cuda())
    assert sm90_supported(torch.zeros(1024, D, dtype=dtype, device="cuda"))
