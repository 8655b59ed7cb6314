"""Build and run fastood's CUDA kernels on the CPU emulator (csrc/cuda/testing/).

The kernels in ``csrc/cuda/*.cu`` are compiled by g++ exactly as written, except that
each ``kernel<<<grid, block, smem, stream>>>(args)`` launch is rewritten into
``fastood_emu::launch(grid, block, smem, stream, [&] { kernel(args); })`` (plain C++
has no launch syntax). ``csrc/cuda/testing/`` supplies ``<cuda_runtime.h>`` and
``<mma.h>`` for the host compiler and the thread model (``fastood_emu.h``).

Variants: ``plain`` (-O2), ``tsan`` (ThreadSanitizer: a missing ``__syncthreads`` is a
reported data race), ``asan`` (AddressSanitizer + UBSan: out-of-bounds global accesses
against exact-size buffers, misaligned vector loads, integer overflow).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from fastood.ops._cuda_segment_lse import _DTYPE_NAMES, _rows

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
EMU_DIR = CUDA_DIR / "testing"

# kernel (optionally with template arguments) <<<config>>> (arguments);
_LAUNCH = re.compile(r"(?P<kernel>[A-Za-z_][\w:]*(?:<[^<>;]*>)?)<<<(?P<cfg>.*?)>>>\((?P<args>.*?)\);", re.S)

# -ffp-contract=off: g++ must not fuse a product and a sum into one FMA where nvcc would
# not (the kernels use __fmul_rn where the rounding matters), so the emulated arithmetic
# rounds where the kernel's source says it does.
FLAGS = {
    "plain": ["-O2"],
    "tsan": ["-O1", "-fsanitize=thread"],
    "asan": ["-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"],
}


def cuda_include() -> Path | None:
    """The CUDA toolkit's include folder (for cuda_fp16.h, cuda_runtime_api.h), or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parents[1]))
    for c in candidates:
        if c and (Path(c) / "include" / "cuda_fp16.h").is_file() and (Path(c) / "include" / "cuda_runtime_api.h").is_file():
            return Path(c) / "include"
    return None


def available() -> bool:
    return cuda_include() is not None and shutil.which("g++") is not None


def _split_top_level(s: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in "(<[{":
            depth += 1
        elif ch in ")>]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def rewrite_launches(source: str) -> tuple[str, int]:
    """``source`` with every ``<<<…>>>`` launch turned into ``fastood_emu::launch``."""

    def sub(m: re.Match) -> str:
        cfg = _split_top_level(m.group("cfg"))
        if not 2 <= len(cfg) <= 4:
            raise ValueError(f"cannot parse the launch configuration <<<{m.group('cfg')}>>>")
        cfg += ["0", "nullptr"][len(cfg) - 2 :]
        return f"::fastood_emu::launch({', '.join(cfg)}, [&] {{ {m.group('kernel')}({m.group('args')}); }});"

    out, n = _LAUNCH.subn(sub, source)
    if n != source.count("<<<"):
        raise ValueError(f"rewrote {n} launches but the source has {source.count('<<<')} '<<<'")
    return out, n


def _kernel_sources(out_dir: Path, edit=None) -> list[Path]:
    """The emulator runtime and every csrc/cuda/*.cu with its launches rewritten."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = [EMU_DIR / "fastood_emu.cpp"]
    for cu in sorted(CUDA_DIR.glob("*.cu")):
        text = cu.read_text()
        if edit is not None:
            text = edit(cu.name, text)
        text, _ = rewrite_launches(text)
        dst = out_dir / (cu.stem + ".emu.cpp")
        dst.write_text(f'#line 1 "{cu}"\n' + text)
        sources.append(dst)
    return sources


def _compile(cmd_tail: list[str], variant: str, what: str) -> None:
    inc = cuda_include()
    if inc is None:
        raise RuntimeError("the CUDA headers (cuda_fp16.h) were not found")
    cmd = ["g++", "-std=c++20", "-g", "-pthread", "-fno-strict-aliasing", "-ffp-contract=off", "-Wall",
           "-Wno-unknown-pragmas",
           *FLAGS[variant], "-I", str(EMU_DIR), "-I", str(CUDA_DIR), "-I", str(ROOT / "csrc"), "-I", str(inc), *cmd_tail]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"building {what} ({variant}) failed:\n{' '.join(cmd)}\n{proc.stderr[-6000:]}")


def build(out_dir: Path, variant: str = "plain", edit=None) -> Path:
    """Compile the emulated kernels and the driver (csrc/cuda/testing/emu_driver.cpp).

    ``edit(name, text) -> text``, when given, changes a kernel source first (the tests'
    negative controls: a deleted barrier must be caught, an unguarded load must be caught).
    """
    sources = [EMU_DIR / "emu_driver.cpp", *_kernel_sources(out_dir, edit)]
    exe = out_dir / f"emu_driver_{variant}"
    _compile([*map(str, sources), "-o", str(exe)], variant, "the emulator")
    return exe


def build_plugin(out_dir: Path, variant: str = "plain") -> tuple[Path, Path]:
    """``(harness, plugin)``: the TensorRT plugin (csrc/trt/) linked with the emulated kernels,
    against the stand-in TensorRT API and registry of csrc/trt/testing/, and its harness."""
    testing = ROOT / "csrc" / "trt" / "testing"
    lib = out_dir / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    # The stand-in headers first: NvInferRuntime.h includes <cuda_runtime.h>, the emulator's.
    stand_in = ["-I", str(testing)]
    _compile([*stand_in, "-shared", "-fPIC", str(testing / "registry_stub.cpp"), "-o", str(lib / "libnvinfer.so")],
             variant, "the stand-in libnvinfer")
    plugin = out_dir / "libfastood_trt_plugin.so"
    kernels = _kernel_sources(out_dir / "kernels")
    _compile([*stand_in, "-shared", "-fPIC", "-Werror", str(ROOT / "csrc" / "trt" / "segment_lse_score_plugin.cpp"),
              *map(str, kernels), "-o", str(plugin), "-L", str(lib), "-lnvinfer", "-Wl,--no-undefined"],
             variant, "the plugin")
    harness = out_dir / "plugin_harness"
    _compile([*stand_in, str(testing / "plugin_harness.cpp"), "-o", str(harness), "-L", str(lib), "-lnvinfer", "-ldl",
              f"-Wl,-rpath,{lib}"], variant, "the plugin harness")
    return harness, plugin


# --------------------------------------------------------------------------- running
def _raw_bytes(t: torch.Tensor) -> bytes:
    """Little-endian bytes of a contiguous CPU tensor (bf16 through its int16 bits)."""
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def _operand_bytes(t: torch.Tensor) -> tuple[bytes, int, int]:
    """(file bytes, leading elements, row stride) reproducing ``t``'s layout: the rows as
    torch stores them, from the first to the last element used, with the storage offset's
    misalignment (mod 8 elements) kept as leading elements before a 256-byte aligned base."""
    t, ld = _rows(t)
    rows, D = t.shape
    lead = t.storage_offset() % 8
    extent = (rows - 1) * ld + D
    storage = torch.empty(0, dtype=t.dtype).set_(t.untyped_storage())
    flat = storage[t.storage_offset() - lead : t.storage_offset() + extent]
    return _raw_bytes(flat), lead, ld


def _run(argv: list, work: Path, env_extra: dict | None = None, timeout: int = 600) -> None:
    """Run ``argv + [work]``; an EmulatorError with its stderr when it fails."""
    env = dict(os.environ)
    env.setdefault("TSAN_OPTIONS", "halt_on_error=1 exitcode=66")
    env.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    env.update(env_extra or {})
    proc = subprocess.run([*map(str, argv), str(work)], capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        why = proc.stderr[-8000:] or (f"killed by signal {-proc.returncode}" if proc.returncode < 0 else "")
        raise EmulatorError(proc.returncode, why)


class EmulatorError(RuntimeError):
    def __init__(self, code: int, stderr: str):
        super().__init__(f"emu_driver exited with {code}:\n{stderr}")
        self.code, self.stderr = code, stderr


def segment_lse(
    exe: Path, work: Path, x: torch.Tensor, bank: torch.Tensor, offsets, row_scale: torch.Tensor, *,
    want_argmax: bool = True, num_splits: int | None = None, sm_count: int = 132, seed: int | None = None,
    registers: int | None = None, static_smem: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
    """``(lse, max0, argmax0, (splits, chunk))`` of the emulated kernel (CPU tensors in).

    ``registers`` / ``static_smem``: what ptxas reports for the forward kernel, handed to
    the emulated occupancy API (``FASTOOD_EMU_REGS`` / ``FASTOOD_EMU_SMEM``), which the
    split planner asks for the resident blocks per SM; without them it answers 1.
    ``last_plan(work)`` then gives ``(splits, chunk, blocks_per_sm)``.
    """
    work.mkdir(parents=True, exist_ok=True)
    (xb, x_lead, ldx), (bb, b_lead, ldb) = _operand_bytes(x), _operand_bytes(bank)
    (work / "x.bin").write_bytes(xb)
    (work / "bank.bin").write_bytes(bb)
    off = torch.as_tensor(offsets, dtype=torch.int64)
    (work / "offsets.bin").write_bytes(_raw_bytes(off))
    (work / "row_scale.bin").write_bytes(_raw_bytes(row_scale.float()))
    B, D = x.shape
    S = off.numel() - 1
    args = dict(dtype=_DTYPE_NAMES[x.dtype], B=B, N=bank.shape[0], D=D, S=S, ldx=ldx, ldb=ldb, x_offset=x_lead,
                bank_offset=b_lead, argmax=int(want_argmax), splits=num_splits or 0, sm_count=sm_count)
    (work / "args.txt").write_text("".join(f"{k} {v}\n" for k, v in args.items()))
    env = {"FASTOOD_EMU_SEED": str(seed)} if seed is not None else {}
    if registers is not None:
        env["FASTOOD_EMU_REGS"] = str(int(registers))
    if static_smem is not None:
        env["FASTOOD_EMU_SMEM"] = str(int(static_smem))
    _run([exe, "segment_lse"], work, env)
    lse = torch.from_numpy(np.fromfile(work / "lse.bin", dtype=np.float32).reshape(B, S).copy())
    max0 = torch.from_numpy(np.fromfile(work / "max0.bin", dtype=np.float32).copy())
    arg = torch.from_numpy(np.fromfile(work / "argmax0.bin", dtype=np.int64).copy())
    splits, chunk, _ = last_plan(work)
    return lse, max0, arg, (splits, chunk)


def split_starts(exe: Path, work: Path, offsets, chunk: int, splits: int) -> torch.Tensor:
    """The first segment of each of ``splits`` column chunks of ``chunk`` (int32), from the
    emulated ``split_starts_kernel``."""
    work.mkdir(parents=True, exist_ok=True)
    off = torch.as_tensor(offsets, dtype=torch.int64)
    (work / "offsets.bin").write_bytes(_raw_bytes(off))
    (work / "args.txt").write_text(f"S {off.numel() - 1}\nchunk {chunk}\nsplits {splits}\n")
    _run([exe, "split_starts"], work)
    return torch.from_numpy(np.fromfile(work / "starts.bin", dtype=np.int32).copy())


def last_plan(work: Path) -> tuple[int, int, int]:
    """``(splits, chunk, blocks_per_sm)`` of the last ``segment_lse`` run in ``work``."""
    splits, chunk, per_sm = map(int, (work / "plan.txt").read_text().split())
    return splits, chunk, per_sm


def head_score(
    exe: Path, work: Path, x: torch.Tensor, bank: torch.Tensor, num_id: int, *, method: str = "neglabel",
    groups: int = 1, temperature: float = 0.01, normalize: bool = True, sm_count: int = 0,
    plugin: Path | None = None, max_batch: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(score f32, pred int32)`` of the emulated fused head (what the TensorRT plugin runs).

    With ``plugin``, ``exe`` is the plugin harness and the head runs through the plugin's
    TensorRT calls (``plugin_harness PLUGIN --enqueue``), for an engine profile whose
    largest batch is ``max_batch`` (default: this batch).
    """
    work.mkdir(parents=True, exist_ok=True)
    (work / "x.bin").write_bytes(_raw_bytes(x))
    (work / "bank.bin").write_bytes(_raw_bytes(bank))
    args = dict(dtype=_DTYPE_NAMES[x.dtype], B=x.shape[0], N=bank.shape[0], D=x.shape[1], method=method, num_id=num_id,
                groups=groups, temperature=repr(float(temperature)), normalize=int(normalize), sm_count=sm_count,
                max_batch=max_batch or x.shape[0])
    (work / "args.txt").write_text("".join(f"{k} {v}\n" for k, v in args.items()))
    if plugin is None:
        _run([exe, "head"], work)
    else:
        _run([exe, plugin, "--enqueue"], work)
    score = torch.from_numpy(np.fromfile(work / "score.bin", dtype=np.float32).copy())
    pred = torch.from_numpy(np.fromfile(work / "pred.bin", dtype=np.int32).copy())
    return score, pred
