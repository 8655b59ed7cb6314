"""Timing, memory and provenance helpers shared by the benchmark suites."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Dense (no sparsity) fp16/bf16 tensor-core peaks in TFLOP/s, from NVIDIA's datasheets.
DENSE_FP16_PEAK_TFLOPS = {
    "H100 SXM": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.4,  # HBM3 80 GB parts report "NVIDIA H100 80GB HBM3" (SXM)
    "H200": 989.4,
    "A100": 312.0,
    "L40S": 362.05,
    "L4": 121.0,
}


def dense_fp16_peak(device_name: str) -> float | None:
    for key, value in DENSE_FP16_PEAK_TFLOPS.items():
        if key in device_name:
            return value
    return None


def git_state() -> tuple[str, bool | None]:
    """``(short HEAD commit, whether tracked files differ from it)``; ("unknown", None) outside git.

    ``bench/results/`` does not count: a re-run rewrites the tracked result files suite by
    suite, and the code measured is the same whether or not earlier suites already wrote theirs."""
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results"], cwd=root, capture_output=True, text=True, timeout=10)
        if out.returncode != 0 or dirty.returncode != 0:
            return "unknown", None
        return out.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def git_commit() -> str:
    """HEAD's short hash, with ``-dirty`` when tracked files were modified."""
    sha, dirty = git_state()
    return sha + ("-dirty" if dirty else "")


def load_1min() -> float | None:
    """The 1-minute load average (None where the OS has none): timings taken on a loaded
    machine are noisy, so every result records it before and after the measurements."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def device_slug(device: str) -> str:
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu-{torch.get_num_threads()}t"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def provenance(device: str) -> dict:
    sha, dirty = git_state()
    info = {
        "device": device_name(device),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": sha + ("-dirty" if dirty else ""),
        "commit_sha": sha,
        "dirty": dirty,
        "load_1min_before": load_1min(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def official_style_encoder(model: torch.nn.Module, device: str, *, fp16: bool | None = None
                           ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``pixels -> fp32 image features`` as the official NegLabel code runs CLIP.

    It loads the model with ``clip.load``, which keeps the weights in fp16 on CUDA (fp32
    on CPU), feeds the image tower fp16 pixels, then casts the features to fp32 before
    scoring. On CUDA this returns an fp16 copy of ``model`` (the caller's model is left
    as it is); on CPU the fp32 model itself. (OpenAI CLIP also runs its LayerNorms in
    fp32 inside the fp16 model; open_clip's ``half()`` keeps them in fp16 — the compute
    is the same to within those few elementwise kernels.) ``fp16`` overrides the choice
    (tests run the fp16 path on CPU).
    """
    if fp16 if fp16 is not None else device == "cuda":
        import copy

        half = copy.deepcopy(model).half().eval()

        @torch.no_grad()
        def encode(pixels: torch.Tensor) -> torch.Tensor:
            return half.encode_image(pixels.to(device=device, dtype=torch.float16)).float()

        return encode

    @torch.no_grad()
    def encode32(pixels: torch.Tensor) -> torch.Tensor:
        return model.encode_image(pixels.to(device)).float()

    return encode32


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], device: str, *, min_runs: int = 3, max_runs: int = 50, budget_s: float = 2.0) -> float:
    """Median wall time in seconds over repeated runs after one warm-up."""
    fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rss_peak_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _rss_now_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _mallopt(mmap_threshold: int, trim_threshold: int) -> bool:
    """Fix glibc's mmap / trim thresholds (False where this is not glibc)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return libc.mallopt(m_mmap_threshold, mmap_threshold) == 1 and libc.mallopt(m_trim_threshold, trim_threshold) == 1
    except (OSError, AttributeError):
        return False


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def steady_state_allocator() -> str:
    """Put glibc's allocator in the state a warmed-up process reaches by itself, for timing.

    glibc raises its mmap threshold dynamically (up to 32 MiB on 64-bit, trim threshold
    twice that) after the first large free; fixing it there from the start makes every
    candidate — baselines included — time against the same allocator behaviour.
    Returns a description for the results' provenance.
    """
    ok = _mallopt(32 << 20, 64 << 20)
    return "glibc mmap threshold 32 MiB, trim 64 MiB (steady state)" if ok else "allocator defaults"


def peak_extra_memory(fn: Callable[[], object], device: str) -> int | None:
    """Peak memory one call allocates beyond what was live before it (bytes).

    CUDA: the caching allocator's peak. CPU (Linux): the resident-set high-water
    mark, reset through /proc/self/clear_refs; None where that is unavailable.
    During the CPU measurement every buffer above 1 MiB is its own mmap (returned to
    the OS on free, so visible in RSS and not hidden in a heap left from earlier
    calls); the steady-state thresholds are restored afterwards for timing.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    if not Path("/proc/self/clear_refs").exists():
        return None
    _mallopt(1 << 20, 1 << 20)
    _malloc_trim()  # give the pages of chunks freed during timing back, so reusing them shows in RSS
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        base = _rss_now_bytes()
        fn()
        return max(0, _rss_peak_bytes() - base)
    finally:
        steady_state_allocator()


def write_results(name: str, device: str, meta: dict, rows: list[dict], markdown: str) -> tuple[Path, Path]:
    """Write ``<name>-<device>.json`` / ``.md``. The JSON's meta always carries the commit,
    whether the tree was dirty, and the 1-minute load average before (from ``provenance``,
    taken when the suite started) and after (now, once the measurements are done)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = RESULTS_DIR / f"{name}-{device_slug(device)}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    meta = dict(meta)
    if "commit_sha" not in meta or "dirty" not in meta:
        meta["commit_sha"], meta["dirty"] = git_state()
        meta.setdefault("commit", meta["commit_sha"] + ("-dirty" if meta["dirty"] else ""))
    meta.setdefault("load_1min_before", None)
    meta["load_1min_after"] = load_1min()
    payload = {"meta": meta, "rows": rows}
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, json_path)
    tmp = md_path.with_suffix(".md.tmp")
    tmp.write_text(markdown)
    os.replace(tmp, md_path)
    return json_path, md_path
