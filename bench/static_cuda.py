"""Static report of the CUDA C++ kernels: ``python -m bench static-cuda``.

Compiles every ``csrc/cuda/*.cu`` with nvcc (the flags CMake uses: C++17, ``-O3``, no
fast math) to a cubin for sm_80 and sm_90, with ``-Xptxas -v``, and reads for every
kernel (``__global__`` entry):

- ptxas' report: registers per thread, spill stores/loads (bytes), stack frame, static
  shared memory, barriers;
- the SASS (``cuobjdump -sass``, the toolkit's or the copy Triton ships): the
  tensor-core instruction family — ``HMMA`` (warp-level ``mma.sync``, Ampere style) or
  ``HGMMA`` (warp-group ``wgmma``, Hopper only) — and the counts of tensor-core,
  ``MUFU.EX2`` and FFMA/FMUL/FADD instructions in the whole kernel (static counts, not a
  per-tile model: that is ``bench/sol.py``);
- resident blocks per SM and occupancy, from the CUDA occupancy rules
  (``cuda_occupancy.h``): registers are allocated per warp in units of 256, a warp's
  registers come from one of the SM's 4 sub-partitions of 16,384; shared memory in units
  of 128 bytes plus 1 KB reserved per block out of the SM's carve-out (A100 164 KB,
  H100 228 KB); at most 2,048 threads (64 warps) and 32 blocks per SM.

Writes ``bench/results/static-cuda.md`` and ``.json`` with the commit, the date and the
nvcc version. Nothing here needs a GPU; ``tests/test_static_cuda.py`` checks the same
report in CI (every kernel compiles, spills as documented in ``DOCUMENTED_SPILL_BYTES``,
shared memory within the per-block limit, the pass-2 product is not contracted).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
RESULTS = ROOT / "bench" / "results"

ARCHS = (80, 90)

# Per-SM resources (CUDA C Programming Guide, "Technical Specifications per Compute
# Capability"; cuda_occupancy.h): registers, register sub-partitions, max threads,
# max blocks, shared memory carve-out, static per-block limit, reserved per block.
SM_LIMITS = {
    80: dict(regs=65536, partitions=4, threads=2048, blocks=32, smem=164 * 1024, static_smem=48 * 1024, reserved=1024),
    90: dict(regs=65536, partitions=4, threads=2048, blocks=32, smem=228 * 1024, static_smem=48 * 1024, reserved=1024),
}

# Threads per block each kernel is launched with (csrc/cuda/*.cu launch sites).
BLOCK_THREADS = {
    "segment_lse_fwd_half": 128,
    "segment_lse_fwd_f32": 128,
    "segment_lse_merge": 128,
    "split_starts_kernel": 128,
    "offsets_kernel": 128,
    "row_scale_kernel": 256,
    "score_kernel": 128,
}

# Spill bytes (stores) ptxas is documented to produce; any other kernel must spill 0.
# The fp32 SIMT tile keeps an 8 × 8 accumulator plus 24 prefetch registers per thread
# under the 255-register cap (it runs at 3 blocks/SM like the others); its small spill is
# a stack slot, not the main loop. (nvcc 13.0; see bench/results/static-cuda.md.)
DOCUMENTED_SPILL_BYTES = {
    ("segment_lse_fwd_f32", 80): 40,
    ("segment_lse_fwd_f32", 90): 16,
}


@dataclasses.dataclass
class KernelReport:
    """One ``__global__`` entry of one cubin."""

    source: str
    arch: int
    mangled: str
    name: str  # demangled, namespaces and parameter lists dropped
    base: str  # template name without arguments
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    smem: int
    barriers: int
    threads: int | None = None
    blocks_per_sm: int | None = None
    occupancy: float | None = None
    limiter: str | None = None
    tensor_core: str = "none"
    sass_counts: dict = dataclasses.field(default_factory=dict)


def find_tool(name: str) -> str | None:
    """A CUDA binary tool from the PATH, next to nvcc, or the copy Triton ships."""
    path = shutil.which(name)
    if path:
        return path
    nvcc = shutil.which("nvcc")
    candidates = []
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent / name)
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            candidates.append(Path(os.environ[env]) / "bin" / name)
    try:
        import triton

        candidates.append(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)
    except ImportError:
        pass
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


def nvcc_version() -> str:
    out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"release [\d.]+, V([\d.]+)", out)
    return m.group(1) if m else out.strip().splitlines()[-1]


def demangle(names: list[str]) -> list[str]:
    tool = shutil.which("c++filt")
    if tool is None or not names:
        return list(names)
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, timeout=60).stdout
    lines = out.splitlines()
    return lines if len(lines) == len(names) else list(names)


def _short(demangled: str) -> tuple[str, str]:
    """(name with template arguments, base name) of a demangled kernel signature."""
    sig = demangled.replace("(anonymous namespace)::", "")
    sig = re.sub(r"^void\s+", "", sig).split("(")[0]
    sig = sig.replace("fastood::cuda::", "")
    base = sig.split("<")[0].split("::")[-1]
    return sig.replace("__nv_bfloat16", "bf16").replace("__half", "fp16"), base


_ENTRY = re.compile(r"Compiling entry function '(?P<name>[^']+)' for 'sm_(?P<arch>\d+)'")
_SPILL = re.compile(r"(?P<stack>\d+) bytes stack frame, (?P<st>\d+) bytes spill stores, (?P<ld>\d+) bytes spill loads")
_USED = re.compile(r"Used (?P<regs>\d+) registers(?:, used (?P<bar>\d+) barriers)?(?P<rest>.*)")


def parse_ptxas(text: str, source: str) -> list[KernelReport]:
    """Kernel entries of one ``nvcc -Xptxas -v`` log."""
    out: list[KernelReport] = []
    cur: dict | None = None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            cur = {"mangled": m.group("name"), "arch": int(m.group("arch"))}
            continue
        if cur is None:
            continue
        m = _SPILL.search(line)
        if m:
            cur.update(stack=int(m.group("stack")), st=int(m.group("st")), ld=int(m.group("ld")))
            continue
        m = _USED.search(line)
        if m:
            smem = re.search(r"(\d+) bytes smem", m.group("rest"))
            out.append(KernelReport(
                source=source, arch=cur["arch"], mangled=cur["mangled"], name="", base="",
                registers=int(m.group("regs")), spill_stores=cur.get("st", 0), spill_loads=cur.get("ld", 0),
                stack=cur.get("stack", 0), smem=int(smem.group(1)) if smem else 0,
                barriers=int(m.group("bar") or 0),
            ))
            cur = None
    for k, d in zip(out, demangle([k.mangled for k in out])):
        k.name, k.base = _short(d)
    return out


def split_sass(text: str) -> dict[str, list[str]]:
    """``cuobjdump -sass`` output → {mangled function name: instruction lines}."""
    funcs: dict[str, list[str]] = {}
    cur: list[str] | None = None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            cur = funcs.setdefault(m.group(1), [])
            continue
        if cur is not None:
            m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;", line)
            if m:
                cur.append(m.group(1))
    return funcs


def opcode(instr: str) -> str:
    """The opcode (with modifiers) of one SASS instruction, predicate dropped."""
    parts = instr.split()
    if parts and parts[0].startswith("@"):
        parts = parts[1:]
    return parts[0] if parts else ""


def sass_counts(instrs: list[str]) -> dict[str, int]:
    counts = {"HMMA": 0, "HGMMA": 0, "MUFU.EX2": 0, "FFMA": 0, "FMUL": 0, "FADD": 0}
    for ins in instrs:
        op = opcode(ins)
        root = op.split(".")[0]
        if root in ("HMMA", "HGMMA", "FFMA", "FMUL", "FADD"):
            counts[root] += 1
        elif op.startswith("MUFU.EX2"):
            counts["MUFU.EX2"] += 1
    return counts


def tensor_core_family(counts: dict[str, int], instrs: list[str]) -> str:
    """``HGMMA``, ``HMMA.<shape>`` or ``none``."""
    if counts.get("HGMMA"):
        return "HGMMA"
    shapes = sorted({opcode(i).split(".")[1] for i in instrs if opcode(i).startswith("HMMA.")})
    return "HMMA." + "/".join(shapes) if shapes else "none"


def blocks_per_sm(arch: int, registers: int, smem: int, threads: int) -> tuple[int, str]:
    """Resident blocks per SM and the binding limit, by the CUDA occupancy rules."""
    lim = SM_LIMITS[arch]
    warps = math.ceil(threads / 32)
    per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256
    warps_by_regs = (lim["regs"] // lim["partitions"] // per_warp) * lim["partitions"]
    by_regs = warps_by_regs // warps
    by_threads = lim["threads"] // (warps * 32)
    by_smem = lim["smem"] // (math.ceil(smem / 128) * 128 + lim["reserved"]) if smem else lim["blocks"]
    limits = {"registers": by_regs, "threads": by_threads, "shared memory": by_smem, "blocks": lim["blocks"]}
    n = min(limits.values())
    return n, min(limits, key=lambda k: (limits[k], k != "registers"))


def compile_cubin(src: Path, arch: int, out_dir: Path) -> tuple[Path, str]:
    """``(cubin, ptxas -v log)`` of one source for ``sm_<arch>``."""
    cubin = out_dir / f"{src.stem}.sm{arch}.cubin"
    cmd = ["nvcc", "-std=c++17", "-O3", f"-arch=sm_{arch}", "-cubin", "-Xptxas", "-v", "-I", str(ROOT / "csrc"),
           str(src), "-o", str(cubin)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed on {src.name} for sm_{arch}:\n{proc.stderr[-4000:]}")
    return cubin, proc.stdout + proc.stderr


def disassemble(cubin: Path) -> dict[str, list[str]]:
    tool = find_tool("cuobjdump")
    if tool is None:
        return {}
    proc = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"cuobjdump failed on {cubin.name}:\n{proc.stderr[-2000:]}")
    return split_sass(proc.stdout)


def analyse(archs=ARCHS, sources: list[Path] | None = None, work: Path | None = None) -> tuple[list[KernelReport], dict]:
    """Compile and read every kernel; also returns {(source, arch): {mangled: SASS}}."""
    sources = sources or sorted(CUDA_DIR.glob("*.cu"))
    reports: list[KernelReport] = []
    sass: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = work or Path(tmp)
        for arch in archs:
            for src in sources:
                cubin, log = compile_cubin(src, arch, out_dir)
                funcs = disassemble(cubin)
                sass[(src.name, arch)] = funcs
                for k in parse_ptxas(log, src.name):
                    k.threads = BLOCK_THREADS.get(k.base)
                    if k.threads:
                        k.blocks_per_sm, k.limiter = blocks_per_sm(arch, k.registers, k.smem, k.threads)
                        k.occupancy = k.blocks_per_sm * k.threads / SM_LIMITS[arch]["threads"]
                    instrs = funcs.get(k.mangled, [])
                    k.sass_counts = sass_counts(instrs)
                    k.tensor_core = tensor_core_family(k.sass_counts, instrs) if funcs else "n/a (no cuobjdump)"
                    reports.append(k)
    return reports, sass


def to_markdown(meta: dict, reports: list[KernelReport]) -> str:
    lines = [
        "# CUDA C++ kernels: static report (nvcc -Xptxas -v + SASS)",
        "",
        f"- commit: {meta['commit']}; date: {meta['date']}; nvcc {meta['nvcc']}; cuobjdump: {meta['cuobjdump']}",
        "- flags: `nvcc -std=c++17 -O3 -arch=sm_XX -cubin -Xptxas -v` (CMake's, no fast math)",
        "- blocks/SM and occupancy: the CUDA occupancy rules for the launch's block size (A100: 164 KB smem/SM,"
        " H100: 228 KB); SASS counts are static instruction counts of the whole kernel",
        "- produced by `python -m bench static-cuda` (no GPU needed); checked by tests/test_static_cuda.py",
        "",
        "| kernel | source | arch | threads | registers | spill st/ld B | stack B | smem B | blocks/SM (limit) |"
        " occupancy | tensor cores | HMMA | HGMMA | MUFU.EX2 | FFMA | FMUL |",
        "|---|---|---|---:|---:|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for k in reports:
        occ = f"{100 * k.occupancy:.1f} %" if k.occupancy is not None else ""
        bps = f"{k.blocks_per_sm} ({k.limiter})" if k.blocks_per_sm is not None else ""
        c = k.sass_counts
        lines.append(
            f"| `{k.name}` | {k.source} | sm_{k.arch} | {k.threads or ''} | {k.registers} | {k.spill_stores}/{k.spill_loads}"
            f" | {k.stack} | {k.smem} | {bps} | {occ} | {k.tensor_core} | {c.get('HMMA', '')} | {c.get('HGMMA', '')}"
            f" | {c.get('MUFU.EX2', '')} | {c.get('FFMA', '')} | {c.get('FMUL', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(args) -> None:
    if shutil.which("nvcc") is None:
        raise SystemExit("static-cuda needs nvcc on the PATH")
    from bench.common import provenance

    prov = provenance("cpu")
    meta = {k: prov[k] for k in ("commit", "commit_sha", "dirty", "date", "load_1min_before")}
    meta.update(nvcc=nvcc_version(), cuobjdump=find_tool("cuobjdump"))
    reports, _ = analyse()
    from bench.common import load_1min

    meta["load_1min_after"] = load_1min()  # compile times only; recorded like every other result
    md = to_markdown(meta, reports)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "static-cuda.md").write_text(md)
    (RESULTS / "static-cuda.json").write_text(
        json.dumps({"meta": meta, "kernels": [dataclasses.asdict(k) for k in reports]}, indent=2))
    print(md)
    print(f"wrote {RESULTS / 'static-cuda.md'} and .json")
