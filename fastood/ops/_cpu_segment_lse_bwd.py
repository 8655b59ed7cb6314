"""The ``cpu`` backend of the fused backward: BLAS GEMMs per row block + the C++ weights pass.

For each block of rows (at most ``max_block_bytes`` of logits, like the forward):

1. ``buf = (x_blk · r_blk) @ bankᵀ`` (``torch.mm``: recompute the block's logits);
2. ``fastood._C.segment_lse_bwd_weights`` overwrites ``buf`` in place with
   ``G = g_{i,s(j)} · exp(L_ij − lse_{i,s(j)})`` (+ ``h_i`` at the argmax), OpenMP over rows;
3. ``u_blk = buf @ bank`` (``torch.mm`` into the output rows).

Extra memory: one ``block × N`` buffer (fp32, or float64 for float64 inputs), an fp32
copy of the bank when it is fp16/bf16. Never the full B×N logits.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fastood.ops._cpu_segment_lse import MAX_BLOCK_BYTES, _ext, block_rows_for

__all__ = ["segment_lse_grad_u_cpu"]


def segment_lse_grad_u_cpu(
    x: Tensor, bank: Tensor, offsets: Tensor, row_scale: Tensor, lse: Tensor, g_lse: Tensor,
    arg0: Optional[Tensor], g_max0: Optional[Tensor], *, block_rows: int | None = None,
    max_block_bytes: int = MAX_BLOCK_BYTES, num_threads: int | None = None,
) -> Tensor:
    """Backward launcher contract (see ``segment_lse_grad_u_torch``) on CPU tensors."""
    ext = _ext()
    if x.device.type != "cpu" or bank.device.type != "cpu":
        raise ValueError(f"the cpu backend needs CPU tensors, got x on {x.device} and bank on {bank.device}")
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    B, N = x.shape[0], bank.shape[0]
    u = torch.zeros(B, x.shape[1], dtype=acc)
    if N == 0:
        return u
    t = bank.to(acc)
    t = t if t.stride(1) == 1 or t.stride(0) == 1 else t.contiguous()
    off = offsets.to("cpu", torch.int64).contiguous()
    rs, lse_a, g_a = row_scale.to(acc), lse.to(acc).contiguous(), g_lse.to(acc).contiguous()
    h_a = None if g_max0 is None else g_max0.to(acc).contiguous()
    a_a = None if arg0 is None else arg0.to(torch.int64).contiguous()
    nthreads = torch.get_num_threads() if num_threads is None else int(num_threads)
    rows = block_rows_for(B, N * acc.itemsize // 4, block_rows, max_block_bytes)
    buf = torch.empty(rows, N, dtype=acc)
    buf_np, off_np = buf.numpy(), off.numpy()
    for r0 in range(0, B, rows):
        r1 = min(B, r0 + rows)
        torch.mm(x[r0:r1].to(acc) * rs[r0:r1, None], t.T, out=buf[: r1 - r0])
        ext.segment_lse_bwd_weights(
            buf_np[: r1 - r0], off_np, lse_a[r0:r1].numpy(), g_a[r0:r1].numpy(),
            None if h_a is None else a_a[r0:r1].numpy(), None if h_a is None else h_a[r0:r1].numpy(), nthreads,
        )
        torch.mm(buf[: r1 - r0], t, out=u[r0:r1])
    return u
