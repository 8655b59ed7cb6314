"""KNN benchmark: exact 1-NN cosine scoring against 1,000,000 × 512 training features.

``python -m bench knn [--device cpu|cuda] [--quick] [--batches 1 64 1024]``

Training features are random normal fp32 (seeded), fitted with the SPEC default
(per-dimension standardisation, then L2 normalisation; ``copy=False`` so the
2 GB bank is not duplicated). For each query batch it reports the median scoring
time, GFLOP/s of the similarity GEMM (2·B·N·D), the peak *extra* memory of one
``score_features`` call after a warm-up call (CPU: RSS high-water mark; CUDA: allocator peak) next to
what a dense (B × N) fp32 similarity matrix would take, and the max error against
a float64 brute force on a few queries. ``--quick`` uses 100,000 training features.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from bench.common import peak_extra_memory, provenance, sync, write_results

DIM = 512


def _random_features(n: int, d: int, device: str, seed: int = 0, chunk: int = 1 << 17) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    out = torch.empty(n, d, dtype=torch.float32, device=device)
    for i in range(0, n, chunk):
        out[i : i + chunk].normal_(generator=g)
    return out


def _float64_truth(det, queries: torch.Tensor, raw_train_stats, bank: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """max_j cos in float64 for a few queries (bank rows re-read in chunks, upcast)."""
    mean, std = raw_train_stats
    q = (queries.double() - mean) / std
    q = q / q.norm(dim=1, keepdim=True)
    best = torch.full((q.shape[0],), float("-inf"), dtype=torch.float64, device=q.device)
    for i in range(0, bank.shape[0], chunk):
        best = torch.maximum(best, (q @ bank[i : i + chunk].double().T).max(dim=1).values)
    return best


def _median_time(fn, device: str, *, budget_s: float, max_runs: int = 10) -> float:
    """Median over timed runs (at least one; more while within ``budget_s``); the caller warmed up."""
    times: list[float] = []
    start = time.perf_counter()
    while not times or (len(times) < max_runs and time.perf_counter() - start + times[-1] < budget_s):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(device: str, n_train: int, batches: list[int], budget_s: float) -> tuple[dict, list[dict], str]:
    from fastood.detectors import KNN

    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    train = _random_features(n_train, DIM, device)
    t_gen = time.perf_counter() - t0
    det = KNN(device=device, copy=False)
    t0 = time.perf_counter()
    det.fit_features(train)
    if device == "cuda":
        torch.cuda.synchronize()
    t_fit = time.perf_counter() - t0
    assert det.train_features.data_ptr() == train.data_ptr()
    rows, checks = [], []
    for b in batches:
        q = _random_features(b, DIM, device, seed=1 + b) * 1.5 + 0.1
        fn = lambda: det.score_features(q)  # noqa: E731
        fn()  # warm-up: one-time BLAS / allocator workspaces are not charged to the steady-state peak
        peak = peak_extra_memory(fn, device)
        t = _median_time(fn, device, budget_s=budget_s)
        checks.append(q[:8])
        flops = 2.0 * b * n_train * DIM
        rows.append({
            "n_train": n_train, "dim": DIM, "batch": b, "dtype": "float32",
            "block_bytes": det.block_bytes, "median_s": t, "queries_per_s": b / t, "gflops": flops / t / 1e9,
            "peak_extra_bytes": peak, "dense_similarity_bytes": b * n_train * 4,
        })
    # one float64 brute-force pass for the first (up to) 8 queries of every batch
    qs = torch.cat(checks)
    err = (det.score_features(qs).double() - _float64_truth(det, qs, (det.mean, det.std), det.train_features)).abs()
    at = 0
    for r, q in zip(rows, checks):
        r["max_abs_err_vs_fp64"] = err[at : at + q.shape[0]].max().item()
        at += q.shape[0]
    meta = provenance(device)
    meta.update({"suite": "knn", "n_train": n_train, "dim": DIM, "generate_s": t_gen, "fit_s": t_fit,
                 "bank_bytes": det.train_features.numel() * det.train_features.element_size(),
                 "fit": "standardize=True, copy=False (in place)", "loadavg_1min_start": load_start,
                 "loadavg_1min_end": os.getloadavg()[0]})
    mib = lambda v: "n/a" if v is None else f"{v / 2**20:,.0f} MiB"  # noqa: E731
    md = [f"# KNN benchmark: exact 1-NN cosine, {n_train:,} × {DIM} fp32 training features", "",
          f"- device: {meta['device']}", f"- date: {meta['date']}; commit: {meta['commit']}; torch {meta['torch']}",
          f"- training bank: {mib(meta['bank_bytes'])} (random normal, seeded); fit (standardise + normalise in place): "
          f"{t_fit:.1f} s",
          f"- 1-min load average at start / end: {load_start:.1f} / {meta['loadavg_1min_end']:.1f} on "
          f"{os.cpu_count()} CPUs (a load above 0 means other work shared the CPU: times are then upper bounds)",
          f"- similarity block cap: {mib(det.block_bytes)}; peak extra memory = one "
          "`score_features` call (after a warm-up call) beyond what was live (CPU: RSS high-water mark)", "",
          "| queries | median time | queries/s | GFLOP/s | peak extra memory | dense B×N fp32 would be | max err vs fp64 |",
          "|---:|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {r['batch']:,} | {r['median_s'] * 1e3:,.1f} ms | {r['queries_per_s']:,.0f} | {r['gflops']:.1f} | "
           f"{mib(r['peak_extra_bytes'])} | {mib(r['dense_similarity_bytes'])} | {r['max_abs_err_vs_fp64']:.1e} |"
           for r in rows]
    return meta, rows, "\n".join(md) + "\n"


def main(args) -> None:
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible")
    n_train = 100_000 if args.quick else 1_000_000
    batches = args.batches or ([1024] if args.quick else [1, 64, 1024])
    meta, rows, md = run(device, n_train, batches, budget_s=min(args.budget, 2.0))
    print(md)
    name = "knn-quick" if args.quick else "knn"
    paths = write_results(name, device, meta, rows, md)
    print(f"wrote {paths[0]} and {paths[1]}")
