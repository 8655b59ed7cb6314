"""Trainer throughput: ``python -m bench train [--device cpu|cuda] [--quick] [--batches B ...]``.

The real trainer (:class:`fastood.train.Trainer`: data loading from a synthetic
ImageFolder, seeded crops, forward, loss, backward, AdamW) on the same model, with
the loss swapped:

- ``fastood-cma``   ``fastood.nn.CMALoss(lam=0.001, gather=True)`` — the fused loss;
- ``open_clip``     ``open_clip.loss.ClipLoss`` (global batch, ``gather_with_grad``)
                    on normalised features — CLIP's loss, what open_clip trains with.

Reported per (loss, global batch B): median images/s over the measured steps (the
trainer's own per-step timing, data loading included), median step time, and the
loss alone (forward + backward on random features of the same B × D, no model), so
the loss's share of a step is visible. Candidates run in interleaved rounds (the
machine may be shared). The model is small on the CPU (a shrunk ViT-B-32, random
weights); on CUDA a random-weight ViT-B-16 at 224 px.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import median_time, provenance, write_results

LOSSES = ("fastood-cma", "open_clip")
CPU_MODEL = ("ViT-B-32", {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "patch_size": 16, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
})
CUDA_MODEL = ("ViT-B-16", {})


def _synthetic_imagefolder(root: Path, num: int, size: int, classes: int = 8) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(num):
        folder = root / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, 3)
        pixels = np.clip(base + rng.normal(0, 30, (size + 8, size + 8, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def _loss_only(loss: str, B: int, D: int, device: str, budget_s: float) -> float:
    """Median seconds of forward + backward of the loss alone on (B, D) raw features."""
    from fastood.nn import CMALoss
    from fastood.train.trainer import _OpenClipLoss

    gen = torch.Generator().manual_seed(0)
    t = torch.randn(B, D, generator=gen)
    x = (t + 0.8 * torch.randn(B, D, generator=gen)).to(device).requires_grad_()
    t = t.to(device).requires_grad_()
    s = torch.tensor(100.0, device=device).requires_grad_()
    fn = CMALoss(lam=0.001, gather=True) if loss == "fastood-cma" else _OpenClipLoss(0, 1)

    def step():
        x.grad = t.grad = s.grad = None
        fn(x, t, s).backward()

    return median_time(step, device, budget_s=budget_s)


def _run_trainer(loss: str, data: Path, out: Path, B: int, steps: int, warm: int, device: str) -> list[float]:
    """Per-step seconds of the measured steps of one short run."""
    import csv

    from fastood.train import TrainConfig, Trainer

    name, kwargs = CPU_MODEL if device == "cpu" else CUDA_MODEL
    cfg = TrainConfig(data=str(data), out=str(out), model=name, pretrained="none", model_kwargs=kwargs,
                      loss="cma" if loss == "fastood-cma" else "clip", lam=0.001 if loss == "fastood-cma" else 0.0,
                      batch_size=B, max_steps=warm + steps, warmup=1, lr=1e-5, save_every=0, progress=False,
                      device=device, workers=0 if device == "cpu" else 8,
                      precision="fp32" if device == "cpu" else "bf16")
    trainer = Trainer(cfg)
    try:
        trainer.run()
    finally:
        trainer.close()
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))[warm:]
    return [int(r["images"]) / float(r["images_per_s"]) for r in rows]


def main(args) -> None:
    device = getattr(args, "device", "cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible")
    if device == "cpu":
        # One thread by default: on a shared CPU, OpenMP threads stall at every barrier while another
        # process holds a core (measured here: the same step 0.13 s with 1 thread, 0.4-1.9 s with 2).
        torch.set_num_threads(int(os.environ.get("FASTOOD_BENCH_THREADS", "1")))
    quick = bool(getattr(args, "quick", False))
    batches = getattr(args, "batches", None) or ([32] if quick else ([64, 256] if device == "cpu" else [256, 1024]))
    steps, warm, rounds = (2, 1, 1) if quick else (4, 1, 3)
    name, kwargs = CPU_MODEL if device == "cpu" else CUDA_MODEL
    D = kwargs.get("embed_dim", 512)
    size = kwargs.get("vision_cfg", {}).get("image_size", 224)
    meta = provenance(device)
    load_start = os.getloadavg()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fastood-bench-train-") as tmp:
        tmp = Path(tmp)
        for B in batches:
            data = _synthetic_imagefolder(tmp / f"data{B}", num=max(2 * B, 64), size=size)
            times: dict[str, list[float]] = {loss: [] for loss in LOSSES}
            for r in range(rounds):
                for loss in LOSSES:
                    times[loss] += _run_trainer(loss, data, tmp / f"{loss}-{B}-{r}", B, steps, warm, device)
            for loss in LOSSES:
                step_s, best_s = statistics.median(times[loss]), min(times[loss])
                loss_s = _loss_only(loss, B, D, device, budget_s=getattr(args, "budget", 2.0))
                row = {"loss": loss, "B": B, "D": D, "images_per_s": B / step_s, "step_ms": step_s * 1e3,
                       "best_images_per_s": B / best_s, "best_step_ms": best_s * 1e3,
                       "loss_fwd_bwd_ms": loss_s * 1e3, "loss_share_pct": 100 * loss_s / best_s,
                       "measured_steps": len(times[loss])}
                rows.append(row)
                print(f"{loss:>12} B={B:<5} median {row['images_per_s']:8.1f} images/s (step {row['step_ms']:8.1f} ms)  "
                      f"best {row['best_images_per_s']:8.1f} images/s  loss alone {row['loss_fwd_bwd_ms']:8.2f} ms "
                      f"({row['loss_share_pct']:.1f} % of the best step)", flush=True)
    meta.update(
        model=f"{name} (random weights){' shrunk: ' + str(kwargs) if kwargs else ''}",
        image_size=size, embed_dim=D, precision="fp32" if device == "cpu" else "bf16 autocast",
        steps=f"{rounds} interleaved rounds × {steps} measured steps (after {warm} warm-up steps) per candidate",
        load_average=[round(v, 2) for v in load_start] and [[round(v, 2) for v in load_start],
                                                             [round(v, 2) for v in os.getloadavg()]],
        cpu_threads=torch.get_num_threads() if device == "cpu" else None,
    )
    md = to_markdown(meta, rows)
    json_path, md_path = write_results("train", device, meta, rows, md)
    print(f"\nwrote {json_path} and {md_path}")


def to_markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        "# Trainer throughput: fused CMA loss vs open_clip ClipLoss (same model, same data)",
        "",
        f"- device: {meta['device']}",
        f"- date: {meta['date']}; commit: {meta['commit']}; torch {meta['torch']}",
        f"- model: {meta['model']}; input {meta['image_size']} px; D = {meta['embed_dim']}; {meta['precision']}",
        "- the real trainer (fastood.train): synthetic ImageFolder (JPEG), seeded RandomResizedCrop, forward, "
        "loss, backward, AdamW; images/s from the trainer's per-step timing (data loading included)",
        f"- {meta['steps']}; load average at start / end {meta['load_average'][0]} / {meta['load_average'][1]} "
        "(a shared machine: read CPU numbers as rough)",
        "- 'loss alone': forward + backward of the loss on random (B, D) features, no model; its share is of "
        "the best step",
        "- speed-up from the best step times (the median is shown too: on a shared machine individual steps "
        "vary by up to 10×)",
        *([f"- {meta['cpu_threads']} CPU thread(s) (FASTOOD_BENCH_THREADS, default 1: on a shared CPU two OpenMP "
            "threads stall whenever another process holds a core)"] if meta.get("cpu_threads") else []),
        "",
        "| loss | global batch B | images/s (median step) | median step ms | images/s (best step) | best step ms | "
        "loss alone fwd+bwd ms | loss share | speed-up vs open_clip (best) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r["B"]: r["best_images_per_s"] for r in rows if r["loss"] == "open_clip"}
    for r in rows:
        sp = f"{r['best_images_per_s'] / base[r['B']]:.2f}×" if r["B"] in base else ""
        lines.append(f"| {r['loss']} | {r['B']} | {r['images_per_s']:.1f} | {r['step_ms']:.1f} | "
                     f"{r['best_images_per_s']:.1f} | {r['best_step_ms']:.1f} | "
                     f"{r['loss_fwd_bwd_ms']:.2f} | {r['loss_share_pct']:.1f} % | {sp} |")
    return "\n".join(lines) + "\n"
