"""Compile-time checks of the CUDA C++ kernels (csrc/cuda/*.cu) — no GPU needed.

nvcc compiles every source for sm_80 and sm_90 with ``-Xptxas -v`` (``bench/static_cuda.py``,
the same code that writes ``bench/results/static-cuda.md``); the tests read ptxas' report
and the SASS (``cuobjdump -sass``, the toolkit's or Triton's copy):

- every kernel the launchers use compiles for both targets;
- spills are exactly those documented in ``DOCUMENTED_SPILL_BYTES`` (0 elsewhere);
- static shared memory is within the 48 KB per-block limit and at least one block fits;
- the tensor-core path is the one the README describes (``HMMA.16816`` for fp16/bf16 on
  both targets, none for fp32, which uses IEEE FMAs);
- the online softmax's product ``t = v · s`` is not contracted into the exp2's argument:
  every ``MUFU.EX2`` input comes from an FADD/FMUL chain, never from an FFMA (nvcc turns
  ``v * s - m`` into one FFMA, rounding once where pass 1 rounds twice); a negative
  control compiles the source with ``*`` in place of ``__fmul_rn`` and must be caught.

Skipped cleanly when nvcc (or, for the SASS checks, cuobjdump) is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import static_cuda as sc

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on the PATH")
needs_cuobjdump = pytest.mark.skipif(sc.find_tool("cuobjdump") is None, reason="no cuobjdump (CUDA toolkit or Triton)")

EXPECTED_KERNELS = {"segment_lse_fwd_half", "segment_lse_fwd_f32", "segment_lse_merge", "split_starts_kernel",
                    "offsets_kernel", "row_scale_kernel", "score_kernel"}
FWD = ("segment_lse_fwd_half", "segment_lse_fwd_f32")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return sc.analyse(work=tmp_path_factory.mktemp("cubins"))


@pytest.mark.parametrize("arch", sc.ARCHS)
def test_every_kernel_compiles(report, arch):
    kernels, _ = report
    assert EXPECTED_KERNELS <= {k.base for k in kernels if k.arch == arch}
    # fp16 and bf16, vector and scalar loads: four instances of the 16-bit forward kernel.
    assert sum(k.base == "segment_lse_fwd_half" and k.arch == arch for k in kernels) == 4


@pytest.mark.parametrize("arch", sc.ARCHS)
def test_spills_are_the_documented_ones(report, arch):
    kernels, _ = report
    for k in (k for k in kernels if k.arch == arch):
        assert k.spill_stores == sc.DOCUMENTED_SPILL_BYTES.get((k.base, arch), 0), (k.name, arch, k.spill_stores)


@pytest.mark.parametrize("arch", sc.ARCHS)
def test_shared_memory_and_occupancy_fit(report, arch):
    kernels, _ = report
    for k in (k for k in kernels if k.arch == arch):
        assert k.smem <= sc.SM_LIMITS[arch]["static_smem"], k.name
        assert k.threads is not None, f"{k.name}: add its launch block size to BLOCK_THREADS"
        assert k.blocks_per_sm >= 1, k.name


def test_occupancy_rules_on_hand_computed_cases():
    # 168 registers: 168·32 = 5,376 per warp; 16,384 per sub-partition hold 3 warps → 12 warps
    # → 3 blocks of 4 warps (registers bind before the 16 blocks of 128 threads).
    assert sc.blocks_per_sm(90, 168, 33792, 128) == (3, "registers")
    # 128 registers: 4,096 per warp → 4 per sub-partition → 16 warps → 4 blocks.
    assert sc.blocks_per_sm(90, 128, 0, 128)[0] == 4
    # 33,792 B smem + 1 KB reserved on A100's 164 KB: 4 blocks; 32 registers leave smem binding.
    assert sc.blocks_per_sm(80, 32, 33792, 128) == (4, "shared memory")
    # Tiny kernel: the 2,048-thread limit (8 blocks of 256).
    assert sc.blocks_per_sm(90, 16, 0, 256) == (8, "threads")


@needs_cuobjdump
@pytest.mark.parametrize("arch", sc.ARCHS)
def test_tensor_core_path(report, arch):
    kernels, _ = report
    for k in (k for k in kernels if k.arch == arch):
        if k.base == "segment_lse_fwd_half":
            # WMMA 16×16×16 compiles to mma.sync m16n8k16 on both targets (no wgmma: see README).
            assert k.tensor_core == "HMMA.16816" and k.sass_counts["HMMA"] > 0, (k.name, k.tensor_core)
        else:
            assert k.tensor_core == "none", (k.name, k.tensor_core)  # fp32 stays IEEE FMA (no TF32)


# ------------------------------------------------------------- the pass-2 product
_REG = re.compile(r"R\d+|RZ")


def _operands(instr: str) -> list[str]:
    body = instr.split(None, 2 if instr.startswith("@") else 1)[-1]
    return [o.strip() for o in body.split(",")]


def _reg(operand: str) -> str | None:
    m = _REG.search(operand)
    return m.group(0) if m else None


def exp2_feeders(instrs: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    """For every MUFU.EX2: (opcode of the instruction that computed its input, opcodes of
    what computed that one's register sources), walking back through the predicated
    ``FMUL x, x, 0.5`` of exp2f's denormal range fix-up (straight-line code: enough for
    the unrolled loops here; a definer across a branch may be missed, never invented)."""

    def definer(i: int, reg: str) -> int | None:
        for j in range(i - 1, -1, -1):
            ins = instrs[j]
            ops = _operands(ins)
            if not ops or _reg(ops[0]) != reg or ops[0].startswith("P"):
                continue
            if ins.startswith("@") and reg in [_reg(o) for o in ops[1:]]:
                continue  # conditional rewrite of the same register: its value comes from further up
            return j
        return None

    out = []
    for i, ins in enumerate(instrs):
        if sc.opcode(ins).startswith("MUFU.EX2"):
            src = _reg(_operands(ins)[-1])
            j = definer(i, src) if src else None
            if j is None:
                out.append(("?", ()))
                continue
            srcs = [_reg(o) for o in _operands(instrs[j])[1:]]
            defs = [definer(j, r) for r in srcs if r not in (None, "RZ")]
            out.append((sc.opcode(instrs[j]).split(".")[0],
                        tuple(sorted(sc.opcode(instrs[k]).split(".")[0] for k in defs if k is not None))))
    return out


def _fwd_sass(sass: dict, arch: int) -> dict[str, list[str]]:
    funcs = sass[("segment_lse.cu", arch)]
    return {name: ins for name, ins in funcs.items() if "segment_lse_fwd" in name}


def test_sass_walker_on_hand_written_code():
    instrs = [
        "LDS R12, [R13]",
        "FADD R19, R20, -R21",
        "FMUL R12, R12, R139",
        "FADD R12, -R19, R12",
        "FSETP.GEU.AND P0, PT, R12, -126, PT",
        "@!P0 FMUL R12, R12, 0.5",
        "MUFU.EX2 R9, R12",
        "FFMA R13, R14, R139, -R19",
        "MUFU.EX2 R10, R13",
    ]
    assert exp2_feeders(instrs) == [("FADD", ("FADD", "FMUL")), ("FFMA", ("FADD",))]


@needs_cuobjdump
@pytest.mark.parametrize("arch", sc.ARCHS)
def test_exp2_arguments_are_never_contracted(report, arch):
    _, sass = report
    fwd = _fwd_sass(sass, arch)
    assert len(fwd) == 5
    for name, instrs in fwd.items():
        feeders = exp2_feeders(instrs)
        assert feeders, name
        assert all(op != "FFMA" for op, _ in feeders), (name, feeders)
        # Pass 2: exp2(__fmul_rn(v, s) − m) is an FMUL then an FADD.
        assert any(op == "FADD" and "FMUL" in srcs for op, srcs in feeders), (name, feeders)


@needs_cuobjdump
def test_contracted_product_is_caught(tmp_path):
    """Negative control: with a plain ``*`` (the code before the fix) nvcc emits FFMA → MUFU.EX2."""
    text = (sc.CUDA_DIR / "segment_lse.cu").read_text()
    assert text.count("__fmul_rn(sm_c[(c - n0) * LDC + r], t_scale)") == 2
    src = tmp_path / "segment_lse.cu"
    src.write_text(text.replace("__fmul_rn(sm_c[(c - n0) * LDC + r], t_scale)", "sm_c[(c - n0) * LDC + r] * t_scale"))
    (tmp_path / "fastood_cuda.cuh").write_text((sc.CUDA_DIR / "fastood_cuda.cuh").read_text())
    cubin, _ = sc.compile_cubin(src, 90, tmp_path)
    funcs = {n: i for n, i in sc.disassemble(cubin).items() if "segment_lse_fwd" in n}
    assert any(op == "FFMA" for ins in funcs.values() for op, _ in exp2_feeders(ins))


def test_bench_writes_the_table(report, tmp_path):
    kernels, _ = report
    md = sc.to_markdown({"commit": "abc", "date": "d", "nvcc": "13.0", "cuobjdump": "x"}, kernels)
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert len(rows) == len(kernels)
    assert any("segment_lse_fwd_half<fp16, true>" in r and "sm_90" in r for r in rows)


# ------------------------------------- the Triton kernel ahead of time, for the C++ launchers
# csrc/cuda/embed_triton.py compiles one AotSpec to a cubin and writes it as a header that
# csrc/cuda/triton_aot.h / triton_aot_launch.cpp launch with the CUDA driver API.
AOT_SPEC = ("fastood.ops._triton_segment_lse", 90, "float16", "segment_lse_fwd[128x128x64 w8 s3]")
AOT_SYMBOL = "segment_lse_fwd_sm90_fp16"


def _embed_module():
    import importlib.util

    import sys

    if "embed_triton" in sys.modules:
        return sys.modules["embed_triton"]
    spec = importlib.util.spec_from_file_location("embed_triton", sc.CUDA_DIR / "embed_triton.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["embed_triton"] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def aot(tmp_path_factory):
    embed = _embed_module()
    k = embed.compile_kernel(*AOT_SPEC)
    out = tmp_path_factory.mktemp("aot")
    (out / f"{AOT_SYMBOL}.h").write_text(embed.header(k, AOT_SYMBOL))
    return embed, k, out


def _cuda_home() -> Path | None:
    from tests import cuda_emulator

    inc = cuda_emulator.cuda_include()
    return inc.parent if inc is not None and (inc / "cuda.h").is_file() else None


def test_ptx_param_reader_on_hand_written_ptx():
    embed = _embed_module()
    ptx = """
.visible .entry k(
\t.param .u64 .ptr .global .align 1 k_param_0,
\t.param .u32 k_param_1,
\t.param .f32 k_param_2,
\t.param .u64 k_param_3,
\t.param .u64 .ptr .global .align 1 k_param_4
)
.reqntid 128
{ ret; }"""
    assert embed.ptx_params(ptx, "k") == [".u64 .ptr", ".u32", ".f32", ".u64", ".u64 .ptr"]
    params = [("x", "kPointer"), ("n", "kI32"), ("s", "kF32"), ("m", "kI64"), ("global_scratch", "kGlobalScratch")]
    assert embed.expected_ptx(params) == embed.ptx_params(ptx, "k")
    assert embed.expected_ptx(params[1:]) != embed.ptx_params(ptx, "k")  # one argument short: caught


def test_embedded_cubin_is_the_triton_compile_of_the_source(aot):
    """The header's bytes are the cubin of a fresh, independent triton.compile of the same
    spec (another process), its metadata those Triton's own launcher would use."""
    import hashlib

    embed, k, out = aot
    fresh = embed.compile_kernel(*AOT_SPEC)
    text = (out / f"{AOT_SYMBOL}.h").read_text()
    body = text.split(f"{AOT_SYMBOL}_cubin[")[1].split("{", 1)[1].split("}", 1)[0]
    embedded = bytes(int(v, 16) for v in re.findall(r"0x([0-9a-f]{2})", body))
    assert embedded == fresh.cubin and embedded[:4] == b"\x7fELF"
    assert hashlib.sha256(fresh.cubin).hexdigest() in text
    assert (k.name, k.num_warps, k.shared) == (fresh.name, fresh.num_warps, fresh.shared)
    spec = embed.find_spec(*AOT_SPEC)
    assert k.num_warps == spec.num_warps and k.name == spec.fn.__name__


@needs_cuobjdump
def test_embedded_cubin_uses_the_intended_tensor_cores(aot, tmp_path):
    embed, k, _ = aot
    spec = embed.find_spec(*AOT_SPEC)
    cubin = tmp_path / "k.cubin"
    cubin.write_bytes(k.cubin)
    funcs = sc.disassemble(cubin)
    assert list(funcs) == [k.name]
    family = sc.tensor_core_family(sc.sass_counts(funcs[k.name]), funcs[k.name])
    want = {"wgmma": "HGMMA", "mma": "HMMA"}.get(spec.intended_mma, "none")
    assert family.startswith(want), (family, spec.intended_mma)


_PROBE = r"""
#include <cinttypes>
#include <cstdio>
#include "@HEADER@"
namespace a = fastood::cuda::aot;
int main(int argc, char**) {
  const auto& k = a::@SYMBOL@;
  for (int i = 0; i < k.num_params; ++i)
    std::printf("param %s %s %zu\n", k.params[i].name, a::param_kind_name(k.params[i].kind), a::param_bytes(k.params[i].kind));
  std::vector<a::TritonArg> args;
  int n = 0;
  for (int i = 0; i < k.num_params; ++i) {
    switch (k.params[i].kind) {
      case a::ParamKind::kPointer: args.push_back(a::TritonArg::ptr(reinterpret_cast<void*>(0x1000 + 16 * n))); break;
      case a::ParamKind::kI32: args.push_back(a::TritonArg::i32(-5 - n)); break;
      case a::ParamKind::kI64: args.push_back(a::TritonArg::i64(-(int64_t{1} << 40) - n)); break;
      case a::ParamKind::kF32: args.push_back(a::TritonArg::f32(0.5f + n)); break;
      default: continue;
    }
    ++n;
  }
  a::PackedParams p;
  std::string e = a::pack_params(k, args, nullptr, nullptr, &p);
  std::printf("pack '%s'\n", e.c_str());
  for (std::size_t i = 0; i < p.pointers.size(); ++i) {
    unsigned char b[8];
    std::memcpy(b, p.pointers[i], 8);
    std::printf("slot");
    for (int j = 0; j < 8; ++j) std::printf(" %02x", b[j]);
    std::printf("\n");
  }
  std::vector<a::TritonArg> shorter(args.begin(), args.end() - 1);
  std::printf("short '%s'\n", a::pack_params(k, shorter, nullptr, nullptr, &p).c_str());
  std::vector<a::TritonArg> wrong = args;
  wrong[0] = a::TritonArg::i32(1);
  std::printf("kind '%s'\n", a::pack_params(k, wrong, nullptr, nullptr, &p).c_str());
#ifdef WITH_LAUNCH
  if (argc > 1) std::printf("launch '%s'\n", a::launch(k, 1, 1, 1, args, nullptr, nullptr).c_str());
#endif
  return 0;
}
"""


def _build_probe(out: Path, tmp_path: Path, link: bool) -> Path:
    home = _cuda_home()
    if home is None or shutil.which("g++") is None:
        pytest.skip("needs g++ and the CUDA headers")
    src = tmp_path / "probe.cpp"
    src.write_text(_PROBE.replace("@HEADER@", str(out / f"{AOT_SYMBOL}.h")).replace("@SYMBOL@", AOT_SYMBOL))
    exe = tmp_path / "probe"
    cmd = ["g++", "-std=c++17", "-O1", "-Wall", "-Werror", "-I", str(sc.ROOT / "csrc"), "-I", str(home / "include"),
           str(src)]
    if link:
        lib = home / "lib64"
        if not (lib / "libcudart_static.a").is_file():
            pytest.skip("no libcudart_static.a")
        cmd += ["-DWITH_LAUNCH", str(sc.CUDA_DIR / "triton_aot_launch.cpp"), "-L", str(lib), "-lcudart_static",
                "-ldl", "-lpthread", "-lrt"]
    proc = subprocess.run([*cmd, "-o", str(exe)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return exe


def test_launcher_packs_the_parameters_the_ptx_declares(aot, tmp_path):
    """The C++ side (kinds, byte sizes, packed values) against the PTX .entry's .param list."""
    embed, k, out = aot
    exe = _build_probe(out, tmp_path, link=False)
    lines = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    params = [line.split()[1:] for line in lines if line.startswith("param ")]
    size_of = {".u64 .ptr": 8, ".u64": 8, ".u32": 4, ".f32": 4}
    kind_of = {".u64 .ptr": {"pointer", "global_scratch", "profile_scratch"}, ".u64": {"i64"}, ".u32": {"i32"},
               ".f32": {"fp32"}}
    assert len(params) == len(k.ptx_params)
    for (name, kind, nbytes), ptx in zip(params, k.ptx_params):
        assert int(nbytes) == size_of[ptx] and kind in kind_of[ptx], (name, kind, ptx)
    assert [p[1] for p in params[-2:]] == ["global_scratch", "profile_scratch"]  # Triton's trailing pointers
    assert "pack ''" in lines
    slots = [bytes(int(b, 16) for b in line.split()[1:]) for line in lines if line.startswith("slot")]
    n = 0
    for (name, kind, _), slot in zip(params, slots):
        if kind == "pointer":
            assert int.from_bytes(slot, "little") == 0x1000 + 16 * n
        elif kind == "i32":
            assert int.from_bytes(slot[:4], "little", signed=True) == -5 - n
        elif kind in ("global_scratch", "profile_scratch"):
            assert slot == bytes(8)
            continue
        n += 1
    assert any(line.startswith("short '") and "expected 18 arguments, got 17" in line for line in lines)
    assert any(line.startswith("kind '") and "must be pointer, got i32" in line for line in lines)


def test_launcher_links_and_reports_a_missing_driver(aot, tmp_path):
    """triton_aot_launch.cpp builds against the CUDA headers and the static runtime (no
    libcuda link); without a GPU driver, launch() returns the reason instead of crashing."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the probe's fake pointers must not be launched")
    _, _, out = aot
    exe = _build_probe(out, tmp_path, link=True)
    proc = subprocess.run([str(exe), "launch"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("launch '"))
    assert line != "launch ''" and ("driver" in line.lower() or "cudaFree" in line), line


def test_segment_lse_compiles_with_the_aot_dispatch(tmp_path):
    """segment_lse.cu as FASTOOD_TRITON_AOT=ON builds it (the dispatch to segment_lse_aot)."""
    out = tmp_path / "seg.o"
    cmd = ["nvcc", "-std=c++17", "-O3", "-arch=sm_90", "-DFASTOOD_WITH_TRITON_AOT=1", "-I", str(sc.ROOT / "csrc"),
           "-c", str(sc.CUDA_DIR / "segment_lse.cu"), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
def test_registry_header_compiles_into_the_dispatch(tmp_path):
    """embed_triton.py --registry (what CMake runs with FASTOOD_TRITON_AOT=ON) for sm_90 fp16:
    six images (fwd × split × argmax, merge × argmax) and a kernel set the registry compiles with."""
    home = _cuda_home()
    if home is None or shutil.which("g++") is None:
        pytest.skip("needs g++ and the CUDA headers")
    embed = _embed_module()
    text = embed.registry([(90, "float16")], "128x128x64 w8 s3")
    (tmp_path / "segment_lse_aot_kernels.h").write_text(text)
    # The sm90 table (tests/test_triton_aot_tma.py fills it): empty here, count 0.
    (tmp_path / "segment_lse_sm90_aot_kernels.h").write_text(embed.sm90_registry([]))
    assert text.count("inline const TritonKernelImage") == 6 and "kSegmentLseAotSetCount = 1" in text
    assert "k.block_b = 128;" in text and "k.merge_block = 128;" in text
    proc = subprocess.run(["g++", "-std=c++17", "-Wall", "-Werror", "-c", "-I", str(tmp_path), "-I", str(sc.ROOT / "csrc"),
                           "-I", str(home / "include"), str(sc.CUDA_DIR / "segment_lse_aot_registry.cpp"),
                           "-o", str(tmp_path / "registry.o")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
