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
