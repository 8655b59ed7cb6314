"""The ``cpu`` backend of the segmented-LSE primitive: BLAS GEMM per row block + C++ reduction.

For each block of ``block_rows`` rows of ``x``:

1. ``xb = x[block] · row_scale[block]`` in fp32 (the row scale is folded into the
   GEMM operand: one multiply per input element instead of one per logit);
2. ``logits = xb @ bank32ᵀ`` with ``torch.mm`` (MKL/OpenBLAS) into one reused
   fp32 buffer of ``block_rows × N``;
3. ``fastood._C.segment_lse_reduce`` reduces the buffer per row and segment
   (vectorised two-pass max / Σexp, OpenMP over rows, GIL released) straight
   into the output tensors.

Extra memory: the logits buffer (≤ ``max_block_bytes``, 24 MiB by default), one
fp32 copy of the bank when it is fp16/bf16 (or has strides BLAS cannot use; the copy
of the most recent such bank is kept for the next call while that bank lives), and
an fp32 copy of the x block. Never the full B×N logits.

The block size was picked by measurement (bench/cpu_reduction_compare.py --sweep,
B=4096, D=512, N=11,400, 2 threads): every torch.mm call re-packs the whole bank
inside BLAS, so small blocks pay that N×D packing many times (128 rows: ~1.2–1.3×
the bare GEMM; 256: ~1.05–1.1×; 384–1024: ≤ 1.0×, the bare GEMM paying for
page-faulting its B×N output). 512 rows (a 23 MB buffer at N=11,400) is the
default; the byte cap keeps the buffer bounded for larger banks.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from fastood._backends import load_extension

__all__ = ["segment_lse_cpu", "DEFAULT_BLOCK_ROWS", "MAX_BLOCK_BYTES"]

DEFAULT_BLOCK_ROWS = 512
MAX_BLOCK_BYTES = 24 * 2**20


def _ext():
    mod, why = load_extension()
    if mod is None:
        raise RuntimeError(f"the cpu backend needs the compiled extension: {why}")
    return mod


def _blas_operand(t: Tensor) -> Tensor:
    """``t`` in fp32 with a layout BLAS takes without a copy (row- or column-major)."""
    t = t.float()
    if t.stride(1) == 1 or t.stride(0) == 1:
        return t
    return t.contiguous()


# The last bank's fp32 BLAS operand, when that bank needed a copy (fp16/bf16 or odd strides).
# A detector scores batch after batch against one fixed bank: re-upcasting it every call
# costs ~N·D·6 bytes of memory traffic (≈ 7 ms at N = 11,400, D = 512 on 2 cores), as much
# as the GEMM itself at B = 256. Keyed on the tensor that owns the memory (weakref: the
# bank itself, or the base of a view such as ``neglabel_score``'s ``bank[:K + G·m]``, a new
# view object every call), the view's offset / shape / strides and the shared version
# counter: an in-place change to the bank, or a new bank, is never served stale.
_operand_cache: tuple[weakref.ref, tuple, Tensor] | None = None


def _bank_operand(bank: Tensor) -> Tensor:
    global _operand_cache
    if bank.dtype == torch.float32 and (bank.stride(1) == 1 or bank.stride(0) == 1):
        return bank  # used in place, nothing to cache
    owner = bank if bank._base is None else bank._base
    key = (bank.storage_offset(), tuple(bank.shape), bank.stride(), bank.dtype, bank._version)
    cached = _operand_cache
    if cached is not None and cached[0]() is owner and cached[1] == key:
        return cached[2]
    operand = _blas_operand(bank)
    _operand_cache = (weakref.ref(owner), key, operand)
    return operand


def block_rows_for(batch: int, n_cols: int, block_rows: int | None = None, max_block_bytes: int = MAX_BLOCK_BYTES) -> int:
    """Rows per block: ``block_rows`` (default 512), capped so the logits buffer fits ``max_block_bytes``."""
    rows = DEFAULT_BLOCK_ROWS if block_rows is None else int(block_rows)
    cap = max(1, max_block_bytes // (4 * max(n_cols, 1)))
    return max(1, min(rows, cap, batch))


def segment_lse_cpu(
    x: Tensor,
    bank: Tensor,
    offsets: Tensor,
    row_scale: Tensor,
    want_argmax: bool,
    *,
    block_rows: int | None = None,
    max_block_bytes: int = MAX_BLOCK_BYTES,
    num_threads: int | None = None,
    isa: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Launcher contract of ``fastood.ops._dispatch`` on CPU tensors.

    Args:
        x: (B, D) float16 / bfloat16 / float32, any strides.
        bank: (N, D) in ``x``'s dtype, any strides.
        offsets: (S+1,) int64, non-decreasing from 0 to N (validated by the caller;
            re-checked in C++ so a bad call cannot read out of bounds).
        row_scale: (B,) float32; ``L[i, j] = row_scale[i] · x_i · bank_j``.
        want_argmax: also return the first argmax of segment 0.
        block_rows / max_block_bytes: row-block size and the cap on its logits buffer.
        num_threads: OpenMP threads of the reduction (default ``torch.get_num_threads()``).
        isa: ``"auto"``, ``"generic"`` or ``"avx2"`` (SIMD path of the reduction; for tests).

    Returns:
        ``(lse (B, S) f32, max0 (B,) f32, argmax0 (B,) int64 or (0,) int64)``.
    """
    ext = _ext()
    if x.device.type != "cpu" or bank.device.type != "cpu":
        raise ValueError(f"the cpu backend needs CPU tensors, got x on {x.device} and bank on {bank.device}")
    B, N = x.shape[0], bank.shape[0]
    off = offsets.to(torch.int64).contiguous()
    S = off.numel() - 1
    lse = torch.empty(B, S, dtype=torch.float32)
    max0 = torch.empty(B, dtype=torch.float32)
    arg0 = torch.zeros(B if want_argmax else 0, dtype=torch.int64)
    if N == 0:  # every segment is empty
        lse.fill_(float("-inf"))
        max0.fill_(float("-inf"))
        return lse, max0, arg0

    nthreads = torch.get_num_threads() if num_threads is None else int(num_threads)
    bank_t = _bank_operand(bank).T  # (D, N) view; fp16/bf16 upcast once per bank (cached)
    rs = row_scale.to(torch.float32)
    rows = block_rows_for(B, N, block_rows, max_block_bytes)
    buf = torch.empty(rows, N, dtype=torch.float32)
    buf_np, off_np = buf.numpy(), off.numpy()
    lse_np, max0_np = lse.numpy(), max0.numpy()
    arg0_np = arg0.numpy() if want_argmax else None

    for r0 in range(0, B, rows):
        r1 = min(B, r0 + rows)
        xb = x[r0:r1] * rs[r0:r1, None]  # fp32 (type promotion), exact upcast then one rounding
        torch.mm(xb, bank_t, out=buf[: r1 - r0])
        ext.segment_lse_reduce(
            buf_np[: r1 - r0],
            off_np,
            lse_np[r0:r1],
            max0_np[r0:r1],
            None if arg0_np is None else arg0_np[r0:r1],
            nthreads,
            isa,
        )
    return lse, max0, arg0
