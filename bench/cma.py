"""CMA loss benchmark: fused ``fastood.losses.cma_loss`` vs the materialised formulation.

Forward + backward (gradients for image features, text features and the logit
scale) of the CMA loss (λ = 0.001, normalize=True, s = 100):

- pair mode: B images × B texts, B ∈ {512, 4096, 32768}, D = 512;
- class-bank mode: B = 4096 images against K = 1000 class prompts, D = 512.

Candidates:

- ``eager``          ``fastood.reference_cma.cma_loss``: full B×N logits, two
                     logsumexps, autograd (what a training loop writes by hand)
- ``torch.compile``  ``torch.compile`` of the same function (GPU by default, ``--compile`` on CPU)
- ``fastood-<b>``    ``cma_loss(..., backend=b)`` for b in {triton (CUDA), torch (chunked)}

Reported per case: median time of forward+backward and of the forward alone, peak
memory beyond the live inputs (fwd+bwd, gradients included), model TFLOP/s
(6·B·N·D: one forward GEMM and two backward GEMMs; the fused kernel really runs five
GEMM-sized passes because it recomputes tiles instead of storing logits), and the
error of the loss and of ∂image against the float64 computation.
"""

from __future__ import annotations

import gc
from typing import Callable

import torch

import fastood
from fastood import reference_cma as R
from fastood.losses import cma_loss
from bench.common import dense_fp16_peak, median_time, peak_extra_memory, provenance, write_results

D = 512
K = 1000
LAM = 0.001
SCALE = 100.0


def candidates(device: str, with_compile: bool) -> dict[str, Callable]:
    def eager(x, t, s, labels):
        return R.cma_loss(x, t, s, lam=LAM, labels=labels)

    cands: dict[str, Callable] = {"eager": eager}
    if with_compile:
        compiled = torch.compile(eager, dynamic=False)
        cands["torch.compile"] = lambda x, t, s, labels: compiled(x, t, s, labels)
    if device == "cuda" and fastood.backends()["triton"]:
        cands["fastood-triton"] = lambda x, t, s, labels: cma_loss(x, t, s, lam=LAM, labels=labels, backend="triton")
    cands["fastood-torch"] = lambda x, t, s, labels: cma_loss(x, t, s, lam=LAM, labels=labels, backend="torch")
    return cands


def _inputs(B: int, N: int, pair: bool, dtype: torch.dtype, device: str, gen: torch.Generator):
    """Realistic features: texts near their images (the diagonal dominates), unequal norms."""
    t = torch.randn(N, D, generator=gen)
    if pair:
        labels = None
        x = t + 0.8 * torch.randn(B, D, generator=gen)
    else:
        labels = torch.randint(0, N, (B,), generator=gen)
        x = t[labels] + 0.8 * torch.randn(B, D, generator=gen)
        labels = labels.to(device)
    x = x.to(device, dtype).requires_grad_()
    t = t.to(device, dtype).requires_grad_()
    s = torch.tensor(SCALE, device=device).requires_grad_()
    return x, t, s, labels


def _step(fn: Callable, x, t, s, labels) -> torch.Tensor:
    x.grad = t.grad = s.grad = None
    loss = fn(x, t, s, labels)
    loss.backward()
    return loss


def _truth(x, t, s, labels):
    """float64 loss and ∂image on the same (rounded) inputs, by fastood's chunked torch path
    (tested against the float64 reference in tests/test_cma_loss.py; bounded memory at any B)."""
    x64, t64, s64 = (v.detach().double().requires_grad_() for v in (x, t, s))
    loss = cma_loss(x64, t64, s64, lam=LAM, labels=labels, backend="torch")
    (gx,) = torch.autograd.grad(loss, (x64,))
    return loss.detach(), gx


def run(device: str, cases: list[tuple[str, int, int]], dtypes: list[torch.dtype], with_compile: bool,
        budget_s: float) -> tuple[dict, list[dict], str]:
    meta = provenance(device)
    meta["shapes"] = f"D={D}, λ={LAM}, s={SCALE}, normalize=True; fwd+bwd with grads for image, text and logit_scale"
    peak = dense_fp16_peak(meta["device"]) if device == "cuda" else None
    rows: list[dict] = []
    cands = candidates(device, with_compile)
    gen = torch.Generator().manual_seed(0)
    for mode, B, N in cases:
        for dtype in dtypes:
            x, t, s, labels = _inputs(B, N, mode == "pair", dtype, device, gen)
            truth_loss, truth_gx = _truth(x, t, s, labels)
            for name, fn in cands.items():
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
                base = {"method": name, "mode": mode, "B": B, "N": N, "D": D, "dtype": str(dtype).split(".")[-1]}
                try:
                    t_fb = median_time(lambda: _step(fn, x, t, s, labels), device, budget_s=budget_s)
                    with torch.no_grad():
                        t_f = median_time(lambda: fn(x, t, s, labels), device, budget_s=budget_s)
                    mem = peak_extra_memory(lambda: _step(fn, x, t, s, labels), device)
                    loss = _step(fn, x, t, s, labels)
                except (RuntimeError, torch.OutOfMemoryError) as exc:  # e.g. OOM of a baseline
                    rows.append({**base, "error": str(exc)[:200]})
                    print(_fmt_row(rows[-1]), flush=True)
                    continue
                flops = 6.0 * B * N * D
                row = {
                    **base,
                    "fwd_bwd_ms": t_fb * 1e3,
                    "fwd_ms": t_f * 1e3,
                    "peak_extra_MB": None if mem is None else mem / 2**20,
                    "TFLOPs": flops / t_fb / 1e12,
                    "loss_abs_err": abs(loss.detach().double().item() - truth_loss.item()),
                    "dimage_rel_err": ((x.grad.double() - truth_gx).abs().max() / truth_gx.abs().max()).item(),
                }
                if peak is not None:
                    row["pct_fp16_peak"] = 100.0 * row["TFLOPs"] / peak
                rows.append(row)
                print(_fmt_row(row), flush=True)
            del x, t, s, labels, truth_gx
    return meta, rows, to_markdown(meta, rows)


def _fmt_row(r: dict) -> str:
    head = f"{r['method']:>15} {r['mode']:<5} B={r['B']:<6} N={r['N']:<6} {r['dtype']:<8}"
    if "error" in r:
        return f"{head} ERROR {r['error']}"
    mem = "n/a" if r["peak_extra_MB"] is None else f"{r['peak_extra_MB']:.1f}"
    return (f"{head} fwd+bwd {r['fwd_bwd_ms']:9.2f} ms  fwd {r['fwd_ms']:8.2f} ms  {mem:>9} MB  "
            f"{r['TFLOPs']:.2f} TFLOP/s  loss err {r['loss_abs_err']:.1e}  dimage rel err {r['dimage_rel_err']:.1e}")


def to_markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        "# CMA loss benchmark (forward + backward)",
        "",
        f"- device: {meta['device']}",
        f"- date: {meta['date']}; commit: {meta['commit']}; torch {meta['torch']}; triton {meta['triton']}",
        f"- {meta['shapes']}",
        "- median of repeated runs; peak memory beyond the live inputs (gradients included);",
        "  TFLOP/s counts 6·B·N·D model FLOPs; errors against float64 on the same inputs",
        "",
        "| method | mode | B | N | dtype | fwd+bwd ms | fwd ms | peak extra MB | TFLOP/s | % fp16 peak | speed-up vs eager | loss abs err | ∂image rel err |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    eager = {(r["mode"], r["B"], r["N"], r["dtype"]): r["fwd_bwd_ms"] for r in rows if r["method"] == "eager" and "error" not in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['mode']} | {r['B']} | {r['N']} | {r['dtype']} | error: {r['error'][:60]} | | | | | | | |")
            continue
        key = (r["mode"], r["B"], r["N"], r["dtype"])
        sp = f"{eager[key] / r['fwd_bwd_ms']:.2f}×" if key in eager else ""
        mem = "n/a" if r["peak_extra_MB"] is None else f"{r['peak_extra_MB']:.1f}"
        pct = f"{r['pct_fp16_peak']:.1f}" if "pct_fp16_peak" in r else ""
        lines.append(
            f"| {r['method']} | {r['mode']} | {r['B']} | {r['N']} | {r['dtype']} | {r['fwd_bwd_ms']:.2f} | {r['fwd_ms']:.2f} | "
            f"{mem} | {r['TFLOPs']:.2f} | {pct} | {sp} | {r['loss_abs_err']:.1e} | {r['dimage_rel_err']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(args) -> None:
    device = getattr(args, "device", "cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible")
    if getattr(args, "quick", False):
        cases = [("pair", 512, 512), ("class", 512, K)]
        dtypes = [torch.float32]
    elif device == "cuda":
        cases = [("pair", 512, 512), ("pair", 4096, 4096), ("pair", 32768, 32768), ("class", 4096, K)]
        dtypes = [torch.float16, torch.float32]
    else:  # B = 32768 eager needs ~20 GB of logits and minutes per step on a CPU: opt in with --batches
        cases = [("pair", 512, 512), ("pair", 4096, 4096), ("class", 4096, K)]
        dtypes = [torch.float32]
    batches = getattr(args, "batches", None)
    if batches:
        cases = [("pair", b, b) for b in batches] + [("class", b, K) for b in batches]
    with_compile = bool(getattr(args, "compile", False)) or device == "cuda"
    meta, rows, md = run(device, cases, dtypes, with_compile, budget_s=getattr(args, "budget", 2.0))
    json_path, md_path = write_results("cma", device, meta, rows, md)
    print(f"\nwrote {json_path} and {md_path}")
