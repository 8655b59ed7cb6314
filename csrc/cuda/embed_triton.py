"""Compile a Triton kernel ahead of time and embed its cubin in a C++ header.

This is the build step of fastood's "one kernel source" path (README, architecture:
the CUDA-kernel decision): the Triton scoring kernel is compiled for one target
(``GPUTarget("cuda", arch, 32)``) with the launch specialisation of one ``AotSpec``
(``fastood/ops/_aot_spec.py``: signature, constexprs, 16-byte alignment hints,
num_warps, num_stages), exactly as ``fastood.ops._aot`` compiles it for the static
checks, and the result is written as a header that ``csrc/cuda/triton_aot.h`` can
launch through the CUDA driver API (``cuModuleLoadData`` → ``cuModuleGetFunction`` →
``cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)`` → ``cuLaunchKernel``) from
``fastood._C`` or the TensorRT plugin, without Python at run time.

The header holds: the cubin bytes, the kernel's name, num_warps (block = 32·num_warps
threads), the dynamic shared memory Triton's launcher passes (``metadata.shared``),
the global / profile scratch sizes, and the parameter list in PTX order — the
signature's non-constexpr arguments (pointers, i32, i64, fp32) followed by the two
trailing pointers every Triton ≥ 3.3 kernel takes (global scratch, profile scratch).
The list is taken from the signature and checked here against the PTX ``.entry``'s
``.param`` list (``ptx_params``); a mismatch stops the build.

TMA descriptors (``tensordesc<fp16[128,64]>`` in a signature, Triton's host-side
``TensorDescriptor``): with the ``tensordesc_meta`` the compiler records, Triton 3.8
passes a rank-r descriptor as a 128-byte ``CUtensorMap`` by value (PTX
``.param .align 64 .b8 p[128]``, a ``__grid_constant__``), then r i32 shapes and r i64
strides (``triton/backends/driver.py``: ``expand_signature``). The header records, per
descriptor, what Triton's launcher feeds ``cuTensorMapEncodeTiled``
(``backends/nvidia/driver.py``: ``make_tensordesc_arg``): swizzle, element size, element
type (mapped device → host enum as ``TMA_DTYPE_DEVICE_TO_HOST`` does) and block size.

    python csrc/cuda/embed_triton.py --module fastood.ops._triton_segment_lse \\
        --arch 90 --dtype float16 --spec "segment_lse_fwd[128x128x64 w8 s3]" \\
        --symbol segment_lse_fwd_sm90_fp16 --out build/triton_aot/segment_lse_fwd_sm90_fp16.h

Triton compiles in-process only outside the interpreter and with line info off: otherwise
(``TRITON_INTERPRET=1`` is the test suite's setting) ``compile_kernel`` runs itself in a
child process with ``TRITON_INTERPRET=0 TRITON_DISABLE_LINE_INFO=1``.

Embedded cubins are compiled with ``TRITON_DISABLE_LINE_INFO=1``: with line info a cubin's
DWARF line table records each source file's modification time and size, so the same
kernel compiled before and after an unrelated edit of its module (or read back from
Triton's cache) differs in those bytes. Without it the cubin is a function of the kernel
alone (reproducible builds, no local paths); the SASS is the same instruction for
instruction (checked with cuobjdump on the sm_90 hot TMA kernel: 1,400 instructions, no
difference). The variable is part of Triton's cache key, so a JIT entry is never reused.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

# Signature type → (C++ ParamKind, PTX type). Pointers are ".u64 .ptr".
_KINDS = {"i32": ("kI32", ".u32"), "u32": ("kI32", ".u32"), "i64": ("kI64", ".u64"), "u64": ("kI64", ".u64"),
          "fp32": ("kF32", ".f32")}
_SCRATCH = ("kGlobalScratch", "kProfileScratch")
# triton/backends/nvidia/driver.py: "The TMA dtype enum values are slightly different on
# host vs device" — the device numbering in tensordesc_meta, the host's cuTensorMap enum.
_TMA_DTYPE_DEVICE_TO_HOST = {**{i: i for i in range(16)}, 8: 10, 9: 8, 10: 9}
_TENSORMAP_PTX = ".align 64 .b8[128]"


@dataclass
class CompiledKernel:
    """What the header embeds (and what the tests compare)."""

    cubin_hex: str
    name: str
    num_warps: int
    shared: int
    global_scratch_size: int
    global_scratch_align: int
    profile_scratch_size: int
    params: list[tuple[str, str]]  # (argument name, ParamKind) in launch order
    ptx_params: list[str]          # the PTX .entry's parameter types, in order
    arch: int
    spec: str
    triton_version: str
    constexprs: dict = None  # the spec's constexpr values (BLOCK_B, BLOCK, ...)
    tensordescs: list = None  # per descriptor argument: arg, rank, swizzle, elem_size, elem_type (host), block

    @property
    def cubin(self) -> bytes:
        return bytes.fromhex(self.cubin_hex)


def ptx_params(ptx: str, name: str) -> list[str]:
    """Types of the ``.entry name(...)`` parameters: ``".u64 .ptr"``, ``".u32"``, ``".f32"``,
    ``".align 64 .b8[128]"`` (a by-value byte array: a CUtensorMap), ..."""
    m = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\((?P<body>.*?)\)", ptx, re.S)
    if m is None:
        raise ValueError(f"no .entry {name} in the PTX")
    out = []
    for p in m.group("body").split(","):
        p = p.strip()
        if not p:
            continue
        t = re.match(r"\.param\s+(?:\.align\s+(\d+)\s+)?(\.\w+)(\s+\.ptr)?(?:\s+\.\w+(?:\s+\d+)?)*\s+\w+(\[\d+\])?$", p)
        if t is None:
            raise ValueError(f"cannot read PTX parameter {p!r}")
        align, ty, is_ptr, array = t.groups()
        if array:  # by-value aggregate: its alignment and size matter, not its pointer-ness
            out.append(f".align {align or 1} {ty}{array}")
        else:
            out.append(ty + (" .ptr" if is_ptr else ""))
    return out


def descriptor_rank(ty: str) -> int:
    """Rank of a ``tensordesc<fp16[128,64]>`` signature type (Triton's _parse_descriptor)."""
    m = re.match(r"tensordesc<([^[>]*)\[([^\]]*)\]", ty)
    if m is None:
        raise ValueError(f"malformed tensor descriptor type {ty!r}")
    r = re.search(r",input_rank=(\d+)", ty)
    return int(r.group(1)) if r else m.group(2).count(",") + 1


def launch_params(spec, has_tensordesc_meta: bool = True) -> list[tuple[str, str]]:
    """``(name, ParamKind)`` for every argument Triton passes, in order: the signature's
    non-constexpr arguments (a rank-r descriptor expanded to tensor map, r i32 shapes,
    r i64 strides), then the global and profile scratch pointers."""
    out = []
    for arg in spec.fn.arg_names:
        if arg in spec.constexprs:
            continue
        ty = spec.signature[arg]
        if ty.startswith("tensordesc"):
            if not has_tensordesc_meta:
                raise ValueError(f"{spec.name}: {arg} compiled without tensordesc metadata (a decomposed "
                                 "descriptor: base, shape, strides, padding); the launcher cannot pass it")
            if ty.startswith("tensordesc_im2col"):
                raise ValueError(f"{spec.name}: im2col descriptors are not supported")
            r = descriptor_rank(ty)
            out.append((arg, "kTensorMap"))
            out += [(f"{arg}.shape{i}", "kDescShape") for i in range(r)]
            out += [(f"{arg}.stride{i}", "kDescStride") for i in range(r)]
        elif ty.startswith("*"):
            out.append((arg, "kPointer"))
        elif ty in _KINDS:
            out.append((arg, _KINDS[ty][0]))
        else:
            raise ValueError(f"{spec.name}: argument {arg} has a type the launcher cannot pass: {ty}")
    return out + [("global_scratch", _SCRATCH[0]), ("profile_scratch", _SCRATCH[1])]


def expected_ptx(params: list[tuple[str, str]]) -> list[str]:
    """The PTX parameter types ``params`` must compile to."""
    ptx_of = {"kPointer": ".u64 .ptr", "kI32": ".u32", "kI64": ".u64", "kF32": ".f32",
              "kGlobalScratch": ".u64 .ptr", "kProfileScratch": ".u64 .ptr", "kTensorMap": _TENSORMAP_PTX,
              "kDescShape": ".u32", "kDescStride": ".u64"}
    return [ptx_of[k] for _, k in params]


def find_spec(module: str, arch: int, dtype: str, spec_name: str):
    import torch

    mod = importlib.import_module(module)
    specs = mod.aot_specs(arch, getattr(torch, dtype), full=True)
    for s in specs:
        if s.name == spec_name:
            return s
    raise ValueError(f"{module}.aot_specs({arch}, {dtype}) has no spec {spec_name!r}; it has {[s.name for s in specs]}")


def _compile_here(module: str, arch: int, dtype: str, spec_name: str) -> CompiledKernel:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_DISABLE_LINE_INFO") not in ("1", "true", "True"):
        raise RuntimeError("embed_triton compiles with TRITON_DISABLE_LINE_INFO=1 (see the module docstring)")
    spec = find_spec(module, arch, dtype, spec_name)
    names = spec.fn.arg_names
    sig = {k: ("constexpr" if k in spec.constexprs else spec.signature[k]) for k in names}
    attrs = {(names.index(k),): [["tt.divisibility", 16]] for k in spec.aligned}
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages, **spec.extra_options}
    kernel = triton.compile(ASTSource(spec.fn, sig, dict(spec.constexprs), attrs), target=GPUTarget("cuda", arch, 32),
                            options=options)
    md = kernel.metadata
    meta = getattr(md, "tensordesc_meta", None) or []
    params = launch_params(spec, bool(meta))
    found = ptx_params(kernel.asm["ptx"], md.name)
    if found != expected_ptx(params):
        raise RuntimeError(f"{spec.name}: the PTX parameters {found} are not the launcher's {expected_ptx(params)}: "
                           "this Triton passes arguments differently (update launch_params)")
    if (getattr(md, "num_ctas", 1) != 1 or getattr(md, "tmem_size", 0) or getattr(md, "launch_pdl", False)
            or getattr(md, "launch_cooperative_grid", False)):
        raise RuntimeError(f"{spec.name}: clusters, tensor memory, PDL and cooperative launches "
                           "are not supported by the launcher (csrc/cuda/triton_aot_launch.cpp)")
    desc_args = [n for n, kind in params if kind == "kTensorMap"]
    if len(desc_args) != len(meta):
        raise RuntimeError(f"{spec.name}: {len(meta)} tensordesc_meta entries for descriptors {desc_args}")
    tensordescs = []
    for arg, m in zip(desc_args, meta):
        if m.get("fp4_padded") or m.get("is_im2col"):
            raise RuntimeError(f"{spec.name}: {arg}: fp4-padded and im2col descriptors are not supported")
        rank = descriptor_rank(spec.signature[arg])
        if len(m["block_size"]) != rank:
            raise RuntimeError(f"{spec.name}: {arg}: block_size {m['block_size']} is not of rank {rank}")
        tensordescs.append({"arg": arg, "rank": rank, "swizzle": int(m["swizzle"]), "elem_size": int(m["elem_size"]),
                            "elem_type": _TMA_DTYPE_DEVICE_TO_HOST[int(m["elem_type"])],
                            "block": [int(b) for b in m["block_size"]]})
    return CompiledKernel(
        cubin_hex=kernel.asm["cubin"].hex(), name=md.name, num_warps=md.num_warps, shared=md.shared,
        global_scratch_size=getattr(md, "global_scratch_size", 0), global_scratch_align=getattr(md, "global_scratch_align", 1),
        profile_scratch_size=getattr(md, "profile_scratch_size", 0), params=params, ptx_params=found, arch=arch,
        spec=spec.name, triton_version=triton.__version__,
        constexprs={k: v for k, v in spec.constexprs.items() if isinstance(v, (bool, int, float, str))},
        tensordescs=tensordescs,
    )


def compile_kernels(module: str, arch: int, dtype: str, spec_names: list[str]) -> list[CompiledKernel]:
    """Compile several specs (in one child process when Triton is in interpreter mode)."""
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0") and os.environ.get("TRITON_DISABLE_LINE_INFO") in (
            "1", "true", "True"):
        return [_compile_here(module, arch, dtype, n) for n in spec_names]
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DISABLE_LINE_INFO": "1"}
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--module", module, "--arch", str(arch), "--dtype", dtype, "--json"]
    for n in spec_names:
        cmd += ["--spec", n]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling {spec_names} failed:\n{proc.stderr[-4000:]}")
    out = []
    for line in proc.stdout.strip().splitlines()[-len(spec_names):]:
        data = json.loads(line)
        data["params"] = [tuple(p) for p in data["params"]]
        out.append(CompiledKernel(**data))
    return out


def compile_kernel(module: str, arch: int, dtype: str, spec_name: str) -> CompiledKernel:
    """Compile one spec (in a child process when Triton is in interpreter mode)."""
    return compile_kernels(module, arch, dtype, [spec_name])[0]


def header(k: CompiledKernel, symbol: str) -> str:
    """C++ header text defining ``fastood::cuda::aot::<symbol>`` (a TritonKernelImage)."""
    if not re.fullmatch(r"[A-Za-z_]\w*", symbol):
        raise ValueError(f"symbol must be a C++ identifier, got {symbol!r}")
    cubin = k.cubin
    rows = [", ".join(f"0x{b:02x}" for b in cubin[i : i + 16]) for i in range(0, len(cubin), 16)]
    params = ",\n    ".join(f"{{\"{n}\", ParamKind::{kind}}}" for n, kind in k.params)
    digest = hashlib.sha256(cubin).hexdigest()
    descs = k.tensordescs or []
    if descs:
        rows_d = ",\n    ".join(
            f"{{\"{d['arg']}\", {d['rank']}, {d['swizzle']}, {d['elem_size']}, {d['elem_type']}, "
            f"{{{', '.join(str(b) for b in d['block'])}}}}}" for d in descs)
        desc_array = f"\ninline const TritonTensorDesc {symbol}_descs[{len(descs)}] = {{\n    {rows_d}}};\n"
        desc_ref = f"{symbol}_descs, {len(descs)}"
    else:
        desc_array, desc_ref = "", "nullptr, 0"
    return f"""// GENERATED by csrc/cuda/embed_triton.py — do not edit.
// Triton {k.triton_version}, sm_{k.arch}, spec "{k.spec}", cubin sha256 {digest}
#pragma once

#include "cuda/triton_aot.h"

namespace fastood {{
namespace cuda {{
namespace aot {{

alignas(16) inline const unsigned char {symbol}_cubin[{len(cubin)}] = {{
    {(',' + chr(10) + '    ').join(rows)}}};

inline const TritonParam {symbol}_params[{len(k.params)}] = {{
    {params}}};
{desc_array}
inline const TritonKernelImage {symbol} = {{
    {symbol}_cubin, sizeof({symbol}_cubin), "{k.name}", {k.arch}, {k.num_warps}, {k.shared},
    {k.global_scratch_size}, {k.global_scratch_align}, {k.profile_scratch_size},
    {symbol}_params, {len(k.params)}, "{digest}", {desc_ref}}};

}}  // namespace aot
}}  // namespace cuda
}}  // namespace fastood
"""


_DTYPE_ENUM = {"float16": "kFloat16", "bfloat16": "kBFloat16", "float32": "kFloat32"}
SEGMENT_LSE_MODULE = "fastood.ops._triton_segment_lse"


def segment_lse_specs(config: str) -> tuple[list[str], list[str]]:
    """The forward specs [split][argmax] (flattened) and merge specs [argmax] for one
    autotune config of the segment-LSE kernel, e.g. ``"128x128x64 w8 s3"``."""
    fwd = [f"segment_lse_fwd[{config}{' split' if s else ''}{' argmax' if g else ''}]" for s in (0, 1) for g in (0, 1)]
    return fwd, ["segment_lse_merge[128]", "segment_lse_merge[128 argmax]"]


def registry(targets: list[tuple[int, str]], config: str) -> str:
    """One header with every (arch, dtype) kernel set of the segment-LSE kernel and the
    table ``kSegmentLseAotSets`` that segment_lse_aot_registry.cpp searches."""
    parts, sets = [], []
    fwd_names, merge_names = segment_lse_specs(config)
    for arch, dtype in targets:
        ks = compile_kernels(SEGMENT_LSE_MODULE, arch, dtype, fwd_names + merge_names)
        tag = f"sm{arch}_{dtype}"
        syms = [f"segment_lse_fwd{s}{g}_{tag}" for s in (0, 1) for g in (0, 1)] + [
            f"segment_lse_merge{g}_{tag}" for g in (0, 1)]
        for k, sym in zip(ks, syms):
            parts.append(header(k, sym))
        fwd, merge = ks[:4], ks[4:]
        block_b = {k.constexprs["BLOCK_B"] for k in fwd}
        block_n = {k.constexprs["BLOCK_N"] for k in fwd}
        merge_block = {k.constexprs["BLOCK"] for k in merge}
        if len(block_b) != 1 or len(block_n) != 1 or len(merge_block) != 1:
            raise RuntimeError(f"{tag}: the kernel set mixes tile sizes")
        sets.append(f"""  [] {{
    SegmentLseAotKernels k;
    k.arch = {arch};
    k.dtype = DType::{_DTYPE_ENUM[dtype]};
    k.block_b = {block_b.pop()};
    k.chunk_align = 128;  // _CUDA_CHUNK_ALIGN (a multiple of BLOCK_N = {block_n.pop()})
    k.merge_block = {merge_block.pop()};
    k.fwd[0][0] = &aot::{syms[0]};
    k.fwd[0][1] = &aot::{syms[1]};
    k.fwd[1][0] = &aot::{syms[2]};
    k.fwd[1][1] = &aot::{syms[3]};
    k.merge[0] = &aot::{syms[4]};
    k.merge[1] = &aot::{syms[5]};
    return k;
  }}()""")
    table = ",\n".join(sets)
    return "\n".join(parts) + f"""
// GENERATED by csrc/cuda/embed_triton.py --registry: config "{config}".
#include "cuda/segment_lse_aot.h"

namespace fastood {{
namespace cuda {{

inline const SegmentLseAotKernels kSegmentLseAotSets[] = {{
{table}}};
inline constexpr int kSegmentLseAotSetCount = {len(sets)};

}}  // namespace cuda
}}  // namespace fastood
"""


SM90_MODULE = "fastood.ops._triton_segment_lse_sm90"


def sm90_kernel_set(arch: int, dtype: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The hot / segment-0 / exact specs of the sm90 module's ``aot_specs`` (read from
    there, so a changed signature or tile is picked up), as (spec names, (C++ slot, symbol
    suffix)). Slots: ``hot[tma]`` (the stream-K hot kernel: no split variant),
    ``seg0[tma][argmax][split]``, ``seg0_merge[argmax]``, ``exact[argmax]``."""
    import torch

    mod = importlib.import_module(SM90_MODULE)
    names, slots = [], []
    for s in mod.aot_specs(arch, getattr(torch, dtype), full=True):
        c = s.constexprs
        kind = s.name.split("[", 1)[0]
        if kind == "segment_lse_sm90_fwd":
            if "SPLIT" in c:
                raise RuntimeError(f"{s.name}: a split hot kernel; the C++ sequence launches the stream-K one only")
            slot = f"hot[{int(bool(c['USE_TMA']))}]"
        elif kind == "segment_lse_sm90_seg0":
            slot = f"seg0[{int(bool(c['USE_TMA']))}][{int(bool(c['WANT_ARGMAX']))}][{int(bool(c.get('SPLIT')))}]"
        elif kind == "segment_lse_sm90_exact":
            slot = f"exact[{int(bool(c['WANT_ARGMAX']))}]"
        elif kind == "segment_lse_sm90_seg0_merge":
            slot = f"seg0_merge[{int(bool(c['WANT_ARGMAX']))}]"
        else:
            raise RuntimeError(f"{SM90_MODULE}.aot_specs has a kernel the C++ sequence does not launch: {s.name}")
        if slot in [sl for sl, _ in slots]:
            raise RuntimeError(f"two specs for {slot} (several tile configs): the C++ set holds one")
        names.append(s.name)
        slots.append((slot, re.sub(r"\W", "", slot.replace("][", "_"))))
    return names, slots


def sm90_registry(targets: list[tuple[int, str]]) -> str:
    """One header with the sm90 kernel sets (TMA and pointer variants) of every (arch,
    dtype) and the table ``kSegmentLseSm90AotSets``. No portable merge image: the stream-K
    hot kernel has no split merge (its cut segments merge in the exact kernel)."""
    parts, sets = [], []
    for arch, dtype in targets:
        names, slots = sm90_kernel_set(arch, dtype)
        if not names:  # not routed to the sm90 module (other arch / fp32): nothing to embed
            continue
        ks = compile_kernels(SM90_MODULE, arch, dtype, names)
        tag = f"sm{arch}_{dtype}"
        lines = []
        for k, (slot, suffix) in zip(ks, slots):
            sym = f"segment_lse_sm90_{suffix}_{tag}"
            parts.append(header(k, sym))
            lines.append(f"    k.{slot} = &aot::{sym};")
        tiles = {(k.constexprs["BLOCK_B"], k.constexprs["BLOCK_N"], k.constexprs["BLOCK_D"])
                 for k, (slot, _) in zip(ks, slots) if slot.startswith(("hot", "seg0["))}
        block_b = {k.constexprs["BLOCK_B"] for k, (slot, _) in zip(ks, slots) if "merge" not in slot}
        merge_blocks = {k.constexprs["BLOCK"] for k, (slot, _) in zip(ks, slots) if "merge" in slot}
        if len(tiles) != 1 or len(block_b) != 1:
            raise RuntimeError(f"{tag}: the sm90 set mixes tiles {tiles} / row blocks {block_b}")
        (bb, bn, bd), = tiles
        # The exact kernel walks the hot kernel's units (HOT_BLOCK_N) and reads its part_v rows.
        hot_bn = {k.constexprs.get("HOT_BLOCK_N") for k, (slot, _) in zip(ks, slots) if slot.startswith("exact")}
        if hot_bn != {bn}:
            raise RuntimeError(f"{tag}: the exact images' HOT_BLOCK_N {hot_bn} is not the hot tile's {bn}")
        if len(merge_blocks) != 1:
            raise RuntimeError(f"{tag}: the segment-0 merge images differ in BLOCK: {merge_blocks}")
        sets.append(f"""  [] {{
    SegmentLseSm90AotKernels k;
    k.arch = {arch};
    k.dtype = DType::{_DTYPE_ENUM[dtype]};
    k.block_b = {bb};
    k.block_n = {bn};
    k.block_d = {bd};
    k.merge_block = {next(iter(merge_blocks))};
{chr(10).join(lines)}
    return k;
  }}()""")
    # C++ has no zero-length arrays: an empty table is one unused default entry, count 0.
    table = ",\n".join(sets) if sets else "  SegmentLseSm90AotKernels{}"
    return "\n".join(parts) + f"""
// GENERATED by csrc/cuda/embed_triton.py --sm90-registry.
#include "cuda/segment_lse_aot.h"

namespace fastood {{
namespace cuda {{

inline const SegmentLseSm90AotKernels kSegmentLseSm90AotSets[] = {{
{table}}};
inline constexpr int kSegmentLseSm90AotSetCount = {len(sets)};

}}  // namespace cuda
}}  // namespace fastood
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", type=Path, help="write the segment-LSE kernel sets of --targets to this header")
    p.add_argument("--sm90-registry", type=Path, help="write the sm90 (TMA) kernel sets of --targets to this header")
    p.add_argument("--targets", default="90:float16;90:bfloat16", help="ARCH:DTYPE;... (with --registry)")
    p.add_argument("--config", default="128x128x64 w8 s3", help="autotune config (with --registry)")
    p.add_argument("--module")
    p.add_argument("--arch", type=int)
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--spec", action="append", help="an AotSpec name (repeat with --json)")
    p.add_argument("--symbol", help="C++ name of the kernel image (with --out)")
    p.add_argument("--out", type=Path, help="write the header here")
    p.add_argument("--json", action="store_true", help="print the compiled kernel as JSON (internal)")
    a = p.parse_args(argv)
    if a.registry is not None or a.sm90_registry is not None:
        targets = []
        for t in filter(None, a.targets.replace(",", ";").split(";")):
            arch, _, dtype = t.partition(":")
            if dtype not in _DTYPE_ENUM or not arch.isdigit():
                p.error(f"--targets entries are ARCH:DTYPE (e.g. 90:float16), got {t!r}")
            targets.append((int(arch), dtype))
        for path, make in ((a.registry, lambda: registry(targets, a.config)),
                           (a.sm90_registry, lambda: sm90_registry(targets))):
            if path is None:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(make())
            os.replace(tmp, path)
        return
    if not (a.module and a.arch and a.dtype and a.spec):
        p.error("--module, --arch, --dtype and --spec are required (or --registry)")
    kernels = compile_kernels(a.module, a.arch, a.dtype, a.spec)
    if a.json:
        for k in kernels:
            print(json.dumps(asdict(k)))
    if a.out is not None:
        if len(kernels) != 1:
            p.error("--out writes one kernel: give one --spec")
        k = kernels[0]
        if not a.symbol:
            p.error("--out needs --symbol")
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(header(k, a.symbol))


if __name__ == "__main__":
    main()
