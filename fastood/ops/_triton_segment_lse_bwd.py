"""Triton kernel of the fused backward of the segmented log-sum-exp (d/dx only).

For a row block ``i`` and a block of output feature columns ``d`` (one program each),
walking the bank in ``BLOCK_N`` tiles, flash-attention-backward style::

    L_ij = r_i · <x_i, t_j>                       (the tile's logits, recomputed over all of D)
    G_ij = g_{i,s(j)} · exp(L_ij − lse_{i,s(j)})  (+ h_i at j = argmax0_i)
    u_id += Σ_j G_ij · t_jd                       (fp32 accumulator, BLOCK_B × BLOCK_DO)

The forward's ``lse`` is saved, so the softmax weights need no second reduction: each
column reads its segment's ``lse`` and ``g`` through ``seg[j]`` (the column → segment
map, an int32 vector of N, built by the launcher). The B×N logits are never written.
Every program owns its output rows and columns: no atomics, deterministic.

Precision: the logits GEMM uses the operands' dtype with fp32 accumulation (fp32
operands: IEEE products, never TF32 — at τ = 0.01 a cosine error is multiplied by 100),
the second GEMM ``G @ t`` keeps fp32 weights (never rounded to fp16/bf16): IEEE fp32 on
sm_80 and in the interpreter, 3×TF32 on tensor cores on sm_90 (``tf32x3``: each fp32
operand split into tf32 hi + lo, ≈2^-22 relative, fp32's range). float64 operands (only in the interpreter, for the gradient checks) keep
everything in float64.

Cost: the logits of a tile are recomputed once per block of output columns
(``ceil(D / BLOCK_DO)`` times at D = 512: 4 on sm_90, ``BLOCK_DO = 128``; 8 on sm_80,
``BLOCK_DO = 64``) — the price of an fp32 accumulator that fits in registers.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["segment_lse_grad_u_triton", "aot_specs"]

# (BLOCK_B, BLOCK_N, BLOCK_D, BLOCK_DO, num_warps, num_stages, SPLIT_TF32) per GPU family, picked
# by the ptxas report (fastood.ops._aot, Triton 3.8, fp16/bf16; no GPU measurement yet):
# - sm_90: ``G @ t`` on tensor cores as 3×TF32 (``input_precision="tf32x3"``: fp32 split into
#   tf32 hi + lo, ~2^-22 relative, fp32's exponent range) lets 128 output columns fit: 0 spills
#   at ~200 registers with wgmma; the logits are recomputed 4× at D = 512.
# - sm_80: tf32x3 spills there (384-860 B/thread at 64 or 128 columns), so ``G @ t`` stays
#   IEEE fp32 SIMT with 64 output columns (0 spills, 186-204 registers, mma for the logits);
#   the logits are recomputed 8× at D = 512. 64x64x64x128 w8 and 64x32x64x128 w4 spilled
#   kilobytes per thread with the IEEE dot.
_CUDA_CONFIGS = {
    90: [(64, 64, 64, 128, 8, 2, True)],
    80: [(64, 32, 64, 64, 4, 2, False)],
}
_INTERPRET_BLOCKS = (16, 16, 16, 16)


@triton.jit
def _segment_lse_bwd_kernel(
    x_ptr, bank_ptr, seg_ptr, scale_ptr, lse_ptr, g_ptr, arg0_ptr, h_ptr, u_ptr,
    B, N, D, S,
    stride_xb, stride_xd, stride_bn, stride_bd,
    HAS_MAX: tl.constexpr, IEEE_FP32: tl.constexpr, FP64: tl.constexpr, SPLIT_TF32: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    acc_t = tl.float64 if FP64 else tl.float32
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    rows64 = rows.to(tl.int64)
    dout = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
    dmask = dout < D
    r = tl.load(scale_ptr + rows, mask=rmask, other=0.0).to(acc_t)
    if HAS_MAX:
        amax = tl.load(arg0_ptr + rows, mask=rmask, other=-1)
        h = tl.load(h_ptr + rows, mask=rmask, other=0.0).to(acc_t)
    acc = tl.zeros((BLOCK_B, BLOCK_DO), dtype=acc_t)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        cmask = cols < N
        cols64 = cols.to(tl.int64)
        logits = tl.zeros((BLOCK_B, BLOCK_N), dtype=acc_t)
        for d0 in range(0, D, BLOCK_D):
            dk = d0 + tl.arange(0, BLOCK_D)
            kmask = dk < D
            xt = tl.load(x_ptr + rows64[:, None] * stride_xb + dk[None, :] * stride_xd,
                         mask=rmask[:, None] & kmask[None, :], other=0.0)
            bt = tl.load(bank_ptr + cols64[None, :] * stride_bn + dk[:, None] * stride_bd,
                         mask=cmask[None, :] & kmask[:, None], other=0.0)
            if IEEE_FP32:
                logits = tl.dot(xt, bt, acc=logits, input_precision="ieee", out_dtype=acc_t)
            else:
                logits = tl.dot(xt, bt, acc=logits, out_dtype=acc_t)
        logits = logits * r[:, None]
        seg = tl.load(seg_ptr + cols, mask=cmask, other=0)
        m2 = rmask[:, None] & cmask[None, :]
        idx = rows64[:, None] * S + seg[None, :]
        lse = tl.load(lse_ptr + idx, mask=m2, other=0.0).to(acc_t)
        g = tl.load(g_ptr + idx, mask=m2, other=0.0).to(acc_t)
        # g = 0 (rows / columns out of range, or segments the loss does not use): G = 0, no exp of -inf − -inf
        w = tl.where(g != 0.0, g * tl.exp(tl.where(g != 0.0, logits - lse, 0.0)), 0.0)
        if HAS_MAX:
            w += tl.where(cols[None, :] == amax[:, None], h[:, None], 0.0)
        to = tl.load(bank_ptr + cols64[:, None] * stride_bn + dout[None, :] * stride_bd,
                     mask=cmask[:, None] & dmask[None, :], other=0.0).to(acc_t)
        if SPLIT_TF32:
            acc = tl.dot(w, to, acc=acc, input_precision="tf32x3", out_dtype=acc_t)
        else:
            acc = tl.dot(w, to, acc=acc, input_precision="ieee", out_dtype=acc_t)
    tl.store(u_ptr + rows64[:, None] * D + dout[None, :], acc, mask=rmask[:, None] & dmask[None, :])


def _family(device: torch.device) -> int:
    """90 for compute capability ≥ 9.0 (Hopper and later), else 80 (the kernel needs sm_80+)."""
    return 90 if torch.cuda.get_device_capability(device)[0] >= 9 else 80


def _interpreting(x: Tensor) -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1" or x.device.type == "cpu"


def segment_lse_grad_u_triton(
    x: Tensor, bank: Tensor, offsets: Tensor, row_scale: Tensor, lse: Tensor, g_lse: Tensor,
    arg0: Optional[Tensor], g_max0: Optional[Tensor], *, blocks: tuple[int, int, int, int] | None = None,
    split_tf32: bool | None = None,
) -> Tensor:
    """Backward launcher contract (see ``_segment_lse_backward.segment_lse_grad_u_torch``).

    ``blocks = (BLOCK_B, BLOCK_N, BLOCK_D, BLOCK_DO)`` fixes the tiles (tests); otherwise the
    first CUDA config (or a 16⁴ tile in the interpreter). Returns ``u`` (B, D) fp32
    (float64 for float64 inputs, interpreter only).
    """
    interpreting = _interpreting(x)
    if x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError("the Triton backend needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1")
    fp64 = x.dtype == torch.float64
    if fp64 and not interpreting:
        raise TypeError("the Triton backward takes float64 only in the interpreter (gradient checks); "
                        "on a GPU pass float16, bfloat16 or float32")
    if interpreting and x.dtype == torch.bfloat16:  # the interpreter has no bf16 tl.dot; exact upcast
        x, bank = x.float(), bank.float()
    acc = torch.float64 if fp64 else torch.float32
    B, D = x.shape
    N, S = bank.shape[0], offsets.numel() - 1
    u = torch.zeros(B, D, dtype=acc, device=x.device)
    if N == 0:
        return u
    off = offsets.to(device=x.device, dtype=torch.int64)
    seg = torch.repeat_interleave(torch.arange(S, device=x.device, dtype=torch.int32), off[1:] - off[:-1],
                                  output_size=N)
    has_max = g_max0 is not None and arg0 is not None
    dummy = torch.empty(1, dtype=acc, device=x.device)
    split = False
    if blocks is None and interpreting:
        blocks, warps, stages = _INTERPRET_BLOCKS, 4, 1
    elif blocks is None:
        cfg = _CUDA_CONFIGS[_family(x.device)][0]
        blocks, (warps, stages, split) = cfg[:4], cfg[4:]
    else:
        warps, stages = 4, 2
    if split_tf32 is not None:
        split = bool(split_tf32)
    bb, bn, bd, bdo = blocks
    grid = (triton.cdiv(B, bb), triton.cdiv(D, bdo))
    _segment_lse_bwd_kernel[grid](
        x, bank, seg, row_scale.to(acc).contiguous(), lse.to(acc).contiguous(), g_lse.to(acc).contiguous(),
        arg0.to(torch.int64).contiguous() if has_max else dummy, g_max0.to(acc).contiguous() if has_max else dummy,
        u, B, N, D, S, x.stride(0), x.stride(1), bank.stride(0), bank.stride(1),
        HAS_MAX=has_max, IEEE_FP32=x.dtype == torch.float32, FP64=fp64, SPLIT_TF32=split,
        BLOCK_B=bb, BLOCK_N=bn, BLOCK_D=bd, BLOCK_DO=bdo, num_warps=warps, num_stages=stages,
    )
    return u


def aot_specs(arch: int, dtype: torch.dtype, *, full: bool) -> list:
    """The backward configurations the launcher can pick on ``arch`` for ``dtype`` inputs.

    Specialisation of the common launch: pointers 16-byte aligned, ``D`` and the row
    strides divisible by 16, inner strides 1; ``B``, ``N``, ``S`` unhinted. fp16/bf16: the
    logits GEMM is on tensor cores (``mma`` / ``wgmma``); fp32 is IEEE FMA (no TF32).
    ``full=False``: the default config (plus the argmax variant); ``full=True``: all.
    """
    from fastood.ops._aot_spec import AotSpec, ptr

    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"dtype must be float16, bfloat16 or float32, got {dtype}")
    el = ptr(dtype)
    mma = "none" if dtype == torch.float32 else ("wgmma" if arch >= 90 else "mma")
    specs = []
    configs = _CUDA_CONFIGS[90 if arch >= 90 else 80]
    for bb, bn, bd, bdo, w, st, split in (configs if full else configs[:1]):
        for has_max in (False, True):
            sig = {"x_ptr": el, "bank_ptr": el, "seg_ptr": "*i32", "scale_ptr": "*fp32", "lse_ptr": "*fp32",
                   "g_ptr": "*fp32", "arg0_ptr": "*i64" if has_max else "*fp32", "h_ptr": "*fp32",
                   "u_ptr": "*fp32", "B": "i32", "N": "i32", "D": "i32", "S": "i32",
                   "stride_xb": "i32", "stride_bn": "i32"}
            aligned = tuple(k for k in sig if k.endswith("_ptr")) + ("D", "stride_xb", "stride_bn")
            tag = f"{bb}x{bn}x{bd}x{bdo} w{w} s{st}{' tf32x3' if split else ''}{' max' if has_max else ''}"
            specs.append(AotSpec(
                name=f"segment_lse_bwd[{tag}]", fn=_segment_lse_bwd_kernel, signature=sig,
                constexprs={"stride_xd": 1, "stride_bd": 1, "HAS_MAX": has_max,
                            "IEEE_FP32": dtype == torch.float32, "FP64": False, "SPLIT_TF32": split,
                            "BLOCK_B": bb, "BLOCK_N": bn, "BLOCK_D": bd, "BLOCK_DO": bdo},
                num_warps=w, num_stages=st, aligned=aligned, intended_mma=mma,
            ))
    return specs
