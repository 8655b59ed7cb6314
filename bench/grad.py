"""``python -m bench grad``: the fused backward of the NegLabel score vs autograd through full logits.

Measures forward + backward of ``neglabel_score(x).sum()`` with respect to the image
features ``x`` (the attack / fine-tuning use case), NegLabel layout: K = 1,000 ID rows +
10,400 negatives in G = 100 groups (N = 11,400), D = 512, B = 1,024 (CPU and CUDA).

- ``fused[<backend>]``: ``fastood.ops.neglabel_score`` with ``x.requires_grad`` — the
  fused forward, then the fused backward that recomputes each tile's logits and
  accumulates ``Σ_j g·w_ij t_j`` (never the B×N logits);
- ``autograd_full_logits``: the same score in plain torch (normalise, ``x̂ @ bankᵀ / τ``,
  one ``logsumexp`` for ID and one reshaped ``logsumexp`` for the G groups, sigmoid,
  mean) and ``backward()``: autograd keeps the B×N logits and their softmax.

Each row: median seconds of forward + backward (``bench.common.median_time``), peak extra
memory of one call (``peak_extra_memory``: RSS high-water mark on CPU, the caching
allocator's peak on CUDA) and the max |grad difference| to the autograd baseline.
The speed-up and memory ratio are against ``autograd_full_logits`` (issue 13 target on
CPU: ≥ 2× faster, ≥ 5× less peak memory). Writes ``bench/results/grad-<device>.{json,md}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bench.common import median_time, peak_extra_memory, provenance, write_results

K_ID = 1000
TAU = 0.01


def autograd_neglabel(x: torch.Tensor, bank: torch.Tensor, num_id: int, groups: int, tau: float) -> torch.Tensor:
    """The NegLabel score with every intermediate materialised (B×N logits), for autograd."""
    xh = x / torch.linalg.vector_norm(x, dim=1, keepdim=True)
    logits = (xh @ bank.T) / tau
    m = (bank.shape[0] - num_id) // groups
    lse_id = torch.logsumexp(logits[:, :num_id], dim=1)
    lse_g = torch.logsumexp(logits[:, num_id: num_id + groups * m].reshape(x.shape[0], groups, m), dim=2)
    return torch.sigmoid(lse_id[:, None] - lse_g).mean(dim=1)


def _case(batch: int, n_bank: int, dim: int, device: str, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    bank = torch.nn.functional.normalize(torch.randn(n_bank, dim, generator=g), dim=1)
    # features near the bank (mid-range scores: a non-vanishing gradient at τ = 0.01)
    x = bank[torch.randint(0, n_bank, (batch,), generator=g)] + 0.5 * torch.randn(batch, dim, generator=g) / dim**0.5
    return x.to(device, dtype), bank.to(device, dtype)


def run(batch: int = 1024, n_bank: int = 11_400, groups: int = 100, dim: int = 512, *, device: str = "cpu",
        dtype: torch.dtype = torch.float32, backends: tuple[str, ...] | None = None, repeats: int = 3,
        budget_s: float = 2.0, num_id: int | None = None, out: Path | None = None) -> list[dict]:
    """Measure every method; returns the rows (fused ones first). ``out``: also dump them as JSON there."""
    import fastood.ops as F
    from fastood._backends import backends as available

    num_id = min(K_ID, n_bank // 4) if num_id is None else num_id
    if backends is None:
        backends = ("triton", "torch") if device == "cuda" else ("cpu", "torch")
    backends = tuple(b for b in backends if available()[b])
    x0, bank = _case(batch, n_bank, dim, device, dtype)

    def fused(be):
        def step():
            x = x0.clone().requires_grad_()
            F.neglabel_score(x, bank, num_id, groups=groups, temperature=TAU, backend=be).sum().backward()
            return x.grad
        return step

    def baseline():
        x = x0.clone().requires_grad_()
        autograd_neglabel(x, bank, num_id, groups, TAU).sum().backward()
        return x.grad

    ref = baseline()
    methods = [(f"fused[{b}]", fused(b)) for b in backends] + [("autograd_full_logits", baseline)]
    rows = []
    for name, fn in methods:
        grad = fn()
        rows.append({
            "method": name, "device": device, "dtype": str(dtype).replace("torch.", ""),
            "B": batch, "N": n_bank, "K": num_id, "G": groups, "D": dim,
            "seconds": median_time(fn, device, min_runs=repeats, budget_s=budget_s),
            "peak_bytes": peak_extra_memory(fn, device),
            "max_abs_grad_diff_vs_autograd": (grad.double() - ref.double()).abs().max().item(),
            "grad_scale": ref.double().abs().max().item(),
        })
    base = rows[-1]
    for r in rows:
        r["speedup_vs_autograd"] = base["seconds"] / r["seconds"]
        r["memory_ratio_vs_autograd"] = (base["peak_bytes"] / r["peak_bytes"]
                                         if r["peak_bytes"] and base["peak_bytes"] is not None else None)
    if out is not None:
        Path(out).write_text(json.dumps(rows, indent=1))
    return rows


def _markdown(meta: dict, rows: list[dict]) -> str:
    lines = [f"# bench grad — {meta['device']}", "",
             f"commit {meta['commit']}, {meta['date']}, torch {meta['torch']}, load before {meta['load_1min_before']}",
             "", "NegLabel score, forward + backward w.r.t. x (median s), peak extra memory of one call.", "",
             "| method | dtype | B | N | G | D | s | peak MiB | speed-up | memory ratio | max abs grad diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
        ratio = "n/a" if r["memory_ratio_vs_autograd"] is None else f"{r['memory_ratio_vs_autograd']:.1f}x"
        lines.append(f"| {r['method']} | {r['dtype']} | {r['B']} | {r['N']} | {r['G']} | {r['D']} | {r['seconds']:.4f} "
                     f"| {peak} | {r['speedup_vs_autograd']:.2f}x | {ratio} | {r['max_abs_grad_diff_vs_autograd']:.2e} |")
    return "\n".join(lines) + "\n"


def main(args) -> None:
    device = args.device
    meta = provenance(device)
    batch = 64 if args.quick else (args.batches[0] if args.batches else 1024)
    n_bank, groups = (1_400, 10) if args.quick else (11_400, 100)
    rows = run(batch, n_bank, groups, 512, device=device, budget_s=args.budget)
    if device == "cuda":
        rows += run(batch, n_bank, groups, 512, device=device, dtype=torch.float16, budget_s=args.budget)
    md = _markdown(meta, rows)
    write_results("grad" + ("-quick" if args.quick else ""), device, meta, rows, md)
    print(md)
