"""Hopper (sm_90) scoring kernel for the segmented log-sum-exp over a similarity GEMM.

Same contract as :mod:`fastood.ops._triton_segment_lse` (``x`` (B, D), ``bank`` (N, D),
column segments ``offsets``, per-row scale ``r``; ``L = r[i] · <x_i, bank_j>``)::

    lse[i, s] = log Σ_{j ∈ seg s} exp(L[i, j])   (-inf when empty)
    max0[i]   = max_{j ∈ seg 0} L[i, j],   argmax0[i] = first maximiser in seg 0

Design, decided by counting cycles (H100 SXM, per SM and per 128×128 tile, D = 512)
----------------------------------------------------------------------------------
Tensor cores: 2·128·128·512 FLOP / 4,096 FLOP/clk (dense fp16/bf16 wgmma) = 4,096 clk.
MUFU (ex2/lg2): 16 results/clk/SM → 16,384 exp2 = 1,024 clk. Issue: 4 schedulers ×
32 lanes = 128 thread-instructions/clk → every per-element instruction costs 128 clk.

Today's kernel visits each of the ≈ 2.1 segments that intersect a tile with a masked
pass (select, max, argmax, subtract, exp2, sum: ≈ 14 instructions per element and
segment ≈ 3,600 clk), serialised after the MMA in the same warps, and its nested
(column, D) loops refill the load pipeline on every tile.

Three kernels (one launch each; plus segment 0's merge kernel when segment 0 is split):

* **hot** ``_sm90_segment_lse_fwd_kernel`` — segments 1..S-1 over columns [end0, N), the
  fast path only, on a stream-K grid (7.);
* **segment 0** ``_sm90_segment0_kernel`` — lse, max and first argmax of segment 0 over
  columns [0, end0) with its exact running max (⌈end0/BLOCK_N⌉ tiles per row block: 8 at
  the headline shape, next to the hot kernel's ⌈(N − end0)/BLOCK_N⌉ = 82). When
  the row blocks do not fill the GPU its tiles are strided over splits of their own
  (``_segment0_splits``, sized without reading end0 on the host) and
  ``_sm90_segment0_merge_kernel`` combines them;
* **exact** ``_sm90_segment_lse_exact_kernel`` — redoes, with per-segment maxima, the row
  blocks the hot kernel flagged; merges the segments that the stream-K grid cut in the
  others (a few rows blocks, a few entries each); every other row block exits at once.

The hot kernel, per 128×128 tile:

1. **MMA**: the inner loop over D chunks (TMA loads, 3 stages, async wgmma).
2. **One shared reference per row and tile, one FFMA + one MUFU per logit**:
   ``M_i = c_i · max_j acc_ij`` (one FMNMX per element; c_i = r_i·log2(e) > 0 by the
   dispatcher's contract, so the scaled max is the max of the scaled logits) and
   ``p_ij = exp2(fma(acc_ij, c_i, −M_i)) ∈ (0, 1]``: τ, the row norm and log2(e) folded.
3. **Per-segment sums on the tensor cores**: ``σ = p @ H`` with the one-hot
   ``H[j, k] = 1`` iff column j is in the tile's k-th segment (BLOCK_N × 8, exact in
   bf16). fp32 accuracy from two bf16 MMAs, p = p_hi + p_lo (round-to-nearest each; bf16
   has fp32's range): |p − p_hi − p_lo| ≤ 2⁻¹⁷·p (p_lo rounds |p − p_hi| < 2⁻⁸·p to 8
   bits; + 2⁻¹³⁴ where p_lo is subnormal), σ's relative error ≤ 8·10⁻⁶ plus fp32
   accumulation. Cost: 3 instructions per element for the split (two packed
   ``cvt.rn.bf16x2`` per pair, inline PTX: ``_split_bf16``) and 2 × 128 clk of MMA,
   whatever the number of segments in the tile — masked sums cost 2 instructions per
   element *per segment* (select + add) plus per-segment control flow. On Triton < 3.8
   the product is taken 16 wide (segment k in column 2k, odd columns zero): Triton 3.6
   lowers n = 8 to ``mma.sync`` with H in registers, n = 16 to a wgmma (``_onehot_sums``).
4. **Segment bookkeeping per tile**: a column → segment table (``colseg``, int32, N
   entries, ``searchsorted`` once per call) gives H; the state carried between tiles is
   (m, l) of the one open segment, with the shared reference as m (an upper bound of
   the segment's logits): ``m' = max(m, M)``, ``l' = l·2^(m−m') + σ·2^(M−m')``. Closing
   segments (usually 1–3 per tile) are written one [BLOCK_B] column at a time.
5. **The hazard of a shared reference**: a segment more than ~126 (log2) below the tile
   max underflows. The tile's per-row spread ``c·(max − min)`` is tested (one more FMNMX
   per element): if some row spreads over > 96, or the tile meets more than 8 segments,
   the tile is skipped and its row block flagged for the exact kernel (block-uniform,
   rare: at τ = 0.01 a spread of 96 log2 units is a cosine range of 0.66 inside 128
   columns; never seen on CLIP). With spread ≤ 96 every segment has σ ≥ 2⁻⁹⁶, a flushed
   term (< 2⁻¹²⁶, ≤ 128 of them) costs < 2⁻²³ relative, and every carried ``l ≥ 2⁻⁹⁶``
   (the merge kernel's 1e-30 clamp never bites).
6. **Empty segments** are never visited: ``lse`` / ``max0`` are pre-filled with -inf
   (B·S·4 bytes, ≈ 10 µs at B = 65,536), ``colseg`` names non-empty segments only.
7. **Stream-K grid** (one wave, no tail): a grid of one program per row block puts 512
   programs of 82 tiles on 2 × 132 slots at B = 65,536 — a second wave of 248, the SMs'
   last 3 % idle or half-occupied. Instead the units (row block r, tile t), u = r·T + t,
   are cut into P = min(2·SMs, U) contiguous ranges [⌊qU/P⌋, ⌊(q+1)U/P⌋): 264 programs of
   159–160 tiles, one wave. A range crosses row blocks (a new *piece*: reload the row
   scale, reset the open segment) and may start or stop inside one (a *boundary*): a
   segment cut there is written as a partial — its lse over the piece's columns, in
   ``lse`` when it ends inside the piece, else in ``part_v`` — and the exact kernel (which
   runs anyway) merges the partials of each cut segment in column order. The loop carries
   only (r, t) and the open segment; the boundary records are written after it (stores in
   the loop cost ~19 registers, ptxas), the marks by each piece (cleared when it starts):
   nothing is pre-filled, no split-merge launch. Small batches get the same rule (B =
   4,096: 2,624 units → 264 ranges of ≤ 10 tiles, where column splits gave 256 programs of
   11).

Registers and residency (ptxas for sm_90a, no GPU, fp16 and bf16, split or not): the hot
kernel compiles under ``maxnreg=128`` to 127–128 registers with Triton 3.8 and 125–127 with
Triton 3.6 (the GPU machines') on the TMA path, 128 on the pointer path (layouts TMA
cannot take), 0 spill bytes everywhere, 98 KB of shared memory → **two blocks per SM**, so
one block's epilogue (FP32/MUFU pipes) overlaps the other's wgmma (tensor pipe). Getting
there: Triton's loop-invariant code motion hoisted [BLOCK_B, W]-shaped address/mask
tensors out of the tile loop (live across the MMA: ``disable_licm``), 2-D masked stores
of the closing segments (per-column stores instead), the segment-0 max/argmax in the hot
loop (~100 B of spill: its own kernel), a 16-wide one-hot (8), and Triton's own hi/lo
split, which converts hi one element at a time to take it back to fp32 (4 instructions
per element, more live temporaries: the packed split, 3). Triton 3.6 in particular (TMA
path, 60–88 B of spill under the cap before; 145–147 registers uncapped, one block per
SM): the 8-wide one-hot product was an ``mma.sync`` holding H in 16 registers per thread
(16 wide: a wgmma, H in shared memory; 8–24 B left) and the scalar split (the packed
split alone: 0–4 B; both: 0). Neither 2 or 4 stages, BLOCK_D 32 or 128 nor a 4-wide
one-hot had helped (52–80 B). The pointer path compiled to 176–178 registers uncapped on
3.8 before the packed split (uncapped after: 130–171 on 3.8, 166–168 on 3.6; 128 capped
on both). Triton 3.8 does not apply ``warp_specialize`` to this loop on sm_90 (no ``setmaxnreg``, no partitions in the PTX), ``num_ctas=2`` (cluster, TMA
multicast) fails in its PlanCTA pass, and FA3's in-block ping-pong is not expressible in
Triton: two resident blocks are the overlap.

Count of the hot tile (bench/sol.py's model_config on the SASS, TMA path, fp16, commit
2d761cb): Triton 3.8 MMA 4,224 clk (incl. the one-hot), issue 3,627 clk, MUFU 1,088,
L2 → SM (128 + 128)·512·2 B at 48 B/clk = 5,461 clk, serial chain 8,451 clk per block
(Triton 3.6: MMA 4,352 with the 16-wide one-hot, issue 3,778, chain 8,730). With two
blocks ≤ 4,365 per tile, so the tile is **L2-bound at 5,461 clk ≈ 75 % of the tensor
peak** on both, and both predict the same times below. At B = 65,536, N = 11,400, D = 512, G = 100 the model
predicts 0.960 ms (hot: 264 programs of ≤ 160 tiles, one wave) + 0.100 ms (segment 0,
8 tiles per row block) + 0.005 ms (the exact kernel's launch, nothing flagged) = 1.065 ms:
73 % of the dense fp16 peak, **1.51× the modelled torch.compile path (1.610 ms)** — the
1.5× target met on paper by 1 %, inside the model's own error (its L2 bandwidth, launch
cost and clock are assumptions until ``tools/gpu_check.sh`` measures them). The row-block
grid it replaces predicted 0.996 + 0.100 + 0.010 (the flag fill and the exact launch) =
1.106 ms, 1.46×. The floor of this tile at this shape is 90 tiles per row block spread
evenly, 1.042 ms + launches. What would go further, and why it is not here (checked
with Triton 3.8, no GPU):

* Keeping X (128 rows × D) resident in shared memory: only the bank streams, L2 → SM
  2,731 clk < MMA 4,224. But X alone is 128 KB at D = 512: one block per SM, so the
  softmax of one tile must overlap the MMA of the next inside the block. Triton does not
  do that for a fresh accumulator: a hand-pipelined loop (``nxt = dot(X, bank_j+1)``
  before the epilogue of tile j, X loaded once before the loop) compiles to the epilogue
  first, then the tile's HGMMAs and ``WARPGROUP.DEPBAR.LE gsb0, 0x0`` at once (SASS);
  ``warp_specialize`` does not partition on sm_90; with one block the chain is serial
  (MMA 4,224 + issue 3,688 ≈ 7,900 clk per tile, worse than today's 5,461).
* A 2-CTA cluster with TMA multicast of the bank tile (per SM: X + bank/2 = 192 KB per
  tile, 4,096 clk = MMA-bound): ``num_ctas=2`` fails in Triton 3.8's wgmma lowering
  (``MMAHelpers.h: getReps`` assertion) for 256-row or 256-column tiles, and compiles the
  128×128 tile as two 64-row CTAs with plain ``UTMALDG`` (no multicast): no L2 saving.
* Larger tiles at two blocks per SM need more than 128 registers (65,536 / 512 threads);
  one block of 256×128 (L2- and MMA-balanced: 8,192 / 8,448 clk) runs its epilogue in
  series with its MMA: a chain > 16,000 clk per tile.
FA3-style ping-pong (two consumer warpgroups, one of them in softmax while the other's
wgmma runs, a producer warp for TMA) with X resident needs explicit shared-memory buffers,
async wgmma with ``wait(1)`` across tiles and named barriers: Gluon or CUTLASS/CuTe, not
the Triton language as of 3.8.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastood.ops import _layout_cache
from fastood.ops._split_plan import wave_splits
from fastood.ops._triton_segment_lse import _device_index, _device_offsets, _sm_count

__all__ = ["segment_lse_triton_sm90", "sm90_supported", "sm90_wanted", "aot_specs", "WARP_ORGANISATION", "sol_splits",
           "sol_programs", "stream_k_programs", "stream_k_owner",
           "SegmentTable"]

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# Segments per one-hot window (the one-hot's width: the n of its wgmma). A hot tile that
# meets more non-empty segments (narrower than BLOCK_N / 8 on average) is flagged, and the
# exact kernel walks it window by window. 8 rather than 16: 8 fewer registers (ptxas).
SEG_WINDOW = 8
# A row whose logits spread over more than this (log2 units) in one tile flags its row
# block: every segment then keeps σ ≥ 2^-96 against the shared reference (docstring, 5.).
MAX_SPREAD = tl.constexpr(96.0)

# (BLOCK_B, BLOCK_N, BLOCK_D, num_warps, num_stages) of the hot and segment-0 kernels.
CUDA_CONFIG = (128, 128, 64, 8, 3)
MAXNREG_TMA = 128


# The segment-0 kernel's TMA path under the 128-register cap (two blocks per SM), per
# Triton version, from ptxas (sm_90a, fp16 and bf16, split or not): Triton 3.8 compiles the
# argmax variants to 150-168 registers uncapped and 128 with 0 spill bytes capped; the
# others to 128 uncapped (the cap makes ptxas spill 56 B there). Triton 3.6 compiles every
# variant to 128 uncapped. Other versions: unchecked, uncapped.
def _seg0_capped(want_argmax: bool, split: bool, dtype: torch.dtype) -> bool:
    """Whether the segment-0 kernel's TMA launch takes ``maxnreg=128`` (table above)."""
    return bool(want_argmax) and _triton_version() >= (3, 8)


def _triton_version() -> tuple[int, int]:
    major, minor = triton.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def _onehot_pad(version: tuple[int, int]) -> bool:
    """Whether the one-hot product is taken 2·SEG_WINDOW wide (``_onehot_sums``): Triton
    before 3.8 lowers an n = 8 dot to ``mma.sync`` with the one-hot in registers (16 per
    thread), n = 16 to a wgmma reading it from shared memory."""
    return version < (3, 8)


def _cap_registers(version: tuple[int, int]) -> bool:
    """Whether the hot kernel's launches take ``maxnreg=128`` (two blocks per SM): the
    versions where ptxas (sm_90a, fp16 and bf16, TMA and pointer paths, split or not)
    reports 0 spill bytes under the cap — Triton 3.8 (TMA 127–128 registers, pointer 128)
    and 3.6 (TMA 125–127 with the padded one-hot, pointer 128). Others (3.7, < 3.6):
    unchecked, uncapped (one block per SM)."""
    return version == (3, 6) or version >= (3, 8)


ONEHOT_PAD = _onehot_pad(_triton_version())
ONEHOT_N = 2 * SEG_WINDOW if ONEHOT_PAD else SEG_WINDOW  # the n of the one-hot product's MMA
CAP_REGISTERS = _cap_registers(_triton_version())
# The exact kernel (flagged row blocks only): same BLOCK_B (it reads the hot kernel's
# per-row-block flags), a tile that fits its heavier epilogue without spills.
EXACT_CONFIG = (128, 64, 64, 8, 3)
_INTERPRET_BLOCKS = (16, 32, 16)

# What the speed-of-light model needs to know about this kernel's overlap.
WARP_ORGANISATION = {
    "kernel": "_sm90_segment_lse_fwd_kernel",
    "warps_per_block": CUDA_CONFIG[3],
    # At most 128 registers (maxnreg) and 98 KB shared memory → 2 (Triton 3.6, 3.8, both
    # operand paths); unchecked versions run uncapped → 1.
    "blocks_per_sm": 2 if CAP_REGISTERS else 1,
    "mma_async": True,                # wgmma, loads by TMA, 3-stage pipeline over the K loop
    # Within a block the epilogue follows its tile's MMA (serial chain); the other
    # resident block's MMA overlaps it.
    "epilogue_overlaps_mma": "across blocks",
    "tile": {"BLOCK_B": CUDA_CONFIG[0], "BLOCK_N": CUDA_CONFIG[1], "BLOCK_D": CUDA_CONFIG[2]},
    "per_tile_extra_mma_flops": 2 * 2 * CUDA_CONFIG[0] * CUDA_CONFIG[1] * ONEHOT_N,  # p_hi @ H, p_lo @ H
}


@triton.jit
def _bf16_rne(v):
    """``v`` rounded to the nearest bf16 (ties to even), returned as fp32.

    Integer form (used under the interpreter, whose fp32 → bf16 cast truncates):
    add 0x7FFF plus the lowest kept bit, clear the 16 dropped bits. Exact for finite v.
    """
    b = v.to(tl.uint32, bitcast=True)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return b.to(tl.float32, bitcast=True)


# _split_bf16's packed split on the GPU: $2, $3 = two neighbouring fp32 elements (a, b) of a
# thread, $0 = (hi_a, hi_b), $1 = (lo_a, lo_b) as bf16 pairs, the first in the low half. A
# module constant so that the tests can evaluate it without a GPU.
SPLIT_BF16_PTX = tl.constexpr("""{
    .reg .b32 ah, bh;
    .reg .f32 al, bl;
    cvt.rn.bf16x2.f32 $0, $3, $2;
    shl.b32 ah, $0, 16;
    and.b32 bh, $0, 0xFFFF0000;
    sub.f32 al, $2, ah;
    sub.f32 bl, $3, bh;
    cvt.rn.bf16x2.f32 $1, bl, al;
}""")


@triton.jit
def _split_bf16(p, INTERP: tl.constexpr):
    """p = p_hi + p_lo + O(2⁻¹⁷·p) with p_hi, p_lo bf16 (round to nearest each).

    On the GPU, per pair of neighbouring elements (a, b) of a thread (pack=2; the first
    one in the low half of each packed output, Triton's order for bf16 pairs, the one its
    own lowering and the wgmma A operand use)::

        hi  = cvt.rn.bf16x2(b, a)                 # round to nearest even, = .to(bf16)
        a_h = hi << 16,  b_h = hi & 0xFFFF0000    # the two bf16 back to fp32 (exact)
        lo  = cvt.rn.bf16x2(b − b_h, a − a_h)

    3 instructions per element. Triton's lowering of ``p.to(bf16)`` followed by
    ``hi.to(fp32)`` converts hi one element at a time and packs it (4 per element): on
    Triton 3.6 that is 8–24 B of spill in the hot kernel under the 128-register cap (ptxas,
    sm_90a). The interpreter (whose cast truncates) rounds with integers and keeps the
    bf16 values in fp32 (exactly representable, same sums).
    """
    if INTERP:
        hi = _bf16_rne(p)
        lo = _bf16_rne(p - hi)
    else:
        hi, lo = tl.inline_asm_elementwise(
            asm=SPLIT_BF16_PTX, constraints="=r,=r,r,r", args=[p], dtype=(tl.bfloat16, tl.bfloat16),
            is_pure=True, pack=2,
        )
    return hi, lo


@triton.jit
def _onehot_sums(hi, lo, hit, INTERP: tl.constexpr, PAD: tl.constexpr):
    """σ[i, k] = Σ_j (hi + lo)[i, j] · H[j, k], H = one-hot ``hit`` (exact in bf16), on the
    tensor cores with fp32 accumulation (fp32 products in the interpreter: same values).

    ``PAD``: the product is taken with H widened to 2W columns, segment k in column 2k and
    zeros in the odd ones, and σ read back from the even columns (a split of register pairs
    in the MMA layout: no data movement). Triton 3.6 lowers an n = 8 dot to ``mma.sync``,
    whose one-hot operand is 16 registers per thread; n = 16 is a wgmma with the one-hot
    in shared memory (ptxas: 20 B of spill → 0 under the 128-register cap).
    """
    W: tl.constexpr = hit.shape[1]
    if PAD:
        hit = tl.join(hit, tl.zeros_like(hit)).reshape([hit.shape[0], 2 * W])
    if INTERP:
        H = hit.to(tl.float32)
        s = tl.dot(hi, H, input_precision="ieee")
        s = tl.dot(lo, H, s, input_precision="ieee")
    else:
        H = hit.to(tl.bfloat16)
        s = tl.dot(hi, H)
        s = tl.dot(lo, H, s)
    if PAD:
        s, _ = tl.split(s.reshape([s.shape[0], W, 2]))
    return s


@triton.jit
def _close_window(
    sig, mk, cnt, s_base, s_c, m_c, l_c, mx0, s_last, n_end,
    r0, off_ptr, lse_ptr, B, S,
    BLOCK_B: tl.constexpr, W: tl.constexpr, SEG0: tl.constexpr,
):
    """Merge one window's per-segment partials (σ against references mk) into the
    segment states, write the lse of the segments that end in this tile, return the
    carried (m, l) of the open segment (unchanged when it is not in this window).

    In the hot kernel a segment that began before the stream-K piece is written here
    too: its lse over the piece's columns only, a partial that the exact kernel's merge
    reads back and completes (hot kernel docstring)."""
    NEG_INF: tl.constexpr = float("-inf")
    kr = tl.arange(0, W)
    seg = s_base + kr
    # Rows are recomputed here rather than kept live across the MMA loop (registers).
    rows = r0 + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    # The carried segment's column k_c (at most one): merged per row, 2 exp2 per row.
    carry = (kr == s_c - s_base)[None, :]
    sig_c = tl.sum(tl.where(carry, sig, 0.0), axis=1)
    mk_c = tl.max(tl.where(carry, mk, NEG_INF), axis=1)
    m_m = tl.maximum(m_c, mk_c)
    m_r = tl.where(m_m == NEG_INF, 0.0, m_m)
    l_m = l_c * tl.math.exp2(m_c - m_r) + sig_c * tl.math.exp2(mk_c - m_r)
    m_new = tl.where(carry, m_m[:, None], mk)
    l_new = tl.where(carry, l_m[:, None], sig)
    if SEG0 and (s_base == 0):
        # Segment 0 (column 0 here): (m, l) against its true max, which max0 reads as m.
        # l·2^(m − mx0) ≤ #columns: no overflow.
        is0 = (kr == 0)[None, :]
        m0 = tl.max(tl.where(is0, m_new, NEG_INF), axis=1)
        l0 = tl.sum(tl.where(is0, l_new, 0.0), axis=1) * tl.math.exp2(m0 - mx0)
        l_new = tl.where(is0, l0[:, None], l_new)
        m_new = tl.where(is0, mx0[:, None] + tl.zeros([BLOCK_B, W], tl.float32), m_new)
    # Write the segments that end in this tile, one [BLOCK_B] column at a time (usually
    # 1–3): a masked [BLOCK_B, W] store costs the hot loop ~50 registers (ptxas).
    # Empty segments (no column here) are skipped: the launcher pre-filled them.
    last_closes = tl.load(off_ptr + s_last + 1).to(tl.int32) <= n_end
    k_end = tl.minimum(W, s_last - s_base + tl.where(last_closes, 1, 0))
    # l >= 2^-96 for every segment with columns (see 5.): the clamp never bites.
    fin = (m_new + tl.math.log2(tl.maximum(l_new, 1e-30))) * 0.6931471805599453
    for k in tl.range(0, k_end, num_stages=1, disable_licm=True):
        sel = (kr == k)[None, :]
        ok = row_ok & (tl.sum(tl.where(kr == k, cnt, 0), axis=0) > 0)
        tl.store(lse_ptr + rows64 * S + s_base + k, tl.sum(tl.where(sel, fin, 0.0), axis=1), mask=ok)
    # The tile's last segment stays open when it runs past n_end.
    if (s_last >= s_base) & (s_last < s_base + W):
        is_last = (seg == s_last)[None, :]
        m_c = tl.max(tl.where(is_last, m_new, NEG_INF), axis=1)
        l_c = tl.sum(tl.where(is_last, l_new, 0.0), axis=1)
    return m_c, l_c


@triton.jit
def _segment0_tile(acc, c, cols, col_ok, end0, mx0, arg, WANT_ARGMAX: tl.constexpr):
    """Segment 0 meets this tile: update its running true max (base 2) and first argmax.

    It runs only in the tiles that meet segment 0 (≈ 9 % at 1,000 of 11,400 columns).
    """
    NEG_INF: tl.constexpr = float("-inf")
    in0 = ((cols < end0) & col_ok)[None, :]
    a0 = tl.max(tl.where(in0, acc, NEG_INF), axis=1)
    t0 = a0 * c                                   # c > 0: the max of the scaled logits
    if WANT_ARGMAX:
        first = tl.min(tl.where(in0 & (acc == a0[:, None]), cols[None, :], 2147483647), axis=1)
        arg = tl.where(t0 > mx0, first, arg)      # strictly greater: earlier tiles win ties
    mx0 = tl.maximum(mx0, t0)
    return mx0, arg


@triton.jit
def _exact_tile(
    acc, c, cseg, col_ok, s_first, s_last, s_c, m_c, l_c, mx0, n_end,
    r0, off_ptr, lse_ptr, B, S,
    BLOCK_B: tl.constexpr, W: tl.constexpr,
):
    """The rare tile: every segment's partial sum in exact fp32 with its own max as the
    reference (no underflow), window by window of W segments."""
    NEG_INF: tl.constexpr = float("-inf")
    kr = tl.arange(0, W)
    for s_base in tl.range(s_first, s_last + 1, W, num_stages=1):
        kcol = cseg - s_base
        hit = (kcol[:, None] == kr[None, :]) & col_ok[:, None]
        cnt = tl.sum(hit.to(tl.int32), axis=0)
        sig = tl.zeros([BLOCK_B, W], tl.float32)
        mk = tl.zeros([BLOCK_B, W], tl.float32)
        for k in tl.range(0, tl.minimum(W, s_last - s_base + 1), num_stages=1):
            in_k = ((kcol == k) & col_ok)[None, :]
            a_k = tl.max(tl.where(in_k, acc, NEG_INF), axis=1)
            m_k = tl.where(a_k == NEG_INF, 0.0, a_k * c)  # (-inf·0 = NaN on padded rows)
            s_k = tl.sum(tl.where(in_k, tl.math.exp2(tl.fma(acc, c[:, None], -m_k[:, None])), 0.0), axis=1)
            sig = tl.where((kr == k)[None, :], s_k[:, None], sig)
            mk = tl.where((kr == k)[None, :], m_k[:, None], mk)
        m_c, l_c = _close_window(sig, mk, cnt, s_base, s_c, m_c, l_c, mx0, s_last, n_end,
                                 r0, off_ptr, lse_ptr, B, S, BLOCK_B, W, True)
    return m_c, l_c


@triton.jit
def _tile_acc(
    x_ptr, bank_ptr, r0, n0, rows64, row_ok, col_hi, D,
    stride_xb, stride_xd, stride_bn, stride_bd,
    USE_TMA: tl.constexpr, IEEE_FP32: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """acc = x[rows, :] @ bank[n0:n0+BN, :]ᵀ over BLOCK_D chunks (fp32 accumulation; fp32
    inputs use IEEE products, never TF32). Columns ≥ col_hi (pointer path) or ≥ N (TMA
    zero fill) give 0."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    cols = n0 + offs_n
    acc = tl.zeros([BLOCK_B, BLOCK_N], tl.float32)
    for d0 in tl.range(0, D, BLOCK_D):
        if USE_TMA:
            xa = x_ptr.load([r0, d0])
            bt = bank_ptr.load([n0, d0]).T
        else:
            d_ok = (d0 + offs_d) < D
            xa = tl.load(x_ptr + rows64[:, None] * stride_xb + (d0 + offs_d)[None, :] * stride_xd,
                         mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            bt = tl.load(bank_ptr + cols.to(tl.int64)[None, :] * stride_bn + (d0 + offs_d)[:, None] * stride_bd,
                         mask=d_ok[:, None] & (cols < col_hi)[None, :], other=0.0)
        if IEEE_FP32:
            acc = tl.dot(xa, bt, acc, input_precision="ieee")
        else:
            acc = tl.dot(xa, bt, acc)
    return acc


@triton.jit
def _owner(u, U, P):
    """The stream-K program holding unit ``u``: program q walks units [⌊qU/P⌋, ⌊(q+1)U/P⌋),
    so the largest q with ⌊qU/P⌋ ≤ u is ⌊((u+1)·P − 1)/U⌋ (``stream_k_owner``)."""
    return ((u + 1) * P - 1) // U


@triton.jit
def _sm90_segment_lse_fwd_kernel(
    x_ptr, bank_ptr, colseg_ptr, off_ptr, scale_ptr, flag_ptr, bflag_ptr,
    lse_ptr, part_v_ptr, part_seg_ptr,
    B, N, D, S, P,
    stride_xb, stride_xd, stride_bn, stride_bd,
    USE_TMA: tl.constexpr, IEEE_FP32: tl.constexpr, INTERP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, W: tl.constexpr,
    PAD_ONEHOT: tl.constexpr,
):
    """The hot kernel: segments 1..S-1 with the shared-reference fast path only, on a
    stream-K schedule.

    Work units are (row block r, tile t) over columns [end0, N) (segment 0 is the segment-0
    kernel's), ``u = r·T + t`` with T = ⌈(N − end0)/BLOCK_N⌉, U = ⌈B/BLOCK_B⌉·T units; the
    1-D grid's program q walks units [⌊qU/P⌋, ⌊(q+1)U/P⌋) in order, crossing row blocks
    where its range does (docstring, 7.). Every segment that ends inside a piece (one
    program's units of one row block) has its lse over the piece's columns written to
    ``lse`` — final, or partial when it began before the piece. Where a program's range
    starts or ends inside a row block (a *boundary* b = ⌊bU/P⌋) it records, after its
    loop, the segment cut there: entry 2b (before b: the segment open at the end of
    program b − 1, its partial lse in ``part_v[2b]``, id in ``part_seg[2b]``) and 2b + 1
    (after b: id of the segment open at the start of program b whose partial is in
    ``lse``, or −(id + 2) when it runs through the whole piece, partial in
    ``part_v[2b+1]``); −1 = nothing cut. The exact kernel merges them. A tile that the
    fast path cannot take (spread > 96, > W segments) is skipped and marks its piece:
    ``flag[r]`` for the piece that leads row block r, ``bflag[b]`` for the piece that
    starts at boundary b (both cleared by the piece when it starts: nothing to pre-fill);
    the exact kernel recomputes a marked row block whole.
    """
    q = tl.program_id(0)
    NEG_INF: tl.constexpr = float("-inf")
    end0 = tl.load(off_ptr + 1).to(tl.int32)            # segment 0 is [0, end0)
    T = tl.cdiv(N - end0, BLOCK_N)                       # hot tiles per row block
    U = tl.cdiv(B, BLOCK_B).to(tl.int64) * T             # < 2^31 (launcher)
    u0 = (q.to(tl.int64) * U // P).to(tl.int32)
    n_units = ((q + 1).to(tl.int64) * U // P).to(tl.int32) - u0
    offs_n = tl.arange(0, BLOCK_N)
    kr = tl.arange(0, W)
    local = tl.arange(0, BLOCK_B)

    # The walk's position (row block r, tile t: no division per tile) and the open segment
    # (s_c, m_c, l_c; -1 = none): all the state the loop carries.
    r = u0 // tl.maximum(T, 1)
    t = u0 - r * T
    s_c = q * 0 - 1
    m_c = tl.full([BLOCK_B], NEG_INF, tl.float32)
    l_c = tl.zeros([BLOCK_B], tl.float32)
    # disable_licm: hoisted [BLOCK_B, W] address/mask tensors would stay live across the
    # MMA loop (ptxas: 170 → 146 registers).
    for i in tl.range(0, n_units, disable_licm=True):
        r0 = r * BLOCK_B
        n0 = end0 + t * BLOCK_N
        if (i == 0) | (t == 0):
            # A piece starts (row block r, tile t): no open segment, its mark cleared.
            s_c = q * 0 - 1
            m_c = tl.full([BLOCK_B], NEG_INF, tl.float32)
            l_c = tl.zeros([BLOCK_B], tl.float32)
            if t == 0:
                tl.store(flag_ptr + r, 0)
            else:
                tl.store(bflag_ptr + q, 0)
        rows = r0 + local
        row_ok = rows < B
        acc = _tile_acc(x_ptr, bank_ptr, r0, n0, rows.to(tl.int64), row_ok, N, D,
                        stride_xb, stride_xd, stride_bn, stride_bd,
                        USE_TMA, IEEE_FP32, BLOCK_B, BLOCK_N, BLOCK_D)
        # ---- Epilogue of tile [n0, n_end). c = r·log2(e) per row: logits in base 2 are acc·c
        # (r > 0 by the dispatcher's contract); loaded here, not kept live across the MMA.
        c = tl.load(scale_ptr + rows, mask=row_ok, other=0.0) * 1.4426950408889634
        n_end = tl.minimum(n0 + BLOCK_N, N)
        cols = n0 + offs_n
        col_ok = cols < n_end
        cseg = tl.load(colseg_ptr + cols, mask=col_ok, other=-1)
        s_first = tl.load(colseg_ptr + n0)
        s_last = tl.load(colseg_ptr + n_end - 1)
        # Shared reference M = c·max(acc). If a row's logits spread over > 96 (log2) in
        # this tile, a segment could underflow against M (σ < 2^-96). Columns past n_end (0)
        # only make the test stricter.
        amax = tl.max(acc, axis=1)
        spread = (amax - tl.min(acc, axis=1)) * c
        M = amax * c
        if (tl.max(tl.where(row_ok & (spread > MAX_SPREAD), 1, 0), axis=0) > 0) | (s_last - s_first >= W):
            # Mark the piece (after its clear: same program, an MMA loop's barriers between).
            # Only a program's first piece can start inside a row block (at u0).
            if (r * T < u0) & (u0 % T != 0):
                tl.store(bflag_ptr + q, 1)
            else:
                tl.store(flag_ptr + r, 1)
        else:
            # p = exp2(acc·c − M) ∈ (0, 1]: one FFMA and one MUFU per logit; then bf16 hi + lo.
            p_hi, p_lo = _split_bf16(tl.math.exp2(tl.fma(acc, c[:, None], -M[:, None])), INTERP)
            mk = tl.zeros([BLOCK_B, W], tl.float32) + M[:, None]
            hit = ((cseg - s_first)[:, None] == kr[None, :]) & col_ok[:, None]  # one-hot col → segment
            cnt = tl.sum(hit.to(tl.int32), axis=0)                  # columns of each segment here
            sig = _onehot_sums(p_hi, p_lo, hit, INTERP, PAD_ONEHOT)  # [BLOCK_B, W] segment sums
            m_c, l_c = _close_window(sig, mk, cnt, s_first, s_c, m_c, l_c, m_c, s_last, n_end,
                                     r0, off_ptr, lse_ptr, B, S, BLOCK_B, W, False)
        s_c = s_last
        t += 1
        if t == T:
            t = t * 0
            r += 1

    # The boundaries of this program's range that fall inside a row block (after the loop:
    # stores in it cost ~19 registers, ptxas).
    if n_units == 0:
        tl.store(part_seg_ptr + 2 * q + 1, -1)          # an empty range (P > U) cuts nothing
        tl.store(part_seg_ptr + 2 * q + 2, -1)
        tl.store(bflag_ptr + q, 0)
    else:
        t0 = u0 % T
        n_start = end0 + t0 * BLOCK_N                     # the first piece's first column
        s0 = tl.load(colseg_ptr + n_start)
        head = tl.where(tl.load(off_ptr + s0).to(tl.int32) < n_start, s0, -1)  # cut at boundary q
        if t > 0:
            # The last piece stopped inside row block r at column end0 + t·BLOCK_N (boundary q + 1).
            n_stop = end0 + t * BLOCK_N
            row_ok = (r * BLOCK_B + local) < B
            v = (m_c + tl.math.log2(tl.maximum(l_c, 1e-30))) * 0.6931471805599453
            if tl.load(off_ptr + s_c + 1).to(tl.int32) > n_stop:
                if (s_c == head) & (r * T <= u0):
                    # One segment through the whole piece (it began before it and goes on).
                    tl.store(part_v_ptr + (2 * q + 1) * BLOCK_B + local, v, mask=row_ok)
                    head = -(head + 2)
                    tl.store(part_seg_ptr + 2 * q + 2, -1)
                else:
                    tl.store(part_v_ptr + (2 * q + 2) * BLOCK_B + local, v, mask=row_ok)
                    tl.store(part_seg_ptr + 2 * q + 2, s_c)
            else:
                tl.store(part_seg_ptr + 2 * q + 2, -1)
        if t0 > 0:
            tl.store(part_seg_ptr + 2 * q + 1, head)


@triton.jit
def _sm90_segment0_kernel(
    x_ptr, bank_ptr, off_ptr, scale_ptr,
    lse_ptr, max0_ptr, arg0_ptr, ws_m_ptr, ws_l_ptr, ws_arg_ptr,
    B, N, D, S, n_splits,
    stride_xb, stride_xd, stride_bn, stride_bd,
    USE_TMA: tl.constexpr, WANT_ARGMAX: tl.constexpr, IEEE_FP32: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Segment 0 of every row block: lse, max and first argmax over columns [0, end0),
    with its exact running max as reference (online softmax, base 2).

    Its own kernel because in the hot loop the masked max / argmax cost ~100 bytes of
    spill at the 128-register cap (ptxas); here it is ⌈end0 / BLOCK_N⌉ tiles per row
    block (8 of the 90 at the headline shape), and the hot kernel skips all but the
    last of them (the one holding segment 0's end and segment 1's start).

    ``SPLIT``: program (b, p) takes the column tiles p, p + n_splits, p + 2·n_splits, …
    of [0, end0) and writes its partial (m, l) (base 2, m its true max) and first argmax to
    a (n_splits, B) workspace that ``_sm90_segment0_merge_kernel`` combines (ties: the
    smaller column). Strided tiles need no end0 on the host (no device sync at launch);
    programs past the last tile exit. Without it a small batch runs segment 0 on
    ⌈B/BLOCK_B⌉ programs only (32 at B = 4,096, each walking the 8 tiles of 1,000 columns in
    sequence) while the hot kernel's splits fill the GPU.
    """
    pid_b = tl.program_id(0)
    pid_p = tl.program_id(1)
    NEG_INF: tl.constexpr = float("-inf")
    r0 = pid_b * BLOCK_B
    rows = r0 + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    c = tl.load(scale_ptr + rows, mask=row_ok, other=0.0) * 1.4426950408889634
    offs_n = tl.arange(0, BLOCK_N)
    end0 = tl.load(off_ptr + 1).to(tl.int32)
    n_t0 = tl.cdiv(end0, BLOCK_N)                  # segment 0's column tiles
    if SPLIT:
        t_first = pid_p
        t_step = n_splits
    else:
        t_first = pid_p * 0
        t_step = 1
    m = tl.full([BLOCK_B], NEG_INF, tl.float32)   # running max of segment 0 (base 2)
    l = tl.zeros([BLOCK_B], tl.float32)           # Σ exp2(t − m)
    arg = tl.zeros([BLOCK_B], tl.int32)
    for t in tl.range(t_first, n_t0, t_step, disable_licm=True):
        n0 = t * BLOCK_N
        acc = _tile_acc(x_ptr, bank_ptr, r0, n0, rows64, row_ok, end0, D,
                        stride_xb, stride_xd, stride_bn, stride_bd,
                        USE_TMA, IEEE_FP32, BLOCK_B, BLOCK_N, BLOCK_D)
        cols = n0 + offs_n
        in0 = (cols < end0)[None, :]
        a0 = tl.max(tl.where(in0, acc, NEG_INF), axis=1)
        t0 = a0 * c                                   # c > 0: the max of the scaled logits
        if WANT_ARGMAX:
            first = tl.min(tl.where(in0 & (acc == a0[:, None]), cols[None, :], 2147483647), axis=1)
            arg = tl.where(t0 > m, first, arg)        # strictly greater: earlier tiles win ties
        m_new = tl.maximum(m, t0)
        l = l * tl.math.exp2(m - m_new) + tl.sum(
            tl.where(in0, tl.math.exp2(tl.fma(acc, c[:, None], -m_new[:, None])), 0.0), axis=1)
        m = m_new
    if SPLIT:
        if pid_p < n_t0:  # the merge reads exactly the programs that had a tile
            ws = pid_p.to(tl.int64) * B + rows64
            tl.store(ws_m_ptr + ws, m, mask=row_ok)
            tl.store(ws_l_ptr + ws, l, mask=row_ok)
            if WANT_ARGMAX:
                tl.store(ws_arg_ptr + ws, arg, mask=row_ok)
    elif end0 > 0:
        tl.store(lse_ptr + rows64 * S, (m + tl.math.log2(tl.maximum(l, 1e-30))) * 0.6931471805599453, mask=row_ok)
        tl.store(max0_ptr + rows, m * 0.6931471805599453, mask=row_ok)
        if WANT_ARGMAX:
            tl.store(arg0_ptr + rows, arg.to(tl.int64), mask=row_ok)


@triton.jit
def _sm90_segment0_merge_kernel(
    ws_m_ptr, ws_l_ptr, ws_arg_ptr, off_ptr, lse_ptr, max0_ptr, arg0_ptr,
    B, S, n_splits,
    WANT_ARGMAX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK: tl.constexpr,
):
    """Segment 0 from its splits' partials: m = max_p m_p, l = Σ_p l_p · 2^(m_p − m),
    lse = (m + log2 l)·ln 2, max0 = m·ln 2, argmax0 = the smallest column among the splits'
    first maximisers that reach m (a split's tiles are strided: split order is not column
    order)."""
    NEG_INF: tl.constexpr = float("-inf")
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    end0 = tl.load(off_ptr + 1).to(tl.int32)
    m = tl.full([BLOCK], NEG_INF, tl.float32)
    l = tl.zeros([BLOCK], tl.float32)
    arg = tl.zeros([BLOCK], tl.int32)
    for p in range(0, tl.minimum(n_splits, tl.cdiv(end0, BLOCK_N))):  # the splits that had a tile
        ws = p * B + rows64
        m_p = tl.load(ws_m_ptr + ws, mask=row_ok, other=NEG_INF)
        l_p = tl.load(ws_l_ptr + ws, mask=row_ok, other=0.0)
        if WANT_ARGMAX:
            a_p = tl.load(ws_arg_ptr + ws, mask=row_ok, other=0)
            arg = tl.where((m_p > m) | ((m_p == m) & (a_p < arg)), a_p, arg)
        m_new = tl.maximum(m, m_p)
        m_ref = tl.where(m_new == NEG_INF, 0.0, m_new)
        l = l * tl.math.exp2(m - m_ref) + l_p * tl.math.exp2(m_p - m_ref)
        m = m_new
    if end0 > 0:
        tl.store(lse_ptr + rows64 * S, (m + tl.math.log2(tl.maximum(l, 1e-30))) * 0.6931471805599453, mask=row_ok)
        tl.store(max0_ptr + rows, m * 0.6931471805599453, mask=row_ok)
        if WANT_ARGMAX:
            tl.store(arg0_ptr + rows, arg.to(tl.int64), mask=row_ok)


@triton.jit
def _sm90_segment_lse_exact_kernel(
    x_ptr, bank_ptr, colseg_ptr, off_ptr, scale_ptr, flag_ptr, bflag_ptr,
    lse_ptr, max0_ptr, arg0_ptr, part_v_ptr, part_seg_ptr,
    B, N, D, S, P,
    stride_xb, stride_xd, stride_bn, stride_bd,
    WANT_ARGMAX: tl.constexpr, IEEE_FP32: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, W: tl.constexpr,
    HOT_BLOCK_N: tl.constexpr,
):
    """Per row block, after the hot and segment-0 kernels: if a piece of the hot kernel
    marked it, every segment (and segment 0's max and first argmax) over all N columns with
    per-segment maxima as references (exact fp32, no shared-reference hazard); else, if
    the stream-K schedule cut it (boundaries b of the hot kernel inside it), the segments
    cut at those boundaries from their partial lse v_e, in column order (entries 2b, 2b + 1
    of each boundary): lse = m + log Σ_e exp(v_e − m), m = max_e v_e. Other row blocks exit."""
    pid_b = tl.program_id(0)
    NEG_INF: tl.constexpr = float("-inf")
    r0 = pid_b * BLOCK_B
    local = tl.arange(0, BLOCK_B)
    rows = r0 + local
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)

    end0 = tl.load(off_ptr + 1).to(tl.int32)
    T = tl.cdiv(N - end0, HOT_BLOCK_N)          # the hot kernel's tiles per row block
    U = tl.cdiv(B, BLOCK_B).to(tl.int64) * T
    flagged = pid_b * 0
    b_lo = pid_b * 0 + 1                         # the boundaries inside this row block
    b_hi = pid_b * 0
    if T > 0:
        u_first = pid_b.to(tl.int64) * T
        b_lo = (_owner(u_first, U, P) + 1).to(tl.int32)
        b_hi = _owner(u_first + T - 1, U, P).to(tl.int32)
        flagged = tl.load(flag_ptr + pid_b)
        for bnd in range(b_lo, b_hi + 1):
            flagged = flagged | tl.load(bflag_ptr + bnd)
    if (flagged == 0) & (b_hi >= b_lo):
        # Running (segment cur, its lse so far v); entries in column order: before b_lo, after
        # b_lo, before b_lo + 1, … Each partial has its columns' terms, so the lse of their union
        # is the log-sum-exp of the partials.
        cur = pid_b * 0 - 1
        v = tl.full([BLOCK_B], NEG_INF, tl.float32)
        for e in range(2 * b_lo, 2 * b_hi + 2):
            code = tl.load(part_seg_ptr + e)
            if code != -1:
                if (e % 2 == 1) & (code >= 0):   # after a boundary: the partial sits in lse
                    seg = code
                    v_e = tl.load(lse_ptr + rows64 * S + seg, mask=row_ok, other=NEG_INF)
                else:
                    seg = tl.where(code >= 0, code, -code - 2)
                    v_e = tl.load(part_v_ptr + e * BLOCK_B + local, mask=row_ok, other=NEG_INF)
                if seg != cur:
                    if cur >= 0:
                        tl.store(lse_ptr + rows64 * S + cur, v, mask=row_ok)
                    v = v_e
                else:
                    mx = tl.maximum(v, v_e)
                    mr = tl.where(mx == NEG_INF, 0.0, mx)
                    v = mr + tl.log(tl.exp(v - mr) + tl.exp(v_e - mr))
                cur = seg
        if cur >= 0:
            tl.store(lse_ptr + rows64 * S + cur, v, mask=row_ok)

    c = tl.load(scale_ptr + rows, mask=row_ok, other=0.0) * 1.4426950408889634
    col_hi = tl.where(flagged != 0, N, 0)
    s_c = pid_b * 0 - 1
    m_c = tl.full([BLOCK_B], NEG_INF, tl.float32)
    l_c = tl.zeros([BLOCK_B], tl.float32)
    mx0 = tl.full([BLOCK_B], NEG_INF, tl.float32)
    arg = tl.zeros([BLOCK_B], tl.int32)
    for n0 in range(0, col_hi, BLOCK_N):
        acc = _tile_acc(x_ptr, bank_ptr, r0, n0, rows64, row_ok, col_hi, D,
                        stride_xb, stride_xd, stride_bn, stride_bd,
                        False, IEEE_FP32, BLOCK_B, BLOCK_N, BLOCK_D)
        n_end = tl.minimum(n0 + BLOCK_N, col_hi)
        cols = n0 + offs_n
        col_ok = cols < n_end
        cseg = tl.load(colseg_ptr + cols, mask=col_ok, other=-1)
        s_first = tl.load(colseg_ptr + n0)
        s_last = tl.load(colseg_ptr + n_end - 1)
        if n0 < end0:
            mx0, arg = _segment0_tile(acc, c, cols, col_ok, end0, mx0, arg, WANT_ARGMAX)
        m_c, l_c = _exact_tile(acc, c, cseg, col_ok, s_first, s_last, s_c, m_c, l_c, mx0, n_end,
                               r0, off_ptr, lse_ptr, B, S, BLOCK_B, W)
        s_c = s_last
        if (end0 <= n_end) & (n0 < end0):
            tl.store(max0_ptr + rows, mx0 * 0.6931471805599453, mask=row_ok)
            if WANT_ARGMAX:
                tl.store(arg0_ptr + rows, arg.to(tl.int64), mask=row_ok)


# ------------------------------------------------------------------------------ launcher
def _interpreting(x: Tensor) -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1" or x.device.type == "cpu"


def _tensor_descriptor_cls():
    """Triton's host-side TMA descriptor class, or None on a Triton without it."""
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:  # pragma: no cover - Triton < 3.3
        return None
    return TensorDescriptor


def sm90_supported(x: Tensor) -> bool:
    """True when ``segment_lse_triton_sm90`` is the better kernel for CUDA inputs ``x``.

    fp16/bf16 on a compute-capability-9.x GPU (Hopper: wgmma, 228 KB shared memory per
    SM for two resident 100 KB blocks) with a Triton that has host tensor descriptors
    (3.3+; 3.6 and 3.8 do). Everything else keeps the portable kernel, and so does
    ``FASTOOD_TRITON_SM90=0`` in the environment, and batches below ``SM90_MIN_ROWS``
    (:func:`sm90_wanted`).
    """
    if not isinstance(x, Tensor) or x.device.type != "cuda" or x.dim() != 2:
        return False
    if os.environ.get("FASTOOD_TRITON_SM90", "1") == "0":  # kill switch until measured on a GPU
        return False
    if _tensor_descriptor_cls() is None:
        return False
    return sm90_wanted(x.shape[0], x.dtype, torch.cuda.get_device_capability(x.device)[0])


# Below this many rows the portable kernel is taken. bench/sol.py (H100, fp16, N = 11,400,
# D = 512, G = 100, every launch and fill of both launchers counted at 5 µs a launch, layout
# tables cached, commit 2d761cb's stream-K grid): portable vs this sequence B = 512 0.030 vs
# 0.036 ms, 768 0.038 vs 0.036, 1,024 0.061 vs 0.042, 1,536 0.057 vs 0.048, 2,048 0.093 vs
# 0.054, 4,096 0.154 vs 0.086. The crossover it predicts (512–768) rests on its least certain
# number, the cost of a launch; the threshold stays at 1,024 (also the C++ dispatch's,
# cuda_path.h), where the model has this sequence 1.45× ahead, until a GPU measures both
# (tools/gpu_check.sh: `bench sol --device cuda`).
SM90_MIN_ROWS = 1024


def sm90_wanted(rows: int, dtype: torch.dtype, major: int) -> bool:
    """The routing rule of :func:`sm90_supported` without a GPU: fp16/bf16, compute
    capability 9.x, at least ``SM90_MIN_ROWS`` rows."""
    return dtype in (torch.float16, torch.bfloat16) and major == 9 and rows >= SM90_MIN_ROWS


def _tma_ok(t: Tensor) -> bool:
    """TMA needs a unit inner stride and 16-byte aligned base and row stride."""
    es = t.element_size()
    return t.stride(1) == 1 and (t.stride(0) * es) % 16 == 0 and t.data_ptr() % 16 == 0 and t.shape[1] * es >= 16


# A split workspace (m and l per split, segment and row, fp32: segment 0's, S = 1) is kept under this.
SPLIT_WORKSPACE_BYTES = 64 * 2**20


def sol_splits(B: int, N: int, S: int, sms: int, bb: int, bn: int, blocks_per_sm: int) -> int:
    """The launcher's column-split rule as arithmetic (``bench/sol.py`` runs it too): the
    wave-aware count of :func:`fastood.ops._split_plan.wave_splits` over ⌈B/bb⌉ row blocks
    and ⌈N/bn⌉ column tiles on ``sms`` SMs with ``blocks_per_sm`` resident blocks, within
    a split workspace of ``SPLIT_WORKSPACE_BYTES``."""
    cap = max(1, SPLIT_WORKSPACE_BYTES // (B * S * 8))
    return wave_splits(triton.cdiv(B, bb), triton.cdiv(max(N, 1), bn), sms, blocks_per_sm=blocks_per_sm,
                       max_splits=cap)


def stream_k_programs(n_blocks: int, tiles_per_block: int, slots: int) -> int:
    """The hot kernel's stream-K grid: one program per resident slot (``slots`` = blocks per SM
    × SMs), at most one per unit (U = n_blocks · tiles_per_block), at least one. Each program
    walks ⌊U/P⌋ or ⌈U/P⌉ tiles: the whole grid is one wave with no tail (a row-block grid of
    512 programs on 264 slots at B = 65,536 runs a 248-program second wave)."""
    return max(1, min(int(slots), int(n_blocks) * int(tiles_per_block)))


def stream_k_owner(u: int, U: int, P: int) -> int:
    """The program whose units [⌊qU/P⌋, ⌊(q+1)U/P⌋) hold unit u (the kernels' ``_owner``)."""
    return ((u + 1) * P - 1) // U


def sol_programs(B: int, N: int, S: int, end0: int, sms: int, bb: int, bn: int, blocks_per_sm: int) -> tuple[int, int]:
    """``(programs, tiles per program)`` of the hot kernel as its launcher runs it (``bench/sol.py``):
    T = ⌈(N − end0)/bn⌉ tiles per row block, U = ⌈B/bb⌉·T, P = :func:`stream_k_programs`, ⌈U/P⌉."""
    n_blocks, T = triton.cdiv(B, bb), triton.cdiv(max(N - end0, 0), bn)
    if n_blocks * T == 0:
        return 0, 0
    P = stream_k_programs(n_blocks, T, blocks_per_sm * sms)
    return P, triton.cdiv(n_blocks * T, P)


def _choose_splits_sm90(B: int, N: int, S: int, device: torch.device, interpreting: bool, bb: int, bn: int,
                        blocks_per_sm: int = 2) -> int:
    """Column splits (1 = none): :func:`sol_splits` on this device's SM count."""
    if interpreting:
        return 1  # one program at a time anyway; tests force splits explicitly
    sms = _sm_count(_device_index(device))
    return sol_splits(B, N, S, sms, bb, bn, blocks_per_sm)


def _segment0_splits(B: int, N: int, device: torch.device, interpreting: bool, bb: int, bn: int,
                     num_splits: int | None, end0: int | None = None, blocks_per_sm: int = 2) -> int:
    """Splits of the segment-0 kernel (strided column tiles), its workspace (splits, B):
    the split rule on segment 0's ``end0`` columns when the host knows them (offsets given
    on the CPU: :func:`_segment_table`), else on all N (end0 stays on the device, no sync;
    the splits past segment 0's last tile exit at once). ``num_splits`` forces it."""
    if num_splits is not None:
        return num_splits
    if end0 == 0:
        return 1
    return _choose_splits_sm90(B, N if end0 is None else end0, 1, device, interpreting, bb, bn, blocks_per_sm)


def column_segments(offsets: Tensor, N: int) -> Tensor:
    """``colseg[j]`` = the segment holding column j (int32, N entries): the number of
    segment ends ``offsets[1:]`` that are ≤ j. Empty segments are never named."""
    cols = torch.arange(N, device=offsets.device, dtype=torch.int64)
    return torch.searchsorted(offsets[1:].contiguous(), cols, right=True).to(torch.int32)


@dataclass(frozen=True)
class SegmentTable:
    """The per-layout inputs of a launch: ``offsets`` (S+1,) int64 and ``colseg`` (N,) int32
    on the device, segment 0's columns ``end0`` and whether some segment is empty
    (``end0 = None`` / ``any_empty = True`` when the offsets were only on the device)."""
    offsets: Tensor
    colseg: Tensor
    end0: int | None
    any_empty: bool


def _segment_table(offsets: Tensor, N: int, device: torch.device) -> SegmentTable:
    """The launch's :class:`SegmentTable`. When ``offsets`` is on the CPU its values are read
    without a device sync and the table is cached by value (``fastood.ops._layout_cache``: a
    detector scores batch after batch with one layout — no copy of the offsets and no column
    table, 3 launches, per call — and the host knows whether any segment is empty: if none,
    nothing needs a −inf pre-fill, every output is written). Device offsets: recomputed per
    call, nothing assumed."""
    if offsets.device.type != "cpu":
        off = offsets.to(device=device, dtype=torch.int64).contiguous()
        return SegmentTable(off, column_segments(off, N), None, True)
    host = tuple(int(v) for v in offsets.tolist())

    def build() -> SegmentTable:
        off = _device_offsets(offsets, host, device)  # shared with the portable launcher's cache
        any_empty = any(b == a for a, b in zip(host[:-1], host[1:]))
        return SegmentTable(off, column_segments(off, N), host[1], any_empty)  # the kernels' end0 = offsets[1]

    return _layout_cache.cached(("sm90 segment table", str(device), N, host), build)


def segment_lse_triton_sm90(
    x: Tensor,
    bank: Tensor,
    offsets: Tensor,
    row_scale: Tensor,
    want_argmax: bool,
    *,
    num_splits: int | None = None,
    num_programs: int | None = None,
    blocks: tuple[int, int, int] | None = None,
    use_tma: bool | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Launcher contract of ``fastood.ops._dispatch`` on the Hopper kernel.

    ``x`` (B, D), ``bank`` (N, D) of one dtype (fp16/bf16 on a GPU; fp32 too, and
    any of them in the interpreter), any strides; ``offsets`` (S+1,) int64 and
    ``row_scale`` (B,) fp32, **positive** (the dispatcher's ``scale / ||x||``), on the
    same device. Returns ``lse`` (B, S) fp32, ``max0`` (B,) fp32, ``argmax0`` (B,) int64
    when ``want_argmax`` else an empty (0,) int64 tensor.

    ``num_programs`` forces the hot kernel's stream-K grid (default: two programs per SM on
    the capped TMA path, one otherwise, at most one per tile: :func:`stream_k_programs`; one
    per row block in the interpreter); ``num_splits`` forces the segment-0 kernel's column
    splits (default: :func:`_segment0_splits`); ``blocks = (BLOCK_B, BLOCK_N, BLOCK_D)`` overrides
    the tile (tests); ``use_tma`` forces the operand path (default: TMA on CUDA when the
    layout allows it; never in the interpreter).
    """
    if not isinstance(x, Tensor) or not isinstance(bank, Tensor):
        raise TypeError("x and bank must be torch.Tensors")
    if x.dim() != 2 or bank.dim() != 2 or x.shape[1] != bank.shape[1]:
        raise ValueError(f"x (B, D) and bank (N, D) must be 2-D with one D, got {tuple(x.shape)} and {tuple(bank.shape)}")
    if x.dtype != bank.dtype or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"x and bank must share one dtype among float16/bfloat16/float32, got {x.dtype} and {bank.dtype}")
    if not isinstance(offsets, Tensor) or offsets.dim() != 1 or offsets.numel() < 2:
        raise ValueError("offsets must be a 1-D int64 tensor with S+1 >= 2 entries")
    if not isinstance(row_scale, Tensor) or row_scale.shape != (x.shape[0],):
        raise ValueError(f"row_scale must be a ({x.shape[0]},) tensor")
    interpreting = _interpreting(x)
    if x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError("the Triton backend needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1")
    if interpreting and x.dtype == torch.bfloat16:
        x, bank = x.float(), bank.float()  # the interpreter has no bf16 tl.dot
    B, D = x.shape
    N = bank.shape[0]
    S = offsets.numel() - 1
    device = x.device
    table = _segment_table(offsets, N, device)
    offsets, colseg = table.offsets, table.colseg
    row_scale = row_scale.to(device=device, dtype=torch.float32).contiguous()

    if blocks is None:
        blocks = _INTERPRET_BLOCKS if interpreting else CUDA_CONFIG[:3]
    bb, bn, bd = blocks
    if use_tma is None:
        use_tma = (not interpreting) and _tma_ok(x) and _tma_ok(bank) and _tensor_descriptor_cls() is not None
    # The segment-0 kernel: two resident blocks per SM on the TMA path (128 registers), one on
    # the pointer path (152-182 registers uncapped).
    per_sm = 2 if (use_tma and CAP_REGISTERS) else 1
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"num_splits must be an int >= 1, got {num_splits!r}")

    # Empty segments are never visited by the kernels: their −inf is pre-filled, and so is
    # everything when the layout is not known on the host. Without empty segments every entry
    # of lse / max0 / argmax0 is written by a kernel (segments ≥ 1 by the hot kernel or, where
    # stream-K pieces cut them, the exact kernel's merge, segment 0 by the segment-0 kernel or its merge, flagged row blocks again by
    # the exact kernel): no fill launch, no B·S·4 bytes of writes.
    if table.any_empty:
        lse = torch.full((B, S), float("-inf"), dtype=torch.float32, device=device)
        max0 = torch.full((B,), float("-inf"), dtype=torch.float32, device=device)
        arg0 = torch.zeros(B if want_argmax else 0, dtype=torch.int64, device=device)
    else:
        lse = torch.empty((B, S), dtype=torch.float32, device=device)
        max0 = torch.empty((B,), dtype=torch.float32, device=device)
        arg0 = torch.empty(B if want_argmax else 0, dtype=torch.int64, device=device)
    n_blocks = triton.cdiv(B, bb)
    # Stream-K grid: P programs over the U = n_blocks · T hot tiles (T from end0 when the host
    # knows it, else its bound ⌈N/bn⌉: programs past U get empty ranges and exit).
    tiles = triton.cdiv(N - table.end0, bn) if table.end0 is not None else triton.cdiv(N, bn)
    if n_blocks * triton.cdiv(N, bn) >= 2**31:
        raise ValueError(f"x ({B} rows) and bank ({N} columns) make more than 2^31 tiles of {bb}x{bn}: split the batch")
    if num_programs is None:
        # Both hot-kernel paths run capped at 128 registers (0 spill, Triton 3.6 and 3.8) and
        # 98 KB of shared memory: two resident blocks per SM (as the C++ dispatch assumes).
        slots = n_blocks if interpreting else WARP_ORGANISATION["blocks_per_sm"] * _sm_count(_device_index(device))
        num_programs = stream_k_programs(n_blocks, tiles, slots)
    if isinstance(num_programs, bool) or not isinstance(num_programs, int) or num_programs < 1:
        raise ValueError(f"num_programs must be an int >= 1, got {num_programs!r}")
    P = num_programs
    # Every slot the exact kernel reads is written by the hot kernel (flag[r] by the piece that
    # leads row block r, bflag[b] and part_seg[2b], [2b+1] by the pieces meeting at boundary b
    # when b falls inside a row block): no fill.
    flag = torch.empty(n_blocks, dtype=torch.int32, device=device)
    bflag = torch.empty(P + 1, dtype=torch.int32, device=device)
    part_seg = torch.empty(2 * (P + 1), dtype=torch.int32, device=device)
    part_v = torch.empty(2 * (P + 1), bb, dtype=torch.float32, device=device)

    if use_tma:
        TD = _tensor_descriptor_cls()
        x_arg = TD(x, shape=[B, D], strides=[x.stride(0), 1], block_shape=[bb, bd])
        b_arg = TD(bank, shape=[N, D], strides=[bank.stride(0), 1], block_shape=[bn, bd])
    else:
        x_arg, b_arg = x, bank

    warps, stages = (4, 1) if interpreting else (CUDA_CONFIG[3], CUDA_CONFIG[4])
    # Both operand paths capped at 128 registers (0 spill per ptxas, Triton 3.6 and 3.8) → two
    # blocks per SM.
    extra = {"maxnreg": MAXNREG_TMA} if (CAP_REGISTERS and not interpreting) else {}
    _sm90_segment_lse_fwd_kernel[(P,)](
        x_arg, b_arg, colseg, offsets, row_scale, flag, bflag,
        lse, part_v, part_seg,
        B, N, D, S, P,
        x.stride(0), x.stride(1), bank.stride(0), bank.stride(1),
        USE_TMA=bool(use_tma), IEEE_FP32=x.dtype == torch.float32, INTERP=interpreting,
        BLOCK_B=bb, BLOCK_N=bn, BLOCK_D=bd, W=SEG_WINDOW, PAD_ONEHOT=ONEHOT_PAD,
        num_warps=warps, num_stages=stages, **extra,
    )
    mb = 32 if interpreting else 128
    # Segment 0 (after the merge, whose segment-0 outputs it overwrites), its tiles strided over
    # splits of its own when the row blocks alone leave SMs idle.
    splits0 = _segment0_splits(B, N, device, interpreting, bb, bn, num_splits, table.end0, per_sm)
    split0 = splits0 > 1
    if split0:
        ws0_m = torch.empty(splits0, B, dtype=torch.float32, device=device)
        ws0_l = torch.empty(splits0, B, dtype=torch.float32, device=device)
        ws0_arg = torch.empty(splits0, B, dtype=torch.int32, device=device) if want_argmax else ws0_m
    else:
        ws0_m = ws0_l = ws0_arg = lse  # unused (SPLIT is a constexpr)
    s0_args = (x_arg, b_arg) if use_tma else (x, bank)
    _sm90_segment0_kernel[(n_blocks, splits0)](
        *s0_args, offsets, row_scale, lse, max0, arg0 if want_argmax else max0, ws0_m, ws0_l, ws0_arg,
        B, N, D, S, splits0,
        x.stride(0), x.stride(1), bank.stride(0), bank.stride(1),
        USE_TMA=bool(use_tma), WANT_ARGMAX=bool(want_argmax), IEEE_FP32=x.dtype == torch.float32, SPLIT=split0,
        BLOCK_B=bb, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps, num_stages=stages,
        **({"maxnreg": MAXNREG_TMA} if (use_tma and not interpreting and _seg0_capped(bool(want_argmax), split0, x.dtype))
           else {}),
    )
    if split0:
        _sm90_segment0_merge_kernel[(triton.cdiv(B, mb),)](
            ws0_m, ws0_l, ws0_arg, offsets, lse, max0, arg0 if want_argmax else max0, B, S, splits0,
            WANT_ARGMAX=bool(want_argmax), BLOCK_N=bn, BLOCK=mb,
        )
    # Then the flagged row blocks (all segments, exact).
    ebn = bn if interpreting else EXACT_CONFIG[1]
    ebd = bd if interpreting else EXACT_CONFIG[2]
    ewarps, estages = (4, 1) if interpreting else (EXACT_CONFIG[3], EXACT_CONFIG[4])
    _sm90_segment_lse_exact_kernel[(n_blocks,)](
        x, bank, colseg, offsets, row_scale, flag, bflag,
        lse, max0, arg0 if want_argmax else max0, part_v, part_seg,
        B, N, D, S, P,
        x.stride(0), x.stride(1), bank.stride(0), bank.stride(1),
        WANT_ARGMAX=bool(want_argmax), IEEE_FP32=x.dtype == torch.float32,
        BLOCK_B=bb, BLOCK_N=ebn, BLOCK_D=ebd, W=SEG_WINDOW, HOT_BLOCK_N=bn,
        num_warps=ewarps, num_stages=estages,
    )
    return lse, max0, arg0


# --------------------------------------------------------------------------- AOT specs
def aot_specs(arch: int, dtype: torch.dtype, *, full: bool) -> list:
    """The configurations ``segment_lse_triton_sm90`` launches (contract: ``_aot_spec``).

    Only sm_90 and fp16/bf16 are routed here (other arches/dtypes: empty list). The hot
    kernel on both operand paths (TMA descriptors; pointer loads for layouts TMA cannot
    take) × split; the exact kernel × argmax. ``full`` adds nothing (one tile config
    each). Launch specialisation as the JIT applies it to the common case: aligned
    pointers, D / row strides / chunk divisible by 16, unit inner strides.
    """
    from fastood.ops._aot_spec import AotSpec, TRITON_TYPES, ptr

    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"dtype must be float16, bfloat16 or float32, got {dtype}")
    if arch // 10 != 9 or dtype == torch.float32:
        return []
    el, tn = ptr(dtype), TRITON_TYPES[dtype]
    specs = []
    bb, bn, bd, warps, stages = CUDA_CONFIG
    for tma in (True, False):
        sig = {
            "x_ptr": f"tensordesc<{tn}[{bb},{bd}]>" if tma else el,
            "bank_ptr": f"tensordesc<{tn}[{bn},{bd}]>" if tma else el,
            "colseg_ptr": "*i32", "off_ptr": "*i64", "scale_ptr": "*fp32", "flag_ptr": "*i32", "bflag_ptr": "*i32",
            "lse_ptr": "*fp32", "part_v_ptr": "*fp32", "part_seg_ptr": "*i32",
            "B": "i32", "N": "i32", "D": "i32", "S": "i32", "P": "i32",
            "stride_xb": "i32", "stride_bn": "i32",
        }
        aligned = tuple(k for k in sig if k.endswith("_ptr") and not sig[k].startswith("tensordesc"))
        aligned += ("D", "stride_xb", "stride_bn")
        tag = f"{bb}x{bn}x{bd} w{warps} s{stages}{' tma' if tma else ' ptr'}"
        specs.append(AotSpec(
            name=f"segment_lse_sm90_fwd[{tag}]", fn=_sm90_segment_lse_fwd_kernel, signature=sig,
            constexprs={"stride_xd": 1, "stride_bd": 1, "USE_TMA": tma, "IEEE_FP32": False,
                        "INTERP": False, "BLOCK_B": bb, "BLOCK_N": bn, "BLOCK_D": bd, "W": SEG_WINDOW,
                        "PAD_ONEHOT": ONEHOT_PAD},
            num_warps=warps, num_stages=stages, aligned=aligned, intended_mma="wgmma",
            extra_options={"maxnreg": MAXNREG_TMA} if CAP_REGISTERS else {},
        ))
        for argmax in (False, True):
            for split in (False, True):
                sig = {
                    "x_ptr": f"tensordesc<{tn}[{bb},{bd}]>" if tma else el,
                    "bank_ptr": f"tensordesc<{tn}[{bn},{bd}]>" if tma else el,
                    "off_ptr": "*i64", "scale_ptr": "*fp32", "lse_ptr": "*fp32", "max0_ptr": "*fp32",
                    "arg0_ptr": "*i64" if argmax else "*fp32", "ws_m_ptr": "*fp32", "ws_l_ptr": "*fp32",
                    "ws_arg_ptr": "*i32" if (argmax and split) else "*fp32",
                    "B": "i32", "N": "i32", "D": "i32", "S": "i32", "n_splits": "i32",
                    "stride_xb": "i32", "stride_bn": "i32",
                }
                aligned = tuple(k for k in sig if k.endswith("_ptr") and not sig[k].startswith("tensordesc"))
                aligned += ("D", "stride_xb", "stride_bn")
                tag = (f"{bb}x{bn}x{bd} w{warps} s{stages}{' tma' if tma else ' ptr'}{' argmax' if argmax else ''}"
                       f"{' split' if split else ''}")
                specs.append(AotSpec(
                    name=f"segment_lse_sm90_seg0[{tag}]", fn=_sm90_segment0_kernel, signature=sig,
                    constexprs={"stride_xd": 1, "stride_bd": 1, "USE_TMA": tma, "WANT_ARGMAX": argmax,
                                "IEEE_FP32": False, "SPLIT": split, "BLOCK_B": bb, "BLOCK_N": bn, "BLOCK_D": bd},
                    num_warps=warps, num_stages=stages, aligned=aligned, intended_mma="wgmma",
                    extra_options={"maxnreg": MAXNREG_TMA} if (tma and _seg0_capped(argmax, split, dtype))
                    else {},
                ))
    bb, bn, bd, warps, stages = EXACT_CONFIG
    for argmax in (False, True):
        sig = {
            "x_ptr": el, "bank_ptr": el, "colseg_ptr": "*i32", "off_ptr": "*i64", "scale_ptr": "*fp32",
            "flag_ptr": "*i32", "bflag_ptr": "*i32", "lse_ptr": "*fp32", "max0_ptr": "*fp32",
            "arg0_ptr": "*i64" if argmax else "*fp32", "part_v_ptr": "*fp32", "part_seg_ptr": "*i32", "B": "i32", "N": "i32", "D": "i32", "S": "i32", "P": "i32",
            "stride_xb": "i32", "stride_bn": "i32",
        }
        aligned = tuple(k for k in sig if k.endswith("_ptr")) + ("D", "stride_xb", "stride_bn")
        specs.append(AotSpec(
            name=f"segment_lse_sm90_exact[{bb}x{bn}x{bd} w{warps} s{stages}{' argmax' if argmax else ''}]",
            fn=_sm90_segment_lse_exact_kernel, signature=sig,
            constexprs={"stride_xd": 1, "stride_bd": 1, "WANT_ARGMAX": argmax, "IEEE_FP32": False,
                        "BLOCK_B": bb, "BLOCK_N": bn, "BLOCK_D": bd, "W": SEG_WINDOW,
                        "HOT_BLOCK_N": CUDA_CONFIG[1]},
            num_warps=warps, num_stages=stages, aligned=aligned, intended_mma="wgmma",
        ))
    for argmax in (False, True):  # segment 0's split merge (launched with Triton's defaults)
        sig = {
            "ws_m_ptr": "*fp32", "ws_l_ptr": "*fp32", "ws_arg_ptr": "*i32" if argmax else "*fp32", "off_ptr": "*i64",
            "lse_ptr": "*fp32", "max0_ptr": "*fp32", "arg0_ptr": "*i64" if argmax else "*fp32",
            "B": "i32", "S": "i32", "n_splits": "i32",
        }
        specs.append(AotSpec(
            name=f"segment_lse_sm90_seg0_merge[128{' argmax' if argmax else ''}]", fn=_sm90_segment0_merge_kernel,
            signature=sig, constexprs={"WANT_ARGMAX": argmax, "BLOCK_N": CUDA_CONFIG[1], "BLOCK": 128}, num_warps=4,
            num_stages=3, aligned=tuple(k for k in sig if k.endswith("_ptr")), main_loop=False,
        ))
    return specs


# Warp organisation for bench/sol.py (keyed by the spec name before "["): one chain per
# block (the epilogue follows its tile's MMA in the same warps; the second resident block is
# the overlap, which the model takes from blocks/SM), the K pipeline refills per tile
# (nested loop), both operands re-read per tile. ``columns``: the part of the N columns each
# kernel walks (the three kernels are one implementation: bench/sol sums them);
# ``extra_mma_flops``: the one-hot segment sums, MMA work besides the GEMM.
SOL_KERNELS = {
    "segment_lse_sm90_fwd": {"chains": 1, "refill": True, "a_resident": False, "columns": "after_segment0",
                             "extra_mma_flops": WARP_ORGANISATION["per_tile_extra_mma_flops"],
                             "programs": "sol_programs"},
    "segment_lse_sm90_seg0": {"chains": 1, "refill": True, "a_resident": False, "columns": "segment0",
                              "split_rows": CUDA_CONFIG[0], "split_on_end0": True},
    "segment_lse_sm90_exact": {"chains": 1, "refill": True, "a_resident": False, "columns": "flagged"},
}
