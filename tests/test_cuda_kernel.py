"""The CUDA C++ segmented-LSE kernel (csrc/cuda/, backend ``cuda``) and the plugin's head.

Three kinds of tests:

- CPU-side (run everywhere): every CUDA source compiles with nvcc for sm_80 (when nvcc
  is on the PATH, as on CI); the launcher refuses CPU tensors with a clear error;
  ``fastood.backends()['cuda']`` says why it is unavailable; the split planner and the
  bindings' argument checks (no GPU needed: they run before any launch).
- Kernel (``test_kernel_*``, each twice through the ``kernel`` fixture: ``[gpu]`` on a
  CUDA GPU, skipped without one, and ``[emu]`` on the CPU emulator of
  ``tests/cuda_emulator.py``, which runs the same ``.cu`` sources with one OS thread per
  CUDA thread): the kernel against a float64 truth computed inline from the same
  (rounded) inputs — shapes that are not multiples of the 128 × 64 tiles, forced and
  automatic column splits, fp32/fp16/bf16, non-contiguous and misaligned inputs
  (scalar-load path), extreme scales, argmax ties across tiles and splits, determinism,
  and the plugin's fused head against ``fastood.ops`` on the torch backend.
- GPU only (``@pytest.mark.gpu``): torch's current stream and device, and the public
  ops through ``backend="cuda"``.
The emulator's sanitizer runs (races, bounds) are in tests/test_cuda_emulator.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import fastood
from fastood._backends import load_extension
from fastood.ops._cuda_segment_lse import head_score_cuda, segment_lse_cuda
from tests import cuda_emulator
from tests.numerics import check_argmax, max_abs_err, neglabel_offsets, segment_truth, unit_rows

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))

_ext, _ = load_extension()
HAS_CUDA_EXT = _ext is not None and _ext.cuda_available()
HAS_GPU = torch.cuda.is_available()
needs_ext = pytest.mark.skipif(not HAS_CUDA_EXT, reason="fastood._C was built without CUDA kernels")


def gpu_test(fn):
    """``gpu`` marker + skip unless a GPU and the CUDA kernels are both present."""
    fn = pytest.mark.skipif(not (HAS_GPU and HAS_CUDA_EXT), reason="needs a CUDA GPU and fastood._C with CUDA kernels")(fn)
    return pytest.mark.gpu(fn)


# ============================================================================ CPU side
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on the PATH")
@pytest.mark.parametrize("src", CUDA_SOURCES, ids=[p.name for p in CUDA_SOURCES])
def test_cuda_source_compiles_with_nvcc(src, tmp_path):
    """Each CUDA source compiles to an sm_80 object (the flags CMake uses: C++17, -O3)."""
    out = tmp_path / (src.stem + ".o")
    cmd = ["nvcc", "-std=c++17", "-O3", "-arch=sm_80", "-I", str(ROOT / "csrc"), "-c", str(src), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"nvcc failed on {src.name}:\n{proc.stderr[-4000:]}"
    assert out.stat().st_size > 0


def _cuda_home() -> Path | None:
    """The CUDA toolkit nvcc belongs to (nvcc may be a wrapper script outside it)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), str(Path(nvcc).resolve().parents[1]),
                  "/usr/local/cuda"]
    for c in candidates:
        if c and (Path(c) / "include" / "cuda_runtime.h").is_file() and (Path(c) / "lib64").is_dir():
            return Path(c)
    return None


def _sh(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{what} failed:\n{' '.join(cmd)}\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"


@pytest.mark.skipif(_cuda_home() is None or shutil.which("g++") is None, reason="needs nvcc (with the CUDA headers) and g++")
def test_trt_plugin_against_the_api_stand_in(tmp_path):
    """The TensorRT plugin compiles, links with the CUDA kernels, and answers the builder/runtime
    calls correctly — against csrc/trt/testing's stand-in of the TensorRT 10 plugin API (TensorRT
    itself cannot be installed here; this checks the plugin's logic, not ABI compatibility)."""
    cuda = _cuda_home()
    testing = ROOT / "csrc" / "trt" / "testing"
    lib = tmp_path / "lib"
    lib.mkdir()
    objs = []
    for src in CUDA_SOURCES:
        obj = tmp_path / (src.stem + ".o")
        _sh(["nvcc", "-std=c++17", "-O1", "-arch=sm_80", "-Xcompiler", "-fPIC", "-I", str(ROOT / "csrc"),
             "-c", str(src), "-o", str(obj)], f"nvcc {src.name}")
        objs.append(str(obj))
    inc = ["-I", str(testing), "-I", str(cuda / "include"), "-I", str(ROOT / "csrc")]
    _sh(["g++", "-std=c++17", "-shared", "-fPIC", *inc, str(testing / "registry_stub.cpp"), "-o", str(lib / "libnvinfer.so")],
        "stub libnvinfer")
    plugin = tmp_path / "libfastood_trt_plugin.so"
    _sh(["g++", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Werror", *inc,
         str(ROOT / "csrc" / "trt" / "segment_lse_score_plugin.cpp"), *objs, "-o", str(plugin),
         "-L", str(lib), "-lnvinfer", "-L", str(cuda / "lib64"), "-lcudart_static", "-ldl", "-lpthread", "-lrt",
         "-Wl,--no-undefined"], "plugin library")
    harness = tmp_path / "plugin_harness"
    # emu_io.h (file helpers of its --enqueue mode) last, so <cuda_runtime.h> stays the toolkit's.
    _sh(["g++", "-std=c++17", *inc, "-idirafter", str(ROOT / "csrc" / "cuda" / "testing"), str(testing / "plugin_harness.cpp"), "-o", str(harness),
         "-L", str(lib), "-lnvinfer", "-ldl", f"-Wl,-rpath,{lib}"], "plugin harness")
    proc = subprocess.run([str(harness), str(plugin)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout


def test_at_least_the_kernel_sources_exist():
    names = {p.name for p in CUDA_SOURCES}
    assert {"segment_lse.cu", "head.cu"} <= names


def test_launcher_rejects_cpu_tensors():
    x = torch.randn(3, 8)
    bank = torch.nn.functional.normalize(torch.randn(10, 8), dim=1)
    off = torch.tensor([0, 4, 10])
    with pytest.raises(ValueError, match="needs CUDA tensors, got x on cpu"):
        segment_lse_cuda(x, bank, off, torch.ones(3), True)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        head_score_cuda(x, bank, 4)


def test_public_ops_reject_cuda_backend_on_cpu():
    x = torch.randn(3, 8)
    bank = torch.nn.functional.normalize(torch.randn(10, 8), dim=1)
    with pytest.raises(ValueError, match="cuda"):
        fastood.ops.segment_lse(x, bank, [0, 4, 10], backend="cuda")


@pytest.mark.skipif(HAS_GPU, reason="checks the message of a machine without a GPU")
def test_backend_status_says_why_cuda_is_unavailable():
    status = fastood.backends()["cuda"]
    assert not status.available
    if _ext is None:
        assert "not importable" in status.reason
    elif not _ext.cuda_available():
        assert "built without CUDA kernels" in status.reason
    else:
        assert "no CUDA GPU" in status.reason


@needs_ext
def test_build_info_reports_cuda_runtime():
    info = _ext.build_info()
    assert info["cuda"] is True
    assert isinstance(info["cuda_runtime"], int) and info["cuda_runtime"] >= 11000
    assert _ext.cuda_runtime_version() == info["cuda_runtime"]


@needs_ext
@pytest.mark.parametrize(
    "B,N,S,sms,forced",
    [(1, 11400, 101, 132, 0), (37, 11400, 101, 132, 0), (4096, 11400, 101, 132, 0), (100000, 11400, 101, 132, 0),
     (21, 203, 9, 132, 100), (21, 203, 9, 132, 2), (5, 64, 1, 8, 3), (5, 65, 1, 8, 3), (1, 1, 1, 132, 0)],
)
def test_split_plan_invariants(B, N, S, sms, forced):
    """Whole 64-column tiles per split, every column covered once, workspace under its cap."""
    splits, chunk, ws = _ext.cuda_plan_splits(B, N, S, sms, 3, forced)
    assert splits >= 1 and chunk % 64 == 0 and chunk >= 64
    assert (splits - 1) * chunk < N <= splits * chunk
    assert ws <= 64 * 2**20
    if splits == 1:
        assert ws == 0
    else:
        assert ws >= splits * S * B * 8 + splits * B * 4  # m, l per (split, segment, row) + argmax per (split, row)
    if forced:
        assert splits <= forced
    if B >= 3 * sms * 128 and not forced:
        assert splits == 1  # enough row blocks: no split


@needs_ext
@pytest.mark.parametrize(
    "B,per_sm,expected",
    [
        # 32 row blocks, one wave = 132 SMs × 3 resident blocks = 396 → ceil(396/32) = 13 splits;
        # chunk = ceil(ceil(11400/13)/64)·64 = 896 columns, ceil(11400/896) = 13 splits.
        (4096, 3, (13, 896)),
        # 4 resident blocks would give ceil(528/32) = 17 → chunk 704 → 17 splits.
        (4096, 4, (17, 704)),
        # 396 row blocks fill the wave of 3-block SMs by themselves: no split (4/SM: 2 splits).
        (396 * 128, 3, (1, 11456)),
        (396 * 128, 4, (2, 5760)),
        # 395 row blocks: one block short of the wave → 2 splits.
        (395 * 128, 3, (2, 5760)),
    ],
)
def test_split_plan_fills_one_wave_of_resident_blocks(B, per_sm, expected):
    """The automatic split targets SMs × (resident blocks per SM from the occupancy API),
    hand-computed here for an H100 (132 SMs), N = 11,400 columns and S = 2 segments (a
    workspace far under its 64 MB cap, which would otherwise lower the split count)."""
    splits, chunk, _ = _ext.cuda_plan_splits(B, 11400, 2, 132, per_sm)
    assert (splits, chunk) == expected


@needs_ext
def test_split_plan_respects_a_small_workspace_cap():
    splits, chunk, ws = _ext.cuda_plan_splits(64, 100000, 200, 132, 3, 0, 1 << 20)
    assert ws <= 1 << 20
    splits1, _, ws1 = _ext.cuda_plan_splits(64, 100000, 200, 132, 3, 0, 0)
    assert splits1 == 1 and ws1 == 0


@needs_ext
def test_split_plan_and_occupancy_bindings_check_their_arguments():
    with pytest.raises(ValueError, match="blocks_per_sm"):
        _ext.cuda_plan_splits(64, 1000, 2, 132, 0)
    with pytest.raises(ValueError, match="dtype"):
        _ext.cuda_fwd_blocks_per_sm("float64", True)
    # The vector-load variant needs 16-byte aligned bases and row strides / D in multiples of 8.
    assert _ext.cuda_fwd_vector_loads(256, 64, 512, 64, 64)
    assert not _ext.cuda_fwd_vector_loads(258, 64, 512, 64, 64)
    assert not _ext.cuda_fwd_vector_loads(256, 68, 512, 64, 64)
    assert not _ext.cuda_fwd_vector_loads(256, 64, 512, 64, 60)


@needs_ext
def test_bindings_validate_before_launching():
    args = dict(x=256, ldx=64, bank=256, ldb=64, B=4, N=100, D=64, offsets=256, S=2, row_scale=256, lse=256,
                max0=256, argmax0=0, splits=1, chunk=128, workspace=0, workspace_bytes=0, stream=0)
    with pytest.raises(ValueError, match="dtype"):
        _ext.segment_lse_cuda("float64", **args)
    with pytest.raises(ValueError, match=">= 1"):
        _ext.segment_lse_cuda("float16", **{**args, "B": 0})
    with pytest.raises(ValueError, match="null"):
        _ext.segment_lse_cuda("float16", **{**args, "x": 0})
    with pytest.raises(ValueError, match="method"):
        _ext.cuda_head_workspace_bytes("energy", 10, 1, 0.01, True, 8, 100)
    with pytest.raises(ValueError, match="num_id"):
        _ext.cuda_head_workspace_bytes("neglabel", 100, 1, 0.01, True, 8, 100)
    with pytest.raises(ValueError, match="groups"):
        _ext.cuda_head_workspace_bytes("neglabel", 90, 11, 0.01, True, 8, 100)
    with pytest.raises(ValueError, match="temperature"):
        _ext.cuda_head_workspace_bytes("mcm", 90, 1, 0.0, True, 8, 100)
    assert _ext.cuda_head_workspace_bytes("mcm", 100, 1, 1.0, True, 8, 100) > 0


@needs_ext
@pytest.mark.parametrize("method,K,G", [("neglabel", 1000, 100), ("neglabel", 10, 1), ("mcm", 1000, 1)])
def test_head_workspace_grows_with_the_batch(method, K, G):
    """TensorRT reserves the size for the profile's max batch: it must cover every smaller batch."""
    sizes = [_ext.cuda_head_workspace_bytes(method, K, G, 0.01, True, b, 11400) for b in range(1, 700, 7)]
    assert all(a <= b for a, b in zip(sizes, sizes[1:]))
    assert sizes[0] > 0


@needs_ext
def test_bad_split_plan_is_an_error_not_a_launch():
    args = dict(x=256, ldx=64, bank=256, ldb=64, B=4, N=1000, D=64, offsets=256, S=2, row_scale=256, lse=256,
                max0=256, argmax0=0, splits=1, chunk=128, workspace=0, workspace_bytes=0, stream=0)
    with pytest.raises(RuntimeError, match="single pass needs chunk >= N"):
        _ext.segment_lse_cuda("float16", **args)
    with pytest.raises(RuntimeError, match="workspace"):
        _ext.segment_lse_cuda("float16", **{**args, "splits": 8, "chunk": 128})


@needs_ext
@pytest.mark.skipif(HAS_GPU, reason="launches with fake pointers only where no GPU can run them")
def test_launch_without_a_gpu_raises_runtime_error_with_the_cuda_error():
    args = dict(x=256, ldx=64, bank=256, ldb=64, B=4, N=100, D=64, offsets=256, S=2, row_scale=256, lse=256,
                max0=256, argmax0=0, splits=1, chunk=128, workspace=0, workspace_bytes=0, stream=0)
    with pytest.raises(RuntimeError, match="cudaError"):
        _ext.segment_lse_cuda("float16", **args)


# ================================================================================= GPU
def run(x, bank, offsets, row_scale, want_argmax=True, **kw):
    off = torch.tensor(offsets, dtype=torch.int64, device=x.device)
    out = segment_lse_cuda(x, bank, off, row_scale.to(x.device), want_argmax, **kw)
    torch.cuda.synchronize()
    return out


class GpuKernel:
    """The kernels on the GPU, through fastood._C."""

    device = "cuda"

    def segment_lse(self, x, bank, offsets, row_scale, want_argmax=True, num_splits=None):
        return run(x.cuda(), bank.cuda(), offsets, row_scale, want_argmax, num_splits=num_splits)

    def head_score(self, x, bank, num_id, **kw):
        out = head_score_cuda(x.cuda(), bank.cuda(), num_id, **kw)
        torch.cuda.synchronize()
        return out


class EmulatedKernel:
    """The same kernel sources on the CPU emulator (tests/cuda_emulator.py): every call
    runs the blocks in a new random order, so bitwise-equal repeats also show that the
    result does not depend on block order."""

    device = "cpu"

    def __init__(self, exe, work):
        self.exe, self.work, self.calls = exe, work, 0

    def _dir(self):
        self.calls += 1
        return self.work / f"call{self.calls}"

    def segment_lse(self, x, bank, offsets, row_scale, want_argmax=True, num_splits=None):
        lse, max0, arg, _ = cuda_emulator.segment_lse(
            self.exe, self._dir(), x.cpu(), bank.cpu(), offsets, row_scale.cpu(), want_argmax=want_argmax,
            num_splits=num_splits, seed=self.calls)
        return lse, max0, (arg if want_argmax else torch.zeros(0, dtype=torch.int64))

    def head_score(self, x, bank, num_id, **kw):
        return cuda_emulator.head_score(self.exe, self._dir(), x.cpu(), bank.cpu(), num_id, **kw)


@pytest.fixture(params=[pytest.param("gpu", marks=pytest.mark.gpu), "emu"])
def kernel(request, tmp_path):
    """Where the CUDA kernels run: ``gpu`` (skipped without one) or ``emu`` (the CPU emulator)."""
    if request.param == "gpu":
        if not (HAS_GPU and HAS_CUDA_EXT):
            pytest.skip("needs a CUDA GPU and fastood._C with CUDA kernels")
        return GpuKernel()
    return EmulatedKernel(request.getfixturevalue("emulator_exe"), tmp_path)


LAYOUTS = [
    ("one_segment", 77, [0, 77]),
    ("empty_and_size1", 100, [0, 0, 30, 31, 31, 70, 100, 100]),
    ("neglabel", 600, neglabel_offsets(200, 10, 40)),
    ("big_first_odd_groups", 331, neglabel_offsets(101, 5, 46)),
    ("size1_run", 70, list(range(0, 40)) + [40, 40, 70]),
    ("empty_first", 129, [0, 0, 64, 64, 96, 128, 129]),
    ("tile_edges", 257, [0, 63, 64, 65, 128, 191, 192, 256, 257]),
]


@pytest.mark.parametrize("name,N,offsets", LAYOUTS, ids=[c[0] for c in LAYOUTS])
@pytest.mark.parametrize("splits", [None, 1, 3], ids=["auto", "s1", "s3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("B", [1, 131], ids=["B1", "B131"])
def test_kernel_matches_float64(kernel, name, N, offsets, splits, dtype, B):
    """Truth of the rounded inputs: only fp32 accumulation error (×100 by the scale) remains."""
    gen = torch.Generator().manual_seed(31 * N + len(offsets) + B)
    D = 72 if dtype == torch.float32 else 40  # not multiples of the K-chunks (16 / 32)
    x = unit_rows(B, D, gen).to(dtype)
    bank = unit_rows(N, D, gen).to(dtype)
    row_scale = torch.linspace(1.0, 100.0, B, dtype=torch.float32)
    lse, max0, arg0 = kernel.segment_lse(x, bank, offsets, row_scale, num_splits=splits)
    ref_lse, ref_max, ref_arg, L = segment_truth(x, bank, offsets, row_scale)
    assert lse.shape == (B, len(offsets) - 1) and lse.dtype == torch.float32
    assert max0.shape == (B,) and arg0.shape == (B,) and arg0.dtype == torch.int64
    assert max_abs_err(lse, ref_lse) <= 1e-4
    assert max_abs_err(max0, ref_max) <= 1e-4
    check_argmax(arg0, ref_arg, L, offsets, tol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("splits", [None, 1, 4], ids=["auto", "s1", "s4"])
def test_kernel_low_precision_error_budget(kernel, dtype, splits):
    """Against the truth of the unrounded inputs: <= 2x torch's error (same rounded inputs, fp32 math) + 1e-4."""
    gen = torch.Generator().manual_seed(11)
    B, N, D = 133, 1260, 64
    offsets = neglabel_offsets(260, 8, 125)
    x64, bank64 = unit_rows(B, D, gen), unit_rows(N, D, gen)
    row_scale = torch.full((B,), 100.0)
    x, bank = x64.to(dtype), bank64.to(dtype)
    lse, max0, _ = kernel.segment_lse(x, bank, offsets, row_scale, num_splits=splits)
    ref_lse, _, _, _ = segment_truth(x64, bank64, offsets, row_scale)
    base_lse, base_max, _, _ = segment_truth(x, bank, offsets, row_scale)
    L32 = row_scale[:, None] * (x.float() @ bank.float().T)
    torch_lse = torch.stack([torch.logsumexp(L32[:, lo:hi], 1) for lo, hi in zip(offsets[:-1], offsets[1:])], 1)
    assert max_abs_err(lse, ref_lse) <= 2 * max_abs_err(torch_lse, ref_lse) + 1e-4
    assert max_abs_err(lse, base_lse) <= 1e-4
    assert max_abs_err(max0, base_max) <= 1e-4


@pytest.mark.parametrize("layout", ["x_strided", "x_transposed", "bank_transposed", "x_offset_by_one", "x_expanded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_kernel_non_contiguous_and_misaligned_inputs(kernel, layout, dtype):
    """Strided, transposed, 2-byte-misaligned (scalar-load path) and stride-0 rows."""
    gen = torch.Generator().manual_seed(3)
    B, N, D = 10, 150, 64
    offsets = [0, 60, 61, 100, 150]
    x, bank = unit_rows(B, D, gen).to(dtype), unit_rows(N, D, gen).to(dtype)
    xk, bk = x.to(kernel.device), bank.to(kernel.device)
    if layout == "x_strided":
        big = torch.zeros(B, 2 * D, dtype=dtype, device=kernel.device)
        big[:, ::2] = xk
        xk = big[:, ::2]
    elif layout == "x_transposed":
        xk = xk.T.contiguous().T
    elif layout == "bank_transposed":
        bk = bk.T.contiguous().T
    elif layout == "x_offset_by_one":
        flat = torch.zeros(B * D + 1, dtype=dtype, device=kernel.device)
        flat[1:] = xk.reshape(-1)
        xk = flat[1:].view(B, D)  # data_ptr not 16-byte aligned
    else:
        x = x[:1].expand(B, D)
        xk = xk[:1].expand(B, D)  # row stride 0
    row_scale = torch.full((B,), 50.0)
    ref_lse, ref_max, ref_arg, L = segment_truth(x, bank, offsets, row_scale)
    for splits in (1, 2):
        lse, max0, arg0 = kernel.segment_lse(xk, bk, offsets, row_scale, num_splits=splits)
        assert max_abs_err(lse, ref_lse) <= 1e-4
        assert max_abs_err(max0, ref_max) <= 1e-4
        check_argmax(arg0, ref_arg, L, offsets, tol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_kernel_rows_equal_to_bank_rows(kernel, dtype):
    """cos = 1 on some columns at scale 100: finite, accurate, argmax exactly found."""
    gen = torch.Generator().manual_seed(5)
    N, D = 300, 64
    offsets = [0, 150, 220, 300]
    bank = unit_rows(N, D, gen).to(dtype)
    pick = torch.tensor([0, 7, 63, 64, 149, 150, 299])
    x = bank[pick].clone()
    row_scale = torch.full((len(pick),), 100.0)
    for splits in (None, 1, 3):
        lse, max0, arg0 = kernel.segment_lse(x, bank, offsets, row_scale, num_splits=splits)
        ref_lse, ref_max, _, _ = segment_truth(x, bank, offsets, row_scale)
        assert torch.isfinite(lse).all() and torch.isfinite(max0).all()
        assert max_abs_err(lse, ref_lse) <= 1e-4 and max_abs_err(max0, ref_max) <= 1e-4
        seg0 = pick < 150
        assert torch.equal(arg0.cpu()[seg0], pick[seg0])


@pytest.mark.parametrize("scale", [1e-3, 1e3, 3e4])
def test_kernel_extreme_scale(kernel, scale):
    gen = torch.Generator().manual_seed(9)
    B, N, D = 6, 290, 32
    offsets = [0, 140, 141, 290]
    x, bank = unit_rows(B, D, gen).float(), unit_rows(N, D, gen).float()
    row_scale = torch.full((B,), scale)
    ref_lse, ref_max, _, _ = segment_truth(x, bank, offsets, row_scale)
    L32 = row_scale[:, None] * (x @ bank.T)
    torch_lse = torch.stack([torch.logsumexp(L32[:, lo:hi], 1) for lo, hi in zip(offsets[:-1], offsets[1:])], 1)
    budget = 2 * max_abs_err(torch_lse, ref_lse) + 1e-4 * max(1.0, scale / 100)
    for splits in (1, 3):
        lse, max0, _ = kernel.segment_lse(x, bank, offsets, row_scale, num_splits=splits)
        assert max_abs_err(lse, ref_lse) <= budget and max_abs_err(max0, ref_max) <= budget


def test_kernel_argmax_ties_first_index_across_tiles_and_splits(kernel):
    gen = torch.Generator().manual_seed(13)
    N, D = 400, 32
    offsets = [0, 390, 400]
    bank = unit_rows(N, D, gen).float()
    for j in (6, 70, 130, 300):
        bank[j] = bank[5]
    x = bank[5:6].clone().repeat(3, 1)
    row_scale = torch.tensor([100.0, 1.0, 10.0])
    for splits in (None, 1, 2, 4, 7):
        _, _, arg0 = kernel.segment_lse(x, bank, offsets, row_scale, num_splits=splits)
        assert arg0.cpu().tolist() == [5, 5, 5]


def test_kernel_without_argmax_and_determinism(kernel):
    gen = torch.Generator().manual_seed(17)
    B, N, D = 70, 1000, 64
    offsets = neglabel_offsets(100, 9, 100)
    x, bank = unit_rows(B, D, gen).half(), unit_rows(N, D, gen).half()
    row_scale = torch.full((B,), 100.0)
    for splits in (None, 1, 5):
        a = kernel.segment_lse(x, bank, offsets, row_scale, True, num_splits=splits)
        b = kernel.segment_lse(x, bank, offsets, row_scale, True, num_splits=splits)
        c = kernel.segment_lse(x, bank, offsets, row_scale, False, num_splits=splits)
        assert all(torch.equal(u, v) for u, v in zip(a, b))
        assert c[2].shape == (0,) and torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])


@gpu_test
def test_gpu_runs_on_the_current_stream_and_device():
    gen = torch.Generator().manual_seed(19)
    x, bank = unit_rows(33, 64, gen).half().cuda(), unit_rows(700, 64, gen).half().cuda()
    offsets = [0, 100, 700]
    ref = run(x, bank, offsets, torch.full((33,), 100.0))
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        off = torch.tensor(offsets, device="cuda")
        rs = torch.full((33,), 100.0, device="cuda")
        out = segment_lse_cuda(x, bank, off, rs, True)
    s.synchronize()
    assert all(torch.equal(u, v) for u, v in zip(ref, out))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("B", [1, 37, 4100], ids=["B1", "B37", "B4100"])
def test_kernel_default_path_neglabel_sized(kernel, dtype, B):
    """Automatic split choice, D = 512, a NegLabel-sized bank (K = 1000, G = 100)."""
    if kernel.device == "cpu" and B > 128:
        pytest.skip("one 128-row block is enough on the emulator: 33 blocks of D = 512 GEMM take minutes there")
    gen = torch.Generator().manual_seed(29)
    D = 512
    offsets = neglabel_offsets(1000, 100, 104)
    N = offsets[-1]
    x, bank = unit_rows(B, D, gen).to(dtype), unit_rows(N, D, gen).to(dtype)
    row_scale = torch.full((B,), 100.0)
    lse, max0, arg0 = kernel.segment_lse(x, bank, offsets, row_scale)
    base_lse, base_max, base_arg, L = segment_truth(x, bank, offsets, row_scale)
    assert max_abs_err(lse, base_lse) <= 3e-4
    assert max_abs_err(max0, base_max) <= 3e-4
    check_argmax(arg0, base_arg, L, offsets, tol=3e-4)


@gpu_test
def test_gpu_public_ops_through_the_cuda_backend():
    """neglabel_score / mcm_score / segment_lse with backend='cuda' agree with backend='torch'."""
    gen = torch.Generator().manual_seed(41)
    B, K, M, D = 50, 120, 1003, 64
    x = torch.randn(B, D, generator=gen).cuda()
    bank = unit_rows(K + M, D, gen).float().cuda()
    for dtype in (torch.float32, torch.float16):
        xd, bd = x.to(dtype), bank.to(dtype)
        s_c, p_c = fastood.neglabel_score(xd, bd, K, groups=10, return_pred=True, backend="cuda")
        s_t, p_t = fastood.neglabel_score(xd, bd, K, groups=10, return_pred=True, backend="torch")
        assert (s_c - s_t).abs().max().item() <= 1e-4
        m_c = fastood.mcm_score(xd, bd[:K], backend="cuda")
        m_t = fastood.mcm_score(xd, bd[:K], backend="torch")
        assert (m_c - m_t).abs().max().item() <= 1e-5
        l_c = fastood.segment_lse(xd, bd, [0, K, K + M], backend="cuda")
        l_t = fastood.segment_lse(xd, bd, [0, K, K + M], backend="torch")
        assert (l_c - l_t).abs().max().item() <= 1e-3
        # predictions: a (near-)maximiser of the ID cosines
        cos = torch.nn.functional.normalize(xd.double(), dim=1) @ bd[:K].double().T
        got = cos.gather(1, p_c[:, None])[:, 0]
        assert (cos.max(1).values - got).max().item() <= 1e-3
        assert torch.equal(p_c, p_t) or (cos.max(1).values - cos.gather(1, p_t[:, None])[:, 0]).max() <= 1e-3


@pytest.mark.parametrize("method", ["neglabel", "mcm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("B", [1, 37, 300], ids=["B1", "B37", "B300"])
def test_kernel_plugin_head_matches_the_ops(kernel, method, dtype, B):
    """head_score_cuda (what the TensorRT plugin enqueues) == fastood.ops on the torch backend."""
    gen = torch.Generator().manual_seed(43 + B)
    K, M, D, G = 100, 1037, 72, 10  # (M mod G) = 7 negatives dropped
    x = (torch.randn(B, D, generator=gen) * 3).to(dtype)
    bank = unit_rows(K + M, D, gen).to(dtype)
    if method == "neglabel":
        score, pred = kernel.head_score(x, bank, K, method="neglabel", groups=G, temperature=0.01)
        ref, ref_pred = fastood.neglabel_score(x, bank, K, groups=G, temperature=0.01, return_pred=True, backend="torch")
    else:
        score, pred = kernel.head_score(x, bank, K, method="mcm", temperature=1.0)
        ref, ref_pred = fastood.mcm_score(x, bank[:K], temperature=1.0, return_pred=True, backend="torch")
    assert score.dtype == torch.float32 and pred.dtype == torch.int32
    assert (score - ref).abs().max().item() <= 1e-4
    cos = torch.nn.functional.normalize(x.double(), dim=1) @ bank[:K].double().T
    got = cos.gather(1, pred.long()[:, None])[:, 0]
    assert (cos.max(1).values - got).max().item() <= 1e-3


def test_kernel_plugin_head_zero_row_gives_nan(kernel):
    gen = torch.Generator().manual_seed(47)
    x = torch.randn(4, 32, generator=gen)
    x[2] = 0
    bank = unit_rows(50, 32, gen).float()
    score, pred = kernel.head_score(x, bank, 10, method="neglabel", groups=4)
    assert torch.isnan(score[2]) and pred[2].item() == 0
    assert torch.isfinite(score[[0, 1, 3]]).all()
