"""Scoring benchmark: fused NegLabel score vs the torch formulations a user would write.

Candidates, all computing the NegLabel score of B image features against a bank
of K = 1,000 ID labels + 10,400 negatives (N = 11,400) in G groups:

- ``official``        what the official NegLabel code computes: fp32 scoring. Its CLIP
                      (``clip.load``) runs in fp16 on CUDA and the features are cast to fp32
                      before the score, so for fp16/bf16 inputs this row includes the cast of
                      the features (the bank is held in fp32, cast once, as the official code
                      keeps its text features). Per-group concatenate + softmax on full logits
                      (``fastood.reference.neglabel_score_official_style``). The speed-up
                      column is relative to this row.
- ``official-style, fp16 inputs``  the same formula run directly on fp16/bf16 tensors
                      (faster than the official code, which scores in fp32; fp16/bf16 rows only)
- ``torch-best``      full logits, one reshaped logsumexp per run of equal groups
- ``torch.compile``   ``torch.compile`` of torch-best on the row's dtype (fp16 and fp32 rows
                      on GPU; on CPU only with ``--compile``): one GEMM writing the logits plus
                      fused reductions, the user's real alternative on a GPU
- ``gemm-prealloc``   ``torch.mm(x, bankᵀ, out=buf)`` into a preallocated buffer: the bare
                      GEMM (cuBLAS on GPU, the CPU BLAS on CPU), the floor, not a score
- ``mm-only``         ``x @ bankᵀ`` allocating its output each call (on CPU the 4096 × 11,400
                      fp32 output is 178 MB of fresh pages per call: slower than the floor)
- ``fastood-<b>``     ``fastood.neglabel_score(..., backend=b)`` for each available backend
"""

from __future__ import annotations

import gc
from typing import Callable

import torch

import fastood
from fastood import reference as R
from bench.common import dense_fp16_peak, load_1min, median_time, peak_extra_memory, provenance, write_results

K, NUM_NEG = 1000, 10400


def torch_best(x: torch.Tensor, bank: torch.Tensor, num_id: int, groups: int) -> torch.Tensor:
    """The best plain-torch formulation we know: one GEMM, two logsumexps, fp32 state."""
    logits = 100.0 * (torch.nn.functional.normalize(x, dim=1) @ bank.T).float()
    m = (bank.shape[0] - num_id) // groups
    lse_id = torch.logsumexp(logits[:, :num_id], dim=1, keepdim=True)
    lse_g = torch.logsumexp(logits[:, num_id : num_id + groups * m].reshape(x.shape[0], groups, m), dim=2)
    return torch.sigmoid(lse_id - lse_g).mean(dim=1)


class _Fp32Bank:
    """The bank in fp32, converted once per bank tensor (outside the timed call): the
    official code holds its text features in fp32 before scoring."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._val: torch.Tensor | None = None

    def __call__(self, bank: torch.Tensor) -> torch.Tensor:
        if bank.dtype == torch.float32:
            return bank
        key = (bank.data_ptr(), bank.shape, bank.dtype, bank.device)
        if key != self._key:
            self._key, self._val = key, bank.float()
        return self._val


class GemmInto:
    """``torch.mm(x, bankᵀ, out=buf)`` with ``buf`` allocated once per (shape, dtype, device):
    the GEMM alone, as fast as the library makes it (the floor of any scoring method)."""

    def __init__(self) -> None:
        self.buf: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0], bank.shape[0])
        if self.buf is None or self.buf.shape != shape or self.buf.dtype != x.dtype or self.buf.device != x.device:
            self.buf = torch.empty(shape, dtype=x.dtype, device=x.device)
        return torch.mm(x, bank.T, out=self.buf)


def official_fp32(x: torch.Tensor, bank32: torch.Tensor, groups: int) -> torch.Tensor:
    """The official code's scoring: features cast to fp32, the fp32 formula of reference.py."""
    return R.neglabel_score_official_style(x.float(), bank32, K, groups=groups)


def candidates(device: str, with_compile: bool, dtype: torch.dtype = torch.float32) -> dict[str, Callable]:
    """Name → ``fn(x, bank, groups)`` for inputs of ``dtype`` on ``device``."""
    bank32 = _Fp32Bank()
    cands: dict[str, Callable] = {"official": lambda x, b, g: official_fp32(x, bank32(b), g)}
    if dtype != torch.float32:
        cands["official-style, fp16 inputs" if dtype == torch.float16 else "official-style, bf16 inputs"] = (
            lambda x, b, g: R.neglabel_score_official_style(x, b, K, groups=g))
    cands["torch-best"] = lambda x, b, g: torch_best(x, b, K, g)
    if with_compile:
        compiled = torch.compile(torch_best, dynamic=False)
        cands["torch.compile"] = lambda x, b, g: compiled(x, b, K, g)
    gemm = GemmInto()
    cands["gemm-prealloc"] = lambda x, b, g: gemm(x, b)
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
    gen = torch.Generator().manual_seed(0)
    for d in dims:
        bank32 = torch.nn.functional.normalize(torch.randn(K + NUM_NEG, d, generator=gen), dim=1)
        for dtype in dtypes:
            cands = candidates(device, with_compile, dtype)
            bank = bank32.to(device=device, dtype=dtype)
            for b in batches:
                x = torch.randn(b, d, generator=gen).to(device=device, dtype=dtype)
                for g in groups_list:
                    ref = R.neglabel_score(x[:256].double(), bank.double(), K, groups=g).float()
                    for name, fn in cands.items():
                        if name.startswith("official") and b > skip_official_above:
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
                        if name not in ("mm-only", "gemm-prealloc"):
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
        f"- machine load (1-min average): {meta.get('load_1min_before')} before, {meta.get('load_1min_after')} after"
        f" ({meta.get('cpus')} CPUs); tree dirty: {meta.get('dirty')}",
        "- `official` scores in fp32 as the official NegLabel code does (fp16 features cast to fp32); the"
        " speed-up column is against it. `official-style, fp16 inputs` runs the same formula on fp16 tensors."
        " `gemm-prealloc` is the bare GEMM into a preallocated output (the floor); `mm-only` allocates its output.",
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
    meta["load_1min_after"] = load_1min()
    md = to_markdown(meta, rows)
    json_path, md_path = write_results("scores", device, meta, rows, md)
    print(f"\nwrote {json_path} and {md_path}")
