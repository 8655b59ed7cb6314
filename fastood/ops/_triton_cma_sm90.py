"""Hopper (sm_90, fp16/bf16) kernels of the fused CMA loss: forward LSEs and backward.

Same contract and workspaces as :mod:`fastood.ops._triton_cma` (read its docstring for
the notation: ``L = s·ra_i·rb_j·<a_i, b_j>``, base-2 logits ``t = L·log2 e``, the
partial row state (m, l, l_nt, t_target) per split, the column partials per row block,
the same merge kernel). Never writes the M×N logits. What changes is the epilogue of a
tile, designed by counting (H100, per SM, bench/sol.py's rates):

Forward, 128×128 tile, D = 512: the wgmma work is 2·128·128·512 / 4096 = 4,096 clk.
The portable kernel spends per logit two exp2 (row sum against the running row max,
column sum against the column max: 2 × 16,384 / 16 = 2,048 clk of MUFU), and the
target / diagonal masks (compare, two selects, a sum, a max) on *every* tile. Here:

1. **One exp2 per logit.** ``p_ij = 2^(t_ij − mt_i)`` with ``mt_i`` the row's max *in
   this tile* (exact, so p ∈ (0, 1] and the row sum ≥ 1). The row state merges the
   tile with two exp2 per row: ``m' = max(m, mt)``, ``l' = l·2^(m−m') + Σ_j p·2^(mt−m')``.
2. **The column sums from the same p.** With the tile's reference ``R = max_i mt_i`` and
   per-row weights ``w_i = 2^(mt_i − R) ≤ 1``, ``Σ_i p_ij·w_i = Σ_i 2^(t_ij − R)``: the
   column partial against a shared reference (stored as ``m = R``), an FMUL + FADD per
   logit instead of an FMNMX + FADD + MUFU. Hazard: a column whose logits all lie > 126
   below R flushes to 0. Checked per tile after the reduction (not per logit): if a
   valid column's sum is < 2⁻⁹⁶ the tile is flagged and the fix-up kernel recomputes its
   column partials exactly (per-column max). With sum ≥ 2⁻⁹⁶, the ≤ BLOCK_M flushed
   terms (< 2⁻¹²⁶ each) cost < 2⁻²³ relative, and every stored ``l ≥ 2⁻⁹⁶`` stays clear
   of the merge's 1e-30 clamp.
3. **Targets only where they are.** Pair mode: the hot kernel walks its split's tiles in
   two loops around the row block's diagonal columns [r0, r0 + BLOCK_M), so no tile of
   the hot loop holds a target; only the global last tile is masked (its own loop).
   The fix-up kernel (``_sm90_cma_fix_kernel``) computes each row block's diagonal tile
   exactly: a row partial with the target (extra workspace slot), its sum without the
   target and the target logit, and the diagonal columns' partials; then the flagged
   tiles. The row merge (``_sm90_row_merge_kernel``) takes l_nt = Σ of the target-free
   partials + the diagonal's, so ``comp = 1 − P_target`` is never a difference.
   Class mode keeps the per-logit label compare (K is small there).
4. When ta_i > 0 (s > 0 and inverse norms, the dispatcher's contract) the row max of
   the rounded logits is ``fl(max_j(acc·rb)·ta_i)`` exactly (rounding is monotone), so
   ``p = exp2(fma(acc·rb, ta_i, −mt_i))``: the scale, the norms and log2 e in one FFMA.

Compiled (ptxas of Triton 3.8, sm_90a, no GPU): 128×128×128, 8 warps, 3 stages, TMA:
128 registers (fp16 and bf16; Triton 3.6: 232), 0 spill, 192 KB shared memory (so still
one block per SM). Per-tile issue slots cut from 3,218 to 2,978 by two changes read off the
SASS: ``tl.assume(D > 0)`` (the K loop's zero-trip path, with its own 32 accumulator
zeroing CS2R and guards, is gone) and the flush flag stored by every low column (masked
store of the same 1) instead of a cross-warp min-reduction per tile. The model (bench/sol.py's
rates) puts a tile at MMA 4,096 + issue 2,978 + refill 600 = 7,674 SM cycles (serial chain):
51 % of the dense peak at B = 32,768 (28 % at 4,096, where the launches and a partial
wave weigh). Tried: a 128-register cap (two blocks per SM) spills ≈ 400 B
and 192 KB of pipeline leave no room for a second block anyway; BLOCK_D 64 costs 4 % more
issue slots (K-loop bookkeeping); the column sums are mostly cross-lane / cross-warp
reductions of the per-column vectors (208 SHFL per warp and tile).

Backward, run twice with the roles swapped (own rows × other rows), 64×32 logit tile (fused, 8.),
output slice BLOCK_DO (the flash-attention-backward shape: one program owns BLOCK_M
rows and BLOCK_DO output columns, walks every column tile, recomputes the logit tile
``acc = a_blk @ b_tileᵀ`` and ``G~`` from the saved LSEs, accumulates
``out += (G~·rb) @ b_tile[:, slice]``):

5. ``G~ = α·2^(t − lse_own_i) + β·2^(t − lse_oth_j)`` with ``t = u·ta_i``, ``u = acc·rb_j``:
   one FMUL, two FFMA + two MUFU per logit (the scale, the norms and log2 e folded).
6. **The other side's operand straight from shared memory.** The portable kernel
   normalises ``v = rb·b`` element-wise and re-stages it (registers → shared) per tile;
   here the column weights go onto G~ instead: ``out += (G~_ij·rb_j) @ b_j`` with the
   raw rows, so the second GEMM's B operand is the TMA tile itself. (fp16: G~·rb is
   rounded once instead of v; with |b_j| ≫ 1 its smallest representable magnitude rises
   by |b_j|: terms below 2⁻¹⁴/|b_j| become subnormal — negligible next to the O(1) target.)
7. Pair-mode targets only in the diagonal tiles (their own loop, as 3.).
8. **Fused for D ≤ 512** (``BWD_CONFIG``, Triton ≥ 3.8): ``BLOCK_DO = 512 ≥ D``, one
   program owns the whole output width, and the logit tile is ``a_blk @ b_tileᵀ`` with
   K = BLOCK_DO in one step from the row block, loaded once per program (resident in shared
   memory), and the *same* [BLOCK_N, 512] b tile that the output GEMM reads: b crosses L2
   once per tile instead of twice, a once per program instead of once per tile, and the tile
   loop has no K loop, so Triton's pipeliner pipelines it (3 stages: the TMA of tile i+2 is
   issued in iteration i; no refill per tile). Beyond D the TMA zero-fills both operands
   (the padded K adds exact zeros; D < 512 pays the padded K, as the output GEMM already
   did). G~ is computed inside an always-taken branch: a dot feeding a dot directly is laid
   out "chained" by Triton (all warps along M; with BLOCK_M = 64 both warpgroups would
   compute the whole tile: 2× the logit MMA and exp2, 216 B spill). 64×32 tiles: 64×64
   spills 24 B in the pair pass, and 3 stages of 64×512 b tiles do not fit next to the row
   block. Compiled: 236–255 registers, 0 spill, 165–168 KB, one block per SM; the model:
   MMA 1,024 + issue 682 (no refill) = 1,706 cycles per 64×32 tile, L2 683: 58 % at
   B = 32,768 (42 % at 4,096). Triton 3.6's pipeliner fails on the fused kernel
   ("PassManager::run failed"; 3.7 unchecked): those run the unfused tile (64×64×128, a K
   loop over D, 222–235 registers on 3.6, 0 spill; 46 % in the model). Wider D runs
   256-wide output slices (``BWD_SLICED_CONFIG``), ``(D/256 + 1)·2·M·N·D``.

The interpreter runs the pointer-load variant of the same bodies (``USE_TMA=False``).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from torch import Tensor


__all__ = ["cma_fwd_triton_sm90", "cma_bwd_triton_sm90", "cma_sm90_supported", "route", "aot_specs",
           "SOL_KERNELS", "WARP_ORGANISATION"]

# (BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages) of the forward.
FWD_CONFIG = (128, 128, 128, 8, 3)
# The fix-up kernel (same BLOCK_M / BLOCK_N as the forward: it reads its flags): BLOCK_D,
# warps, stages. BLOCK_D = 128 spills 24 B (fp16, ptxas); 64 does not.
FIX_CONFIG = (64, 8, 3)
# (BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DO, num_warps, num_stages) of the backward: the whole
# output width in one program for D <= D_MAX, fused (BLOCK_D = BLOCK_DO: the logit tile in
# one K = BLOCK_DO step from the resident row block and the output GEMM's b tile; docstring,
# 8.), output slices of 256 beyond (D/256 recomputations, a K loop over D).
D_MAX = 512


def _triton_version() -> tuple[int, int]:
    major, minor = triton.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


# The fused backward compiles on Triton 3.8 (ptxas: 236–255 registers, 0 spill); Triton 3.6's
# pipeliner fails on it (checked, "PassManager::run failed"), 3.7 is unchecked: those run the
# unfused tile (a K loop over D, 220 registers, 0 spill on 3.6 and 3.8).
FUSED_BWD = _triton_version() >= (3, 8)
BWD_CONFIG = (64, 32, D_MAX, D_MAX, 8, 3) if FUSED_BWD else (64, 64, 128, D_MAX, 8, 2)
BWD_SLICED_CONFIG = (64, 64, 64, 256, 8, 3)
# Interpreter tiles (tiny; the same bodies on the pointer path).
_INTERPRET_FWD = (16, 16, 16)
_INTERPRET_BWD = (16, 16, 64, 64)  # fused for D <= 64 (the tests' D = 40); blocks= reaches the K loop
# A column partial below this against the shared reference takes the exact path (docstring, 2.).
COL_FLOOR = tl.constexpr(1.262177448353619e-29)  # 2^-96

# What the speed-of-light model reads (bench/sol.py, keyed by the AOT spec name before "[").
SOL_KERNELS = {
    "cma_sm90_fwd": {"chains": 1, "refill": True, "a_resident": False},
    # Fused backward: the row block is loaded once per program (a_resident); the tile loop
    # is the pipelined loop (3 stages, no K loop): the TMA of tile i+2 is issued in iteration i
    # (SASS: two UTMALDG before the loop, one per iteration), a whole tile (> 1,600 clk) before
    # its wait, more than the 600 clk L2 latency: no refill per tile.
    "cma_sm90_bwd_fused": {"chains": 1, "refill": False, "a_resident": True},
    "cma_sm90_bwd": {"chains": 1, "refill": True, "a_resident": False},  # D > D_MAX: sliced, K loop
    "cma_sm90_fix": {"chains": 1, "refill": True, "a_resident": False},  # rare tiles + one diagonal per row block
}
WARP_ORGANISATION = {
    "forward": {"kernel": "_sm90_cma_fwd_kernel", "warps_per_block": FWD_CONFIG[3],
                "tile": dict(zip(("BLOCK_M", "BLOCK_N", "BLOCK_D"), FWD_CONFIG[:3])),
                "mma_async": True, "epilogue_overlaps_mma": "across blocks (when two are resident)"},
    "backward": {"kernel": "_sm90_cma_bwd_kernel", "warps_per_block": BWD_CONFIG[4],
                 "tile": dict(zip(("BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_DO"), BWD_CONFIG[:4])),
                 "mma_async": True, "epilogue_overlaps_mma": "across blocks (when two are resident)"},
}


@triton.jit
def _acc_tile(
    a_ptr, b_ptr, r0, n0, rows64, row_ok, cols64, col_ok, D,
    stride_a0, stride_a1, stride_b0, stride_b1,
    USE_TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """acc = a[rows] @ b[cols]ᵀ over D in BLOCK_D chunks, fp32 accumulation; rows/cols
    outside the problem give 0 (TMA zero fill, or masked loads)."""
    offs_d = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for d0 in tl.range(0, D, BLOCK_D):
        if USE_TMA:
            a = a_ptr.load([r0, d0])
            b = b_ptr.load([n0, d0]).T
        else:
            d_ok = (d0 + offs_d) < D
            a = tl.load(a_ptr + rows64[:, None] * stride_a0 + (d0 + offs_d)[None, :] * stride_a1,
                        mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            b = tl.load(b_ptr + cols64[None, :] * stride_b0 + (d0 + offs_d)[:, None] * stride_b1,
                        mask=d_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _fwd_tiles(
    a_ptr, b_ptr, rb_ptr, col_m_ptr, col_l_ptr, flag_ptr,
    r0, rows64, row_ok, ta, m, l, lo, hi, pid_m, n_tiles, N, D,
    stride_a0, stride_a1, stride_b0, stride_b1,
    USE_TMA: tl.constexpr, WANT_COL: tl.constexpr, MASKED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The hot loop over the column tiles [lo, hi) (no target in them): row state (m, l)
    and, with WANT_COL, the column partials against the tile's shared reference. Without
    MASKED every tile is full (the caller hands the tail tile to a MASKED call)."""
    NEG_INF: tl.constexpr = float("-inf")
    offs_n = tl.arange(0, BLOCK_N)
    for n0 in tl.range(lo, hi, BLOCK_N):
        cols = n0 + offs_n
        col_ok = cols < hi
        cols64 = cols.to(tl.int64)
        acc = _acc_tile(a_ptr, b_ptr, r0, n0, rows64, row_ok, cols64, col_ok, D,
                        stride_a0, stride_a1, stride_b0, stride_b1, USE_TMA, BLOCK_M, BLOCK_N, BLOCK_D)
        # Row side: the exact tile max per row, one exp2 per logit (docstring, 1.).
        if MASKED:
            rb = tl.load(rb_ptr + cols, mask=col_ok, other=0.0)
            t = tl.where(col_ok[None, :], acc * ta[:, None] * rb[None, :], NEG_INF)
            mt = tl.max(t, axis=1)                  # finite: every tile has a valid column
            p = tl.math.exp2(t - mt[:, None])
        else:
            # ta_i > 0 (s > 0, inverse norms > 0) and rounding is monotone, so the max of
            # the rounded logits fl(u·ta) is fl(max(u)·ta) exactly; then one FFMA per logit.
            rb = tl.load(rb_ptr + cols)
            u = acc * rb[None, :]
            mt = tl.max(u, axis=1) * ta
            p = tl.math.exp2(tl.fma(u, ta[:, None], -mt[:, None]))
        m_new = tl.maximum(m, mt)
        l = l * tl.math.exp2(m - m_new) + tl.sum(p, axis=1) * tl.math.exp2(mt - m_new)  # m = -inf first: 0
        m = m_new
        if WANT_COL:
            # Column side from the same p, against the tile's shared reference R (docstring, 2.).
            R = tl.max(tl.where(row_ok, mt, NEG_INF), axis=0)
            w = tl.where(row_ok, tl.math.exp2(mt - R), 0.0)
            cs = tl.sum(p * w[:, None], axis=0)
            ws = pid_m.to(tl.int64) * N + cols64
            if MASKED:
                tl.store(col_m_ptr + ws, tl.zeros([BLOCK_N], tl.float32) + R, mask=col_ok)
                tl.store(col_l_ptr + ws, cs, mask=col_ok)
                cs = tl.where(col_ok, cs, 1.0)
            else:
                tl.store(col_m_ptr + ws, tl.zeros([BLOCK_N], tl.float32) + R)
                tl.store(col_l_ptr + ws, cs)
            # A flushed column (rare): flag the tile, the fix-up kernel recomputes it exactly.
            # Every low column stores the same 1 to the tile's flag (no min-reduction over
            # the columns: a cross-warp reduction per tile for a flag that is almost never set).
            flag_at = flag_ptr + pid_m.to(tl.int64) * n_tiles + n0 // BLOCK_N
            tl.store(flag_at + tl.zeros([BLOCK_N], tl.int32), tl.full([BLOCK_N], 1, tl.int8), mask=cs < COL_FLOOR)
    return m, l


@triton.jit
def _sm90_cma_fwd_kernel(
    a_ptr, b_ptr, ra_ptr, rb_ptr, scale_ptr, lab_ptr,
    row_m_ptr, row_l_ptr, row_lnt_ptr, row_tt_ptr,
    col_m_ptr, col_l_ptr, flag_ptr,
    M, N, D, chunk, n_tiles,
    stride_a0, stride_a1, stride_b0, stride_b1,
    USE_TMA: tl.constexpr, LABELS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The hot kernel. Pair mode (not LABELS): the split's tiles minus the row block's
    diagonal columns [r0, r0 + BLOCK_M) (two loops around them: no target test in the hot
    loop), column partials for those tiles; the diagonal is the fix-up kernel's. Class
    mode: every tile, the label compared per logit (K is small), no column statistics."""
    tl.assume(D > 0)  # the K loops run at least once: no zero-trip path (its own acc zeroing)
    pid_m = tl.program_id(0)
    pid_p = tl.program_id(1)
    NEG_INF: tl.constexpr = float("-inf")
    r0 = pid_m * BLOCK_M
    rows = r0 + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    s2 = tl.load(scale_ptr).to(tl.float32) * 1.4426950408889634
    ta = tl.load(ra_ptr + rows, mask=row_ok, other=0.0) * s2   # base-2 logits: acc·ta_i·rb_j
    m = tl.full([BLOCK_M], NEG_INF, tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    col_lo = pid_p * chunk
    col_hi = tl.minimum(N, col_lo + chunk)
    ws = pid_p.to(tl.int64) * M + rows64
    if LABELS:
        tgt = tl.load(lab_ptr + rows, mask=row_ok, other=-1)
        lnt = tl.zeros([BLOCK_M], tl.float32)
        tt = tl.full([BLOCK_M], NEG_INF, tl.float32)
        offs_n = tl.arange(0, BLOCK_N)
        for n0 in tl.range(col_lo, col_hi, BLOCK_N):
            cols = n0 + offs_n
            col_ok = cols < col_hi
            cols64 = cols.to(tl.int64)
            acc = _acc_tile(a_ptr, b_ptr, r0, n0, rows64, row_ok, cols64, col_ok, D,
                            stride_a0, stride_a1, stride_b0, stride_b1, USE_TMA, BLOCK_M, BLOCK_N, BLOCK_D)
            rb = tl.load(rb_ptr + cols, mask=col_ok, other=0.0)
            t = tl.where(col_ok[None, :], acc * ta[:, None] * rb[None, :], NEG_INF)
            mt = tl.max(t, axis=1)
            p = tl.math.exp2(t - mt[:, None])
            hit = cols64[None, :] == tgt[:, None]
            m_new = tl.maximum(m, mt)
            a_old = tl.math.exp2(m - m_new)
            a_til = tl.math.exp2(mt - m_new)
            l = l * a_old + tl.sum(p, axis=1) * a_til
            lnt = lnt * a_old + tl.sum(tl.where(hit, 0.0, p), axis=1) * a_til
            tt = tl.maximum(tt, tl.max(tl.where(hit, t, NEG_INF), axis=1))
            m = m_new
        t_ok = row_ok & (tgt >= col_lo) & (tgt < col_hi)
        tl.store(row_lnt_ptr + rows64, lnt, mask=t_ok)
        tl.store(row_tt_ptr + rows64, tt, mask=t_ok)
    else:
        # [col_lo, r0) and [r0 + BLOCK_M, col_hi): BLOCK_M is a multiple of BLOCK_N, r0 of
        # BLOCK_N, chunk of BLOCK_N, so every range starts on a tile bound. Only the last
        # tile of the matrix can be partial (full_end on): a masked call of its own.
        full_end = (N // BLOCK_N) * BLOCK_N
        m, l = _fwd_tiles(a_ptr, b_ptr, rb_ptr, col_m_ptr, col_l_ptr, flag_ptr,
                          r0, rows64, row_ok, ta, m, l, col_lo, tl.minimum(col_hi, r0), pid_m, n_tiles, N, D,
                          stride_a0, stride_a1, stride_b0, stride_b1, USE_TMA, True, False,
                          BLOCK_M, BLOCK_N, BLOCK_D)
        lo2 = tl.maximum(col_lo, r0 + BLOCK_M)
        m, l = _fwd_tiles(a_ptr, b_ptr, rb_ptr, col_m_ptr, col_l_ptr, flag_ptr,
                          r0, rows64, row_ok, ta, m, l, lo2, tl.minimum(col_hi, full_end), pid_m, n_tiles, N, D,
                          stride_a0, stride_a1, stride_b0, stride_b1, USE_TMA, True, False,
                          BLOCK_M, BLOCK_N, BLOCK_D)
        m, l = _fwd_tiles(a_ptr, b_ptr, rb_ptr, col_m_ptr, col_l_ptr, flag_ptr,
                          r0, rows64, row_ok, ta, m, l, tl.maximum(lo2, full_end), col_hi, pid_m, n_tiles, N, D,
                          stride_a0, stride_a1, stride_b0, stride_b1, USE_TMA, True, True,
                          BLOCK_M, BLOCK_N, BLOCK_D)
    tl.store(row_m_ptr + ws, m, mask=row_ok)
    tl.store(row_l_ptr + ws, l, mask=row_ok)


@triton.jit
def _exact_cols(
    a_ptr, b_ptr, rb_ptr, col_m_ptr, col_l_ptr, col_lnt_ptr, col_tt_ptr,
    r0, n0, rows64, row_ok, ta, pid_m, N, D,
    stride_a0, stride_a1, stride_b0, stride_b1,
    DIAG: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One tile with exact per-column maxima: the column partials of this row block (and,
    on the diagonal, each column's sum without its target and its target logit). Returns
    the tile's base-2 logits (-inf outside the problem)."""
    NEG_INF: tl.constexpr = float("-inf")
    cols = n0 + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    cols64 = cols.to(tl.int64)
    acc = _acc_tile(a_ptr, b_ptr, r0, n0, rows64, row_ok, cols64, col_ok, D,
                    stride_a0, stride_a1, stride_b0, stride_b1, False, BLOCK_M, BLOCK_N, BLOCK_D)
    rb = tl.load(rb_ptr + cols, mask=col_ok, other=0.0)
    t = tl.where(row_ok[:, None] & col_ok[None, :], acc * ta[:, None] * rb[None, :], NEG_INF)
    cm = tl.max(t, axis=0)
    cm_ref = tl.where(cm == NEG_INF, 0.0, cm)
    ec = tl.math.exp2(t - cm_ref[None, :])
    ws = pid_m.to(tl.int64) * N + cols64
    tl.store(col_m_ptr + ws, cm, mask=col_ok)
    tl.store(col_l_ptr + ws, tl.sum(ec, axis=0), mask=col_ok)
    if DIAG:
        dhit = rows64[:, None] == cols64[None, :]
        tl.store(col_lnt_ptr + cols64, tl.sum(tl.where(dhit, 0.0, ec), axis=0), mask=col_ok)
        tl.store(col_tt_ptr + cols64, tl.max(tl.where(dhit, t, NEG_INF), axis=0), mask=col_ok)
    return t


@triton.jit
def _sm90_cma_fix_kernel(
    a_ptr, b_ptr, ra_ptr, rb_ptr, scale_ptr,
    row_m_ptr, row_l_ptr, row_lnt_ptr, row_tt_ptr,
    col_m_ptr, col_l_ptr, col_lnt_ptr, col_tt_ptr, flag_ptr,
    M, N, D, n_tiles, diag_slot,
    stride_a0, stride_a1, stride_b0, stride_b1,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Pair mode, after the hot kernel. Program (row block, j): j < n_tiles recomputes
    tile j exactly when the hot kernel flagged it (else exits at once); j == n_tiles is the
    row block's diagonal BLOCK_M × BLOCK_M tile: its row partial (m, l, the sum without the
    target, the target logit) into workspace slot ``diag_slot`` and its columns' partials."""
    pid_m = tl.program_id(0)
    j = tl.program_id(1)
    NEG_INF: tl.constexpr = float("-inf")
    r0 = pid_m * BLOCK_M
    rows = r0 + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    s2 = tl.load(scale_ptr).to(tl.float32) * 1.4426950408889634
    ta = tl.load(ra_ptr + rows, mask=row_ok, other=0.0) * s2
    if j == n_tiles:
        t = _exact_cols(a_ptr, b_ptr, rb_ptr, col_m_ptr, col_l_ptr, col_lnt_ptr, col_tt_ptr,
                        r0, r0, rows64, row_ok, ta, pid_m, N, D, stride_a0, stride_a1, stride_b0, stride_b1,
                        True, BLOCK_M, BLOCK_M, BLOCK_D)
        cols64 = (r0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        dhit = rows64[:, None] == cols64[None, :]
        mt = tl.max(t, axis=1)
        mt_ref = tl.where(mt == NEG_INF, 0.0, mt)
        e = tl.math.exp2(t - mt_ref[:, None])
        ws = diag_slot.to(tl.int64) * M + rows64
        tl.store(row_m_ptr + ws, mt, mask=row_ok)
        tl.store(row_l_ptr + ws, tl.sum(e, axis=1), mask=row_ok)
        tl.store(row_lnt_ptr + rows64, tl.sum(tl.where(dhit, 0.0, e), axis=1), mask=row_ok)
        tl.store(row_tt_ptr + rows64, tl.max(tl.where(dhit, t, NEG_INF), axis=1), mask=row_ok)
    elif tl.load(flag_ptr + pid_m.to(tl.int64) * n_tiles + j) != 0:
        _exact_cols(a_ptr, b_ptr, rb_ptr, col_m_ptr, col_l_ptr, col_lnt_ptr, col_tt_ptr,
                    r0, j * BLOCK_N, rows64, row_ok, ta, pid_m, N, D, stride_a0, stride_a1, stride_b0, stride_b1,
                    False, BLOCK_M, BLOCK_N, BLOCK_D)


@triton.jit
def _sm90_row_merge_kernel(
    m_ptr, l_ptr, lnt_ptr, tt_ptr, lse_ptr, ce_ptr, comp_ptr, P, n,
    BLOCK: tl.constexpr,
):
    """Pair-mode rows: fold the P base-2 partials (m, l)[p, i] in order. Partials 0..P-2
    (the hot kernel's splits) hold no target; partial P-1 (the diagonal tile) does, and its
    sum without the target is lnt[i]: ``lse = (m + log2 l)·ln 2``, ``ce = (m − tt + log2 l)·ln 2``,
    ``comp = l_nt / l`` with ``l_nt`` = Σ of the target-free partials (no cancellation)."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = idx < n
    idx64 = idx.to(tl.int64)
    NEG_INF: tl.constexpr = float("-inf")
    m = tl.full([BLOCK], NEG_INF, tl.float32)
    l = tl.zeros([BLOCK], tl.float32)
    lnt = tl.zeros([BLOCK], tl.float32)
    lnt_d = tl.load(lnt_ptr + idx64, mask=ok, other=0.0)
    for p in range(0, P):
        ws = p * n + idx64
        m_p = tl.load(m_ptr + ws, mask=ok, other=NEG_INF)
        l_p = tl.load(l_ptr + ws, mask=ok, other=0.0)
        lnt_p = tl.where(p == P - 1, lnt_d, l_p)
        m_new = tl.maximum(m, m_p)
        m_ref = tl.where(m_new == NEG_INF, 0.0, m_new)
        a = tl.math.exp2(m - m_ref)
        b = tl.math.exp2(m_p - m_ref)
        l = l * a + l_p * b
        lnt = lnt * a + lnt_p * b
        m = m_new
    tt = tl.load(tt_ptr + idx64, mask=ok, other=0.0)
    log2l = tl.math.log2(tl.maximum(l, 1e-30))
    tl.store(lse_ptr + idx64, (m + log2l) * 0.6931471805599453, mask=ok)
    tl.store(ce_ptr + idx64, ((m - tt) + log2l) * 0.6931471805599453, mask=ok)
    tl.store(comp_ptr + idx64, lnt / tl.maximum(l, 1e-30), mask=ok)


@triton.jit
def _g_tile(acc, rb, ta, own2, tgt_row, tgt, r0, rows64, cols64, col_ok, oth_lse_ptr, oth_comp_ptr, lab_ptr, cols,
            alpha, beta, OWN_LSE: tl.constexpr, OTH_LSE: tl.constexpr, TARGET: tl.constexpr,
            WITH_TGT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """G~·rb on one tile (docstring, 4.–6.): fp32, padded columns exactly 0."""
    u = acc * rb[None, :]
    g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    if OWN_LSE:
        g += alpha * tl.math.exp2(tl.fma(u, ta[:, None], -own2[:, None]))
    if OTH_LSE:
        oth2 = tl.load(oth_lse_ptr + cols, mask=col_ok, other=0.0) * 1.4426950408889634
        g += beta * tl.math.exp2(tl.fma(u, ta[:, None], -oth2[None, :]))
    if WITH_TGT:
        tv = tgt_row[:, None] + tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        if OTH_LSE:
            tv -= beta * tl.load(oth_comp_ptr + cols, mask=col_ok, other=0.0)[None, :]
        if TARGET == 0:
            # int32 (M, N < 2^31): an int64 row vector live over the loops costs registers.
            hit = (r0 + tl.arange(0, BLOCK_M))[:, None] == cols[None, :]
        elif TARGET == 1:
            hit = cols64[None, :] == tgt[:, None]
        else:
            lab = tl.load(lab_ptr + cols, mask=col_ok, other=-1)
            hit = lab[None, :] == rows64[:, None]
        g = tl.where(hit, tv, g)
    return tl.where(col_ok[None, :], g * rb[None, :], 0.0)


@triton.jit
def _bwd_tiles(
    a_ptr, b_ptr, bo_ptr, rb_ptr, oth_lse_ptr, oth_comp_ptr, lab_ptr,
    out, a_res, r0, o0, rows64, row_ok, ta, own2, tgt_row, tgt, offs_o, o_ok, lo, hi, D, alpha, beta,
    stride_a0, stride_a1, stride_b0, stride_b1,
    USE_TMA: tl.constexpr, OWN_LSE: tl.constexpr, OTH_LSE: tl.constexpr, TARGET: tl.constexpr,
    WITH_TGT: tl.constexpr, FUSED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr,
):
    """out += (G~·rb) @ b[:, slice] over the column tiles [lo, hi) (K loop over D, output
    slice BLOCK_DO); the target entries of G~ are set only when WITH_TGT (pair mode: only
    the diagonal tiles have any). FUSED (D <= BLOCK_DO, one slice at o0 = 0): the logit
    tile is ``a_res @ boᵀ`` from the resident row block and the same [BLOCK_N, BLOCK_DO]
    tile of b that the second GEMM reads (docstring, 8.), no K loop."""
    offs_n = tl.arange(0, BLOCK_N)
    for n0 in tl.range(lo, hi, BLOCK_N):
        cols = n0 + offs_n
        col_ok = cols < hi
        cols64 = cols.to(tl.int64)
        if USE_TMA:
            bo = bo_ptr.load([n0, o0])
        else:
            bo = tl.load(b_ptr + cols64[:, None] * stride_b0 + offs_o[None, :] * stride_b1,
                         mask=col_ok[:, None] & o_ok[None, :], other=0.0)
        if FUSED:
            # Zero-filled beyond D on both sides: the padded K adds exact zeros.
            acc = tl.dot(a_res, bo.T)
        else:
            acc = _acc_tile(a_ptr, b_ptr, r0, n0, rows64, row_ok, cols64, col_ok, D,
                            stride_a0, stride_a1, stride_b0, stride_b1, USE_TMA, BLOCK_M, BLOCK_N, BLOCK_D)
        rb = tl.load(rb_ptr + cols, mask=col_ok, other=0.0)
        # G~ inside an (always taken) branch: a dot whose result reaches another dot directly
        # is laid out "chained" by Triton (all warps along M: with BLOCK_M = 64 both
        # warpgroups would compute the whole tile, 2x the logit MMA and exp2 work; ptxas
        # 216 B spill). Through the branch the tile is split across the warpgroups and its
        # G~ exchanged through shared memory for the second dot, as in the unfused kernel.
        gw = tl.zeros([BLOCK_M, BLOCK_N], bo.dtype)
        if D > 0:
            gw = _g_tile(acc, rb, ta, own2, tgt_row, tgt, r0, rows64, cols64, col_ok, oth_lse_ptr, oth_comp_ptr,
                         lab_ptr, cols, alpha, beta, OWN_LSE, OTH_LSE, TARGET, WITH_TGT, BLOCK_M, BLOCK_N).to(bo.dtype)
        out = tl.dot(gw, bo, out)
    return out


@triton.jit
def _sm90_cma_bwd_kernel(
    a_ptr, b_ptr, bo_ptr, ra_ptr, rb_ptr, scale_ptr,
    own_lse_ptr, own_comp_ptr, oth_lse_ptr, oth_comp_ptr, lab_ptr,
    out_ptr,
    M, N, D, chunk, alpha, beta, g_tgt,
    stride_a0, stride_a1, stride_b0, stride_b1,
    USE_TMA: tl.constexpr, OWN_LSE: tl.constexpr, OTH_LSE: tl.constexpr, TARGET: tl.constexpr,
    FUSED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr,
):
    """out[splits, M, D] slab ``pid_p``: Σ_j G~_ij·rb_j·b_j over this split's columns
    (``bo_ptr``: b again, as a [BLOCK_N, BLOCK_DO] TMA descriptor on the TMA path). Pair
    mode walks the split's columns in three ranges (before, on, after the row block's
    diagonal columns) so that only the middle one carries the target code."""
    pid_m = tl.program_id(0)
    pid_o = tl.program_id(1)
    pid_p = tl.program_id(2)
    r0 = pid_m * BLOCK_M
    rows = r0 + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    s2 = tl.load(scale_ptr).to(tl.float32) * 1.4426950408889634
    ta = tl.load(ra_ptr + rows, mask=row_ok, other=0.0) * s2
    # Target entries: G~ = g_tgt − α·comp_own − β·comp_oth, from the saved complements 1 − P.
    # Pair mode loads tgt_row just before its diagonal tiles (live over one loop, not three).
    tgt_row = tl.zeros([BLOCK_M], tl.float32) + g_tgt
    own2 = tl.zeros([BLOCK_M], tl.float32)
    if OWN_LSE:
        own2 = tl.load(own_lse_ptr + rows, mask=row_ok, other=0.0) * 1.4426950408889634
        if TARGET != 0:
            tgt_row -= alpha * tl.load(own_comp_ptr + rows, mask=row_ok, other=0.0)
    tgt = rows64
    if TARGET == 1:
        tgt = tl.load(lab_ptr + rows, mask=row_ok, other=-1)
    o0 = pid_o * BLOCK_DO
    offs_o = o0 + tl.arange(0, BLOCK_DO)
    o_ok = offs_o < D
    out = tl.zeros([BLOCK_M, BLOCK_DO], tl.float32)
    if FUSED:  # the row block, resident for the whole walk (a is [BLOCK_M, BLOCK_DO] on the TMA path)
        if USE_TMA:
            a_res = a_ptr.load([r0, 0])
        else:
            a_res = tl.load(a_ptr + rows64[:, None] * stride_a0 + offs_o[None, :] * stride_a1,
                            mask=row_ok[:, None] & o_ok[None, :], other=0.0)
    else:
        a_res = r0  # unused
    col_lo = pid_p * chunk
    col_hi = tl.minimum(N, col_lo + chunk)
    if TARGET == 0:
        out = _bwd_tiles(a_ptr, b_ptr, bo_ptr, rb_ptr, oth_lse_ptr, oth_comp_ptr, lab_ptr,
                         out, a_res, r0, o0, rows64, row_ok, ta, own2, tgt_row, tgt, offs_o, o_ok,
                         col_lo, tl.minimum(col_hi, r0), D, alpha, beta, stride_a0, stride_a1, stride_b0, stride_b1,
                         USE_TMA, OWN_LSE, OTH_LSE, TARGET, False, FUSED,
                         BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DO)
        if OWN_LSE:
            tgt_row -= alpha * tl.load(own_comp_ptr + rows, mask=row_ok, other=0.0)
        out = _bwd_tiles(a_ptr, b_ptr, bo_ptr, rb_ptr, oth_lse_ptr, oth_comp_ptr, lab_ptr,
                         out, a_res, r0, o0, rows64, row_ok, ta, own2, tgt_row, tgt, offs_o, o_ok,
                         tl.maximum(col_lo, r0), tl.minimum(col_hi, r0 + BLOCK_M), D, alpha, beta,
                         stride_a0, stride_a1, stride_b0, stride_b1,
                         USE_TMA, OWN_LSE, OTH_LSE, TARGET, True, FUSED,
                         BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DO)
        out = _bwd_tiles(a_ptr, b_ptr, bo_ptr, rb_ptr, oth_lse_ptr, oth_comp_ptr, lab_ptr,
                         out, a_res, r0, o0, rows64, row_ok, ta, own2, tgt_row, tgt, offs_o, o_ok,
                         tl.maximum(col_lo, r0 + BLOCK_M), col_hi, D, alpha, beta,
                         stride_a0, stride_a1, stride_b0, stride_b1,
                         USE_TMA, OWN_LSE, OTH_LSE, TARGET, False, FUSED,
                         BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DO)
    else:
        out = _bwd_tiles(a_ptr, b_ptr, bo_ptr, rb_ptr, oth_lse_ptr, oth_comp_ptr, lab_ptr,
                         out, a_res, r0, o0, rows64, row_ok, ta, own2, tgt_row, tgt, offs_o, o_ok,
                         col_lo, col_hi, D, alpha, beta, stride_a0, stride_a1, stride_b0, stride_b1,
                         USE_TMA, OWN_LSE, OTH_LSE, TARGET, True, FUSED,
                         BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DO)
    # Output columns recomputed here: kept from the top they stay live over the loops (ptxas spills).
    offs_s = o0 + tl.arange(0, BLOCK_DO)
    rows_s = (r0 + tl.arange(0, BLOCK_M)).to(tl.int64)
    o_ptrs = out_ptr + pid_p.to(tl.int64) * M * D + rows_s[:, None] * D + offs_s[None, :]
    tl.store(o_ptrs, out, mask=(rows_s < M)[:, None] & (offs_s < D)[None, :])


# ----------------------------------------------------------------------------- launchers
def _tensor_descriptor_cls():
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:  # pragma: no cover - Triton < 3.3
        return None
    return TensorDescriptor


def cma_sm90_supported(x: Tensor) -> bool:
    """True when the Hopper kernels take CUDA inputs ``x``: fp16/bf16 on a compute
    capability 9.x GPU, a Triton with host tensor descriptors, and no
    ``FASTOOD_TRITON_SM90=0`` in the environment (which keeps the portable kernels)."""
    if not isinstance(x, Tensor) or x.device.type != "cuda" or x.dtype not in (torch.float16, torch.bfloat16):
        return False
    if os.environ.get("FASTOOD_TRITON_SM90", "1") == "0":
        return False
    if _tensor_descriptor_cls() is None:
        return False
    return torch.cuda.get_device_capability(x.device)[0] == 9


def route(fwd, bwd):
    """Wrap the portable launchers (``fastood.ops._triton_cma`` rebinds its names with this,
    at its end): CUDA fp16/bf16 on sm_90 (:func:`cma_sm90_supported`) runs the Hopper
    kernels unless a test fixes the portable tiles (``blocks=``)."""

    @functools.wraps(fwd)
    def cma_fwd_triton(x, t, rx, rt, scale, labels, *, num_splits=None, blocks=None):
        if blocks is None and cma_sm90_supported(x):
            return cma_fwd_triton_sm90(x, t, rx, rt, scale, labels, num_splits=num_splits)
        return fwd(x, t, rx, rt, scale, labels, num_splits=num_splits, blocks=blocks)

    @functools.wraps(bwd)
    def cma_bwd_triton(x, t, *args, num_splits=None, blocks=None, **kwargs):
        if blocks is None and cma_sm90_supported(x):
            return cma_bwd_triton_sm90(x, t, *args, num_splits=num_splits, **kwargs)
        return bwd(x, t, *args, num_splits=num_splits, blocks=blocks, **kwargs)

    return cma_fwd_triton, cma_bwd_triton


# After `route`: the portable module imports `route` from here at its end (either import order works).
from fastood.ops._triton_cma import _CHUNK_ALIGN, _bwd_inputs, _chunk, _lse_merge_kernel, _target_programs  # noqa: E402


def _tma_ok(t: Tensor) -> bool:
    """TMA needs a unit inner stride and 16-byte aligned base and row stride."""
    es = t.element_size()
    return t.stride(1) == 1 and (t.stride(0) * es) % 16 == 0 and t.data_ptr() % 16 == 0 and t.shape[1] * es >= 16


def _check(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, bool]:
    if not isinstance(x, Tensor) or not isinstance(t, Tensor):
        raise TypeError("x and t must be torch.Tensors")
    if x.dim() != 2 or t.dim() != 2 or x.shape[1] != t.shape[1]:
        raise ValueError(f"x (B, D) and t (N, D) must be 2-D with one D, got {tuple(x.shape)} and {tuple(t.shape)}")
    if x.dtype != t.dtype or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"x and t must share one dtype among float16/bfloat16/float32, got {x.dtype} and {t.dtype}")
    interpreting = os.environ.get("TRITON_INTERPRET", "0") == "1" or x.device.type == "cpu"
    if x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError("the Triton backend needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1")
    if interpreting and x.dtype == torch.bfloat16:  # no bf16 tl.dot in the interpreter
        x, t = x.float(), t.float()
    return x, t, interpreting


def _desc(t: Tensor, block: list[int]):
    return _tensor_descriptor_cls()(t, shape=list(t.shape), strides=[t.stride(0), 1], block_shape=block)


def cma_fwd_triton_sm90(
    x: Tensor, t: Tensor, rx: Tensor, rt: Tensor, scale: Tensor, labels: Tensor | None,
    *, num_splits: int | None = None, blocks: tuple[int, int, int] | None = None, use_tma: bool | None = None,
) -> tuple[Tensor, ...]:
    """Same contract as :func:`fastood.ops._triton_cma.cma_fwd_triton` (returns fp32
    ``row_lse, row_ce, row_comp, col_lse, col_ce, col_comp``). ``rx``, ``rt`` and the
    scale must be positive (inverse norms; the logit scale s > 0: the tile max of the
    scaled logits is then the scaled tile max). ``blocks = (BLOCK_M, BLOCK_N, BLOCK_D)``
    overrides the tile, ``use_tma`` the operand path (default: TMA on CUDA when the
    layout allows it; never in the interpreter)."""
    x, t, interpreting = _check(x, t)
    B, D = x.shape
    N = t.shape[0]
    device = x.device
    pair = labels is None
    f32 = dict(dtype=torch.float32, device=device)
    rx = rx.to(**f32).contiguous()
    rt = rt.to(**f32).contiguous()
    scale = scale.to(**f32).reshape(()).contiguous()
    lab = rx if pair else labels.to(device=device, dtype=torch.int64).contiguous()
    if blocks is None:
        blocks = _INTERPRET_FWD if interpreting else FWD_CONFIG[:3]
    bm, bn, bd = blocks
    if bm % bn:
        raise ValueError(f"blocks: BLOCK_M must be a multiple of BLOCK_N, got {blocks}")
    if pair and B != N:
        raise ValueError(f"pair mode (labels=None) needs as many rows in t as in x, got {B} and {N}")
    row_blocks = triton.cdiv(B, bm)
    if num_splits is None:
        num_splits = 1 if interpreting else min(triton.cdiv(_target_programs(device), row_blocks),
                                                triton.cdiv(N, _CHUNK_ALIGN))
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1:
        raise ValueError(f"num_splits must be an int >= 1, got {num_splits!r}")
    chunk, splits = _chunk(N, num_splits, max(bn, _CHUNK_ALIGN) if not interpreting else bn)

    if use_tma is None:
        use_tma = (not interpreting) and _tma_ok(x) and _tma_ok(t) and _tensor_descriptor_cls() is not None
    a_arg, b_arg = (_desc(x, [bm, bd]), _desc(t, [bn, bd])) if use_tma else (x, t)
    warps, stages = (4, 1) if interpreting else FWD_CONFIG[3:]
    mb = 32 if interpreting else 256
    # Pair mode: one more row partial per row, the diagonal tile's (slot `splits`).
    slots = splits + (1 if pair else 0)
    row_m, row_l = torch.empty(slots, B, **f32), torch.empty(slots, B, **f32)
    row_lnt, row_tt = torch.empty(B, **f32), torch.empty(B, **f32)
    n_tiles = triton.cdiv(N, bn)
    if pair:
        col_m, col_l = torch.empty(row_blocks, N, **f32), torch.empty(row_blocks, N, **f32)
        col_lnt, col_tt = torch.empty(N, **f32), torch.empty(N, **f32)
        flag = torch.zeros(row_blocks, n_tiles, dtype=torch.int8, device=device)
    else:
        col_m = col_l = row_m  # never touched (LABELS is a constexpr)
        flag = torch.zeros(1, dtype=torch.int8, device=device)
    _sm90_cma_fwd_kernel[(row_blocks, splits)](
        a_arg, b_arg, rx, rt, scale, lab,
        row_m, row_l, row_lnt, row_tt, col_m, col_l, flag,
        B, N, D, chunk, n_tiles, x.stride(0), x.stride(1), t.stride(0), t.stride(1),
        USE_TMA=bool(use_tma), LABELS=not pair,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps, num_stages=stages,
    )
    row = tuple(torch.empty(B, **f32) for _ in range(3))
    if pair:
        _sm90_cma_fix_kernel[(row_blocks, n_tiles + 1)](
            x, t, rx, rt, scale, row_m, row_l, row_lnt, row_tt, col_m, col_l, col_lnt, col_tt, flag,
            B, N, D, n_tiles, splits, x.stride(0), x.stride(1), t.stride(0), t.stride(1),
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd if interpreting else FIX_CONFIG[0],
            num_warps=warps if interpreting else FIX_CONFIG[1], num_stages=stages if interpreting else FIX_CONFIG[2],
        )
        _sm90_row_merge_kernel[(triton.cdiv(B, mb),)](row_m, row_l, row_lnt, row_tt, *row, slots, B, BLOCK=mb)
        col = tuple(torch.empty(N, **f32) for _ in range(3))
        _lse_merge_kernel[(triton.cdiv(N, mb),)](col_m, col_l, col_lnt, col_tt, lab, *col, row_blocks, N, bm,
                                                 LABELS=False, BLOCK=mb)
    else:
        _lse_merge_kernel[(triton.cdiv(B, mb),)](row_m, row_l, row_lnt, row_tt, lab, *row, splits, B, chunk,
                                                 LABELS=True, BLOCK=mb)
        col = tuple(torch.empty(0, **f32) for _ in range(3))
    return (*row, *col)


def _bwd_pass_sm90(own, oth, r_own, r_oth, scale, own_stats, oth_stats, labels, alpha, beta, target,
                   interpreting, num_splits, blocks, use_tma) -> Tensor:
    M, D = own.shape
    N = oth.shape[0]
    device = own.device
    bm, bn, bd, bdo = blocks
    if num_splits is None:
        if interpreting:
            num_splits = 1
        else:  # split N only when the (row block, output slice) programs cannot fill the GPU
            programs = triton.cdiv(M, bm) * triton.cdiv(D, bdo)
            num_splits = min(triton.cdiv(_target_programs(device), programs), triton.cdiv(N, _CHUNK_ALIGN),
                             max(1, (64 * 2**20) // (4 * M * D)))
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1:
        raise ValueError(f"num_splits must be an int >= 1, got {num_splits!r}")
    if bm % bn:
        raise ValueError(f"blocks: BLOCK_M must be a multiple of BLOCK_N, got {blocks}")
    chunk, splits = _chunk(N, num_splits, _CHUNK_ALIGN if not interpreting else bn)
    # One output slice (and a Triton that compiles it): the logit tile from the resident row block and the b tile.
    fused = bdo >= D and (interpreting or FUSED_BWD)
    out = torch.empty(splits, M, D, dtype=torch.float32, device=device)
    dummy = r_own
    own_lse, own_comp = own_stats if own_stats is not None else (dummy, dummy)
    oth_lse, oth_comp = oth_stats if oth_stats is not None else (dummy, dummy)
    g_tgt = (alpha if own_stats is not None else 0.0) + (beta if oth_stats is not None else 0.0) - 1.0
    if use_tma:
        a_arg, b_arg, bo_arg = _desc(own, [bm, bdo if fused else bd]), _desc(oth, [bn, bd]), _desc(oth, [bn, bdo])
    else:
        a_arg, b_arg, bo_arg = own, oth, oth
    warps, stages = (4, 1) if interpreting else (BWD_CONFIG if fused else BWD_SLICED_CONFIG)[4:]
    _sm90_cma_bwd_kernel[(triton.cdiv(M, bm), triton.cdiv(D, bdo), splits)](
        a_arg, b_arg, bo_arg, r_own, r_oth, scale,
        own_lse, own_comp, oth_lse, oth_comp, labels if labels is not None else dummy,
        out, M, N, D, chunk, float(alpha), float(beta), float(g_tgt),
        own.stride(0), own.stride(1), oth.stride(0), oth.stride(1),
        USE_TMA=bool(use_tma), OWN_LSE=own_stats is not None, OTH_LSE=oth_stats is not None, TARGET=target,
        FUSED=fused, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, BLOCK_DO=bdo, num_warps=warps, num_stages=stages,
    )
    return out[0] if splits == 1 else out.sum(dim=0)  # fixed-order reduction: deterministic


def cma_bwd_triton_sm90(
    x: Tensor, t: Tensor, rx: Tensor, rt: Tensor, scale: Tensor,
    row_lse: Tensor, row_comp: Tensor, col_lse: Tensor, col_comp: Tensor, labels: Tensor | None,
    alpha: float, beta: float, want_rows: bool, want_cols: bool,
    *, num_splits: int | None = None, blocks: tuple[int, int, int, int] | None = None,
    use_tma: bool | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Same contract as :func:`fastood.ops._triton_cma.cma_bwd_triton`:
    ``A = G~·v`` (B, D) and ``A' = G~ᵀ·u`` (N, D), fp32, with
    ``G~_ij = α·exp(L_ij − row_lse_i) + β·exp(L_ij − col_lse_j)`` off target and
    ``(α + β − 1) − α·row_comp_i − β·col_comp_j`` on target."""
    x, t, interpreting = _check(x, t)
    device = x.device

    rx, rt, scale, pair, rows_st, cols_st, labels = _bwd_inputs(device, rx, rt, row_lse, row_comp, col_lse,
                                                                 col_comp, scale, labels)
    if blocks is None:
        D = x.shape[1]
        blocks = _INTERPRET_BWD if interpreting else (BWD_CONFIG if D <= D_MAX else BWD_SLICED_CONFIG)[:4]
    if use_tma is None:
        use_tma = (not interpreting) and _tma_ok(x) and _tma_ok(t) and _tensor_descriptor_cls() is not None
    kw = dict(interpreting=interpreting, num_splits=num_splits, blocks=blocks, use_tma=use_tma)
    a = at = None
    if want_rows:
        a = _bwd_pass_sm90(x, t, rx, rt, scale, rows_st, cols_st, labels, alpha, beta, 0 if pair else 1, **kw)
    if want_cols:
        at = _bwd_pass_sm90(t, x, rt, rx, scale, cols_st, rows_st, labels, beta, alpha, 0 if pair else 2, **kw)
    return a, at


# --------------------------------------------------------------------------- AOT specs
def aot_specs(arch: int, dtype: torch.dtype, *, full: bool) -> list:
    """The configurations the Hopper CMA launchers run (contract: ``fastood.ops._aot_spec``).

    Only sm_90 and fp16/bf16 are routed here (other arches / fp32: empty list). The
    forward on the TMA path × (pair: column statistics; class: labels), the backward on
    the TMA path × the three flag sets of its passes (pair: both LSEs, diagonal target;
    class rows: own LSE, own labels; class columns: other LSE, other rows' labels).
    ``full`` adds nothing (one tile each). Launch specialisation of the common case:
    aligned pointers, ``D``, ``chunk`` and row strides divisible by 16, unit inner strides.
    """
    from fastood.ops._aot_spec import TRITON_TYPES, AotSpec, ptr

    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"dtype must be float16, bfloat16 or float32, got {dtype}")
    if arch // 10 != 9 or dtype == torch.float32:
        return []
    tn = TRITON_TYPES[dtype]
    strides = {"stride_a0": "i32", "stride_b0": "i32"}
    unit = {"stride_a1": 1, "stride_b1": 1}
    specs = []

    def aligned_of(sig: dict) -> tuple[str, ...]:
        keys = tuple(k for k in sig if k.endswith("_ptr") and not sig[k].startswith("tensordesc"))
        return keys + tuple(k for k in ("D", "chunk") if k in sig) + tuple(strides)

    bm, bn, bd, warps, stages = FWD_CONFIG
    for pair in (True, False):
        sig = {"a_ptr": f"tensordesc<{tn}[{bm},{bd}]>", "b_ptr": f"tensordesc<{tn}[{bn},{bd}]>",
               "ra_ptr": "*fp32", "rb_ptr": "*fp32", "scale_ptr": "*fp32", "lab_ptr": "*fp32" if pair else "*i64",
               **{k: "*fp32" for k in ("row_m_ptr", "row_l_ptr", "row_lnt_ptr", "row_tt_ptr",
                                      "col_m_ptr", "col_l_ptr")},
               "flag_ptr": "*i8", "M": "i32", "N": "i32", "D": "i32", "chunk": "i32", "n_tiles": "i32", **strides}
        specs.append(AotSpec(
            name=f"cma_sm90_fwd[{bm}x{bn}x{bd} w{warps} s{stages} tma {'pair' if pair else 'labels'}]",
            fn=_sm90_cma_fwd_kernel, signature=sig,
            constexprs={**unit, "USE_TMA": True, "LABELS": not pair, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd},
            num_warps=warps, num_stages=stages, aligned=aligned_of(sig), intended_mma="wgmma",
        ))
    el = ptr(dtype)
    sig = {"a_ptr": el, "b_ptr": el, "ra_ptr": "*fp32", "rb_ptr": "*fp32", "scale_ptr": "*fp32",
           **{k: "*fp32" for k in ("row_m_ptr", "row_l_ptr", "row_lnt_ptr", "row_tt_ptr",
                                  "col_m_ptr", "col_l_ptr", "col_lnt_ptr", "col_tt_ptr")},
           "flag_ptr": "*i8", "M": "i32", "N": "i32", "D": "i32", "n_tiles": "i32", "diag_slot": "i32", **strides}
    fd, fw, fs = FIX_CONFIG
    specs.append(AotSpec(
        name=f"cma_sm90_fix[{bm}x{bn}x{fd} w{fw} s{fs} ptr]", fn=_sm90_cma_fix_kernel, signature=sig,
        constexprs={**unit, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": fd},
        num_warps=fw, num_stages=fs, aligned=aligned_of(sig), intended_mma="wgmma",
    ))
    msig = {"m_ptr": "*fp32", "l_ptr": "*fp32", "lnt_ptr": "*fp32", "tt_ptr": "*fp32", "lse_ptr": "*fp32",
            "ce_ptr": "*fp32", "comp_ptr": "*fp32", "P": "i32", "n": "i32"}
    specs.append(AotSpec(
        name="cma_sm90_row_merge[256]", fn=_sm90_row_merge_kernel, signature=msig, constexprs={"BLOCK": 256},
        num_warps=4, num_stages=3, aligned=tuple(k for k in msig if k.endswith("_ptr")), main_loop=False,
    ))
    for cfg in (BWD_CONFIG, BWD_SLICED_CONFIG):
        bm, bn, bd, bdo, warps, stages = cfg
        fused = cfg is BWD_CONFIG and FUSED_BWD  # launched for D <= BLOCK_DO
        kname = "cma_sm90_bwd_fused" if fused else "cma_sm90_bwd"
        for own, oth, target in ((True, True, 0), (True, False, 1), (False, True, 2)):
            sig = {"a_ptr": f"tensordesc<{tn}[{bm},{bdo if fused else bd}]>", "b_ptr": f"tensordesc<{tn}[{bn},{bd}]>",
                   "bo_ptr": f"tensordesc<{tn}[{bn},{bdo}]>", "ra_ptr": "*fp32", "rb_ptr": "*fp32",
                   "scale_ptr": "*fp32", "own_lse_ptr": "*fp32", "own_comp_ptr": "*fp32", "oth_lse_ptr": "*fp32",
                   "oth_comp_ptr": "*fp32", "lab_ptr": "*fp32" if target == 0 else "*i64", "out_ptr": "*fp32",
                   "M": "i32", "N": "i32", "D": "i32", "chunk": "i32", "alpha": "fp32", "beta": "fp32",
                   "g_tgt": "fp32", **strides}
            specs.append(AotSpec(
                name=(f"{kname}[{bm}x{bn}x{bd} do{bdo} w{warps} s{stages} tma "
                      f"t{target}{' own' if own else ''}{' oth' if oth else ''}]"),
                fn=_sm90_cma_bwd_kernel, signature=sig,
                constexprs={**unit, "USE_TMA": True, "OWN_LSE": own, "OTH_LSE": oth, "TARGET": target,
                            "FUSED": fused, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd, "BLOCK_DO": bdo},
                num_warps=warps, num_stages=stages, aligned=aligned_of(sig), intended_mma="wgmma",
            ))
    return specs


# ------------------------------------------------------------------ speed-of-light model
# The shapes of ``python -m bench cma`` (pair mode B×B, class mode B×K), D = 512.
SOL_SHAPES = [("pair", 4096, 4096, 512), ("pair", 32768, 32768, 512), ("class", 4096, 1000, 512)]


def _weighted_tile_counts(sass: str, flop_per_tile: float, warps: int, warps_per_mma: int, rare: float):
    """bench/sol.py's per-tile counts (point 3 of its docstring) with one change: the first
    nested MMA loop is the tile's K loop (trip count from the tile's FLOPs); any *later*
    nested MMA loop (a recompute taken in a ``rare`` share of tiles) is charged ``rare``
    times the K loop's trips, where bench/sol.py would give it none. The shipped hot
    loops have no such loop (the diagonal / flushed tiles are the fix-up kernel's); kept
    so that a variant with an in-loop recompute is not modelled as free."""
    from bench import sol

    instrs, loop = sol.tile_loop(sass)
    total, f_own, _ = sol._loop_counts(loop, instrs)
    groups = warps / warps_per_mma
    mma_children = [c for c in loop.children if sol._has_mma(c, instrs)]
    k_trips = 1.0
    for child in loop.children:
        c, f, _ = sol._loop_counts(child, instrs)
        for g in child.children:
            cg, fg, _ = sol._loop_counts(g, instrs)
            c += cg
            f += fg
        if child is (mma_children[0] if mma_children else None):
            main_f = f
            k_trips = trips = max(0.0, (flop_per_tile / groups - f_own) / f)
        elif child in mma_children:
            trips = k_trips * rare  # same trip count, taken in a `rare` share of tiles
            trips = trips if f == main_f else trips * (main_f / f if f else 0)
        else:
            trips = 1.0
        for k, v in c.items():
            total[k] += v * trips
        f_own += f * trips
    return sol.TileCounts(per_warp=dict(total), mma_flop_per_warp=f_own, k_trips=k_trips, seg_trips=1.0,
                          mma_shapes={})


def sol_predictions(gpu_name: str = "h100", dtype: str = "float16", reports=None) -> list[dict]:
    """Predicted time and % of dense peak of the Hopper CMA kernels at :data:`SOL_SHAPES`
    (bench/sol.py's model, from the SASS compiled for sm_90 without a GPU).

    Forward: % of peak = 2·B·N·D / peak / time (one GEMM of useful work). Backward, per
    pass (rows, then columns): the useful work is two GEMMs (logits, G~·v), 4·M·N·D; the
    kernel executes ``(D/BLOCK_DO + 1)·2·M·N·D`` (the logit tile is recomputed per
    output slice), so its % of peak is bounded by ``2 / (D/BLOCK_DO + 1)``.
    """
    import math

    from bench import sol
    from fastood.ops import _aot

    gpu = sol.GPUS[gpu_name]
    if reports is None:
        reports = _aot.compile_specs(90, [dtype], full=False, modules=[__name__], want_sass=True, jobs=1)
    out = []
    for r in reports:
        kname = r.name.split("[")[0]
        if kname not in ("cma_sm90_fwd", "cma_sm90_bwd", "cma_sm90_bwd_fused"):
            continue  # the fix-up and merge kernels: estimated below, not modelled per tile
        if r.name.startswith("cma_sm90_bwd") and "{}x{}x{} do{}".format(*BWD_CONFIG[:4]) not in r.name:
            continue  # the sliced backward runs only for D > D_MAX
        if r.error or not r.sass:
            out.append(dict(config=r.name, error=r.error or "no SASS"))
            continue
        fwd = r.name.startswith("cma_sm90_fwd")
        pair_cfg = "pair" in r.name or " t0 " in r.name
        for mode, B, N, D in SOL_SHAPES:
            if (mode == "pair") != pair_cfg:
                continue
            if fwd:
                bm, bn, bd = FWD_CONFIG[:3]
                bdo = 0
                row_blocks = math.ceil(B / bm)
                splits = min(math.ceil(2 * gpu.sms / row_blocks), math.ceil(N / _CHUNK_ALIGN))
                chunk = math.ceil(math.ceil(N / splits) / _CHUNK_ALIGN) * _CHUNK_ALIGN
                splits = math.ceil(N / chunk)
                programs = row_blocks * splits
                flop = 2.0 * bm * bn * D
                l2 = (bm + bn) * D * 2
                useful = 2.0 * B * N * D
            else:
                bm, bn, bd, bdo = BWD_CONFIG[:4]
                M_, N_ = (B, N) if " t2 " not in r.name else (N, B)
                slices = math.ceil(D / bdo)
                row_blocks = math.ceil(M_ / bm) * slices
                splits = min(math.ceil(2 * gpu.sms / row_blocks), math.ceil(N_ / _CHUNK_ALIGN),
                             max(1, (64 * 2**20) // (4 * M_ * D)))
                chunk = math.ceil(math.ceil(N_ / splits) / _CHUNK_ALIGN) * _CHUNK_ALIGN
                splits = math.ceil(N_ / chunk)
                programs = row_blocks * splits
                fused = kname == "cma_sm90_bwd_fused"
                # Fused: the logit GEMM runs K = BLOCK_DO (zero-padded beyond D) on the b tile
                # the output GEMM reads; the row block is read once per program (a_resident).
                flop = 2.0 * bm * bn * ((bdo if fused else D) + bdo)
                a_bytes = 0 if SOL_KERNELS[kname]["a_resident"] else bm * D
                l2 = (a_bytes + (0 if fused else bn * D) + bn * bdo) * 2
                useful = 4.0 * M_ * N_ * D
                chunk_cols = chunk
                B, N = M_, N_
            tiles = math.ceil((chunk if fwd else chunk_cols) / bn)
            rare = 1.0 / max(1, math.ceil(N / bn)) if fwd and pair_cfg else 0.0
            tc = _weighted_tile_counts(r.sass, flop, r.num_warps, 4, rare)
            desc = SOL_KERNELS[r.name.split("[")[0]]

            def at(k: int, tc=tc, l2=l2) -> float:
                return sol.predict_tile(tc, gpu, warps=r.num_warps, warps_per_mma=4, mma_kind=r.mma, l2_bytes=l2,
                                        blocks_per_sm=k, chains=desc["chains"], refill=desc["refill"]).cycles

            t = sol.predict_time(at, gpu, programs=programs, tiles_per_program=tiles, blocks_per_sm=r.blocks_per_sm)
            if fwd:
                # Fix-up (pair: one exact diagonal tile per row block, counted as 2 hot tiles, at
                # one block per SM; flagged tiles assumed absent) and the merge kernels (launches).
                if pair_cfg:
                    t += math.ceil(math.ceil(B / bm) / gpu.sms) * 2 * at(1) / gpu.clock_hz + 5e-6
                t += (2 if pair_cfg else 1) * 5e-6
            tp = sol.predict_tile(tc, gpu, warps=r.num_warps, warps_per_mma=4, mma_kind=r.mma, l2_bytes=l2,
                                  blocks_per_sm=r.blocks_per_sm, chains=desc["chains"], refill=desc["refill"])
            out.append(dict(config=r.name, mode=mode, M=B, N=N, D=D, registers=r.registers, spill=r.spill_bytes,
                            blocks_per_sm=r.blocks_per_sm, programs=programs, tiles=tiles, k_trips=tc.k_trips,
                            pipes=tp.pipes, chain=tp.chain, cycles_tile=tp.cycles, bound=tp.bound, time_s=t,
                            pct_peak=100.0 * useful / gpu.peak_flops / t,
                            mma_util=100.0 * programs * tiles * flop / gpu.peak_flops / t))
    return out


def portable_sol_predictions(gpu_name: str = "h100", dtype: str = "float16") -> list[dict]:
    """The same model for the portable CMA kernels (``fastood.ops._triton_cma``, pair mode,
    every autotune config, its launchers' split heuristics) at the pair shapes of
    :data:`SOL_SHAPES`: the baseline the Hopper kernels are measured against."""
    import math

    from bench import sol
    from fastood.ops import _aot
    from fastood.ops import _triton_cma as K

    gpu = sol.GPUS[gpu_name]
    keep = lambda m, spec: spec.main_loop and ("pair" in spec.name or " t0 " in spec.name)  # noqa: E731
    reports = _aot.compile_specs(90, [dtype], full=True, modules=[K.__name__], select=keep, want_sass=True, jobs=1)
    specs = {spec.name: spec for _, spec in _aot._collect_names(90, dtype, True, [K.__name__])}
    out = []
    for r in reports:
        if r.error or not r.sass:
            continue
        kw = specs[r.name].constexprs
        fwd = r.name.startswith("cma_fwd")
        for mode, B, N, D in SOL_SHAPES:
            if mode != "pair":
                continue
            if fwd:
                bm, bn = kw["BLOCK_M"], kw["BLOCK_N"]
                row_blocks = math.ceil(B / bm)
                splits = min(math.ceil(2 * gpu.sms / row_blocks), math.ceil(N / _CHUNK_ALIGN))
                flop, l2, useful = 2.0 * bm * bn * D, (bm + bn) * D * 2, 2.0 * B * N * D
                slices = 1
            else:
                bm, bn, bdo = kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_DO"]
                splits = min(math.ceil(2 * gpu.sms / (math.ceil(B / 64) * math.ceil(D / 128))),
                             math.ceil(N / _CHUNK_ALIGN), max(1, (64 * 2**20) // (4 * B * D)))
                flop, l2, useful = 2.0 * bm * bn * (D + bdo), ((bm + bn) * D + bn * bdo) * 2, 4.0 * B * N * D
                slices = math.ceil(D / bdo)
            chunk = math.ceil(math.ceil(N / splits) / _CHUNK_ALIGN) * _CHUNK_ALIGN
            splits = math.ceil(N / chunk)
            programs = math.ceil(B / bm) * slices * splits
            tc = _weighted_tile_counts(r.sass, flop, r.num_warps, 4, 0.0)

            def at(k: int, tc=tc, l2=l2) -> float:
                return sol.predict_tile(tc, gpu, warps=r.num_warps, warps_per_mma=4, mma_kind=r.mma, l2_bytes=l2,
                                        blocks_per_sm=k, chains=1, refill=True).cycles

            t = sol.predict_time(at, gpu, programs=programs, tiles_per_program=math.ceil(chunk / bn),
                                 blocks_per_sm=r.blocks_per_sm)
            out.append(dict(config=r.name, M=B, N=N, D=D, registers=r.registers, blocks_per_sm=r.blocks_per_sm,
                            cycles_tile=at(r.blocks_per_sm), time_s=t, pct_peak=100.0 * useful / gpu.peak_flops / t))
    return out


def sol_lines(gpu_name: str = "h100", dtype: str = "float16", reports=None) -> list[str]:
    """A markdown table of :func:`sol_predictions` (``python -m bench sol`` appends it)."""
    rows = sol_predictions(gpu_name, dtype, reports)
    lines = ["", f"Hopper CMA kernels ({dtype}, fastood/ops/_triton_cma_sm90.py), predicted on the same model "
                 "(% peak = useful GEMM work / dense peak / time; backward per pass, useful = 4·M·N·D):", "",
             "| config | mode | M | N | D | regs | spill B | blocks/SM | K trips | MMA | MUFU | FP32 | issue | L2 | "
             "chain | cycles/tile | bound | predicted ms | % peak | tensor-pipe busy % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in rows:
        if "error" in p:
            lines.append(f"| {p['config']} | not modelled: {p['error'][:200]} |" + " |" * 18)
            continue
        q = p["pipes"]
        lines.append(f"| {p['config']} | {p['mode']} | {p['M']} | {p['N']} | {p['D']} | {p['registers']} | "
                     f"{p['spill']} | {p['blocks_per_sm']} | {p['k_trips']:.1f} | {q['mma']:.0f} | {q['mufu']:.0f} | "
                     f"{q['fp32']:.0f} | "
                     f"{q['issue']:.0f} | {q['l2']:.0f} | {p['chain']:.0f} | {p['cycles_tile']:.0f} | {p['bound']} | "
                     f"{p['time_s'] * 1e3:.3f} | {p['pct_peak']:.0f} | {p['mma_util']:.0f} |")
    lines += ["", "The portable CMA kernels (fastood/ops/_triton_cma.py), pair mode, same model, fastest config per "
                  "kernel and shape:", "", "| kernel | config | M | N | D | regs | blocks/SM | cycles/tile | "
                  "predicted ms | % peak |", "|---|---|---|---|---|---|---|---|---|---|"]
    base = portable_sol_predictions(gpu_name, dtype)
    for kernel in ("cma_fwd", "cma_bwd"):
        for M in sorted({p["M"] for p in base}):
            cands = [p for p in base if p["config"].startswith(kernel + "[") and p["M"] == M]
            if cands:
                p = min(cands, key=lambda q: q["time_s"])
                lines.append(f"| {kernel} | {p['config']} | {p['M']} | {p['N']} | {p['D']} | {p['registers']} | "
                             f"{p['blocks_per_sm']} | {p['cycles_tile']:.0f} | {p['time_s'] * 1e3:.3f} | "
                             f"{p['pct_peak']:.0f} |")
    return lines
