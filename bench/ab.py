"""A/B of the CPU scoring path against an earlier commit: ``python -m bench ab --against REV``.

Two benchmark runs taken on different days on a shared 2-core machine differ by more than
the 5 % a regression check needs (the published B = 4,096, G = 100 row moved between
132 and 143 ms across re-runs of the *same* kernel). So the question "did the code get
slower?" is answered here by one interleaved experiment instead of two files:

1. ``git worktree add`` of ``REV`` in a temporary folder (removed afterwards);
2. the compiled extension of *this* install is copied into it (``fastood._C``: the CPU
   reduction kernel, ``csrc/cpu``), so the comparison is of the Python path around it —
   the tool prints whether ``csrc/cpu`` differs between the two commits, in which case
   the baseline runs today's kernel and the A/B says nothing about the C++ side;
3. rounds alternate a worker process per tree (``A`` = this tree, ``B`` = ``REV``), each
   importing its own ``fastood`` and timing ``fastood.neglabel_score(x, bank, K, groups,
   backend="cpu")`` and the GEMM into a preallocated output (the floor) on identical
   seeded inputs; alternating cancels the drift of the machine's load between rounds;
4. the result is the median of each tree's per-round medians, the ratio A / B and each
   tree's ratio to its own GEMM floor.

Writes ``bench/results/scores-ab-<device>.{json,md}``. CPU only (the GPU paths are new
since any baseline worth comparing to).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import load_1min, provenance, write_results

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter per round: imports fastood from the tree given in argv[1]
# (for the baseline the editable-install finders are removed so that sys.path decides; this
# tree is the installed one, checked by the assertion), times the fused
# scoring and the preallocated GEMM, prints one JSON line.
_WORKER = r"""
import json, os, statistics, sys, time
tree, isolate = sys.argv[1], sys.argv[8] == "1"
if isolate:  # the baseline: drop the editable install's finders so that sys.path decides
    sys.meta_path[:] = [m for m in sys.meta_path if "editable" not in type(m).__module__.lower()
                        and "Redirecting" not in type(m).__name__]
    sys.path.insert(0, tree)
import torch
import fastood
assert os.path.realpath(fastood.__file__).startswith(os.path.realpath(tree)), fastood.__file__
B, D, K, M, G, reps = (int(v) for v in sys.argv[2:8])
g = torch.Generator().manual_seed(0)
x = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1)
bank = torch.nn.functional.normalize(torch.randn(K + M, D, generator=g), dim=1)
out = torch.empty(B, K + M)
fns = {"fastood": lambda: fastood.neglabel_score(x, bank, K, groups=G, backend="cpu"),
       "gemm": lambda: torch.mm(x, bank.t(), out=out)}
for f in fns.values():
    f(); f()
res = {}
for name, f in fns.items():
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    res[name] = statistics.median(ts)
print(json.dumps(res))
"""


def _extension_file() -> Path:
    import fastood._C as ext

    return Path(ext.__file__)


def _worker(tree: Path, shape: tuple[int, ...], reps: int, isolate: bool) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _WORKER, str(tree), *map(str, shape), str(reps), str(int(isolate))],
                         capture_output=True, text=True, cwd=tempfile.gettempdir(), timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"bench ab: the worker for {tree} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_ab(against: str, *, B: int, D: int = 512, K: int = 1000, M: int = 10400, G: int = 100,
           rounds: int = 6, reps: int = 5) -> dict:
    """The interleaved A/B (module docstring); returns medians in ms and the ratios."""
    rev = subprocess.run(["git", "rev-parse", "--short", against], cwd=ROOT, capture_output=True, text=True)
    if rev.returncode != 0:
        raise ValueError(f"--against: {against!r} is not a commit of this repository")
    rev_sha = rev.stdout.strip()
    kernel_diff = subprocess.run(["git", "diff", "--stat", rev_sha, "HEAD", "--", "csrc/cpu"], cwd=ROOT,
                                 capture_output=True, text=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="fastood-ab-"))
    tree_b = tmp / "baseline"
    try:
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(tree_b), rev_sha], cwd=ROOT, check=True,
                       capture_output=True, text=True)
        ext = _extension_file()
        shutil.copy2(ext, tree_b / "fastood" / ext.name)
        shape = (B, D, K, M, G)
        samples: dict[str, dict[str, list[float]]] = {"A": {"fastood": [], "gemm": []},
                                                      "B": {"fastood": [], "gemm": []}}
        for r in range(rounds):
            order = (("A", ROOT), ("B", tree_b)) if r % 2 == 0 else (("B", tree_b), ("A", ROOT))
            for label, tree in order:
                res = _worker(tree, shape, reps, isolate=label == "B")
                for k, v in res.items():
                    samples[label][k].append(v)
                print(f"round {r + 1}/{rounds} {label}: fastood {res['fastood'] * 1e3:.2f} ms, "
                      f"gemm {res['gemm'] * 1e3:.2f} ms", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree_b)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    med = {lab: {k: statistics.median(v) * 1e3 for k, v in d.items()} for lab, d in samples.items()}
    return {"against": rev_sha, "B": B, "D": D, "K": K, "M": M, "G": G, "rounds": rounds, "reps": reps,
            "csrc_cpu_differs": bool(kernel_diff), "samples_ms": {lab: {k: [v * 1e3 for v in vs] for k, vs in d.items()}
                                                                    for lab, d in samples.items()},
            "median_ms": med, "ratio_a_over_b": med["A"]["fastood"] / med["B"]["fastood"],
            "floor_ratio": {lab: med[lab]["fastood"] / med[lab]["gemm"] for lab in med}}


def main(args) -> None:
    if args.device != "cpu":
        raise SystemExit("bench ab: CPU only (--device cpu)")
    against = getattr(args, "against", None)
    if not against:
        raise SystemExit("bench ab: --against REV is required (the commit to compare this tree with)")
    meta = provenance("cpu")
    batches = args.batches or ([256] if args.quick else [4096])
    rows = [run_ab(against, B=B, rounds=2 if args.quick else 6, reps=2 if args.quick else 5) for B in batches]
    lines = [
        "# CPU scoring: this tree against an earlier commit (interleaved A/B)", "",
        f"- device: {meta['device']}; date: {meta['date']}; A = commit {meta['commit']}; B = commit {rows[0]['against']}",
        f"- machine load (1-min average): {meta['load_1min_before']} before, {load_1min()} after; "
        f"torch {meta['torch']}",
        "- method: `python -m bench ab --against REV` (bench/ab.py): alternating worker processes, one per tree, "
        "same seeded inputs; each cell is the median over rounds of a round's median. Both trees use this "
        "install's compiled extension (`fastood._C`).", "",
        "| B | D | N | G | A fastood ms | B fastood ms | A / B | A gemm-prealloc ms | B gemm-prealloc ms | "
        "A / its GEMM | B / its GEMM | csrc/cpu differs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        m = r["median_ms"]
        lines.append(f"| {r['B']} | {r['D']} | {r['K'] + r['M']} | {r['G']} | {m['A']['fastood']:.1f} | "
                     f"{m['B']['fastood']:.1f} | {r['ratio_a_over_b']:.3f} | {m['A']['gemm']:.1f} | {m['B']['gemm']:.1f} | "
                     f"{r['floor_ratio']['A']:.3f} | {r['floor_ratio']['B']:.3f} | "
                     f"{'yes: the baseline ran today' + chr(39) + 's kernel' if r['csrc_cpu_differs'] else 'no'} |")
    json_path, md_path = write_results("scores-ab", "cpu", meta, rows, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {json_path} and {md_path}")
