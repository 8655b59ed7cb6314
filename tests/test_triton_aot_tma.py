"""The Hopper kernel's TMA path, compiled ahead of time and launched from C++ (no GPU).

``csrc/cuda/embed_triton.py --sm90-registry`` embeds every image of
``fastood/ops/_triton_segment_lse_sm90.py``'s ``aot_specs`` (TMA and pointer variants);
``csrc/cuda/segment_lse_aot.cpp`` (``segment_lse_sm90_aot``) replays the Python launcher's
sequence over them; ``csrc/cuda/triton_aot.h`` packs a TMA descriptor as Triton 3.8 does
(128-byte CUtensorMap by value, then i32 shapes and i64 strides) and computes the
``cuTensorMapEncodeTiled`` arguments. Checked here against independent truths:

* the PTX ``.param`` list of a fresh ``triton.compile`` (offsets, sizes, the 64-byte
  alignment of the descriptor) and the fresh compile's cubin bytes;
* a Python rendering, written from Triton's ``backends/nvidia/driver.py``
  (``make_tensordesc_arg``) and ``driver.c`` (``fillTMADescriptorTiled``), of the encode
  arguments Triton would use for the launcher's own ``TensorDescriptor`` objects, with the
  compiler's raw ``tensordesc_meta`` and Triton's ``TMA_DTYPE_DEVICE_TO_HOST`` table;
* the launches ``segment_lse_triton_sm90`` makes (recorded, not run), and
  ``column_segments`` (torch.searchsorted) for the emulated colseg kernel.

What stays unverified without a GPU: that the driver accepts the encoded maps and the
kernels compute the right numbers from them (README, architecture).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import cuda_emulator

pytestmark = pytest.mark.skipif(not cuda_emulator.available() or shutil.which("g++") is None,
                                reason="needs g++ and the CUDA headers")

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
SM90 = "fastood.ops._triton_segment_lse_sm90"


def _embed():
    if "embed_triton_tma" in sys.modules:
        return sys.modules["embed_triton_tma"]
    spec = importlib.util.spec_from_file_location("embed_triton_tma", CUDA_DIR / "embed_triton.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["embed_triton_tma"] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


# A fresh, independent compile (own process, Triton's API only — not embed_triton.py):
# cubin sha256, raw tensordesc_meta and the PTX .entry parameter declarations.
_FRESH = r"""
import hashlib, json, re, sys, importlib, torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
mod = importlib.import_module(sys.argv[1])
out = {}
for s in mod.aot_specs(90, torch.float16, full=True):
    if s.name not in sys.argv[2:]:
        continue
    names = s.fn.arg_names
    sig = {k: ("constexpr" if k in s.constexprs else s.signature[k]) for k in names}
    attrs = {(names.index(k),): [["tt.divisibility", 16]] for k in s.aligned}
    k = triton.compile(ASTSource(s.fn, sig, dict(s.constexprs), attrs), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": s.num_warps, "num_stages": s.num_stages, **s.extra_options})
    body = re.search(r"\.entry\s+" + re.escape(k.metadata.name) + r"\s*\((.*?)\)", k.asm["ptx"], re.S).group(1)
    out[s.name] = {"sha": hashlib.sha256(k.asm["cubin"]).hexdigest(),
                   "meta": getattr(k.metadata, "tensordesc_meta", None),
                   "params": [p.strip() for p in body.split(",") if p.strip()]}
print(json.dumps(out))
"""


def _fresh(names: list[str], cache_dir: Path | None = None) -> dict:
    """``cache_dir``: an empty Triton cache, so that the cubin is really compiled again (not
    read back from the cache the embedding filled)."""
    # No line info, as embed_triton.py compiles (else the cubin records the module file's mtime).
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DISABLE_LINE_INFO": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if cache_dir is not None:
        env["TRITON_CACHE_DIR"] = str(cache_dir)
    proc = subprocess.run([sys.executable, "-c", _FRESH, SM90, *names], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sm90(tmp_path_factory):
    """The sm_90 fp16 registry header, the recording driver built on it, and its specs."""
    embed = _embed()
    out = tmp_path_factory.mktemp("sm90aot")
    text = embed.sm90_registry([(90, "float16")])
    (out / "aot_sm90_kernels.h").write_text(text)
    names, slots = embed.sm90_kernel_set(90, "float16")
    sources = cuda_emulator._kernel_sources(out / "kernels")
    exe = out / "aot_sm90_driver"
    cuda_emulator._compile(["-I", str(out), str(cuda_emulator.EMU_DIR / "aot_sm90_driver.cpp"),
                            str(CUDA_DIR / "segment_lse_aot.cpp"), *map(str, sources), "-o", str(exe)],
                           "plain", "the sm90 AOT driver")
    return {"embed": embed, "dir": out, "text": text, "exe": exe, "names": names, "slots": slots}


def _tma_names(sm90) -> list[str]:
    return [n for n in sm90["names"] if " tma" in n]


def _symbol(sm90, name: str) -> str:
    return f"segment_lse_sm90_{sm90['slots'][sm90['names'].index(name)][1]}_sm90_float16"


# ------------------------------------------------------------------------------- PTX reader
def test_ptx_reader_reads_a_by_value_tensor_map():
    """Hand-written PTX as Triton 3.8 emits it for a rank-2 descriptor: 128 bytes, align 64."""
    embed = _embed()
    ptx = """
.visible .entry k(
\t.param .align 64 .b8 k_param_0[128],
\t.param .u32 k_param_1,
\t.param .u32 k_param_2,
\t.param .u64 k_param_3,
\t.param .u64 k_param_4,
\t.param .u64 .ptr .global .align 1 k_param_5,
\t.param .u64 .ptr .global .align 1 k_param_6
)
{ ret; }"""
    got = embed.ptx_params(ptx, "k")
    assert got == [".align 64 .b8[128]", ".u32", ".u32", ".u64", ".u64", ".u64 .ptr", ".u64 .ptr"]

    class Spec:  # the launch_params view of a one-descriptor signature
        name = "k"
        constexprs = {}
        signature = {"d": "tensordesc<fp16[128,64]>"}

        class fn:
            arg_names = ["d"]

    params = embed.launch_params(Spec)
    assert [k for _, k in params] == ["kTensorMap", "kDescShape", "kDescShape", "kDescStride", "kDescStride",
                                      "kGlobalScratch", "kProfileScratch"]
    assert embed.expected_ptx(params) == got
    with pytest.raises(ValueError, match="tensordesc metadata"):
        embed.launch_params(Spec, has_tensordesc_meta=False)


# ------------------------------------------------------------------- images vs a fresh compile
def test_embedded_tma_images_are_fresh_compiles(sm90, tmp_path):
    """Every TMA image's bytes (sha256 in the header) and descriptor metadata equal an
    independent triton.compile of the same spec; the header's element type is the compiler's
    device enum mapped by Triton's own TMA_DTYPE_DEVICE_TO_HOST."""
    from triton.backends.nvidia.driver import TMA_DTYPE_DEVICE_TO_HOST

    names = _tma_names(sm90)
    assert len(names) >= 4  # hot × split, segment-0 × argmax (× split)
    fresh = _fresh(names, tmp_path / "triton-cache")
    text = sm90["text"]
    for name in names:
        sym = _symbol(sm90, name)
        block = text.split(f"inline const TritonKernelImage {sym} = {{")[1].split("};")[0]
        assert f'"{fresh[name]["sha"]}"' in block, name
        cubin = text.split(f"{sym}_cubin[")[1].split("{", 1)[1].split("}", 1)[0]
        import hashlib

        assert hashlib.sha256(bytes(int(v, 16) for v in re.findall(r"0x([0-9a-f]{2})", cubin))).hexdigest() == \
            fresh[name]["sha"]
        descs = text.split(f"TritonTensorDesc {sym}_descs[")[1].split("};")[0]
        rows = re.findall(r'\{"(\w+)", (\d+), (\d+), (\d+), (\d+), \{([\d, ]+)\}\}', descs)
        meta = fresh[name]["meta"]
        assert len(rows) == len(meta) == 2
        for (arg, rank, swz, esz, ety, blk), m in zip(rows, meta):
            assert int(swz) == m["swizzle"] and int(esz) == m["elem_size"]
            assert int(ety) == TMA_DTYPE_DEVICE_TO_HOST[m["elem_type"]]
            assert [int(b) for b in blk.split(",")] == m["block_size"] and int(rank) == len(m["block_size"])
        assert [r[0] for r in rows] == ["x_ptr", "bank_ptr"]


# ------------------------------------------------------- the recording driver and the Python side
def _run(sm90, work: Path, B, N, D, offsets, splits, argmax, x_addr=0x10000, bank_addr=0x20000, ldx=None,
         ldb=None, programs=None) -> dict:
    """The recording driver on one problem: ``splits`` segment 0's, ``programs`` the hot kernel's
    grid (default PROGRAMS)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "offsets.bin").write_bytes(torch.as_tensor(offsets, dtype=torch.int64).numpy().tobytes())
    args = dict(B=B, N=N, D=D, S=len(offsets) - 1, ldx=ldx or D, ldb=ldb or D,
                programs=PROGRAMS if programs is None else programs, splits=splits,
                argmax=int(argmax), x_addr=x_addr, bank_addr=bank_addr)
    (work / "args.txt").write_text("".join(f"{k} {v}\n" for k, v in args.items()))
    proc = subprocess.run([str(sm90["exe"]), str(work)], capture_output=True, text=True, timeout=120)
    rec = {"rc": proc.returncode, "stderr": proc.stderr, "launches": [], "encodes": [], "memsets": []}
    for line in proc.stdout.splitlines():
        f = line.split()
        if f[0] == "launch":
            rec["launches"].append({"slot": f[1], "grid": tuple(map(int, f[2:5])), "args": []})
        elif f[0] == "arg":
            rec["launches"][-1]["args"].append(
                {"name": f[2], "kind": f[3], "offset": int(f[4]), "size": int(f[5]), "value": int(f[6])})
        elif f[0] == "encode":
            rec["encodes"].append((f[1], [int(v) for v in f[2:]]))
        elif f[0] == "memset":
            rec["memsets"].append(tuple(int(v) for v in f[1:]))
        elif f[0] == "path":
            rec["path"] = line[5:]
        elif f[0] == "colseg":
            rec["colseg"] = [int(v) for v in f[1:]]
        elif f[0] == "addr":
            rec[f[1]] = int(f[2])
    return rec


def _python_launches(monkeypatch, x, bank, offsets, rs, argmax, splits, programs=None) -> list:
    """What segment_lse_triton_sm90 passes to its kernels (TMA forced; recorded, not run):
    (kernel, grid, {argument name: value}) in launch order."""
    from fastood.ops import _triton_segment_lse_sm90 as m

    calls = []

    class Record:
        def __init__(self, name, fn):
            self.name, self.arg_names = name, fn.arg_names
            ann = getattr(getattr(fn, "fn", fn), "__annotations__", {})  # JIT or interpreted function
            self.const = {k for k, v in ann.items() if "constexpr" in str(v)}

        def __getitem__(self, grid):
            def go(*args, **kw):
                named = dict(zip(self.arg_names, args))
                named.update({k: v for k, v in kw.items() if k in self.arg_names})
                calls.append((self.name, tuple(grid), {k: v for k, v in named.items() if k not in self.const},
                              {k: v for k, v in named.items() if k in self.const}))
            return go

    # (The portable module's split merge is not even imported by the sm90 module any more.)
    for attr, name in [("_sm90_segment_lse_fwd_kernel", "hot"), ("_sm90_segment0_kernel", "seg0"),
                       ("_sm90_segment0_merge_kernel", "seg0_merge"), ("_sm90_segment_lse_exact_kernel", "exact")]:
        monkeypatch.setattr(m, attr, Record(name, getattr(m, attr)))
    m.segment_lse_triton_sm90(x, bank, offsets, rs, argmax, num_splits=splits, blocks=(128, 128, 64), use_tma=True,
                              num_programs=PROGRAMS if programs is None else programs)
    return calls


def triton_encode_args(desc, meta: dict) -> list[int]:
    """The cuTensorMapEncodeTiled arguments Triton 3.8's launcher uses for a host
    TensorDescriptor ``desc`` of a kernel whose compiled metadata is ``meta`` — a rendering
    of make_tensordesc_arg (backends/nvidia/driver.py) and fillTMADescriptorTiled
    (backends/nvidia/driver.c), in the recording driver's field order."""
    from triton.backends.nvidia.driver import TMA_DTYPE_DEVICE_TO_HOST

    swizzle, elem_size, elem_type, block = meta["swizzle"], meta["elem_size"], meta["elem_type"], meta["block_size"]
    shape, strides = list(desc.shape), list(desc.strides)
    assert strides[-1] == 1
    padding = 1 if desc.padding == "nan" else 0
    rank = len(block)
    box = [block[rank - i - 1] for i in range(rank)]          # blockSizeInt[rank - i - 1] = block[i]
    dims = [shape[rank - i - 1] for i in range(rank)]          # shapeInt[rank - i - 1] = shape[i]
    strides_ll = [0] * rank
    for i in range(rank - 1):
        strides_ll[rank - i - 2] = elem_size * strides[i]
    strides_ll[rank - 1] = dims[rank - 1] * (elem_size if rank == 1 else strides_ll[rank - 2])
    max_byte = sum((dims[i] - 1) * (elem_size if i == 0 else strides_ll[i - 1]) for i in range(rank))
    interleave, l2 = 0, 2                                      # INTERLEAVE_NONE, L2_PROMOTION_L2_128B
    return [TMA_DTYPE_DEVICE_TO_HOST[elem_type], rank, desc.base.data_ptr(), *dims, *strides_ll, *box,
            *([1] * rank), interleave, swizzle, l2, padding, int(max_byte + 1 < 128 * 1024)]


def _problem(B, D, offsets, seed=7):
    gen = torch.Generator().manual_seed(seed)
    N = offsets[-1]
    x = torch.randn(B, D, generator=gen).half()
    bank = torch.randn(N, D, generator=gen).half()
    return x, bank, torch.tensor(offsets, dtype=torch.int64), torch.full((B,), 100.0)


OFFSETS = [0, 100, 384, 384, 500, 768, 900, 1000]  # an empty segment on a tile edge
OFFSETS_WIDE0 = [0, 520, 520, 700, 1000]  # segment 0: 5 column tiles over the segment-0 kernel's 3 splits
PROGRAMS = 5  # the hot kernel's forced stream-K grid: 3 row blocks × 8 (or 4) tiles cut into 5 ranges


@pytest.mark.parametrize("offsets,splits,programs,argmax", [
    (OFFSETS, 3, 5, True), (OFFSETS, 3, 5, False), (OFFSETS, 1, 1, True), (OFFSETS, 1, 40, False),
    (OFFSETS_WIDE0, 3, 5, True), (OFFSETS_WIDE0, 3, 7, False)])
def test_sm90_sequence_is_the_python_launchers(sm90, tmp_path, monkeypatch, offsets, splits, programs, argmax):
    """segment_lse_sm90_aot against segment_lse_triton_sm90 on the same problem (the same forced
    stream-K grid and segment-0 splits): the same kernels in the same order (no split merge),
    the same variants and grids, every argument by name (the integers equal, P included; the
    pointers — flag, bflag, part_v, part_seg among them — in the same sharing pattern across
    all launches, each descriptor's shape/strides equal the TensorDescriptor's), the same
    pre-fills (none for the stream-K buffers), and the emulated colseg kernel equals
    column_segments (torch.searchsorted)."""
    from fastood.ops._triton_segment_lse_sm90 import column_segments

    B, D = 300, 64
    x, bank, off, rs = _problem(B, D, offsets)
    N, S = offsets[-1], len(offsets) - 1
    rec = _run(sm90, tmp_path, B, N, D, offsets, splits, argmax, programs=programs)
    assert rec["rc"] == 0, rec["stderr"]
    assert rec["path"] == "tma"
    calls = _python_launches(monkeypatch, x, bank, off, rs, argmax, splits, programs)
    assert calls[0][1] == (programs,) and calls[0][2]["P"] == programs
    # The variant each Python launch selects by its constexprs is the C++ slot's.
    want_slots = []
    for kind, _, _, c in calls:
        if kind == "hot":
            want_slots.append(f"hot{int(c['USE_TMA'])}")
        elif kind == "seg0":
            want_slots.append(f"seg0{int(c['USE_TMA'])}{int(c['WANT_ARGMAX'])}{int(c.get('SPLIT', False))}")
        else:
            want_slots.append(f"{kind}{int(c['WANT_ARGMAX'])}")
    assert [l["slot"] for l in rec["launches"]] == want_slots
    assert want_slots[0] == "hot1" and not any(s.startswith("merge") for s in want_slots)
    if offsets is OFFSETS_WIDE0:  # the segment-0 split and its merge are exercised
        assert f"seg0_merge{int(argmax)}" in want_slots and f"seg01{int(argmax)}1" in want_slots
    py_ptr, cpp_ptr = [], []  # every pointer argument, in one order, both sides
    desc_of = {}  # C++ encode number → (launch, arg)
    n_enc = 0
    for (kind, grid, named, _), cpp in zip(calls, rec["launches"]):
        if kind == "seg0_merge":  # the launcher's BLOCK is 32 in the interpreter, 128 on a GPU (the image's)
            assert grid == (-(-B // 32),)
            grid = (-(-B // 128),)
        assert cpp["grid"] == tuple(grid) + (1,) * (3 - len(grid)), kind
        by_name = {a["name"]: a for a in cpp["args"]}
        for name, v in named.items():
            if name in ("stride_xd", "stride_bd"):
                assert v == 1  # constexpr in the images
                continue
            a = by_name[name]
            if isinstance(v, torch.Tensor):
                assert a["kind"] == "pointer", name
                py_ptr.append(v.data_ptr())
                cpp_ptr.append(a["value"])
            elif hasattr(v, "block_shape"):  # a TensorDescriptor
                assert a["kind"] == "tensormap", name
                n_enc += 1
                desc_of[a["value"]] = (kind, name, v)
                assert [by_name[f"{name}.shape{i}"]["value"] for i in range(2)] == list(v.shape)
                assert [by_name[f"{name}.stride{i}"]["value"] for i in range(2)] == list(v.strides)
                py_ptr.append(v.base.data_ptr())
                cpp_ptr.append(rec["encodes"][a["value"] - 1][1][2])
            else:
                assert a["kind"] == "i32" and a["value"] == int(v), name
        assert set(by_name) - set(named) <= {"global_scratch", "profile_scratch"} | {
            f"{d}.{f}{i}" for d in ("x_ptr", "bank_ptr") for f in ("shape", "stride") for i in range(2)}
    assert [py_ptr.index(p) for p in py_ptr] == [cpp_ptr.index(p) for p in cpp_ptr]  # the sharing pattern
    assert n_enc == len(rec["encodes"]) == 4  # x and bank, per TMA image (as Triton encodes per launch)
    # The pre-fills: C++ memsets against the launcher's torch.full / zeros (the layouts have an
    # empty segment), buffer by buffer; flag, bflag, part_seg, part_v: torch.empty on both sides.
    cpp_of = dict(zip(py_ptr, cpp_ptr))
    exact = next(c for c in calls if c[0] == "exact")[2]
    ninf, zero = 0xFF800000, 0
    want = {(cpp_of[exact["lse_ptr"].data_ptr()], ninf, B * S), (cpp_of[exact["max0_ptr"].data_ptr()], ninf, B)}
    if argmax:
        want.add((cpp_of[exact["arg0_ptr"].data_ptr()], zero, 2 * B))  # int64 zeros as 32-bit words
    assert set(rec["memsets"]) == want and len(rec["memsets"]) == len(want)
    # The stream-K buffers lie in the workspace, disjoint, each as large as the launcher's.
    ws = rec["workspace"]
    spans = sorted((cpp_of[exact[n].data_ptr()], exact[n].numel() * exact[n].element_size())
                   for n in ("flag_ptr", "bflag_ptr", "part_seg_ptr", "part_v_ptr"))
    assert spans[0][0] >= ws
    assert all(a + n <= b for (a, n), (b, _) in zip(spans, spans[1:])), spans
    assert rec["colseg"] == column_segments(off, N).tolist()


def test_descriptor_encoding_is_tritons(sm90, tmp_path, monkeypatch):
    """The cuTensorMapEncodeTiled arguments the C++ side passes equal the Python rendering of
    Triton's launcher for the launcher's own TensorDescriptors and the compiler's raw
    metadata (fresh compile), per TMA image; a row stride that is not the row length shows
    the stride's place."""
    B, D, ld = 300, 64, 96  # x rows strided (a view of a wider buffer)
    x_full, bank, off, rs = _problem(B, ld, OFFSETS)
    bank = bank[:, :D].contiguous()
    x = x_full[:, :D]
    rec = _run(sm90, tmp_path, B, OFFSETS[-1], D, OFFSETS, 1, True, ldx=ld)
    assert rec["rc"] == 0 and rec["path"] == "tma", rec["stderr"]
    calls = _python_launches(monkeypatch, x, bank, off, rs, True, 1)
    # The images this problem runs: the hot kernel, segment 0 with argmax and without split.
    fresh = _fresh([n for n in _tma_names(sm90) if " split" not in n and ("fwd" in n or "argmax" in n)])
    meta = {("hot" if "fwd" in n else "seg0"): fresh[n]["meta"] for n in fresh}
    x_cpp, bank_cpp = 0x10000, 0x20000
    i = 0
    for kind, _, named, _ in calls:
        if kind not in meta:
            continue
        for j, arg in enumerate(("x_ptr", "bank_ptr")):
            want = triton_encode_args(named[arg], meta[kind][j])
            want[2] = x_cpp if arg == "x_ptr" else bank_cpp  # the driver's fake device addresses
            got_arg, got = rec["encodes"][i]
            assert got_arg == arg and got == want, (kind, arg, got, want)
            i += 1
    assert i == 4
    # The x descriptor's byte stride is the view's (96 elements · 2 B), not the row length's.
    assert rec["encodes"][0][1][5] == ld * 2


def test_encode_failure_falls_back_to_the_pointer_images(sm90, tmp_path):
    """When a descriptor cannot be encoded, the sequence runs the pointer images (no tensor
    map anywhere) instead of failing.

    With the images' specialisation (16-byte bases, D and row strides multiples of 16
    elements) every operand the pointer images accept also meets the TMA alignment rules,
    so the fallback is reached when cuTensorMapEncodeTiled refuses (e.g. a driver < 12.0):
    the recording driver refuses the base address 0x0DEAD000 as such a driver would."""
    rec = _run(sm90, tmp_path, 300, OFFSETS[-1], 64, OFFSETS, 1, False, bank_addr=0x0DEAD000)
    assert rec["rc"] == 0, rec["stderr"]
    assert rec["path"].startswith("ptr: ") and "refused" in rec["path"]
    assert [l["slot"] for l in rec["launches"]] == ["hot0", "seg0000", "exact0"]  # segment 0 not split
    for l in rec["launches"]:
        kinds = {a["name"]: a["kind"] for a in l["args"]}
        assert kinds["x_ptr"] == kinds["bank_ptr"] == "pointer"
        assert not any(k.startswith(("tensormap", "desc_")) for k in kinds.values())


# ------------------------------------------------------- packing and the TMA rules, C++ probes
_PROBE = r"""
#include <cinttypes>
#include <cstdio>
#include "aot_sm90_kernels.h"
namespace a = fastood::cuda::aot;
int main() {
  const a::TritonKernelImage& k = *fastood::cuda::kSegmentLseSm90AotSets[0].hot[1];
  a::TensorMap mx, mb;
  for (int i = 0; i < 128; ++i) { mx.bytes[i] = static_cast<unsigned char>(3 * i + 1); mb.bytes[i] = static_cast<unsigned char>(255 - i); }
  mx.src.base = reinterpret_cast<void*>(0x10000); mx.src.rank = 2; mx.src.shape[0] = 300; mx.src.shape[1] = 64;
  mx.src.strides[0] = 96; mx.src.strides[1] = 1;
  mb.src = mx.src; mb.src.shape[0] = 1000; mb.src.strides[0] = 64;
  std::vector<std::pair<std::string, a::TritonArg>> named;
  for (int i = 0; i < k.num_params; ++i) {
    const std::string n = k.params[i].name;
    switch (k.params[i].kind) {
      case a::ParamKind::kTensorMap: named.emplace_back(n, a::TritonArg::tensormap(n == "x_ptr" ? &mx : &mb)); break;
      case a::ParamKind::kPointer: named.emplace_back(n, a::TritonArg::ptr(reinterpret_cast<void*>(0x1000 + 16 * i))); break;
      case a::ParamKind::kI32: named.emplace_back(n, a::TritonArg::i32(-5 - i)); break;
      default: break;
    }
  }
  a::PackedParams p;
  std::printf("pack '%s'\n", a::pack_named(k, named, nullptr, nullptr, &p).c_str());
  for (int i = 0; i < k.num_params; ++i) {
    std::printf("slot %d %s %zu %d", i, a::param_kind_name(k.params[i].kind),
                static_cast<std::size_t>(reinterpret_cast<uintptr_t>(p.pointers[i]) % 64), static_cast<int>(a::param_bytes(k.params[i].kind)));
    for (std::size_t j = 0; j < a::param_bytes(k.params[i].kind); ++j) std::printf(" %02x", static_cast<const unsigned char*>(p.pointers[i])[j]);
    std::printf("\n");
  }
  named.erase(named.begin());
  std::printf("missing '%s'\n", a::pack_named(k, named, nullptr, nullptr, &p).c_str());
  // The TMA rules: each case breaks one.
  const a::TritonTensorDesc& d = k.descs[0];
  a::TmaEncodeArgs e;
  a::TensorDescArg ok = mx.src;
  std::printf("rule ok '%s'\n", a::tma_encode_args(d, ok, &e).c_str());
  a::TensorDescArg t = ok; t.base = reinterpret_cast<void*>(0x10008);
  std::printf("rule base '%s'\n", a::tma_encode_args(d, t, &e).c_str());
  t = ok; t.strides[0] = 68;
  std::printf("rule stride '%s'\n", a::tma_encode_args(d, t, &e).c_str());
  t = ok; t.strides[1] = 2;
  std::printf("rule inner '%s'\n", a::tma_encode_args(d, t, &e).c_str());
  t = ok; t.rank = 3;
  std::printf("rule rank '%s'\n", a::tma_encode_args(d, t, &e).c_str());
  a::TritonTensorDesc wide = d; wide.block[1] = 128;  // 256 B inner box > the 128-byte swizzle span
  std::printf("rule swizzle '%s'\n", a::tma_encode_args(wide, ok, &e).c_str());
#ifdef WITH_LAUNCH
  a::TensorMap out;
  std::printf("encode '%s'\n", a::encode_tensor_map(d, ok, &out).c_str());
  std::printf("memset '%s'\n", a::memset_d32(reinterpret_cast<void*>(0x1000), 0, 4, nullptr).c_str());
#endif
  return 0;
}
"""


def _probe(sm90, tmp_path: Path, link: bool) -> list[str]:
    inc = cuda_emulator.cuda_include()
    src = tmp_path / "probe.cpp"
    src.write_text(_PROBE)
    exe = tmp_path / "probe"
    cmd = ["g++", "-std=c++17", "-O1", "-Wall", "-Werror", "-I", str(sm90["dir"]), "-I", str(ROOT / "csrc"),
           "-I", str(inc), str(src)]
    if link:
        lib = inc.parent / "lib64"
        if not (lib / "libcudart_static.a").is_file():
            pytest.skip("no libcudart_static.a")
        cmd += ["-DWITH_LAUNCH", str(CUDA_DIR / "triton_aot_launch.cpp"), "-L", str(lib), "-lcudart_static", "-ldl",
                "-lpthread", "-lrt"]
    proc = subprocess.run([*cmd, "-o", str(exe)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


def _ptx_layout(ptx_types: list[str]) -> list[tuple[int, int]]:
    """(offset, size) of each parameter in the kernel's parameter buffer by PTX's rules."""
    out, off = [], 0
    for t in ptx_types:
        m = re.fullmatch(r"\.align (\d+) \.b8\[(\d+)\]", t)
        align, size = (int(m.group(1)), int(m.group(2))) if m else ({".u32": 4, ".f32": 4}.get(t, 8),) * 2
        off = -(-off // align) * align
        out.append((off, size))
        off += size
    return out


def test_packing_matches_the_ptx_param_list(sm90, tmp_path):
    """The packed parameters of the hot TMA image against the fresh compile's PTX .param
    declarations: one slot per parameter, the tensor maps' 128 bytes copied byte for byte
    into 64-byte-aligned slots, shapes as i32 and strides as i64 from the descriptor's
    tensor, and the recording driver's parameter-buffer offsets equal PTX's layout."""
    embed = _embed()
    name = next(n for n in _tma_names(sm90) if "fwd" in n and " split" not in n)
    ptx = _fresh([name])[name]["params"]
    ptx_types = embed.ptx_params(".entry k(" + ",".join(ptx) + ")", "k")
    lines = _probe(sm90, tmp_path, link=False)
    assert "pack ''" in lines
    slots = [line.split() for line in lines if line.startswith("slot ")]
    assert len(slots) == len(ptx_types)
    for (_, i, kind, mod64, size, *data), t in zip(slots, ptx_types):
        b = bytes(int(v, 16) for v in data)
        assert int(size) == _ptx_layout([t])[0][1] and len(b) == int(size)
        if kind == "tensormap":
            assert t == ".align 64 .b8[128]" and mod64 == "0"
            assert b == bytes((3 * j + 1) & 0xFF for j in range(128)) or b == bytes(255 - j for j in range(128))
    shapes = [int.from_bytes(bytes(int(v, 16) for v in s[5:]), "little", signed=True) for s in slots
              if s[2] in ("desc_shape", "desc_stride")]
    assert shapes == [300, 64, 96, 1, 1000, 64, 64, 1]
    assert any(line.startswith("missing '") and "no value for parameter x_ptr" in line for line in lines)
    # The recording driver's offsets (param_align / param_bytes) against PTX's layout.
    rec = _run(sm90, tmp_path / "run", 300, OFFSETS[-1], 64, OFFSETS, 1, False)
    hot = rec["launches"][0]
    assert [(a["offset"], a["size"]) for a in hot["args"]] == _ptx_layout(ptx_types)
    assert hot["args"][5]["offset"] == 192  # the second map: 128 + 4 + 4 + 8 + 8 = 152 → 192


def test_tma_rules_refuse_what_the_unit_cannot_take(sm90, tmp_path):
    lines = _probe(sm90, tmp_path, link=False)
    rule = {line.split("'")[0].split()[1]: line.split("'")[1] for line in lines if line.startswith("rule ")}
    assert rule["ok"] == ""
    assert "16-byte aligned" in rule["base"]
    assert "multiple of 16" in rule["stride"]
    assert "innermost stride" in rule["inner"]
    assert "rank" in rule["rank"]
    assert "swizzle span" in rule["swizzle"]


def test_encode_without_a_driver_fails_cleanly(sm90, tmp_path):
    """triton_aot_launch.cpp (its static_asserts tie triton_aot.h's enum values and the
    CUtensorMap size to cuda.h) links without libcuda; with no driver, encoding and filling
    return the reason instead of crashing."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    lines = _probe(sm90, tmp_path, link=True)
    enc = next(line for line in lines if line.startswith("encode '"))
    mem = next(line for line in lines if line.startswith("memset '"))
    assert enc != "encode ''" and mem != "memset ''"


@pytest.mark.slow
def test_registry_finds_the_sm90_sets(sm90, tmp_path):
    """What CMake builds with FASTOOD_TRITON_AOT=ON: segment_lse_aot_registry.cpp with both
    generated tables (the portable one and --sm90-registry's) compiles, and the sm90 table
    holds one complete fp16 set (every slot the sequence can pick)."""
    embed = sm90["embed"]
    (tmp_path / "segment_lse_aot_kernels.h").write_text(embed.registry([(90, "float16")], "128x128x64 w8 s3"))
    (tmp_path / "segment_lse_sm90_aot_kernels.h").write_text(sm90["text"])
    assert "kSegmentLseSm90AotSetCount = 1" in sm90["text"]
    slots = set(re.findall(r"k\.(\w+(?:\[\d\])+) = &aot::", sm90["text"]))
    want = {f"hot[{t}]" for t in (0, 1)} | {
        f"seg0[{t}][{g}][{s}]" for t in (0, 1) for g in (0, 1) for s in (0, 1)} | {
        f"{k}[{g}]" for k in ("exact", "seg0_merge") for g in (0, 1)}
    assert slots == want
    inc = cuda_emulator.cuda_include()
    proc = subprocess.run(["g++", "-std=c++17", "-Wall", "-Werror", "-c", "-I", str(tmp_path), "-I", str(ROOT / "csrc"),
                           "-I", str(inc), str(CUDA_DIR / "segment_lse_aot_registry.cpp"), "-o", str(tmp_path / "r.o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


# --------------------------------------------------------------------------------- on a GPU
def _reference(x, bank, offsets, scale):
    """float64 truth: lse per segment, max0 and the first argmax of segment 0."""
    L = scale.double()[:, None] * (x.double() @ bank.double().T)
    lse = torch.stack([torch.logsumexp(L[:, a:b], 1) if b > a else torch.full((L.shape[0],), float("-inf"),
                                                                               dtype=torch.float64)
                       for a, b in zip(offsets[:-1], offsets[1:])], 1)
    end0 = offsets[1]
    return lse, L[:, :end0].max(1).values, L[:, :end0].argmax(1)


@pytest.mark.gpu
@pytest.mark.parametrize("offsets,splits,programs,argmax", [(OFFSETS, 1, 1, True), (OFFSETS, 3, 5, True),
                                                            (OFFSETS, 1, 40, True), (OFFSETS_WIDE0, 3, 7, True),
                                                            (OFFSETS_WIDE0, 3, 5, False)])
def test_gpu_sm90_aot_against_float64_and_the_jit_launcher(sm90, tmp_path, offsets, splits, programs, argmax):
    """The whole C++ path on an sm_90 GPU (real cuTensorMapEncodeTiled, cuMemsetD32Async,
    cuLaunchKernel): it takes the TMA path, its results match float64 and the Python
    launcher's JIT kernels on the same inputs, stream-K grid (pieces cutting segments, P > U)
    and splits."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("needs an sm_90 GPU")
    from fastood.ops._triton_segment_lse_sm90 import segment_lse_triton_sm90

    inc = cuda_emulator.cuda_include()
    exe = tmp_path / "aot_sm90_gpu"
    cmd = ["nvcc", "-std=c++17", "-O2", "-arch=sm_90", "-I", str(ROOT / "csrc"), "-I", str(sm90["dir"]), "-I", str(inc),
           str(CUDA_DIR / "testing" / "aot_sm90_gpu.cpp"), str(CUDA_DIR / "segment_lse_aot.cpp"),
           str(CUDA_DIR / "triton_aot_launch.cpp"), str(CUDA_DIR / "segment_lse.cu"), str(CUDA_DIR / "head.cu"),
           "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    gen = torch.Generator().manual_seed(11)
    B, D = 300, 64
    N, S = offsets[-1], len(offsets) - 1
    x = torch.nn.functional.normalize(torch.randn(B, D, generator=gen), dim=1).half()
    bank = torch.nn.functional.normalize(torch.randn(N, D, generator=gen), dim=1).half()
    scale = torch.full((B,), 100.0) / x.float().norm(dim=1)
    off = torch.tensor(offsets, dtype=torch.int64)
    for name, t in [("x", x), ("bank", bank), ("offsets", off), ("scale", scale)]:
        (tmp_path / f"{name}.bin").write_bytes(t.contiguous().view(torch.uint8).numpy().tobytes())
    (tmp_path / "args.txt").write_text(
        f"B {B}\nN {N}\nD {D}\nS {S}\nprograms {programs}\nsplits {splits}\nargmax {int(argmax)}\n")
    run = subprocess.run([str(exe), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "path tma" in run.stdout, run.stdout
    import numpy as np

    lse = torch.from_numpy(np.fromfile(tmp_path / "lse.bin", dtype=np.float32)).view(B, S).double()
    max0 = torch.from_numpy(np.fromfile(tmp_path / "max0.bin", dtype=np.float32)).double()
    ref_lse, ref_max0, ref_arg = _reference(x, bank, offsets, scale)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert (lse[finite] - ref_lse[finite]).abs().max().item() <= 2e-3
    assert (max0 - ref_max0).abs().max().item() <= 2e-3
    if argmax:
        arg = torch.from_numpy(np.fromfile(tmp_path / "argmax0.bin", dtype=np.int64))
        L = scale.double()[:, None] * (x.double() @ bank.double().T)
        # A different index only where it ties the maximum within fp32 rounding.
        assert (L.gather(1, arg[:, None])[:, 0] - ref_max0).abs().max().item() <= 2e-3
    jl, jm, ja = segment_lse_triton_sm90(x.cuda(), bank.cuda(), off.cuda(), scale.cuda(), argmax, num_splits=splits,
                                         num_programs=programs)
    assert (lse - jl.cpu().double())[finite].abs().max().item() <= 1e-5
    assert (max0 - jm.cpu().double()).abs().max().item() <= 1e-5


# ------------------------------------------------- the head through the real images' sequence
def test_head_through_the_real_sm90_images_matches_float64(sm90, tmp_path):
    """The fused head (TensorRT plugin's computation) built as FASTOOD_TRITON_AOT=ON builds it,
    with the real sm_90 fp16 kernel set (this module's fixture) in the registry and the
    emulator's sm_90 device: segment_lse takes the sm90 TMA path inside head_workspace_bytes,
    and with each launch replaced by a model of its kernel (csrc/cuda/testing/aot_sm90_model.cpp,
    reading the images' own parameter names) the scores equal float64. Shows the real images'
    signatures carry every argument the sequence and the models need, and that the head's
    buffers and workspace hold the sequence's layout; the cubins themselves run only on a GPU."""
    from tests.test_cuda_dispatch import _head, _head_reference, _problem

    embed = sm90["embed"]
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "segment_lse_sm90_aot_kernels.h").write_text(sm90["text"])
    (inc / "segment_lse_aot_kernels.h").write_text(embed.registry([], "128x128x64 w8 s3"))  # no portable set
    sources = cuda_emulator._kernel_sources(tmp_path / "kernels")
    exe = tmp_path / "emu_driver_aot"
    cuda_emulator._compile(["-DFASTOOD_WITH_TRITON_AOT=1", "-I", str(inc), str(cuda_emulator.EMU_DIR / "emu_driver.cpp"),
                            *map(str, sources), str(CUDA_DIR / "segment_lse_aot.cpp"),
                            str(CUDA_DIR / "segment_lse_aot_registry.cpp"),
                            str(cuda_emulator.EMU_DIR / "aot_sm90_model.cpp"), "-o", str(exe)],
                           "plain", "the emulator with the real sm90 images")
    B, N, D, K, G = 1030, 302, 64, 140, 4
    x, bank = _problem(B, N, D, torch.float16, seed=9)
    log = tmp_path / "launches.txt"
    env = {"FASTOOD_EMU_CC": "90", "FASTOOD_CUDA_PATH": "auto", "FASTOOD_MODEL_LOG": str(log)}
    score, pred, path = _head(exe, tmp_path / "run", x, bank, K, "neglabel", G, env)
    assert path == "sm90 tma", path
    assert "launch hot tma 27 1 1" in log.read_text()  # one program per hot tile: 9 row blocks × 3
    ref, L = _head_reference(x, bank, K, "neglabel", G)
    assert (score.double() - ref).abs().max().item() <= 1e-4
    assert (L[:, :K].gather(1, pred.long()[:, None])[:, 0] - L[:, :K].max(1).values).abs().max().item() <= 1e-3
