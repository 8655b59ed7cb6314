"""The ``torch`` backend: the reference math, chunked over rows.

Holds at most ``max_chunk_bytes`` of fp32 logits at a time (default 32 MiB), so
memory stays bounded at any batch size. Runs of consecutive equal-size segments
(the NegLabel layout: ID, then G equal groups) reduce in one reshaped
``logsumexp``; anything else falls back to one ``logsumexp`` per segment.
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_CHUNK_BYTES = 32 * 2**20


def _equal_runs(sizes: list[int]) -> list[tuple[int, int, int]]:
    """Split segment sizes into runs ``(first_segment, count, size)`` of equal size."""
    runs: list[tuple[int, int, int]] = []
    for s, size in enumerate(sizes):
        if runs and runs[-1][2] == size:
            first, count, _ = runs[-1]
            runs[-1] = (first, count + 1, size)
        else:
            runs.append((s, 1, size))
    return runs


def segment_lse_torch(
    x: Tensor,
    bank: Tensor,
    offsets: Tensor,
    row_scale: Tensor,
    want_argmax: bool,
    *,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> tuple[Tensor, Tensor, Tensor]:
    """Launcher contract of ``fastood.ops._dispatch`` in plain torch (fp32 math)."""
    B, N = x.shape[0], bank.shape[0]
    off = offsets.tolist()
    sizes = [hi - lo for lo, hi in zip(off[:-1], off[1:])]
    runs = _equal_runs(sizes)
    bank32 = bank.float()
    lse = torch.empty(B, len(sizes), dtype=torch.float32, device=x.device)
    max0 = torch.empty(B, dtype=torch.float32, device=x.device)
    arg0 = torch.zeros(B if want_argmax else 0, dtype=torch.int64, device=x.device)
    rows = max(1, max_chunk_bytes // (4 * max(N, 1)))
    for r0 in range(0, B, rows):
        r1 = min(B, r0 + rows)
        logits = (x[r0:r1].float() * row_scale[r0:r1, None]) @ bank32.T
        for first, count, size in runs:
            lo = off[first]
            block = logits[:, lo : lo + count * size].reshape(r1 - r0, count, size)
            lse[r0:r1, first : first + count] = torch.logsumexp(block, dim=2)
        seg0 = logits[:, off[0] : off[1]]
        if seg0.shape[1] == 0:
            max0[r0:r1] = float("-inf")
        else:
            idx = torch.argmax(seg0, dim=1)  # first maximiser on ties
            max0[r0:r1] = seg0.gather(1, idx[:, None])[:, 0]
            if want_argmax:
                arg0[r0:r1] = idx
    return lse, max0, arg0
