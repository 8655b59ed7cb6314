"""Benchmark runner: ``python -m bench [scores] [--device cpu|cuda] [--quick]``.

Each suite writes ``bench/results/<suite>-<device>.json`` and ``.md`` with the
device name, date, commit and torch/triton versions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.common import steady_state_allocator


def _suites() -> list[str]:
    """Every ``bench/<suite>.py`` module that defines ``main(args)``."""
    here = Path(__file__).resolve().parent
    names = []
    for path in sorted(here.glob("*.py")):
        if path.stem.startswith("_") or path.stem in ("common", "conftest") or path.stem.startswith("test_"):
            continue
        if "\ndef main(args" in path.read_text():
            names.append(path.stem.replace("_", "-"))  # static_cuda.py → "static-cuda"
    return names


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("suite", nargs="?", default="scores", choices=_suites(), help="which benchmark suite")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="one small configuration (smoke test)")
    p.add_argument("--batches", type=int, nargs="*", help="override the batch sizes")
    p.add_argument("--compile", action="store_true", help="include torch.compile on CPU too (slow to compile)")
    p.add_argument("--skip-official-above", type=int, default=65536, help="skip the official-style baseline above this B")
    p.add_argument("--model-size", choices=["tiny", "vit-b-16"], default=None,
                   help="bank suite: the random text tower (default: tiny on CPU, ViT-B/16-sized on CUDA)")
    p.add_argument("--budget", type=float, default=2.0, help="seconds of timing per candidate (after warm-up)")
    p.add_argument("--against", default=None, help="ab suite: the earlier commit to compare this tree with")
    args = p.parse_args(argv)
    import importlib

    steady_state_allocator()  # timing; peak_extra_memory switches to 1 MiB mmaps while it measures
    importlib.import_module(f"bench.{args.suite.replace('-', '_')}").main(args)


if __name__ == "__main__":
    main()
