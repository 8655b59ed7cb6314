"""Triton kernels of the fused CMA loss: forward LSEs and the two backward passes.

Notation (one "own" side A of M rows, one "other" side B of N rows, width D):

    L[i, j] = s · ra[i] · rb[j] · <a_i, b_j>          (natural-log units)

with ``ra``, ``rb`` the inverse row norms (ones without normalisation) and ``s``
the logit scale, read from a 0-d device tensor (no host sync). Every kernel tiles
the GEMM ``A_blk @ B_tileᵀ`` over D in ``BLOCK_D`` chunks with fp32 accumulation
(fp32 inputs use IEEE fp32 products, never TF32: at s = 100 every cosine error is
multiplied by 100) and never writes the M×N logits.

Forward (``_cma_fwd_kernel`` + ``_lse_merge_kernel``), one GEMM pass:
  a program owns ``BLOCK_M`` rows and a chunk of columns (split-N when the row
  blocks alone cannot fill the GPU). Per row it keeps an online base-2 state: running
  max m, ``l = Σ 2^(t − m)``, the same sum without the target column ``l_nt``, and
  the target logit itself; (m, l) goes to ``row_ws[split, M]``, (l_nt, target) to a
  per-row slot written only by the split that holds the target. Per column tile it
  also reduces the tile over its rows (max, Σ 2^(t − max)) into
  ``col_ws[row_block, N]``, and the row block holding the diagonal writes the
  column's (l_nt, target): every slot has exactly one writer, so there is no atomic
  and no race. A merge kernel folds the partials of each row (over splits) and of
  each column (over row blocks) in index order:
  ``m' = max(m, m_p)``, ``l' = l·2^(m−m') + l_p·2^(m_p−m')`` (same for l_nt), and
  returns ``lse = (m + log2 l)·ln 2``, ``ce = lse − L_target = ((m − t_target) + log2 l)·ln 2``
  and ``comp = 1 − softmax[target] = l_nt / l``. The column LSE is therefore bitwise
  deterministic for a given config; ``ce`` and ``comp`` never subtract nearly equal
  numbers, so the loss and the target gradient keep full precision as softmax → 1.

Backward (``_cma_bwd_kernel``), run twice with the roles swapped:
  with ``G~ = α·exp(L − lse_own) + β·exp(L − lse_other)`` off target and
  ``(α + β − 1) − α·comp_own − β·comp_other`` on target (the loss gradient
  ∂loss/∂L times B, values in [−1, 1]) a program owns ``BLOCK_M`` rows and
  a ``BLOCK_DO`` slice of the output width, recomputes each logit tile from the
  inputs and the saved LSEs, sets the target entries of G~ in fp32, casts G~ to the
  input dtype and accumulates ``out[i, :] += Σ_j G~_ij · rb_j · b_j`` (the other
  side's *normalised* rows, so fp16 operands stay in [−1, 1]). With more than one
  ``BLOCK_DO`` slice (D > BLOCK_DO) each slice recomputes the logit tile; the
  autotuner trades that recomputation against the registers a wide slice needs.
  Row pass (own = images) gives ``Σ_j G~_ij v_j``; column pass (own = texts /
  classes) gives ``Σ_i G~_ij u_i``. Small problems split N as well; split p writes
  its own slab of a ``(splits, M, D)`` workspace, summed in order afterwards. No
  atomics: results are bitwise deterministic for a given config.

Targets: ``TARGET = 0`` diagonal (pair mode), ``1`` labels of the own rows (class
mode, row pass: column ``y_i`` of row i), ``2`` labels of the other rows (class
mode, column pass: class k is the target of image i when ``y_i == k``).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastood.ops._triton_segment_lse import _launch_tuned, size_bucket

__all__ = ["cma_fwd_triton", "cma_bwd_triton"]

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

# Forward: BLOCK_M is fixed (the column-partial workspace has one row per row block,
# sized before the launch); the autotuner picks the column tile, D chunk and warps.
_FWD_BLOCK_M = 128
# Only configurations that compile without register spills for fp16 and bf16 on sm_90 and
# sm_80 (tests/test_static_compile.py, bench/results/static-sm*.md). Dropped after those
# checks (Triton 3.8): fwd 128x128x64 w8, 128x128x32 w8, 64x64 w4, 64x32 w4 (pair mode
# spills 56-136 B/thread: the column reduction keeps a second tile live), 16-warp tiles
# (128 registers/thread cap); bwd 64x64x32 do512 w8 (44-116 B) and 128x128x32 do64 w8
# (20 B in the labels pass).
_CUDA_FWD_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_D": bd}, num_warps=w, num_stages=st)
    for (bn, bd, w, st) in [
        (64, 64, 8, 3),
        (64, 32, 8, 4),
    ]
]
# Backward: rows, column tile, D chunk of the logit GEMM, output-width slice.
_CUDA_BWD_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd, "BLOCK_DO": bdo}, num_warps=w, num_stages=st)
    for (bm, bn, bd, bdo, w, st) in [
        (64, 64, 64, 128, 4, 3),
        (64, 64, 64, 256, 8, 3),
        (128, 64, 64, 128, 8, 3),
        (64, 128, 64, 128, 8, 3),
        (128, 64, 64, 64, 8, 3),
        (64, 64, 32, 256, 8, 3),
    ]
]
# Backward configs that spill on sm_80 in the labels row pass (56-112 B/thread with Triton 3.8,
# bench/results/static-sm80.md): not offered to the autotuner there.
_SM80_BWD_SPILLING = {(64, 64, 64, 128, 4, 3), (128, 64, 64, 128, 8, 3)}


def _bwd_key(c: "triton.Config") -> tuple:
    k = c.kwargs
    return (k["BLOCK_M"], k["BLOCK_N"], k["BLOCK_D"], k["BLOCK_DO"], c.num_warps, c.num_stages)


def bwd_configs_for_arch(arch: int) -> list:
    """The backward autotune configs offered on compute capability ``arch``: no spills there."""
    return [c for c in _CUDA_BWD_CONFIGS if arch >= 90 or _bwd_key(c) not in _SM80_BWD_SPILLING]


def _prune_bwd_for_arch(configs: list, named_args: dict, **kwargs) -> list:
    major, minor = torch.cuda.get_device_capability(named_args["a_ptr"].device)
    keep = {_bwd_key(c) for c in bwd_configs_for_arch(10 * major + minor)}
    return [c for c in configs if _bwd_key(c) in keep]


_CHUNK_ALIGN = 128  # split chunks are multiples of every BLOCK_N: no tile straddles two splits
# One small fixed config in Triton's CPU interpreter (autotuning there is pointless).
_INTERPRET_FWD_BLOCKS = (16, 16, 16)  # BLOCK_M, BLOCK_N, BLOCK_D
_INTERPRET_BWD_BLOCKS = (16, 16, 16, 16)  # BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DO
_MERGE_BLOCK = 256
_BWD_WORKSPACE_BYTES = 64 * 2**20


@triton.jit
def _logit_tile(
    a_ptr, b_ptr, rows64, cols64, row_ok, col_ok, D,
    stride_a0, stride_a1, stride_b0, stride_b1,
    IEEE_FP32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """acc[m, n] = Σ_d a[rows[m], d] · b[cols[n], d] in fp32 (masked rows/cols give 0)."""
    offs_d = tl.arange(0, BLOCK_D)
    a_ptrs = a_ptr + rows64[:, None] * stride_a0 + offs_d[None, :] * stride_a1
    b_ptrs = b_ptr + cols64[None, :] * stride_b0 + offs_d[:, None] * stride_b1
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d_ok = (d0 + offs_d) < D
        a = tl.load(a_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=d_ok[:, None] & col_ok[None, :], other=0.0)
        if IEEE_FP32:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_D * stride_a1
        b_ptrs += BLOCK_D * stride_b1
    return acc


@triton.jit
def _cma_fwd_kernel(
    a_ptr, b_ptr, ra_ptr, rb_ptr, scale_ptr, lab_ptr,
    row_m_ptr, row_l_ptr,      # (splits, M) partial row state (base 2)
    row_lnt_ptr, row_tt_ptr,   # (M,) from the split holding each row's target
    col_m_ptr, col_l_ptr,      # (row_blocks, N) partial column state (WANT_COL)
    col_lnt_ptr, col_tt_ptr,   # (N,) from the row block holding each column's diagonal
    M, N, D, chunk,
    stride_a0, stride_a1, stride_b0, stride_b1,
    WANT_COL: tl.constexpr, LABELS: tl.constexpr, IEEE_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_p = tl.program_id(1)
    NEG_INF: tl.constexpr = float("-inf")

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    if LABELS:
        tgt = tl.load(lab_ptr + rows, mask=row_ok, other=-1)
    else:
        tgt = rows64
    s2 = tl.load(scale_ptr).to(tl.float32) * 1.4426950408889634
    ta = tl.load(ra_ptr + rows, mask=row_ok, other=0.0) * s2  # logits in base 2
    offs_n = tl.arange(0, BLOCK_N)
    diag_lo = pid_m * BLOCK_M

    m = tl.full([BLOCK_M], NEG_INF, tl.float32)   # running max
    l = tl.zeros([BLOCK_M], tl.float32)           # Σ_j 2^(t_ij − m)
    lnt = tl.zeros([BLOCK_M], tl.float32)         # the same sum without the target column
    tt = tl.full([BLOCK_M], NEG_INF, tl.float32)  # the target logit, as this tile computed it
    col_lo = pid_p * chunk
    col_hi = tl.minimum(N, col_lo + chunk)
    for n0 in range(col_lo, col_hi, BLOCK_N):
        cols = n0 + offs_n
        col_ok = cols < col_hi
        cols64 = cols.to(tl.int64)
        acc = _logit_tile(a_ptr, b_ptr, rows64, cols64, row_ok, col_ok, D,
                          stride_a0, stride_a1, stride_b0, stride_b1,
                          IEEE_FP32, BLOCK_M, BLOCK_N, BLOCK_D)
        rb = tl.load(rb_ptr + cols, mask=col_ok, other=0.0)
        t = acc * ta[:, None] * rb[None, :]
        t = tl.where(row_ok[:, None] & col_ok[None, :], t, NEG_INF)
        hit = cols64[None, :] == tgt[:, None]

        # Row state: online max / rescaled sums (reference 0 while nothing is seen).
        m_new = tl.maximum(m, tl.max(t, axis=1))
        m_ref = tl.where(m_new == NEG_INF, 0.0, m_new)
        rescale = tl.math.exp2(m - m_ref)
        e = tl.math.exp2(t - m_ref[:, None])
        l = l * rescale + tl.sum(e, axis=1)
        lnt = lnt * rescale + tl.sum(tl.where(hit, 0.0, e), axis=1)
        tt = tl.maximum(tt, tl.max(tl.where(hit, t, NEG_INF), axis=1))
        m = m_new

        if WANT_COL:  # pair mode: the column target is the diagonal
            # This program is the only one that sees (this row block, these columns).
            cm = tl.max(t, axis=0)
            cm_ref = tl.where(cm == NEG_INF, 0.0, cm)
            ec = tl.math.exp2(t - cm_ref[None, :])
            ws = pid_m.to(tl.int64) * N + cols64
            tl.store(col_m_ptr + ws, cm, mask=col_ok)
            tl.store(col_l_ptr + ws, tl.sum(ec, axis=0), mask=col_ok)
            dhit = rows64[:, None] == cols64[None, :]
            d_ok = col_ok & (cols >= diag_lo) & (cols < diag_lo + BLOCK_M)
            tl.store(col_lnt_ptr + cols64, tl.sum(tl.where(dhit, 0.0, ec), axis=0), mask=d_ok)
            tl.store(col_tt_ptr + cols64, tl.max(tl.where(dhit, t, NEG_INF), axis=0), mask=d_ok)

    ws = pid_p.to(tl.int64) * M + rows64
    tl.store(row_m_ptr + ws, m, mask=row_ok)
    tl.store(row_l_ptr + ws, l, mask=row_ok)
    t_ok = row_ok & (tgt >= col_lo) & (tgt < col_hi)
    tl.store(row_lnt_ptr + rows64, lnt, mask=t_ok)
    tl.store(row_tt_ptr + rows64, tt, mask=t_ok)


@triton.jit
def _lse_merge_kernel(
    m_ptr, l_ptr, lnt_ptr, tt_ptr, lab_ptr,
    lse_ptr, ce_ptr, comp_ptr,
    P, n, div,
    LABELS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Fold P partial base-2 states (m, l)[p, k] in order p = 0..P-1 into, per k:
    ``lse`` (natural log), ``ce = lse − L_target`` and ``comp = 1 − softmax_target``.
    Partial ``tgt // div`` holds the target (``tgt = lab[k]`` or ``k``); its sum without
    the target is ``lnt[k]`` and its target logit ``tt[k]``, so neither ``ce`` nor
    ``comp`` is a difference of nearly equal numbers."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = idx < n
    idx64 = idx.to(tl.int64)
    NEG_INF: tl.constexpr = float("-inf")
    if LABELS:
        tgt = tl.load(lab_ptr + idx64, mask=ok, other=0)
    else:
        tgt = idx64
    tp = tgt // div
    lnt_t = tl.load(lnt_ptr + idx64, mask=ok, other=0.0)
    m = tl.full([BLOCK], NEG_INF, tl.float32)
    l = tl.zeros([BLOCK], tl.float32)
    lnt = tl.zeros([BLOCK], tl.float32)
    ws = idx64
    for p in range(0, P):
        m_p = tl.load(m_ptr + ws, mask=ok, other=NEG_INF)
        l_p = tl.load(l_ptr + ws, mask=ok, other=0.0)
        lnt_p = tl.where(tp == p, lnt_t, l_p)
        m_new = tl.maximum(m, m_p)
        m_ref = tl.where(m_new == NEG_INF, 0.0, m_new)
        a = tl.math.exp2(m - m_ref)
        b = tl.math.exp2(m_p - m_ref)
        l = l * a + l_p * b
        lnt = lnt * a + lnt_p * b
        m = m_new
        ws += n
    tt = tl.load(tt_ptr + idx64, mask=ok, other=0.0)
    # Every real entry has l >= 1 (its maximiser contributes 2^0); the clamp only guards log2(0).
    log2l = tl.math.log2(tl.maximum(l, 1e-30))
    tl.store(lse_ptr + idx64, (m + log2l) * 0.6931471805599453, mask=ok)
    tl.store(ce_ptr + idx64, ((m - tt) + log2l) * 0.6931471805599453, mask=ok)
    tl.store(comp_ptr + idx64, lnt / tl.maximum(l, 1e-30), mask=ok)


@triton.jit
def _cma_bwd_kernel(
    a_ptr, b_ptr, ra_ptr, rb_ptr, scale_ptr,
    own_lse_ptr, own_comp_ptr, oth_lse_ptr, oth_comp_ptr, lab_ptr,
    out_ptr,                   # (splits, M, D) fp32
    M, N, D, chunk, alpha, beta, g_tgt,
    stride_a0, stride_a1, stride_b0, stride_b1,
    OWN_LSE: tl.constexpr, OTH_LSE: tl.constexpr, TARGET: tl.constexpr, IEEE_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_o = tl.program_id(1)
    pid_p = tl.program_id(2)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    s2 = tl.load(scale_ptr).to(tl.float32) * 1.4426950408889634
    ta = tl.load(ra_ptr + rows, mask=row_ok, other=0.0) * s2
    # Target entries: G~ = g_tgt − α·comp_own − β·comp_oth (g_tgt = α + β − 1 = −λ in pair mode),
    # from the complements 1 − P_target saved by the forward: no cancellation near P = 1.
    tgt_row = tl.zeros([BLOCK_M], tl.float32) + g_tgt
    if OWN_LSE:
        own2 = tl.load(own_lse_ptr + rows, mask=row_ok, other=0.0) * 1.4426950408889634
        tgt_row -= alpha * tl.load(own_comp_ptr + rows, mask=row_ok, other=0.0)
    if TARGET == 1:
        tgt = tl.load(lab_ptr + rows, mask=row_ok, other=-1)
    offs_n = tl.arange(0, BLOCK_N)
    offs_o = pid_o * BLOCK_DO + tl.arange(0, BLOCK_DO)
    o_ok = offs_o < D

    out = tl.zeros([BLOCK_M, BLOCK_DO], tl.float32)
    col_lo = pid_p * chunk
    col_hi = tl.minimum(N, col_lo + chunk)
    for n0 in range(col_lo, col_hi, BLOCK_N):
        cols = n0 + offs_n
        col_ok = cols < col_hi
        cols64 = cols.to(tl.int64)
        acc = _logit_tile(a_ptr, b_ptr, rows64, cols64, row_ok, col_ok, D,
                          stride_a0, stride_a1, stride_b0, stride_b1,
                          IEEE_FP32, BLOCK_M, BLOCK_N, BLOCK_D)
        rb = tl.load(rb_ptr + cols, mask=col_ok, other=0.0)
        t = acc * ta[:, None] * rb[None, :]

        # G~ = B · ∂loss/∂L on this tile, in fp32, target entries folded in before any cast.
        g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        tgt_val = tl.zeros([BLOCK_M, BLOCK_N], tl.float32) + tgt_row[:, None]
        if OWN_LSE:
            g += alpha * tl.math.exp2(t - own2[:, None])
        if OTH_LSE:
            oth2 = tl.load(oth_lse_ptr + cols, mask=col_ok, other=0.0) * 1.4426950408889634
            g += beta * tl.math.exp2(t - oth2[None, :])
            tgt_val -= beta * tl.load(oth_comp_ptr + cols, mask=col_ok, other=0.0)[None, :]
        if TARGET == 0:
            hit = rows64[:, None] == cols64[None, :]
        elif TARGET == 1:
            hit = cols64[None, :] == tgt[:, None]
        else:
            lab = tl.load(lab_ptr + cols, mask=col_ok, other=-1)
            hit = lab[None, :] == rows64[:, None]
        g = tl.where(hit, tgt_val, g)
        g = tl.where(row_ok[:, None] & col_ok[None, :], g, 0.0)

        # The other side's normalised rows for this output slice: |v| <= 1.
        v_ptrs = b_ptr + cols64[:, None] * stride_b0 + offs_o[None, :] * stride_b1
        v = tl.load(v_ptrs, mask=col_ok[:, None] & o_ok[None, :], other=0.0)
        v = (v.to(tl.float32) * rb[:, None]).to(b_ptr.dtype.element_ty)
        if IEEE_FP32:
            out = tl.dot(g.to(v.dtype), v, out, input_precision="ieee")
        else:
            out = tl.dot(g.to(v.dtype), v, out)

    o_ptrs = out_ptr + pid_p.to(tl.int64) * M * D + rows64[:, None] * D + offs_o[None, :]
    tl.store(o_ptrs, out, mask=row_ok[:, None] & o_ok[None, :])


# The tuners key on the exact sizes, but they are only asked once per size *bucket*
# (_launch_tuned with size_bucket(M), size_bucket(N)): a new batch size reuses its bucket's config.
_cma_fwd_tuned = triton.autotune(configs=_CUDA_FWD_CONFIGS, key=["M", "N", "D", "WANT_COL", "LABELS"])(_cma_fwd_kernel)
_cma_bwd_tuned = triton.autotune(
    configs=_CUDA_BWD_CONFIGS, key=["M", "N", "D", "OWN_LSE", "OTH_LSE", "TARGET"],
    prune_configs_by={"early_config_prune": _prune_bwd_for_arch},
)(_cma_bwd_kernel)


# ----------------------------------------------------------------------------- launchers
def _interpreting(x: Tensor) -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1" or x.device.type == "cpu"


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _target_programs(device: torch.device) -> int:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    return 2 * _sm_count(idx)


def _prepare(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, bool]:
    if x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError("the Triton backend needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32) or t.dtype != x.dtype:
        raise ValueError(f"the Triton backend takes one of float16/bfloat16/float32, got {x.dtype} and {t.dtype}")
    interpreting = _interpreting(x)
    if interpreting and x.dtype == torch.bfloat16:  # no bf16 tl.dot in the interpreter
        x, t = x.float(), t.float()
    return x, t, interpreting


def _bwd_inputs(device: torch.device, rx: Tensor, rt: Tensor, row_lse: Tensor, row_comp: Tensor,
                col_lse: Tensor | None, col_comp: Tensor | None, scale: Tensor, labels: Tensor | None):
    """The backward's per-row / per-column statistics as contiguous fp32 on ``device`` (labels int64):
    ``(rx, rt, scale (0-d), pair, rows_st, cols_st, labels)``; ``cols_st`` is None in class mode."""

    def f32(v: Tensor) -> Tensor:
        return v.to(device=device, dtype=torch.float32).contiguous()

    pair = labels is None
    cols_st = (f32(col_lse), f32(col_comp)) if pair else None
    if not pair:
        labels = labels.to(device=device, dtype=torch.int64).contiguous()
    return f32(rx), f32(rt), f32(scale).reshape(()), pair, (f32(row_lse), f32(row_comp)), cols_st, labels


def _chunk(N: int, splits: int, align: int) -> tuple[int, int]:
    chunk = triton.cdiv(triton.cdiv(N, max(1, splits)), align) * align
    return chunk, triton.cdiv(N, chunk)


def cma_fwd_triton(
    x: Tensor,
    t: Tensor,
    rx: Tensor,
    rt: Tensor,
    scale: Tensor,
    labels: Tensor | None,
    *,
    num_splits: int | None = None,
    blocks: tuple[int, int, int] | None = None,
) -> tuple[Tensor, ...]:
    """Forward statistics of ``L = s·rx_i·rt_j·<x_i, t_j>`` (see the module docstring).

    ``x`` (B, D), ``t`` (N, D) one floating dtype, any strides; ``rx`` (B,), ``rt`` (N,)
    and the 0-d ``scale`` on the same device; ``labels`` (B,) int64 (class-bank mode)
    or None (pair mode: targets on the diagonal, column statistics computed too).

    Returns fp32 ``(row_lse, row_ce, row_comp, col_lse, col_ce, col_comp)``: per row
    ``lse_i``, ``ce_i = lse_i − L_{i,y_i}`` and ``comp_i = 1 − softmax_j(L_ij)[y_i]``;
    the same per column in pair mode (empty ``(0,)`` tensors in class-bank mode).
    ``num_splits`` forces the number of column splits; ``blocks = (BLOCK_M, BLOCK_N,
    BLOCK_D)`` fixes the tiles.
    """
    x, t, interpreting = _prepare(x, t)
    B, D = x.shape
    N = t.shape[0]
    device = x.device
    pair = labels is None
    rx = rx.to(device=device, dtype=torch.float32).contiguous()
    rt = rt.to(device=device, dtype=torch.float32).contiguous()
    scale = scale.to(device=device, dtype=torch.float32).reshape(()).contiguous()
    lab = rx if pair else labels.to(device=device, dtype=torch.int64).contiguous()  # any pointer when unused
    if blocks is None and interpreting:
        blocks = _INTERPRET_FWD_BLOCKS
    bm = blocks[0] if blocks is not None else _FWD_BLOCK_M
    align = blocks[1] if blocks is not None else _CHUNK_ALIGN
    row_blocks = triton.cdiv(B, bm)
    if num_splits is None:
        num_splits = 1 if interpreting else min(triton.cdiv(_target_programs(device), row_blocks), triton.cdiv(N, align))
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    chunk, splits = _chunk(N, num_splits, align)

    f32 = dict(dtype=torch.float32, device=device)
    row_m, row_l = torch.empty(splits, B, **f32), torch.empty(splits, B, **f32)
    row_lnt, row_tt = torch.empty(B, **f32), torch.empty(B, **f32)
    if pair:
        col_m, col_l = torch.empty(row_blocks, N, **f32), torch.empty(row_blocks, N, **f32)
        col_lnt, col_tt = torch.empty(N, **f32), torch.empty(N, **f32)
    else:
        col_m = col_l = col_lnt = col_tt = row_m  # never touched (WANT_COL is a constexpr)
    args = (
        x, t, rx, rt, scale, lab,
        row_m, row_l, row_lnt, row_tt, col_m, col_l, col_lnt, col_tt,
        B, N, D, chunk,
        x.stride(0), x.stride(1), t.stride(0), t.stride(1),
    )
    flags = dict(WANT_COL=pair, LABELS=not pair, IEEE_FP32=x.dtype == torch.float32)
    grid = (row_blocks, splits)
    if blocks is not None:
        _cma_fwd_kernel[grid](*args, **flags, BLOCK_M=bm, BLOCK_N=blocks[1], BLOCK_D=blocks[2])
    else:
        key = ("cma_fwd", size_bucket(B), size_bucket(N), D, pair, x.dtype, str(device))
        _launch_tuned(_cma_fwd_tuned, _cma_fwd_kernel, key, lambda meta: grid, args, {**flags, "BLOCK_M": bm})

    mb = 32 if interpreting else _MERGE_BLOCK
    row = tuple(torch.empty(B, **f32) for _ in range(3))
    _lse_merge_kernel[(triton.cdiv(B, mb),)](row_m, row_l, row_lnt, row_tt, lab, *row, splits, B, chunk,
                                             LABELS=not pair, BLOCK=mb)
    if pair:
        col = tuple(torch.empty(N, **f32) for _ in range(3))
        _lse_merge_kernel[(triton.cdiv(N, mb),)](col_m, col_l, col_lnt, col_tt, lab, *col, row_blocks, N, bm,
                                                 LABELS=False, BLOCK=mb)
    else:
        col = tuple(torch.empty(0, **f32) for _ in range(3))
    return (*row, *col)


def _bwd_pass(
    own: Tensor, oth: Tensor, r_own: Tensor, r_oth: Tensor, scale: Tensor,
    own_stats: tuple[Tensor, Tensor] | None, oth_stats: tuple[Tensor, Tensor] | None, labels: Tensor | None,
    alpha: float, beta: float, target: int, interpreting: bool,
    num_splits: int | None, blocks: tuple[int, int, int, int] | None,
) -> Tensor:
    M, D = own.shape
    N = oth.shape[0]
    device = own.device
    if blocks is None and interpreting:
        blocks = _INTERPRET_BWD_BLOCKS
    align = blocks[1] if blocks is not None else _CHUNK_ALIGN
    if num_splits is None:
        if interpreting:
            num_splits = 1
        else:  # nominal 64-row, 128-wide output tiles; split N only when they cannot fill the GPU
            programs = triton.cdiv(M, 64) * triton.cdiv(D, 128)
            num_splits = min(triton.cdiv(_target_programs(device), programs), triton.cdiv(N, align),
                             max(1, _BWD_WORKSPACE_BYTES // (4 * M * D)))
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    chunk, splits = _chunk(N, num_splits, align)
    out = torch.empty(splits, M, D, dtype=torch.float32, device=device)
    dummy = r_own  # any valid pointer for arguments a constexpr switches off
    own_lse, own_comp = own_stats if own_stats is not None else (dummy, dummy)
    oth_lse, oth_comp = oth_stats if oth_stats is not None else (dummy, dummy)
    g_tgt = (alpha if own_stats is not None else 0.0) + (beta if oth_stats is not None else 0.0) - 1.0
    args = (
        own, oth, r_own, r_oth, scale,
        own_lse, own_comp, oth_lse, oth_comp,
        labels if labels is not None else dummy,
        out, M, N, D, chunk, float(alpha), float(beta), float(g_tgt),
        own.stride(0), own.stride(1), oth.stride(0), oth.stride(1),
    )
    flags = dict(OWN_LSE=own_stats is not None, OTH_LSE=oth_stats is not None, TARGET=target,
                 IEEE_FP32=own.dtype == torch.float32)
    if blocks is not None:
        bm, bn, bd, bdo = blocks
        grid = (triton.cdiv(M, bm), triton.cdiv(D, bdo), splits)
        _cma_bwd_kernel[grid](*args, **flags, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, BLOCK_DO=bdo)
    else:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(D, meta["BLOCK_DO"]), splits)  # noqa: E731
        key = ("cma_bwd", size_bucket(M), size_bucket(N), D, splits > 1, *flags.values(), own.dtype, str(device))
        _launch_tuned(_cma_bwd_tuned, _cma_bwd_kernel, key, grid, args, flags)
    return out[0] if splits == 1 else out.sum(dim=0)  # fixed-order reduction: deterministic


def cma_bwd_triton(
    x: Tensor,
    t: Tensor,
    rx: Tensor,
    rt: Tensor,
    scale: Tensor,
    row_lse: Tensor,
    row_comp: Tensor,
    col_lse: Tensor,
    col_comp: Tensor,
    labels: Tensor | None,
    alpha: float,
    beta: float,
    want_rows: bool,
    want_cols: bool,
    *,
    num_splits: int | None = None,
    blocks: tuple[int, int, int, int] | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """``A = G~ · v`` (B, D) and ``A' = G~ᵀ · u`` (N, D), fp32, each only when asked.

    ``G~_ij = α·exp(L_ij − row_lse_i) + β·exp(L_ij − col_lse_j)`` off target and
    ``(α + β − 1) − α·row_comp_i − β·col_comp_j`` on target, with ``u = rx·x``,
    ``v = rt·t``; targets are the diagonal when ``labels`` is None (pair mode) and
    ``labels`` (B,) int64 otherwise (class-bank mode: ``β`` and the column statistics
    are not used). ``blocks = (BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DO)`` fixes the tiles;
    ``num_splits`` forces the split-N count.
    """
    x, t, interpreting = _prepare(x, t)
    device = x.device

    rx, rt, scale, pair, rows_st, cols_st, labels = _bwd_inputs(device, rx, rt, row_lse, row_comp, col_lse,
                                                                 col_comp, scale, labels)
    kw = dict(interpreting=interpreting, num_splits=num_splits, blocks=blocks)
    a = at = None
    if want_rows:  # own = images: Σ_j G~_ij v_j
        a = _bwd_pass(x, t, rx, rt, scale, rows_st, cols_st, labels, alpha, beta, 0 if pair else 1, **kw)
    if want_cols:  # own = texts / classes: Σ_i G~_ij u_i
        at = _bwd_pass(t, x, rt, rx, scale, cols_st, rows_st, labels, beta, alpha, 0 if pair else 2, **kw)
    return a, at


# --------------------------------------------------------------------------- AOT specs
def aot_specs(arch: int, dtype: torch.dtype, *, full: bool) -> list:
    """Every CMA configuration the launchers can pick on ``arch`` for ``dtype`` inputs.

    Forward: every autotune config × (pair mode: WANT_COL, class mode: LABELS);
    merge: both label modes; backward: every autotune config × the three flag sets the
    two passes use (pair: own+other LSE, diagonal target; class rows: own LSE, labels
    of the own rows; class columns: other LSE, labels of the other rows). The launch
    specialisation is the common case: 16-byte-aligned pointers, ``D``, ``chunk`` and the
    row strides divisible by 16, inner strides 1 (a constant for the JIT); ``M``, ``N``,
    ``P``, ``n`` unhinted. fp32 with ``full=False``: the first and last config of each
    kernel only.
    """
    from fastood.ops._aot_spec import AotSpec, ptr

    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"dtype must be float16, bfloat16 or float32, got {dtype}")
    el = ptr(dtype)
    mma = "none" if dtype == torch.float32 else ("wgmma" if arch >= 90 else "mma")
    ieee = dtype == torch.float32
    sample = (lambda cfgs: cfgs) if (full or not ieee) else (lambda cfgs: [cfgs[0], cfgs[-1]])
    strides = {"stride_a0": "i32", "stride_b0": "i32"}
    unit = {"stride_a1": 1, "stride_b1": 1}
    specs = []

    def aligned_of(sig: dict) -> tuple[str, ...]:
        return tuple(k for k in sig if k.endswith("_ptr")) + tuple(k for k in ("D", "chunk", "div") if k in sig) + (
            tuple(strides) if "stride_a0" in sig else ())

    for pair in (True, False):
        sig = {"a_ptr": el, "b_ptr": el, "ra_ptr": "*fp32", "rb_ptr": "*fp32", "scale_ptr": "*fp32",
               "lab_ptr": "*fp32" if pair else "*i64",
               **{k: "*fp32" for k in ("row_m_ptr", "row_l_ptr", "row_lnt_ptr", "row_tt_ptr",
                                      "col_m_ptr", "col_l_ptr", "col_lnt_ptr", "col_tt_ptr")},
               "M": "i32", "N": "i32", "D": "i32", "chunk": "i32", **strides}
        for cfg in sample(_CUDA_FWD_CONFIGS):
            kw = cfg.kwargs
            specs.append(AotSpec(
                name=(f"cma_fwd[{_FWD_BLOCK_M}x{kw['BLOCK_N']}x{kw['BLOCK_D']} w{cfg.num_warps} s{cfg.num_stages} "
                      f"{'pair' if pair else 'labels'}]"),
                fn=_cma_fwd_kernel, signature=sig,
                constexprs={**unit, "WANT_COL": pair, "LABELS": not pair, "IEEE_FP32": ieee,
                            "BLOCK_M": _FWD_BLOCK_M, **kw},
                num_warps=cfg.num_warps, num_stages=cfg.num_stages, aligned=aligned_of(sig), intended_mma=mma,
            ))
        msig = {"m_ptr": "*fp32", "l_ptr": "*fp32", "lnt_ptr": "*fp32", "tt_ptr": "*fp32",
                "lab_ptr": "*fp32" if pair else "*i64", "lse_ptr": "*fp32", "ce_ptr": "*fp32", "comp_ptr": "*fp32",
                "P": "i32", "n": "i32", "div": "i32"}
        specs.append(AotSpec(
            name=f"cma_lse_merge[{_MERGE_BLOCK} {'pair' if pair else 'labels'}]", fn=_lse_merge_kernel,
            signature=msig, constexprs={"LABELS": not pair, "BLOCK": _MERGE_BLOCK},
            num_warps=4, num_stages=3, aligned=aligned_of(msig), main_loop=False,
        ))
    # (OWN_LSE, OTH_LSE, TARGET) of the pair passes, the class row pass and the class column pass.
    for own, oth, target in ((True, True, 0), (True, False, 1), (False, True, 2)):
        sig = {"a_ptr": el, "b_ptr": el, "ra_ptr": "*fp32", "rb_ptr": "*fp32", "scale_ptr": "*fp32",
               "own_lse_ptr": "*fp32", "own_comp_ptr": "*fp32", "oth_lse_ptr": "*fp32", "oth_comp_ptr": "*fp32",
               "lab_ptr": "*fp32" if target == 0 else "*i64", "out_ptr": "*fp32",
               "M": "i32", "N": "i32", "D": "i32", "chunk": "i32", "alpha": "fp32", "beta": "fp32", "g_tgt": "fp32",
               **strides}
        for cfg in sample(bwd_configs_for_arch(arch)):
            kw = cfg.kwargs
            specs.append(AotSpec(
                name=(f"cma_bwd[{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_D']} do{kw['BLOCK_DO']} w{cfg.num_warps} "
                      f"s{cfg.num_stages} t{target}{' own' if own else ''}{' oth' if oth else ''}]"),
                fn=_cma_bwd_kernel, signature=sig,
                constexprs={**unit, "OWN_LSE": own, "OTH_LSE": oth, "TARGET": target, "IEEE_FP32": ieee, **kw},
                num_warps=cfg.num_warps, num_stages=cfg.num_stages, aligned=aligned_of(sig), intended_mma=mma,
            ))
    return specs


# Hopper routing (fastood/ops/_triton_cma_sm90.py): CUDA fp16/bf16 on sm_90 unless FASTOOD_TRITON_SM90=0.
from fastood.ops._triton_cma_sm90 import route as _route_sm90  # noqa: E402
cma_fwd_triton, cma_bwd_triton = _route_sm90(cma_fwd_triton, cma_bwd_triton)
