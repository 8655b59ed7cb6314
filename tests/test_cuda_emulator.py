"""The CPU emulator of the CUDA kernels (csrc/cuda/testing/, tests/cuda_emulator.py).

``tests/test_cuda_kernel.py`` runs every kernel test on the emulator (``[emu]``). This
file checks the emulator itself and runs the kernels under the sanitizers:

- the launch rewrite on hand-written launches;
- ThreadSanitizer (shared-memory races: what compute-sanitizer's racecheck finds on a
  GPU) and AddressSanitizer + UBSan (out-of-bounds global accesses against exact-size
  buffers, misaligned vector loads: memcheck) on representative problems;
- negative controls: the same builds with one barrier deleted, one bounds guard
  removed, or a WMMA leading dimension that breaks the hardware's rule must fail.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

import fastood
from tests import cuda_emulator
from tests.numerics import check_argmax, max_abs_err, neglabel_offsets, segment_truth, unit_rows

pytestmark = pytest.mark.skipif(not cuda_emulator.available(), reason="the CPU emulator needs g++ and the CUDA headers")

SANITIZER_REPORTS = ("ThreadSanitizer", "AddressSanitizer", "runtime error", "fastood_emu:")


# ------------------------------------------------------------------ launch rewriting
@pytest.mark.parametrize(
    "src,expected",
    [
        ("k<<<g, b, 0, s>>>(p);", "::fastood_emu::launch(g, b, 0, s, [&] { k(p); });"),
        ("ns::k<T, true><<<grid, block>>>(a, f(b, c));",
         "::fastood_emu::launch(grid, block, 0, nullptr, [&] { ns::k<T, true>(a, f(b, c)); });"),
        ("k<float><<<n, 32 * r, 0, st>>>(static_cast<const float*>(a.x),\n    a.B);",
         "::fastood_emu::launch(n, 32 * r, 0, st, [&] { k<float>(static_cast<const float*>(a.x),\n    a.B); });"),
        ("k<<<dim3(1, 2), 64, 16>>>(x);", "::fastood_emu::launch(dim3(1, 2), 64, 16, nullptr, [&] { k(x); });"),
    ],
)
def test_launch_rewrite(src, expected):
    out, n = cuda_emulator.rewrite_launches(src)
    assert (out, n) == (expected, 1)


def test_every_launch_in_the_sources_is_rewritten():
    total = 0
    for cu in sorted(cuda_emulator.CUDA_DIR.glob("*.cu")):
        text = cu.read_text()
        out, n = cuda_emulator.rewrite_launches(text)
        assert n == text.count("<<<") and "<<<" not in out and ">>>" not in out
        total += n
    assert total >= 6  # fwd (3 variants × aligned/unaligned), merge, offsets, row scale, score


# -------------------------------------------------------------------- sanitizer runs
def _build_or_skip(out: Path, variant: str, edit=None) -> Path:
    try:
        exe = cuda_emulator.build(out, variant, edit)
    except RuntimeError as e:
        # A compiler without the sanitizer's runtime library (libtsan / libasan / libubsan).
        if variant != "plain" and "cannot find" in str(e) and "san" in str(e):
            pytest.skip(f"g++ has no {variant} runtime here")
        raise
    # Some kernels' address-space layouts defeat the sanitizers at start-up: that is the
    # machine, not the code under test.
    probe = out / "probe"
    x = torch.ones(1, 8)
    try:
        cuda_emulator.segment_lse(exe, probe, x, x, [0, 1], torch.ones(1))
    except cuda_emulator.EmulatorError as e:
        if "unexpected memory mapping" in e.stderr or "Shadow memory range" in e.stderr:
            pytest.skip(f"{variant} cannot start on this machine: {e.stderr.splitlines()[0]}")
        if edit is None:
            raise
    return exe


@pytest.fixture(scope="module", params=["tsan", "asan"])
def sanitized(request, tmp_path_factory):
    return request.param, _build_or_skip(tmp_path_factory.mktemp(request.param), request.param)


# (dtype, B, N-layout offsets, D, splits, leading elements of x: 1 = misaligned scalar path)
SEGMENT_CASES = [
    (torch.float32, 131, [0, 63, 64, 65, 128, 191, 192, 256, 257], 72, 1, 0),
    (torch.float32, 5, [0, 63, 64, 65, 128, 191, 192, 256, 257], 72, 3, 0),
    (torch.float16, 37, [0, 0, 30, 31, 31, 70, 100, 100], 64, None, 0),
    (torch.float16, 37, neglabel_offsets(100, 5, 40), 64, 2, 1),
    (torch.bfloat16, 130, neglabel_offsets(70, 3, 30), 40, 2, 0),
]


def _x_with_lead(x: torch.Tensor, lead: int) -> torch.Tensor:
    if lead == 0:
        return x
    flat = torch.zeros(x.numel() + lead, dtype=x.dtype)
    flat[lead:] = x.reshape(-1)
    return flat[lead:].view_as(x)


def test_segment_lse_under_sanitizers(sanitized, tmp_path):
    variant, exe = sanitized
    gen = torch.Generator().manual_seed(71)
    for i, (dtype, B, offsets, D, splits, lead) in enumerate(SEGMENT_CASES):
        x = unit_rows(B, D, gen).to(dtype)
        bank = unit_rows(offsets[-1], D, gen).to(dtype)
        rs = torch.linspace(1.0, 100.0, B)
        lse, max0, arg, _ = cuda_emulator.segment_lse(exe, tmp_path / str(i), _x_with_lead(x, lead), bank, offsets, rs,
                                                      num_splits=splits)
        ref_lse, ref_max, ref_arg, L = segment_truth(x, bank, offsets, rs)
        assert max_abs_err(lse, ref_lse) <= 1e-4 and max_abs_err(max0, ref_max) <= 1e-4, (variant, i)
        check_argmax(arg, ref_arg, L, offsets, tol=1e-4)


def test_fused_head_under_sanitizers(sanitized, tmp_path):
    variant, exe = sanitized
    gen = torch.Generator().manual_seed(73)
    K, M, D, G = 50, 307, 72, 6
    x = torch.randn(40, D, generator=gen).half()
    x[3] = 0  # zero-norm row: NaN score, pred 0
    bank = unit_rows(K + M, D, gen).half()
    score, pred = cuda_emulator.head_score(exe, tmp_path / "neg", x, bank, K, groups=G, temperature=0.01)
    keep = torch.arange(40) != 3
    ref = fastood.neglabel_score(x[keep].float(), bank.float(), K, groups=G, temperature=0.01, backend="torch")
    assert torch.isnan(score[3]) and pred[3].item() == 0
    assert (score[keep] - ref).abs().max().item() <= 1e-4
    score, pred = cuda_emulator.head_score(exe, tmp_path / "mcm", x[keep].float(), bank[:K].float(), K, method="mcm",
                                           temperature=1.0)
    ref = fastood.mcm_score(x[keep].float(), bank[:K].float(), temperature=1.0, backend="torch")
    assert (score - ref).abs().max().item() <= 1e-5


# ------------------------------------------------------------------ negative controls
def _expect_failure(exe: Path, tmp_path: Path, dtype=torch.float16) -> str:
    gen = torch.Generator().manual_seed(79)
    x, bank = unit_rows(37, 64, gen).to(dtype), unit_rows(300, 64, gen).to(dtype)
    with pytest.raises(cuda_emulator.EmulatorError) as info:
        cuda_emulator.segment_lse(exe, tmp_path / "run", x, bank, [0, 100, 300], torch.full((37,), 100.0))
    return info.value.stderr


def _edit(old: str, new: str):
    def edit(name: str, text: str) -> str:
        if name != "segment_lse.cu":
            return text
        assert text.count(old) == 1, f"the negative control's anchor is gone from segment_lse.cu: {old!r}"
        return text.replace(old, new)

    return edit


def test_tsan_catches_a_deleted_barrier(tmp_path):
    # Without it, warps stash the next K-chunk into shared memory while others still read this one.
    exe = _build_or_skip(tmp_path / "b", "tsan",
                         _edit("    __syncthreads();  // everyone is done reading this chunk\n", ""))
    assert "ThreadSanitizer: data race" in _expect_failure(exe, tmp_path)


def test_asan_catches_a_missing_row_guard(tmp_path):
    # Rows past B are read when the guard is dropped: past the end of x's exact-size buffer.
    exe = _build_or_skip(tmp_path / "b", "asan", _edit(
        "ra[i] = load8<T, VEC>(xp + i * x_step, row0 + r_me + kRowStep * i < B, d, D);",
        "ra[i] = load8<T, VEC>(xp + i * x_step, true, d, D);"))
    assert "AddressSanitizer: heap-buffer-overflow" in _expect_failure(exe, tmp_path)


def test_emulator_enforces_the_wmma_alignment_rule(tmp_path):
    # 8 halves further: 16-byte aligned (fine for a vector load) but not the 32 bytes WMMA needs.
    exe = cuda_emulator.build(tmp_path / "b", "plain", _edit(
        "reinterpret_cast<const T*>(&sm.ab.a[(warp * 32 + i * 16) * LDS_H + kk])",
        "reinterpret_cast<const T*>(&sm.ab.a[(warp * 32 + i * 16) * LDS_H + kk + 8])"))
    assert "wmma::load_matrix_sync: pointer not 32-byte aligned" in _expect_failure(exe, tmp_path)


def test_emulated_results_do_not_depend_on_block_order(emulator_exe, tmp_path):
    """Blocks run in a seeded random order: with no atomics, every order gives the same bits."""
    exe = emulator_exe
    gen = torch.Generator().manual_seed(83)
    x, bank = unit_rows(300, 40, gen).half(), unit_rows(700, 40, gen).half()
    offsets = neglabel_offsets(100, 6, 100)
    runs = [cuda_emulator.segment_lse(exe, tmp_path / f"s{seed}", x, bank, offsets, torch.full((300,), 100.0),
                                      num_splits=4, seed=seed) for seed in (1, 2, 3)]
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0][:3], other[:3]))


# ------------------------------------------------- the planner and the occupancy API
@pytest.fixture(scope="module")
def fwd_fp16_sm90(tmp_path_factory):
    """ptxas' report for the fp16 vector-load forward kernel on sm_90 (skip without nvcc)."""
    import shutil

    from bench import static_cuda

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on the PATH: no register count to emulate")
    out = tmp_path_factory.mktemp("ptxas")
    _, log = static_cuda.compile_cubin(cuda_emulator.CUDA_DIR / "segment_lse.cu", 90, out)
    (k,) = [k for k in static_cuda.parse_ptxas(log, "segment_lse.cu") if k.name == "segment_lse_fwd_half<fp16, true>"]
    return k


def test_planner_takes_resident_blocks_from_the_occupancy_api(emulator_exe, fwd_fp16_sm90, tmp_path):
    """The emulated occupancy API (NVIDIA's cuda_occupancy.h on an H100) gets the register
    count ptxas reports; the automatic split fills one wave of SMs × that many blocks."""
    k = fwd_fp16_sm90
    # Independent truth, the hardware rule by hand: registers per warp in units of 256, four
    # sub-partitions of 16,384 registers, 4 warps per block.
    per_warp = -(-k.registers * 32 // 256) * 256
    warps = (16384 // per_warp) * 4
    per_sm = warps // 4
    assert per_sm == 3  # 164-168 registers: 3 blocks of 128 threads, not 4
    gen = torch.Generator().manual_seed(97)
    B, N, D, sms = 100, 64 * 48, 16, 4  # one row block; a wave of 4 SMs × 3 = 12 blocks
    x, bank = unit_rows(B, D, gen).half(), unit_rows(N, D, gen).half()
    offsets = neglabel_offsets(1000, 4, 518)
    rs = torch.full((B,), 100.0)
    lse, max0, arg, (splits, chunk) = cuda_emulator.segment_lse(
        emulator_exe, tmp_path / "occ", x, bank, offsets, rs, sm_count=sms, registers=k.registers,
        static_smem=k.smem)
    assert cuda_emulator.last_plan(tmp_path / "occ")[2] == per_sm
    # ceil(3072 / 12) = 256 columns = 4 tiles per split → 12 splits (4 blocks/SM would give 16 of 192).
    assert (splits, chunk) == (sms * per_sm, 256)
    ref_lse, ref_max, ref_arg, L = segment_truth(x, bank, offsets, rs)
    assert max_abs_err(lse, ref_lse) <= 1e-4 and max_abs_err(max0, ref_max) <= 1e-4
    check_argmax(arg, ref_arg, L, offsets, tol=1e-4)


# -------------------------------------------------------------- the TensorRT plugin
@pytest.fixture(scope="module")
def plugin_build(tmp_path_factory):
    """The plugin on the stand-in TensorRT API with emulated kernels, all under ASan + UBSan:
    enqueue gets a workspace of exactly getWorkspaceSize bytes, so using more is reported."""
    return cuda_emulator.build_plugin(tmp_path_factory.mktemp("plugin"), "asan")


def test_plugin_stand_in_checks_pass_with_emulated_kernels(plugin_build):
    harness, plugin = plugin_build
    proc = subprocess.run([str(harness), str(plugin)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ASAN_OPTIONS": "detect_leaks=0"})
    assert proc.returncode == 0 and "all checks passed" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("method", ["neglabel", "mcm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("B,max_batch", [(1, 1), (37, 64), (130, 130)])
def test_plugin_enqueue_matches_the_ops(plugin_build, tmp_path, method, dtype, B, max_batch):
    """Build phase → serialised fields → runtime phase → enqueue, as TensorRT calls the
    plugin, for an engine whose profile allows up to ``max_batch`` rows; the scores equal
    fastood.ops on the torch backend and pred is an ID argmax."""
    harness, plugin = plugin_build
    gen = torch.Generator().manual_seed(89 + B)
    K, M, D, G = 60, 253, 48, 7  # (M mod G) = 1 negative dropped
    x = (torch.randn(B, D, generator=gen) * 3).to(dtype)
    bank = unit_rows(K + M, D, gen).to(dtype)
    if method == "neglabel":
        score, pred = cuda_emulator.head_score(harness, tmp_path, x, bank, K, groups=G, temperature=0.01,
                                               plugin=plugin, max_batch=max_batch)
        ref = fastood.neglabel_score(x.float(), bank.float(), K, groups=G, temperature=0.01, backend="torch")
    else:
        score, pred = cuda_emulator.head_score(harness, tmp_path, x, bank[:K], K, method="mcm", temperature=1.0,
                                               plugin=plugin, max_batch=max_batch)
        ref = fastood.mcm_score(x.float(), bank[:K].float(), temperature=1.0, backend="torch")
    assert (score - ref).abs().max().item() <= 1e-4
    cos = torch.nn.functional.normalize(x.double(), dim=1) @ bank[:K].double().T
    assert (cos.max(1).values - cos.gather(1, pred.long()[:, None])[:, 0]).max().item() <= 1e-3


# ------------------------------------ segment_lse on the Triton kernel compiled ahead of time
AOT_FWD = "segment_lse_fwd[128x128x64 w8 s3 split argmax]"
AOT_MERGE = "segment_lse_merge[128 argmax]"


@pytest.fixture(scope="module")
def aot_driver(tmp_path_factory):
    """csrc/cuda/segment_lse_aot.cpp with the real sm_90 fp16 images (embed_triton.py) and a
    recording aot::launch, linked with the emulated kernels (csrc/cuda/testing/aot_driver.cpp)."""
    import importlib.util
    import sys

    path = cuda_emulator.CUDA_DIR / "embed_triton.py"
    spec = importlib.util.spec_from_file_location("embed_triton_emu", path)
    embed = importlib.util.module_from_spec(spec)
    sys.modules["embed_triton_emu"] = embed
    spec.loader.exec_module(embed)
    fwd, merge = embed.compile_kernels("fastood.ops._triton_segment_lse", 90, "float16", [AOT_FWD, AOT_MERGE])
    out = tmp_path_factory.mktemp("aot")
    (out / "fwd_sa.h").write_text(embed.header(fwd, "fwd_sa"))
    (out / "merge_a.h").write_text(embed.header(merge, "merge_a"))
    (out / "aot_images.h").write_text('#pragma once\n#include "fwd_sa.h"\n#include "merge_a.h"\n')
    sources = cuda_emulator._kernel_sources(out / "kernels")
    exe = out / "aot_driver"
    cuda_emulator._compile(["-I", str(out), str(cuda_emulator.EMU_DIR / "aot_driver.cpp"),
                            str(cuda_emulator.CUDA_DIR / "segment_lse_aot.cpp"), *map(str, sources), "-o", str(exe)],
                           "plain", "the AOT driver")
    return exe


def _run_aot_driver(exe: Path, work: Path, B, N, D, offsets, splits, argmax) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    (work / "offsets.bin").write_bytes(torch.as_tensor(offsets, dtype=torch.int64).numpy().tobytes())
    args = dict(B=B, N=N, D=D, S=len(offsets) - 1, ldx=D, ldb=D, splits=splits, argmax=int(argmax), block_b=128,
                merge_block=128)
    (work / "args.txt").write_text("".join(f"{k} {v}\n" for k, v in args.items()))
    proc = subprocess.run([str(exe), str(work)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rec = {"launches": [], "starts": None}
    for line in proc.stdout.splitlines():
        f = line.split()
        if f[0] == "plan":
            rec["plan"] = (int(f[1]), int(f[2]))
        elif f[0] == "addr":
            rec[f[1]] = int(f[2])
        elif f[0] == "launch":
            rec["launches"].append({"which": f[1], "grid": tuple(map(int, f[2:5])), "args": []})
        elif f[0] == "arg":
            rec["launches"][-1]["args"].append((f[2], int(f[3])))
        elif f[0] == "starts":
            rec["starts"] = [int(v) for v in f[1:]]
    return rec


def test_split_starts_kernel_is_searchsorted(emulator_exe, tmp_path):
    """The emulated split-starts kernel against torch.searchsorted(offsets[1:], p·chunk, right=True)."""
    gen = torch.Generator().manual_seed(103)
    cases = [([0, 100, 384, 384, 500, 768, 900, 1000], 384, 3), ([0, 0, 0, 128, 256, 256], 128, 2),
             ([0, 5], 16, 1)]
    sizes = torch.randint(0, 40, (60,), generator=gen)
    sizes[::7] = 0
    rand = [0] + torch.cumsum(sizes, 0).tolist()
    cases += [(rand, 16, -(-rand[-1] // 16)), (rand, 48, -(-rand[-1] // 48))]
    for i, (off, chunk, splits) in enumerate(cases):
        got = cuda_emulator.split_starts(emulator_exe, tmp_path / str(i), off, chunk, splits)
        t = torch.tensor(off, dtype=torch.int64)
        want = torch.searchsorted(t[1:], torch.arange(splits, dtype=torch.int64) * chunk, right=True)
        assert got.tolist() == want.tolist(), (off, chunk)


def _triton_launcher_calls(monkeypatch, x, bank, offsets, rs, argmax, splits) -> list:
    """What fastood/ops/_triton_segment_lse.py passes to its kernels (launches recorded, not run)."""
    from fastood.ops import _triton_segment_lse as m

    calls = []

    class Record:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kw: calls.append((self.name, tuple(grid), args, kw))

    monkeypatch.setattr(m, "_segment_lse_fwd_kernel", Record("fwd"))
    monkeypatch.setattr(m, "_segment_lse_merge_kernel", Record("merge"))
    m.segment_lse_triton(x, bank, offsets, rs, argmax, num_splits=splits, blocks=(128, 128, 64))
    return calls


def _aliases(values: list) -> list[int]:
    """For each pointer, the position of the first pointer equal to it (the sharing pattern)."""
    return [values.index(v) for v in values]


@pytest.mark.parametrize("splits,argmax", [(3, True), (3, False), (1, True), (1, False)])
def test_aot_launcher_passes_what_the_triton_launcher_passes(aot_driver, tmp_path, monkeypatch, splits, argmax):
    """segment_lse_aot (C++) against the Python Triton launcher on the same problem: the same
    variant, grid, chunk, integers, the same pattern of shared buffers (dummy pointers where a
    constexpr disables an argument), and the emulated split-starts table equals the launcher's
    torch.searchsorted."""
    B, D = 300, 32
    # N = 1000: 3 splits of 384 columns; segments end exactly at the split edges 384 and 768
    # (and one is empty there), where a first-segment search that is off by one shows.
    offsets = [0, 100, 384, 384, 500, 768, 900, 1000]
    N = offsets[-1]
    rec = _run_aot_driver(aot_driver, tmp_path, B, N, D, offsets, splits, argmax)
    gen = torch.Generator().manual_seed(101)
    x, bank = unit_rows(B, D, gen).half(), unit_rows(N, D, gen).half()
    off, rs = torch.tensor(offsets, dtype=torch.int64), torch.full((B,), 100.0)
    calls = _triton_launcher_calls(monkeypatch, x, bank, off, rs, argmax, rec["plan"][0])
    assert [c[0] for c in calls] == [l["which"][:-2] if l["which"].startswith("fwd") else "merge"
                                     for l in rec["launches"]]
    (_, py_grid, py_args, py_kw), cpp = calls[0], rec["launches"][0]
    split = py_kw["SPLIT"]
    assert cpp["which"] == f"fwd{int(split)}{int(argmax)}" and py_kw["WANT_ARGMAX"] == argmax
    assert cpp["grid"] == (*py_grid, 1)
    # Triton's signature minus the constexpr unit strides (positions 17 and 19), then the scratch pointers.
    assert py_args[17] == 1 and py_args[19] == 1
    py_user = [a for i, a in enumerate(py_args) if i not in (17, 19)]
    cpp_user = cpp["args"][:-2]
    assert [k for k, _ in cpp["args"][-2:]] == ["global_scratch", "profile_scratch"]
    assert all(v == 0 for _, v in cpp["args"][-2:])
    py_ptrs = [a.data_ptr() for a in py_user if isinstance(a, torch.Tensor)]
    cpp_ptrs = [v for k, v in cpp_user if k == "pointer"]
    assert _aliases(py_ptrs) == _aliases(cpp_ptrs)
    assert cpp_ptrs[:4] == [0x10000, 0x20000, rec["offsets"], 0x30000]  # x, bank, offsets, row scale
    assert [a for a in py_user if not isinstance(a, torch.Tensor)] == [v for k, v in cpp_user if k == "i32"]
    if split:
        assert rec["starts"] == py_args[4].tolist()  # the emulated kernel == torch.searchsorted
        (_, mg, m_args, m_kw), mc = calls[1], rec["launches"][1]
        assert mc["which"] == f"merge{int(argmax)}" and m_kw["WANT_ARGMAX"] == argmax
        assert mc["grid"][0] == mg[0] and mc["grid"][1] == -(-B // 128)  # BLOCK 128 (the launcher's on a GPU)
        m_cpp = mc["args"][:-2]
        assert _aliases([a.data_ptr() for a in m_args if isinstance(a, torch.Tensor)]) == _aliases(
            [v for k, v in m_cpp if k == "pointer"])
        assert [a for a in m_args if not isinstance(a, torch.Tensor)] == [v for k, v in m_cpp if k == "i32"]
        # The merge reads the forward's workspace: same m / l / argmax buffers.
        assert [v for k, v in m_cpp if k == "pointer"][:3] == cpp_ptrs[8:11]
    else:
        assert len(rec["launches"]) == 1 and rec["starts"] is None
