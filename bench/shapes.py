"""Problem sizes of the pytest-benchmark suites (``bench/test_bench_*.py``).

``FASTOOD_BENCH_SHAPES=tiny`` (default) keeps every case small enough to run in a few
seconds on a CPU — including under ``TRITON_INTERPRET=1`` — so ``pytest bench
--benchmark-disable`` is a quick smoke test of the suites. ``FASTOOD_BENCH_SHAPES=full``
selects the sizes the papers use (ViT-B/16 width 512, ImageNet-1k's K = 1000, NegLabel's
10,000 negatives, CMA's batch 512, a 1.28M-image kNN bank scaled to fit the device).
Each case's benchmark group names its shape and ``extra_info["shapes"]`` records the table, so
compare (``--benchmark-compare``) runs made with the same ``FASTOOD_BENCH_SHAPES``.
"""

from __future__ import annotations

import os

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

_TINY = {
    "score_B": 64, "score_D": 64, "score_K": 16, "score_M": 200,
    "cma_B": 32, "cma_D": 64, "cma_K": 16,
    "knn_N": 512, "knn_B": 64, "knn_D": 64,
    "io_images": 32, "io_side": 128, "io_shards": 4,
}
_FULL = {
    "score_B": 4096 if DEVICE == "cuda" else 256, "score_D": 512, "score_K": 1000, "score_M": 10_000,
    "cma_B": 512 if DEVICE == "cuda" else 128, "cma_D": 512, "cma_K": 1000,
    "knn_N": 1_281_167 if DEVICE == "cuda" else 100_000, "knn_B": 1024 if DEVICE == "cuda" else 256, "knn_D": 768,
    "io_images": 2048, "io_side": 400, "io_shards": 16,
}


def shapes() -> dict[str, int]:
    """The active size table (``$FASTOOD_BENCH_SHAPES``: ``tiny`` or ``full``)."""
    mode = os.environ.get("FASTOOD_BENCH_SHAPES", "tiny")
    if mode not in ("tiny", "full"):
        raise ValueError(f"FASTOOD_BENCH_SHAPES must be 'tiny' or 'full', got {mode!r}")
    return dict(_TINY if mode == "tiny" else _FULL)


def sync() -> None:
    """Wait for queued GPU work so a timed call measures the op, not its launch."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(benchmark, fn):
    """``benchmark(fn)`` with a device sync inside the timed call; returns ``fn``'s result."""
    benchmark.extra_info["shapes"] = os.environ.get("FASTOOD_BENCH_SHAPES", "tiny")
    benchmark.extra_info["device"] = DEVICE

    def call():
        out = fn()
        sync()
        return out

    return benchmark(call)
