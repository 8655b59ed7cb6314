"""Scoring benchmark: fused NegLabel score vs the torch formulations.

Candidates, all computing the NegLabel score of B image features against a bank
of K = 1,000 ID labels + 10,400 negatives (N = 11,400) in G groups:

- ``official``        per-group concatenate + softmax on full logits (reference.py)
- ``torch-best``      full logits, one reshaped logsumexp per run of equal groups
- ``torch.compile``   ``torch.compile`` of torch-best (GPU only by default)
- ``mm-only``         the bare ``x @ bankᵀ`` of the same sizes (a floor, not a score)
- ``fastood-<b>``     ``fastood.neglabel_score(..., backend=b)`` for each available backend
"""

from __future__ import annotations

import gc
from typing import Callable

import torch

import fastood
from fastood import reference as R
from bench.common import dense_fp16_peak, median_time, peak_extra_memory, provenance, write_results

K, NUM_NEG = 1000, 10400


def torch_best(x: torch.Tensor, bank: torch.Tensor, num_id: int, groups: int) -> torch.Tensor:
    """The best plain-torch formulation we know: one GEMM, two logsumexps, fp32 state."""
    logits = 100.0 * (torch.nn.functional.normalize(x, dim=1) @ bank.T).float()
    m = (bank.shape[0] - num_id) // groups
    lse_id = torch.logsumexp(logits[:, :num_id], dim=1, keepdim=True)
    lse_g = torch.logsumexp(logits[:, num_id : num_id + groups * m].reshape(x.shape[0], groups, m), dim=2)
    return torch.sigmoid(lse_id - lse_g).mean(dim=1)


def candidates(device: str, with_compile: bool) -> dict[str, Callable]:
    cands: dict[str, Callable] = {
        "official": lambda x, b, g: R.neglabel_score_official_style(x, b, K, groups=g),
        "torch-best": lambda x, b, g: torch_best(x, b, K, g),
    }
    if with_compile:
        compiled = torch.compile(torch_best, dynamic=False)
        cands["torch.compile"] = lambda x, b, g: compiled(x, b, K, g)
    cands["mm-only"] = lambda x, b, g: x @ b.T
    for name, status in fastood.backends().items():
        if not status or name == "torch":
            continue
        if device == "cpu" and name in ("triton", "cuda"):
            continue  # the interpreter is for tests, not timing
        cands[f"fastood-{name}"] = lambda x, b, g, _n=name: fastood.neglabel_score(x, b, K, groups=g, backend=_n)
    cands["fastood-torch"] = lambda x, b, g: fastood.neglabel_score(x, b, K, groups=g, backend="torch")
    return cands


def run(device: str, batches: list[int], groups_list: list[int], dims: list[int], dtypes: list[torch.dtype],
        with_compile: bool, skip_official_above: int, budget_s: float) -> tuple[dict, list[dict], str]:
    meta = provenance(device)
    meta["shapes"] = f"K={K}, negatives={NUM_NEG} (N={K + NUM_NEG})"
    peak = dense_fp16_peak(meta["device"]) if device == "cuda" else None
    rows: list[dict] = []
    cands = candidates(device, with_compile)
    gen = torch.Generator().manual_seed(0)
    for d in dims:
        bank32 = torch.nn.functional.normalize(torch.randn(K + NUM_NEG, d, generator=gen), dim=1)
        for dtype in dtypes:
            bank = bank32.to(device=device, dtype=dtype)
            for b in batches:
                x = torch.randn(b, d, generator=gen).to(device=device, dtype=dtype)
                for g in groups_list:
                    ref = R.neglabel_score(x[:256].double(), bank.double(), K, groups=g).float()
                    for name, fn in cands.items():
                        if name == "official" and b > skip_official_above:
                            continue
                        gc.collect()
                        try:
                            t = median_time(lambda: fn(x, bank, g), device, budget_s=budget_s)
                            mem = peak_extra_memory(lambda: fn(x, bank, g), device)
                            out = fn(x, bank, g)
                        except (RuntimeError, torch.OutOfMemoryError) as exc:  # e.g. OOM of a baseline
                            rows.append({"method": name, "B": b, "D": d, "G": g, "dtype": str(dtype).split(".")[-1], "error": str(exc)[:200]})
                            continue
                        flops = 2.0 * b * (K + NUM_NEG) * d
                        row = {
                            "method": name, "B": b, "D": d, "G": g, "dtype": str(dtype).split(".")[-1],
                            "median_ms": t * 1e3, "peak_extra_MB": None if mem is None else mem / 2**20,
                            "TFLOPs": flops / t / 1e12,
                        }
                        if peak is not None:
                            row["pct_fp16_peak"] = 100.0 * row["TFLOPs"] / peak
                        if name != "mm-only":
                            row["max_abs_err_vs_fp64"] = (out[:256].float().cpu() - ref.cpu()).abs().max().item()
                        rows.append(row)
                        print(_fmt_row(row), flush=True)
                    del ref
                del x
    return meta, rows, to_markdown(meta, rows)


def _fmt_row(r: dict) -> str:
    if "error" in r:
        return f"{r['method']:>16} B={r['B']:<6} D={r['D']} G={r['G']:<3} {r['dtype']:<8} ERROR {r['error']}"
    mem = "n/a" if r["peak_extra_MB"] is None else f"{r['peak_extra_MB']:.1f}"
    return f"{r['method']:>16} B={r['B']:<6} D={r['D']} G={r['G']:<3} {r['dtype']:<8} {r['median_ms']:9.2f} ms  {mem:>8} MB  {r['TFLOPs']:.2f} TFLOP/s"


def to_markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        "# NegLabel scoring benchmark",
        "",
        f"- device: {meta['device']}",
        f"- date: {meta['date']}; commit: {meta['commit']}; torch {meta['torch']}; triton {meta['triton']}",
        f"- shapes: {meta['shapes']}; median of repeated runs; peak extra memory beyond the live inputs",
        "",
        "| method | B | D | G | dtype | median ms | peak extra MB | TFLOP/s | % fp16 peak | speed-up vs official | max abs err vs fp64 |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    official = {(r["B"], r["D"], r["G"], r["dtype"]): r["median_ms"] for r in rows if r["method"] == "official" and "error" not in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['B']} | {r['D']} | {r['G']} | {r['dtype']} | error: {r['error'][:60]} | | | | | |")
            continue
        key = (r["B"], r["D"], r["G"], r["dtype"])
        sp = f"{official[key] / r['median_ms']:.2f}×" if key in official else ""
        mem = "n/a" if r["peak_extra_MB"] is None else f"{r['peak_extra_MB']:.1f}"
        pct = f"{r['pct_fp16_peak']:.1f}" if "pct_fp16_peak" in r else ""
        err = f"{r['max_abs_err_vs_fp64']:.1e}" if "max_abs_err_vs_fp64" in r else ""
        lines.append(
            f"| {r['method']} | {r['B']} | {r['D']} | {r['G']} | {r['dtype']} | {r['median_ms']:.2f} | {mem} | {r['TFLOPs']:.2f} | {pct} | {sp} | {err} |"
        )
    return "\n".join(lines) + "\n"


def main(args) -> None:
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible")
    if args.quick:
        batches, groups, dims, dtypes = [256], [100], [512], [torch.float32]
    elif device == "cuda":
        batches, groups, dims = [256, 4096, 65536], [1, 100], [512, 768]
        dtypes = [torch.float16, torch.float32]
    else:
        batches, groups, dims, dtypes = [256, 4096], [1, 100], [512, 768], [torch.float32, torch.float16]
    if args.batches:
        batches = args.batches
    meta, rows, md = run(device, batches, groups, dims, dtypes, with_compile=args.compile or device == "cuda",
                         skip_official_above=args.skip_official_above, budget_s=args.budget)
    json_path, md_path = write_results("scores", device, meta, rows, md)
    print(f"\nwrote {json_path} and {md_path}")
