"""Triton kernel for the segmented log-sum-exp over a similarity GEMM.

For features ``x`` (B, D), a bank (N, D), column segments
``offsets[0] = 0 <= offsets[1] <= ... <= offsets[S] = N`` and a per-row scale ``r``:

    L[i, j]   = r[i] · <x_i, bank_j>                                 (natural-log units)
    lse[i, s] = log Σ_{j ∈ [offsets[s], offsets[s+1])} exp(L[i, j])  (-inf when empty)
    max0[i]   = max_{j ∈ seg 0} L[i, j],   argmax0[i] = first maximiser in seg 0

The B×N logits are never written to memory. A program owns ``BLOCK_B`` rows and walks
a range of columns in ``BLOCK_N`` tiles; each tile is a small GEMM
``x_blk @ bank_tileᵀ`` accumulated in fp32 over ``BLOCK_D`` chunks of D (fp32 inputs
use IEEE fp32 products, never TF32: at τ = 0.01 every cosine error is multiplied by 100).

Online softmax state (per row, for the ONE segment currently open), in base 2:
with ``t = L · log2(e)``,

    m = max t seen so far,    l = Σ exp2(t − m),    lse = (m + log2 l) · ln 2.

Adding a tile part with values t_j:  m' = max(m, max_j t_j),
``l' = l · exp2(m − m') + Σ_j exp2(t_j − m')``. When ``m' = -inf`` (nothing seen yet)
the reference point is taken as 0 so that no ``-inf − (-inf)`` NaN can appear.

Segments are column ranges shared by all rows, so segment bookkeeping is scalar:
inside a tile, a while-loop visits every segment that intersects it (a masked pass
over the tile per segment), closes segments that end inside the tile (writes their
result, resets the state) and stops at the first segment that runs past the tile.
Empty segments are closed with ``m = -inf, l = 0`` → ``lse = -inf``.

Small batches (too few row blocks to fill the GPU) also split N: split ``p`` covers
columns ``[p·chunk, min(N, (p+1)·chunk))`` and writes a partial ``(m, l)`` (and the
segment-0 argmax) for every segment it touches into a workspace laid out
``(splits, S, B)`` (rows contiguous, so writes and reads are coalesced). A second kernel
merges, per (segment, row block) and in split order, exactly the splits that
segment ``s`` spans: ``p ∈ [offsets[s] // chunk, (offsets[s+1] − 1) // chunk]``.
No atomics anywhere: results are bitwise deterministic for a given config.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastood.ops import _layout_cache

__all__ = ["segment_lse_triton"]

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

# Tile configs tried by the autotuner on CUDA. Every BLOCK_N divides CHUNK_ALIGN, so a
# split chunk (a multiple of CHUNK_ALIGN) never puts one tile across two splits.
_CUDA_CONFIGS = [
    triton.Config({"BLOCK_B": bb, "BLOCK_N": bn, "BLOCK_D": bd}, num_warps=w, num_stages=st)
    for (bb, bn, bd, w, st) in [
        (128, 128, 64, 8, 3),
        (128, 128, 32, 8, 4),
        (128, 64, 64, 4, 3),
        (128, 64, 32, 4, 4),
        (64, 128, 64, 4, 3),
        (64, 128, 32, 4, 4),
        (64, 64, 64, 4, 3),
        (64, 64, 32, 4, 4),
    ]
]
# Configs that spill on sm_80 (its mma.sync fragments take more registers than wgmma's; 40-128
# B/thread with Triton 3.8, bench/results/static-sm80.md): not offered to the autotuner there.
_SM80_SPILLING = {(128, 64, 64, 4, 3), (128, 64, 32, 4, 4), (64, 128, 64, 4, 3)}
_CUDA_CHUNK_ALIGN = 128
_CUDA_MIN_BLOCK_B = 64
# One small fixed config in Triton's CPU interpreter (autotuning there is pointless).
_INTERPRET_BLOCKS = (16, 32, 32)  # BLOCK_B, BLOCK_N, BLOCK_D
_MERGE_BLOCK = 128
# Upper bound for the split-N workspace (m, l and argmax per split, segment and row).
_WORKSPACE_BYTES = 64 * 2**20


@triton.jit
def _finish_lse(m, l):
    """lse = (m + log2 l) · ln 2 in natural-log units; m = -inf (nothing seen) gives -inf.

    Whenever m is finite, l >= 1 (the maximiser contributes exp2(0)), so the clamp only
    keeps log2 away from 0 when l = 0, where m = -inf already decides the result.
    """
    return (m + tl.math.log2(tl.maximum(l, 1e-30))) * 0.6931471805599453


@triton.jit
def _segment_lse_fwd_kernel(
    x_ptr, bank_ptr, off_ptr, scale_ptr, seg_start_ptr,
    lse_ptr, max0_ptr, arg0_ptr,          # final outputs (used when not SPLIT)
    ws_m_ptr, ws_l_ptr, ws_arg_ptr,       # split workspace (used when SPLIT)
    B, N, D, S, chunk,
    stride_xb, stride_xd, stride_bn, stride_bd,
    SPLIT: tl.constexpr, WANT_ARGMAX: tl.constexpr, IEEE_FP32: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_p = tl.program_id(1)
    NEG_INF: tl.constexpr = float("-inf")

    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    # Logits in base 2: t = acc · r[i] · log2(e).
    t_scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0) * 1.4426950408889634
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    # Column range of this program: everything, or split pid_p.
    col_lo = pid_p * chunk
    col_hi = tl.minimum(N, col_lo + chunk)
    if SPLIT:
        s = tl.load(seg_start_ptr + pid_p).to(tl.int32)  # first segment ending after col_lo
    else:
        s = pid_p * 0  # segment 0 (leading empty segments are closed in the first tile)
    seg_lo = tl.load(off_ptr + s).to(tl.int32)
    seg_hi = tl.load(off_ptr + s + 1).to(tl.int32)

    m = tl.full([BLOCK_B], NEG_INF, tl.float32)   # running max (base 2)
    l = tl.zeros([BLOCK_B], tl.float32)           # Σ exp2(t − m)
    arg = tl.zeros([BLOCK_B], tl.int32)           # segment-0 first argmax (global column)

    for n0 in range(col_lo, col_hi, BLOCK_N):
        n_end = tl.minimum(n0 + BLOCK_N, col_hi)
        cols = n0 + offs_n
        col_ok = cols < n_end

        # ---- GEMM tile: acc[b, n] = Σ_d x[b, d] · bank[n, d], fp32 accumulation.
        x_ptrs = x_ptr + rows64[:, None] * stride_xb + offs_d[None, :] * stride_xd
        b_ptrs = bank_ptr + cols.to(tl.int64)[None, :] * stride_bn + offs_d[:, None] * stride_bd
        acc = tl.zeros([BLOCK_B, BLOCK_N], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d_ok = (d0 + offs_d) < D
            xa = tl.load(x_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            bt = tl.load(b_ptrs, mask=d_ok[:, None] & col_ok[None, :], other=0.0)
            if IEEE_FP32:
                acc = tl.dot(xa, bt, acc, input_precision="ieee")
            else:
                acc = tl.dot(xa, bt, acc)
            x_ptrs += BLOCK_D * stride_xd
            b_ptrs += BLOCK_D * stride_bd
        t = acc * t_scale[:, None]

        # ---- Visit the segments intersecting [n0, n_end) in column order.
        go = n0 < n_end
        while go:
            lo = tl.maximum(seg_lo, n0)
            hi = tl.minimum(seg_hi, n_end)
            in_seg = (cols >= lo) & (cols < hi)
            z = tl.where(in_seg[None, :], t, NEG_INF)
            m_tile = tl.max(z, axis=1)
            if WANT_ARGMAX:
                # First column attaining the tile max; across tiles only a strictly
                # greater max replaces it, so the overall first maximiser wins.
                first = tl.min(tl.where(z == m_tile[:, None], cols[None, :], 2147483647), axis=1)
                arg = tl.where((s == 0) & (m_tile > m), first, arg)
            m_new = tl.maximum(m, m_tile)
            m_ref = tl.where(m_new == NEG_INF, 0.0, m_new)
            l = l * tl.math.exp2(m - m_ref) + tl.sum(tl.math.exp2(z - m_ref[:, None]), axis=1)
            m = m_new

            # Close the segment if it ends inside this tile.
            ends = seg_hi <= n_end
            done = row_ok & ends
            if SPLIT:
                ws = (pid_p * S + s).to(tl.int64) * B + rows64
                tl.store(ws_m_ptr + ws, m, mask=done)
                tl.store(ws_l_ptr + ws, l, mask=done)
                if WANT_ARGMAX:
                    tl.store(ws_arg_ptr + pid_p.to(tl.int64) * B + rows64, arg, mask=done & (s == 0))
            else:
                tl.store(lse_ptr + rows64 * S + s, _finish_lse(m, l), mask=done)
                tl.store(max0_ptr + rows, m * 0.6931471805599453, mask=done & (s == 0))
                if WANT_ARGMAX:
                    tl.store(arg0_ptr + rows, arg.to(tl.int64), mask=done & (s == 0))
            m = tl.where(ends, NEG_INF, m)
            l = tl.where(ends, 0.0, l)
            s += ends.to(tl.int32)
            nxt = tl.load(off_ptr + s + 1, mask=ends & (s < S), other=0).to(tl.int32)
            seg_lo = tl.where(ends, seg_hi, seg_lo)
            seg_hi = tl.where(ends, nxt, seg_hi)
            # Continue while the next segment has columns here or ends here (empty).
            go = ends & (s < S) & ((seg_lo < n_end) | (seg_hi <= n_end))

    if SPLIT:
        # Flush the segment still open at the end of this split (it continues in the
        # next split). If it has no column here, the merge never reads this entry.
        open_ = row_ok & (s < S)
        ws = (pid_p * S + s).to(tl.int64) * B + rows64
        tl.store(ws_m_ptr + ws, m, mask=open_)
        tl.store(ws_l_ptr + ws, l, mask=open_)
        if WANT_ARGMAX:
            tl.store(ws_arg_ptr + pid_p.to(tl.int64) * B + rows64, arg, mask=open_ & (s == 0))


@triton.jit
def _segment_lse_merge_kernel(
    ws_m_ptr, ws_l_ptr, ws_arg_ptr, off_ptr,
    lse_ptr, max0_ptr, arg0_ptr,
    B, S, chunk,
    WANT_ARGMAX: tl.constexpr, BLOCK: tl.constexpr,
):
    """Combine the partial (m, l) of the splits spanned by segment s, in split order."""
    s = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < B
    rows64 = rows.to(tl.int64)
    NEG_INF: tl.constexpr = float("-inf")

    seg_lo = tl.load(off_ptr + s)
    seg_hi = tl.load(off_ptr + s + 1)
    p_first = seg_lo // chunk
    n_parts = tl.where(seg_hi > seg_lo, (seg_hi - 1) // chunk - p_first + 1, 0)

    m = tl.full([BLOCK], NEG_INF, tl.float32)
    l = tl.zeros([BLOCK], tl.float32)
    arg = tl.zeros([BLOCK], tl.int32)
    for k in range(0, n_parts):
        p = p_first + k
        ws = (p * S + s).to(tl.int64) * B + rows64
        m_p = tl.load(ws_m_ptr + ws, mask=row_ok, other=NEG_INF)
        l_p = tl.load(ws_l_ptr + ws, mask=row_ok, other=0.0)
        if WANT_ARGMAX:
            a_p = tl.load(ws_arg_ptr + p.to(tl.int64) * B + rows64, mask=row_ok & (s == 0), other=0)
            arg = tl.where(m_p > m, a_p, arg)  # strictly greater: the earlier split wins ties
        m_new = tl.maximum(m, m_p)
        m_ref = tl.where(m_new == NEG_INF, 0.0, m_new)
        l = l * tl.math.exp2(m - m_ref) + l_p * tl.math.exp2(m_p - m_ref)
        m = m_new

    tl.store(lse_ptr + rows64 * S + s, _finish_lse(m, l), mask=row_ok)
    tl.store(max0_ptr + rows, m * 0.6931471805599453, mask=row_ok & (s == 0))
    if WANT_ARGMAX:
        tl.store(arg0_ptr + rows, arg.to(tl.int64), mask=row_ok & (s == 0))


def _cfg_key(c: "triton.Config") -> tuple:
    return (*(c.kwargs[k] for k in sorted(c.kwargs)), c.num_warps, c.num_stages)


def configs_for_arch(arch: int) -> list:
    """The autotune configs offered on a GPU of compute capability ``arch`` (80, 86, 90, ...):
    those that compile without spills there (tests/test_static_compile.py checks exactly these)."""
    if arch < 90:
        bad = {_cfg_key(triton.Config({"BLOCK_B": b, "BLOCK_N": n, "BLOCK_D": d}, num_warps=w, num_stages=st))
               for b, n, d, w, st in _SM80_SPILLING}
        return [c for c in _CUDA_CONFIGS if _cfg_key(c) not in bad]
    return list(_CUDA_CONFIGS)


def _arch_of(t: Tensor) -> int:
    major, minor = torch.cuda.get_device_capability(t.device)
    return 10 * major + minor


def _prune_for_arch(configs: list, named_args: dict, **kwargs) -> list:
    """``early_config_prune``: keep the configs of ``configs_for_arch`` for the inputs' GPU."""
    keep = {_cfg_key(c) for c in configs_for_arch(_arch_of(named_args["x_ptr"]))}
    return [c for c in configs if _cfg_key(c) in keep]


# The autotuner's key has no WANT_ARGMAX: the config is tuned on the plain variant and the
# argmax variant reuses it (see _launch_tuned), so lse and max0 are the same bits with and
# without argmax (same tiles, same reduction order).
_segment_lse_fwd_tuned = triton.autotune(configs=_CUDA_CONFIGS, key=["D", "SPLIT"],
                                         prune_configs_by={"early_config_prune": _prune_for_arch})(
    _segment_lse_fwd_kernel)

# (kernel, size buckets, flags, dtype, device) → the triton.Config tuned for it.
_TUNED: dict[tuple, "triton.Config"] = {}


def size_bucket(n: int) -> int:
    """The autotuning bucket of a size: the next power of two >= n (0 for n <= 0).

    Sizes in one bucket share one tuned config, so a new batch size does not re-tune
    (each tuning run compiles and times every config)."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    return 0 if n <= 0 else 1 << (n - 1).bit_length()


def _launch_tuned(tuner, kernel, key: tuple, grid_of, args: tuple, flags: dict, tune_flags: dict | None = None) -> None:
    """Launch ``kernel`` with the config tuned once per ``key``.

    On the first call for ``key`` the autotuner ``tuner`` runs on the real arguments with
    ``flags`` updated by ``tune_flags`` (e.g. WANT_ARGMAX=False: the config is chosen on
    the plain variant), its ``best_config`` is cached; when ``tune_flags`` changed the
    flags, ``kernel`` is then launched with the real flags and that config. Later calls
    with the same key launch ``kernel`` directly. ``grid_of(meta)`` maps a config's
    kwargs to the grid.
    """
    cfg = _TUNED.get(key)
    if cfg is None:
        tune = {**flags, **(tune_flags or {})}
        tuner[grid_of](*args, **tune)
        cfg = _TUNED[key] = tuner.best_config
        if tune == flags:
            return  # the tuning run was the real launch
    kernel[grid_of(cfg.kwargs)](*args, **flags, **cfg.all_kwargs())


def _interpreting(x: Tensor) -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1" or x.device.type == "cpu"


@functools.lru_cache(maxsize=None)
def _device_index(device: torch.device) -> int:
    """The CUDA ordinal of ``device`` (the current device for a bare "cuda"; 0 for a non-CUDA
    device, e.g. bench/sol.py replaying a launcher on CPU tensors with ``_sm_count`` patched)."""
    if device.index is not None:
        return device.index
    return torch.cuda.current_device() if device.type == "cuda" else 0


def _device_offsets(offsets: Tensor, host: tuple[int, ...] | None, device: torch.device) -> Tensor:
    """``offsets`` as contiguous int64 on ``device``; cached by value when they came from the
    host (``fastood.ops._layout_cache``: no copy per call for a fixed layout)."""
    if host is None:
        return offsets.to(device=device, dtype=torch.int64).contiguous()
    return _layout_cache.cached(("offsets", str(device), host),
                                lambda: torch.tensor(host, dtype=torch.int64, device=device))


def _split_starts(offsets: Tensor, host: tuple[int, ...] | None, splits: int, chunk: int,
                  device: torch.device) -> Tensor:
    """First segment of split p: the first s with offsets[s+1] > p·chunk (int32, one per split);
    cached by value for host offsets (4 small launches per call otherwise)."""
    def build() -> Tensor:
        starts = torch.arange(splits, device=device, dtype=torch.int64) * chunk
        return torch.searchsorted(offsets[1:], starts, right=True).to(torch.int32)

    if host is None:
        return build()
    return _layout_cache.cached(("split starts", str(device), host, splits, chunk), build)


def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _choose_splits(B: int, N: int, S: int, device: torch.device, interpreting: bool, align: int) -> int:
    """How many column splits to use (1 = no split-N).

    Split only when the row blocks alone cannot fill the GPU: aim at ~2 programs per SM,
    never below one tile of columns per split, and keep the workspace bounded.
    """
    if interpreting:
        return 1  # one program at a time anyway; tests force splits explicitly
    b_blocks = triton.cdiv(B, _CUDA_MIN_BLOCK_B)
    target = 2 * _sm_count(_device_index(device))
    if b_blocks >= target:
        return 1
    splits = min(triton.cdiv(target, b_blocks), triton.cdiv(N, align))
    bytes_per_split = B * S * 8 + B * 4  # m + l per segment, argmax for segment 0
    splits = min(splits, max(1, _WORKSPACE_BYTES // bytes_per_split))
    return max(1, splits)


_ALIGN_ELEMS = 16  # the JIT's divisibility hint: ints divisible by 16, pointers 16-byte aligned


def _is_aligned(t: Tensor) -> bool:
    """Rows the fast path assumes: unit inner stride, row stride and width multiples of 16
    elements, 16-byte-aligned base (what the JIT specialises on: vector loads, cp.async/TMA)."""
    return (t.stride(1) == 1 and t.stride(0) % _ALIGN_ELEMS == 0 and t.shape[1] % _ALIGN_ELEMS == 0
            and t.data_ptr() % 16 == 0)


def _aligned_operands(x: Tensor, bank: Tensor) -> tuple[Tensor, Tensor]:
    """Route operands whose D, strides or base are not aligned to the aligned kernel variant.

    Without the JIT's alignment hints the kernel compiles to scalar loads without a
    cp.async pipeline (sm_90, Triton 3.8: 32 KB shared memory instead of 96 KB, 732 B of
    spill stores + 732 B of loads per thread; tests/test_static_compile.py),
    a variant no compile check covers. Misaligned operands are therefore copied into
    fresh buffers of width ``roundup(D, 16)``, zero-filled past D: the zero columns add
    exact zeros to every dot product, so the results are unchanged.
    """
    if _is_aligned(x) and _is_aligned(bank):
        return x, bank
    D = x.shape[1]
    Dp = triton.cdiv(D, _ALIGN_ELEMS) * _ALIGN_ELEMS

    def pad(t: Tensor) -> Tensor:
        if Dp == D and _is_aligned(t):
            return t
        out = torch.zeros(t.shape[0], Dp, dtype=t.dtype, device=t.device)  # fresh: 256-byte aligned
        out[:, :D] = t
        return out

    return pad(x), pad(bank)


def segment_lse_triton(
    x: Tensor,
    bank: Tensor,
    offsets: Tensor,
    row_scale: Tensor,
    want_argmax: bool,
    *,
    num_splits: int | None = None,
    blocks: tuple[int, int, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Launcher contract of ``fastood.ops._dispatch`` on the Triton kernel.

    ``x`` (B, D) and ``bank`` (N, D) share one dtype (fp16, bf16 or fp32) and may have
    any strides; ``offsets`` (S+1,) int64 and ``row_scale`` (B,) fp32 on the same device.
    Returns ``lse`` (B, S) fp32, ``max0`` (B,) fp32 and ``argmax0``: (B,) int64 when
    ``want_argmax``, else an empty ``(0,)`` int64 tensor.

    ``num_splits`` forces the number of column splits (1 = single pass; default: a
    heuristic on CUDA, 1 in the interpreter); on the Hopper kernel it forces the segment-0
    kernel's splits only (its hot kernel runs a stream-K grid). ``blocks = (BLOCK_B, BLOCK_N, BLOCK_D)``
    fixes the tile sizes instead of autotuning (tests). In the interpreter (CPU tensors
    or ``TRITON_INTERPRET=1``) bf16 is computed from an fp32 copy (no bf16 ``tl.dot``).
    Operands whose D, strides or base are not 16-aligned are copied to an aligned,
    zero-padded layout first (``_aligned_operands``).
    """
    if blocks is None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):  # Hopper: sm_90 kernel
        from fastood.ops._triton_segment_lse_sm90 import segment_lse_triton_sm90, sm90_supported
        if sm90_supported(x):
            return segment_lse_triton_sm90(x, bank, offsets, row_scale, want_argmax, num_splits=num_splits)
    interpreting = _interpreting(x)
    if x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError("the Triton backend needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1")
    if interpreting and x.dtype == torch.bfloat16:
        x, bank = x.float(), bank.float()
    x, bank = _aligned_operands(x, bank)
    B, D = x.shape
    N = bank.shape[0]
    S = offsets.numel() - 1
    device = x.device
    host_offsets = tuple(int(v) for v in offsets.tolist()) if offsets.device.type == "cpu" else None
    offsets = _device_offsets(offsets, host_offsets, device)
    row_scale = row_scale.to(device=device, dtype=torch.float32).contiguous()

    if blocks is None and interpreting:
        blocks = _INTERPRET_BLOCKS
    align = blocks[1] if blocks is not None else _CUDA_CHUNK_ALIGN
    splits = num_splits if num_splits is not None else _choose_splits(B, N, S, device, interpreting, align)
    if splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {splits}")
    chunk = triton.cdiv(triton.cdiv(N, splits), align) * align
    splits = triton.cdiv(N, chunk)  # after rounding the chunk up, some splits may be empty
    split = splits > 1

    lse = torch.empty(B, S, dtype=torch.float32, device=device)
    max0 = torch.empty(B, dtype=torch.float32, device=device)
    arg0 = torch.zeros(B if want_argmax else 0, dtype=torch.int64, device=device)
    if split:
        seg_start = _split_starts(offsets, host_offsets, splits, chunk, device)
        ws_m = torch.empty(splits, S, B, dtype=torch.float32, device=device)
        ws_l = torch.empty(splits, S, B, dtype=torch.float32, device=device)
        ws_arg = torch.empty(splits, B, dtype=torch.int32, device=device) if want_argmax else ws_m
    else:
        seg_start = ws_m = ws_l = ws_arg = lse  # unused (SPLIT is a constexpr): any valid pointer
    arg0_k = arg0 if want_argmax else max0  # never written when not WANT_ARGMAX

    args = (
        x, bank, offsets, row_scale, seg_start,
        lse, max0, arg0_k, ws_m, ws_l, ws_arg,
        B, N, D, S, chunk,
        x.stride(0), x.stride(1), bank.stride(0), bank.stride(1),
    )
    flags = dict(SPLIT=split, WANT_ARGMAX=bool(want_argmax), IEEE_FP32=x.dtype == torch.float32)
    if blocks is not None:
        bb, bn, bd = blocks
        grid = (triton.cdiv(B, bb), splits)
        _segment_lse_fwd_kernel[grid](*args, **flags, BLOCK_B=bb, BLOCK_N=bn, BLOCK_D=bd)
    else:
        grid = lambda meta: (triton.cdiv(B, meta["BLOCK_B"]), splits)  # noqa: E731
        key = ("segment_lse_fwd", D, split, x.dtype, str(device))
        _launch_tuned(_segment_lse_fwd_tuned, _segment_lse_fwd_kernel, key, grid, args, flags,
                      tune_flags={"WANT_ARGMAX": False})

    if split:
        mb = 32 if interpreting else _MERGE_BLOCK
        _segment_lse_merge_kernel[(S, triton.cdiv(B, mb))](
            ws_m, ws_l, ws_arg, offsets, lse, max0, arg0_k, B, S, chunk,
            WANT_ARGMAX=bool(want_argmax), BLOCK=mb,
        )
    return lse, max0, arg0


# --------------------------------------------------------------------------- AOT specs
# Warp organisation for the speed-of-light model (bench/sol.py): all warps run the tile's MMA
# and then its segmented softmax in lock step (one chain), and the K pipeline refills per tile.
SOL_KERNELS = {"segment_lse_fwd": {"chains": 1, "refill": True, "a_resident": False}}

def _mma_path(arch: int, dtype: torch.dtype) -> str:
    """The tensor-core path an fp16/bf16 main loop must take; fp32 is IEEE FMA (no TF32)."""
    if dtype == torch.float32:
        return "none"
    return "wgmma" if arch >= 90 else "mma"


def aot_specs(arch: int, dtype: torch.dtype, *, full: bool) -> list:
    """Every (fwd, merge) configuration ``segment_lse_triton`` can launch on ``arch``.

    The launch specialisation is that of the common case the launcher guarantees
    (contiguous rows, 16-aligned D, see ``_aligned_operands``): every pointer is
    16-byte aligned (fresh or routed allocations), ``D``, the row strides and ``chunk``
    (a multiple of 128) are divisible by 16, the inner strides are 1 (the JIT turns an
    int equal to 1 into a constant). ``B``, ``N`` and ``S`` are left unhinted: the
    general (least specialised) variant. fp16/bf16: every autotune config × (split,
    argmax) in both modes; fp32 with ``full=False``: the largest and the smallest tile.
    """
    from fastood.ops._aot_spec import AotSpec, ptr

    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"dtype must be float16, bfloat16 or float32, got {dtype}")
    el = ptr(dtype)
    mma = _mma_path(arch, dtype)
    configs = configs_for_arch(arch)
    configs = configs if (full or dtype != torch.float32) else configs[:1] + configs[-1:]
    specs = []
    for split in (False, True):
        for argmax in (False, True):
            sig = {
                "x_ptr": el, "bank_ptr": el, "off_ptr": "*i64", "scale_ptr": "*fp32",
                "seg_start_ptr": "*i32" if split else "*fp32",
                "lse_ptr": "*fp32", "max0_ptr": "*fp32", "arg0_ptr": "*i64" if argmax else "*fp32",
                "ws_m_ptr": "*fp32", "ws_l_ptr": "*fp32", "ws_arg_ptr": "*i32" if (split and argmax) else "*fp32",
                "B": "i32", "N": "i32", "D": "i32", "S": "i32", "chunk": "i32",
                "stride_xb": "i32", "stride_bn": "i32",
            }
            aligned = tuple(k for k in sig if k.endswith("_ptr")) + ("D", "chunk", "stride_xb", "stride_bn")
            for cfg in configs:
                kw = cfg.kwargs
                tag = (f"{kw['BLOCK_B']}x{kw['BLOCK_N']}x{kw['BLOCK_D']} w{cfg.num_warps} s{cfg.num_stages}"
                       f"{' split' if split else ''}{' argmax' if argmax else ''}")
                specs.append(AotSpec(
                    name=f"segment_lse_fwd[{tag}]", fn=_segment_lse_fwd_kernel, signature=sig,
                    constexprs={"stride_xd": 1, "stride_bd": 1, "SPLIT": split, "WANT_ARGMAX": argmax,
                                "IEEE_FP32": dtype == torch.float32, **kw},
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages, aligned=aligned, intended_mma=mma,
                ))
    for argmax in (False, True):
        sig = {"ws_m_ptr": "*fp32", "ws_l_ptr": "*fp32", "ws_arg_ptr": "*i32" if argmax else "*fp32",
               "off_ptr": "*i64", "lse_ptr": "*fp32", "max0_ptr": "*fp32",
               "arg0_ptr": "*i64" if argmax else "*fp32", "B": "i32", "S": "i32", "chunk": "i32"}
        specs.append(AotSpec(
            name=f"segment_lse_merge[{_MERGE_BLOCK}{' argmax' if argmax else ''}]", fn=_segment_lse_merge_kernel,
            signature=sig, constexprs={"WANT_ARGMAX": argmax, "BLOCK": _MERGE_BLOCK},
            num_warps=4, num_stages=3, aligned=tuple(k for k in sig if k.endswith("_ptr")) + ("chunk",),
            main_loop=False,
        ))
    return specs
