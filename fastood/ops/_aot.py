"""Ahead-of-time compile checks of the Triton kernels: what ptxas and the SASS say.

Every kernel module listed in :data:`KERNEL_MODULES` defines ``aot_specs(arch, dtype,
*, full)`` (the contract is :mod:`fastood.ops._aot_spec`). :func:`compile_spec` turns one
:class:`~fastood.ops._aot_spec.AotSpec` into::

    triton.compile(ASTSource(fn, signature, constexprs, attrs),
                   target=GPUTarget("cuda", arch, 32), options={num_warps, num_stages, ...})

with ``attrs = {(i,): [["tt.divisibility", 16]]}`` for the arguments the JIT would mark as
16-byte aligned / divisible by 16 at a real launch (``spec.aligned``), so the compiled code
is the one a launch gets. No GPU is needed: Triton ships its own ``ptxas`` and
``cuobjdump``. From the compile it reads

* ptxas' ``-v`` report (registers, spill store/load bytes, stack frame, static smem;
  captured through Triton's ``dump_ptxas_log`` knob, or — when Triton's cache served the
  cubin and ptxas did not run — by running the bundled ptxas ``-v`` on the cached PTX);
* Triton's dynamic shared memory (``metadata.shared``);
* the SASS (``cuobjdump -sass`` on the cubin): the tensor-core family actually emitted
  (``HGMMA`` = ``wgmma.mma_async``, ``HMMA`` = ``mma.sync``) and per-opcode counts;

and derives resident blocks per SM and occupancy from the per-SM limits of
:data:`SM_LIMITS`:

    regs/warp   = ceil(regs · 32 / 256) · 256             (allocation unit: 256 registers)
    blocks_regs = floor(floor(65536 / regs/warp) / warps)
    blocks_smem = floor(smem_per_SM / (smem_block + 1 KB))  (1 KB reserved per block by the driver)
    blocks      = min(blocks_regs, blocks_smem, floor(max_threads / threads), max_blocks)
    occupancy   = blocks · warps / (max_threads / 32)

Compiled results are cached on disk only in Triton's own cache (``~/.triton/cache``).

Triton decorates kernels as interpreter functions when ``TRITON_INTERPRET=1`` (the test
suite's CPU mode), which cannot be compiled; :func:`compile_specs` therefore compiles in
worker processes started with ``TRITON_INTERPRET=0`` (``python -m fastood.ops._aot
--worker``), which also lets two of them run in parallel.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

__all__ = [
    "KERNEL_MODULES", "SM_LIMITS", "StaticReport", "collect", "compile_spec", "compile_specs",
    "occupancy", "parse_ptxas", "sass_opcodes", "mma_family",
]

# Modules whose kernels the dispatcher can launch. The last is optional (H2's Hopper kernel):
# collected when it imports and defines aot_specs.
KERNEL_MODULES: tuple[str, ...] = (
    "fastood.ops._triton_segment_lse",
    "fastood.ops._triton_cma",
    "fastood.ops._triton_segment_lse_sm90",
    "fastood.ops._triton_segment_lse_bwd",  # the fused backward (d/dx of segment_lse)
    "fastood.ops._triton_cma_sm90",  # Hopper CMA fwd/bwd (sm_90 fp16/bf16 only)
)
_OPTIONAL_MODULES = frozenset({"fastood.ops._triton_segment_lse_sm90"})

# Per-SM limits (CUDA C programming guide, "Compute capabilities" table).
SM_LIMITS: dict[int, dict[str, int]] = {
    90: dict(regs=65536, smem_sm=228 * 1024, smem_block=227 * 1024, threads=2048, blocks=32, reg_unit=256),
    80: dict(regs=65536, smem_sm=164 * 1024, smem_block=163 * 1024, threads=2048, blocks=32, reg_unit=256),
}
_RESERVED_SMEM = 1024  # per block, sm_80 and later

_DTYPES = ("float16", "bfloat16", "float32")


@dataclass
class StaticReport:
    """What ptxas and the SASS say about one compiled configuration."""

    name: str
    module: str
    arch: int
    dtype: str
    num_warps: int
    num_stages: int
    intended_mma: str
    main_loop: bool
    triton_version: str = ""
    registers: int = 0
    spill_stores: int = 0          # bytes per thread
    spill_loads: int = 0           # bytes per thread
    stack: int = 0                 # stack frame bytes per thread
    smem_static: int = 0           # bytes per block (ptxas / cuobjdump SHARED)
    smem_dynamic: int = 0          # bytes per block (Triton's metadata.shared)
    blocks_per_sm: int = 0
    occupancy: float = 0.0         # resident warps / max warps per SM
    limiter: str = ""              # "registers" | "smem" | "threads" | "blocks"
    mma: str = "none"              # tensor-core family found in the SASS: "wgmma" | "mma" | "none"
    opcodes: dict[str, int] = field(default_factory=dict)  # whole-kernel SASS opcode counts (static)
    compile_s: float = 0.0
    error: str | None = None
    sass: str | None = None        # the SASS text, when asked for (bench/sol.py)

    @property
    def spill_bytes(self) -> int:
        return self.spill_stores + self.spill_loads

    @property
    def smem(self) -> int:
        return self.smem_static + self.smem_dynamic

    def violations(self) -> list[str]:
        """The CI rules this configuration breaks (empty = passes)."""
        if self.error:
            return [f"does not compile: {self.error.splitlines()[0] if self.error else ''}"]
        out = []
        if self.dtype in ("float16", "bfloat16") and self.spill_bytes:
            out.append(f"spills {self.spill_stores} B stores + {self.spill_loads} B loads per thread")
        lim = SM_LIMITS[self.arch]["smem_block"]
        if self.smem > lim:
            out.append(f"shared memory {self.smem} B > {lim} B per block")
        if self.main_loop and self.intended_mma != "none" and self.mma != self.intended_mma:
            out.append(f"tensor-core path {self.mma!r}, expected {self.intended_mma!r}")
        if self.blocks_per_sm < 1:
            out.append("no block fits on an SM")
        return out


# ----------------------------------------------------------------------------- parsing
def parse_ptxas(log: str, kernel: str) -> dict[str, int]:
    """Registers, spill bytes, stack and static smem of ``kernel`` from a ptxas ``-v`` log."""
    out = dict(registers=0, spill_stores=0, spill_loads=0, stack=0, smem_static=0)
    # The log may hold several entry functions; keep the part after this kernel's header.
    part = log
    m = re.search(rf"Compiling entry function '{re.escape(kernel)}'", log)
    if m:
        part = log[m.end():]
        nxt = re.search(r"Compiling entry function", part)
        part = part[: nxt.start()] if nxt else part
    if m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", part):
        out["stack"], out["spill_stores"], out["spill_loads"] = map(int, m.groups())
    if m := re.search(r"Used (\d+) registers", part):
        out["registers"] = int(m.group(1))
    if m := re.search(r"(\d+) bytes smem", part):
        out["smem_static"] = int(m.group(1))
    return out


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Za-z0-9_]+)*)\s*([^;]*);")


def sass_instructions(sass: str) -> list[tuple[int, str, str, str]]:
    """``(address, opcode, modifiers, operands)`` for every instruction of a cuobjdump listing."""
    return [(int(a, 16), op, mods, ops.strip()) for a, _, op, mods, ops in _SASS_LINE.findall(sass)]


def sass_opcodes(sass: str) -> Counter:
    """Static opcode counts (base opcode, no modifiers) of a cuobjdump ``-sass`` listing."""
    return Counter(op for _, op, _, _ in sass_instructions(sass))


def mma_family(opcodes: dict[str, int]) -> str:
    """``"wgmma"`` when the SASS has HGMMA (Hopper warpgroup MMA), ``"mma"`` for HMMA, else ``"none"``."""
    if opcodes.get("HGMMA", 0):
        return "wgmma"
    if opcodes.get("HMMA", 0):
        return "mma"
    return "none"


def occupancy(arch: int, registers: int, smem: int, num_warps: int) -> tuple[int, float, str]:
    """Resident blocks per SM, occupancy (warps / max warps) and the limiting resource."""
    lim = SM_LIMITS[arch]
    threads = 32 * num_warps
    per_warp = math.ceil(max(registers, 1) * 32 / lim["reg_unit"]) * lim["reg_unit"]
    by = {
        "registers": (lim["regs"] // per_warp) // num_warps,
        "smem": lim["smem_sm"] // (smem + _RESERVED_SMEM) if smem <= lim["smem_block"] else 0,
        "threads": lim["threads"] // threads,
        "blocks": lim["blocks"],
    }
    limiter = min(by, key=lambda k: by[k])
    blocks = by[limiter]
    return blocks, blocks * num_warps / (lim["threads"] // 32), limiter


# ----------------------------------------------------------------------------- collection
def collect(arch: int, dtype: str, *, full: bool, modules: Iterable[str] = KERNEL_MODULES) -> list[tuple[str, Any]]:
    """``(module, AotSpec)`` for every configuration the listed modules declare.

    ``dtype`` is ``"float16"``, ``"bfloat16"`` or ``"float32"``. Optional modules that do not
    import (or do not define ``aot_specs``) are skipped; spec names must be unique.
    """
    import torch

    if arch not in SM_LIMITS:
        raise ValueError(f"arch must be one of {sorted(SM_LIMITS)}, got {arch!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    out: list[tuple[str, Any]] = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            if name in _OPTIONAL_MODULES:
                continue
            raise
        fn = getattr(mod, "aot_specs", None)
        if fn is None:
            if name in _OPTIONAL_MODULES:
                continue
            raise TypeError(f"{name} defines no aot_specs(arch, dtype, *, full)")
        out += [(name, s) for s in fn(arch, getattr(torch, dtype), full=full)]
    seen = Counter(f"{m}:{s.name}" for m, s in out)
    dup = [k for k, v in seen.items() if v > 1]
    if dup:
        raise ValueError(f"duplicate AotSpec names: {dup[:5]}")
    return out


# ----------------------------------------------------------------------------- compiling
def _tool(name: str) -> str:
    from triton import knobs

    return getattr(knobs.nvidia, name).path


def _run_ptxas(ptx: str, arch: int) -> str:
    """ptxas -v on ``ptx`` with Triton's own flags (used when Triton's cache skipped ptxas)."""
    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "k.ptx")
        src.write_text(ptx)
        res = subprocess.run([_tool("ptxas"), "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu}",
                              str(src), "-o", str(Path(tmp, "k.o"))], capture_output=True, text=True)
    return res.stderr + res.stdout


def disassemble(cubin: bytes) -> str:
    """``cuobjdump -sass`` of a cubin (Triton's bundled cuobjdump)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True)
    return res.stdout


def compile_spec(spec: Any, arch: int, *, dtype: str = "", module: str = "", want_sass: bool = False) -> StaticReport:
    """Compile one spec for ``GPUTarget("cuda", arch, 32)`` and read ptxas' report and the SASS.

    Must run in a process where Triton is not in interpreter mode (see the module docstring).
    A failed compile is reported in ``error``, not raised.
    """
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    if arch not in SM_LIMITS:
        raise ValueError(f"arch must be one of {sorted(SM_LIMITS)}, got {arch!r}")
    rep = StaticReport(name=spec.name, module=module, arch=arch, dtype=dtype, num_warps=spec.num_warps,
                       num_stages=spec.num_stages, intended_mma=spec.intended_mma, main_loop=spec.main_loop,
                       triton_version=triton.__version__)
    if not isinstance(spec.fn, JITFunction):
        raise TypeError(f"{spec.name}: spec.fn must be a triton JITFunction (TRITON_INTERPRET=1 makes interpreter "
                        f"functions: compile with compile_specs(), which uses TRITON_INTERPRET=0 workers)")
    names = spec.fn.arg_names
    missing = set(names) - set(spec.signature) - set(spec.constexprs)
    if missing:
        raise ValueError(f"{spec.name}: signature/constexprs lack {sorted(missing)}")
    sig = {k: ("constexpr" if k in spec.constexprs else spec.signature[k]) for k in names}
    attrs = {(names.index(k),): [["tt.divisibility", 16]] for k in spec.aligned}
    src = ASTSource(spec.fn, sig, dict(spec.constexprs), attrs)
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages, **spec.extra_options}
    log = io.StringIO()
    t0 = time.perf_counter()
    # Triton >= 3.4 prints ptxas' -v report to stdout with this knob; older versions (or a
    # cache hit) leave the log empty and ptxas is run on the PTX below.
    scope = knobs.nvidia.scope() if hasattr(knobs.nvidia, "scope") else contextlib.nullcontext()
    try:
        with scope:
            try:
                knobs.nvidia.dump_ptxas_log = True
            except (AttributeError, TypeError):
                pass
            with contextlib.redirect_stdout(log):
                kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as e:  # noqa: BLE001 - reported, the table shows it
        rep.error = f"{type(e).__name__}: {e}"[:2000]
        rep.compile_s = time.perf_counter() - t0
        return rep
    text = log.getvalue()
    kname = kernel.metadata.name
    if f"Compiling entry function '{kname}'" not in text:  # served from Triton's cache
        text = _run_ptxas(kernel.asm["ptx"], arch)
    rep.compile_s = time.perf_counter() - t0
    for k, v in parse_ptxas(text, kname).items():
        setattr(rep, k, v)
    rep.smem_dynamic = int(kernel.metadata.shared)
    sass = disassemble(kernel.asm["cubin"])
    ops = sass_opcodes(sass)
    rep.opcodes = dict(ops)
    rep.mma = mma_family(ops)
    rep.blocks_per_sm, rep.occupancy, rep.limiter = occupancy(arch, rep.registers, rep.smem, spec.num_warps)
    if want_sass:
        rep.sass = sass
    return rep


def _worker(jobs: list[dict]) -> list[dict]:
    """Compile ``jobs`` ({module, arch, dtype, full, name, want_sass}) in this (non-interpreter) process."""
    cache: dict[tuple, dict[str, Any] | str] = {}
    out = []
    for j in jobs:
        key = (j["module"], j["arch"], j["dtype"], j["full"])
        if key not in cache:
            try:
                cache[key] = {s.name: s for _, s in collect(j["arch"], j["dtype"], full=j["full"],
                                                            modules=[j["module"]])}
            except Exception as e:  # noqa: BLE001 - a module that cannot declare its specs fails its jobs, not all
                cache[key] = f"{j['module']}.aot_specs failed: {type(e).__name__}: {e}"
        specs = cache[key]
        spec = specs.get(j["name"]) if isinstance(specs, dict) else None
        if spec is None:
            err = specs if isinstance(specs, str) else f"{j['module']} no longer declares {j['name']!r}"
            out.append(asdict(StaticReport(name=j["name"], module=j["module"], arch=j["arch"], dtype=j["dtype"],
                                           num_warps=0, num_stages=0, intended_mma="none", main_loop=False,
                                           error=err)))
            continue
        try:
            rep = compile_spec(spec, j["arch"], dtype=j["dtype"], module=j["module"],
                               want_sass=j.get("want_sass", False))
        except Exception as e:  # noqa: BLE001 - a malformed spec is reported as that spec's error
            rep = StaticReport(name=spec.name, module=j["module"], arch=j["arch"], dtype=j["dtype"],
                               num_warps=spec.num_warps, num_stages=spec.num_stages, intended_mma=spec.intended_mma,
                               main_loop=spec.main_loop, error=f"{type(e).__name__}: {e}")
        out.append(asdict(rep))
    return out


def compile_specs(
    arch: int,
    dtypes: Iterable[str],
    *,
    full: bool,
    modules: Iterable[str] = KERNEL_MODULES,
    select: Any = None,
    jobs: int = 2,
    want_sass: bool = False,
    timeout: float | None = None,
) -> list[StaticReport]:
    """Compile every spec of ``modules`` for ``arch`` × ``dtypes`` in ``jobs`` worker processes.

    ``select(module, spec) -> bool`` keeps a subset. The workers run
    ``python -m fastood.ops._aot --worker`` with ``TRITON_INTERPRET=0`` (the calling process
    may be in interpreter mode); reports come back in the order of the specs.
    """
    modules = list(modules)
    dtypes = list(dtypes)
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    todo = []
    for dt in dtypes:
        for mod, spec in _collect_names(arch, dt, full, modules):
            if select is None or select(mod, spec):
                todo.append(dict(module=mod, arch=arch, dtype=dt, full=full, name=spec.name, want_sass=want_sass))
    if not todo:
        return []
    jobs = min(jobs, len(todo))
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=os.pathsep.join(
        [str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    procs = []
    for w in range(jobs):
        part = todo[w::jobs]  # interleaved: the expensive kernels spread over the workers
        p = subprocess.Popen([sys.executable, "-m", "fastood.ops._aot", "--worker"], cwd=root, env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append((p, part))
    results: dict[int, list[dict]] = {}
    errors = []
    for w, (p, part) in enumerate(procs):
        try:
            out, err = p.communicate(json.dumps(part), timeout=timeout)
        except subprocess.TimeoutExpired:
            for q, _ in procs:
                q.kill()
            raise
        if p.returncode != 0:
            errors.append(f"worker {w} exited {p.returncode}: {err[-3000:]}")
            continue
        results[w] = json.loads(out.strip().splitlines()[-1])
    if errors:
        raise RuntimeError("\n".join(errors))
    merged: list[StaticReport] = [None] * len(todo)  # type: ignore[list-item]
    for w, reps in results.items():
        for i, r in enumerate(reps):
            merged[w + i * jobs] = StaticReport(**r)
    return merged


def _collect_names(arch: int, dtype: str, full: bool, modules: list[str]) -> list[tuple[str, Any]]:
    """The specs' (module, spec) list without compiling; works in interpreter mode too."""
    return collect(arch, dtype, full=full, modules=modules)


def _main(argv: list[str]) -> None:
    if argv[:1] == ["--worker"]:
        jobs = json.loads(sys.stdin.read())
        res = _worker(jobs)
        sys.stdout.write("\n" + json.dumps(res) + "\n")
        return
    raise SystemExit("usage: python -m fastood.ops._aot --worker < jobs.json   (use python -m bench static)")


if __name__ == "__main__":
    _main(sys.argv[1:])
