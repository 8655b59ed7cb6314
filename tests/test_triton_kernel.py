"""Kernel-level tests of the Triton segmented-LSE kernel against a float64 truth.

Without CUDA these run in Triton's CPU interpreter (TRITON_INTERPRET=1, set before
triton is imported), so shapes stay small. Shapes are deliberately not multiples of
the block sizes; both the single-pass and the split-N (+ merge) paths are forced.

bf16 under the interpreter: it cannot run a bf16 ``tl.dot``, so the launcher upcasts
and these tests check the bf16 *numerics* (rounded inputs, fp32 accumulation), not the
bf16 ``tl.dot`` code path. That path's compilation (tensor-core ``wgmma``/``mma``, no
spills) is covered by the ahead-of-time compile checks in ``tests/test_static_compile.py``,
and its results only by the ``gpu`` cases on a GPU (``tools/gpu_check.sh``).
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

triton = pytest.importorskip("triton")

from fastood.ops._triton_segment_lse import segment_lse_triton  # noqa: E402
from tests.numerics import NEG_INF, check_argmax, max_abs_err, neglabel_offsets, segment_truth, torch_fp32_segment_lse, unit_rows  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------- helpers
def run(x, bank, offsets: list[int], row_scale, want_argmax=True, **kw):
    off = torch.tensor(offsets, dtype=torch.int64, device=x.device)
    return segment_lse_triton(x, bank, off, row_scale, want_argmax, **kw)


# Offsets layouts: (name, N, offsets)
LAYOUTS = [
    ("one_segment", 77, [0, 77]),
    ("empty_and_size1", 100, [0, 0, 30, 31, 31, 70, 100, 100]),
    ("neglabel", 600, neglabel_offsets(200, 10, 40)),
    ("big_first_odd_groups", 331, neglabel_offsets(101, 5, 46)),
    ("size1_run", 70, list(range(0, 40)) + [40, 40, 70]),
    ("empty_first", 129, [0, 0, 64, 64, 96, 128, 129]),
]


# ---------------------------------------------------------------------------- fp32
@pytest.mark.parametrize("name,N,offsets", LAYOUTS, ids=[c[0] for c in LAYOUTS])
@pytest.mark.parametrize("splits", [1, 3])
def test_fp32_matches_float64(name, N, offsets, splits):
    gen = torch.Generator().manual_seed(31 * N + len(offsets) + splits)
    B, D = (19, 40) if N <= 200 else (9, 64)
    x64, bank64 = unit_rows(B, D, gen), unit_rows(N, D, gen)
    row_scale = torch.linspace(1.0, 100.0, B, dtype=torch.float32)
    x, bank = x64.float().to(DEVICE), bank64.float().to(DEVICE)
    lse, max0, arg0 = run(x, bank, offsets, row_scale.to(DEVICE), num_splits=splits)

    ref_lse, ref_max, ref_arg, logits = segment_truth(x, bank, offsets, row_scale)
    assert lse.shape == (B, len(offsets) - 1) and lse.dtype == torch.float32
    assert max0.shape == (B,) and max0.dtype == torch.float32
    assert arg0.shape == (B,) and arg0.dtype == torch.int64
    assert max_abs_err(lse, ref_lse) <= 1e-4
    assert max_abs_err(max0, ref_max) <= 1e-4
    check_argmax(arg0, ref_arg, logits, offsets, tol=1e-4)


@pytest.mark.parametrize("splits", [1, 2, 5, 100])
@pytest.mark.parametrize("blocks", [None, (16, 16, 16), (32, 64, 32)])
def test_split_paths_and_blocks(splits, blocks):
    """Split counts (incl. more than there are tiles) and tile sizes all agree with the truth."""
    gen = torch.Generator().manual_seed(7)
    B, N, D = 21, 203, 32
    offsets = [0, 50, 50, 64, 65, 128, 129, 160, 203, 203]
    x, bank = unit_rows(B, D, gen).float(), unit_rows(N, D, gen).float()
    row_scale = torch.full((B,), 100.0)
    xd, bd, rd = x.to(DEVICE), bank.to(DEVICE), row_scale.to(DEVICE)
    lse, max0, arg0 = run(xd, bd, offsets, rd, num_splits=splits, blocks=blocks)
    ref_lse, ref_max, ref_arg, logits = segment_truth(x, bank, offsets, row_scale)
    assert max_abs_err(lse, ref_lse) <= 1e-4
    assert max_abs_err(max0, ref_max) <= 1e-4
    check_argmax(arg0, ref_arg, logits, offsets, tol=1e-4)


# ----------------------------------------------------------------- fp16 / bf16 budget
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("splits", [1, 4])
def test_low_precision_error_budget(dtype, splits):
    """Error vs the float64 truth of the unrounded inputs <= 2x torch's (rounded inputs,
    fp32 math) + 1e-4; and vs the truth of the rounded inputs <= 1e-4 (fp32 accumulation)."""
    gen = torch.Generator().manual_seed(11 + splits)
    B, N, D = 13, 260, 64
    offsets = neglabel_offsets(60, 8, 25)
    x64, bank64 = unit_rows(B, D, gen), unit_rows(N, D, gen)
    row_scale = torch.full((B,), 100.0)
    x, bank = x64.to(dtype), bank64.to(dtype)
    lse, max0, _ = run(x.to(DEVICE), bank.to(DEVICE), offsets, row_scale.to(DEVICE), num_splits=splits)

    ref_lse, ref_max, _, _ = segment_truth(x64, bank64, offsets, row_scale)
    base_lse, base_max, _, _ = segment_truth(x, bank, offsets, row_scale)  # float64 truth of the rounded inputs
    torch_lse = torch_fp32_segment_lse(x.float(), bank.float(), offsets, row_scale)  # rounded inputs, fp32 math
    assert max_abs_err(lse, ref_lse) <= 2 * max_abs_err(torch_lse, ref_lse) + 1e-4
    assert max_abs_err(lse, base_lse) <= 1e-4
    assert max_abs_err(max0, base_max) <= 1e-4


# --------------------------------------------------------------------- input layouts
@pytest.mark.parametrize("layout", ["x_strided", "x_transposed", "bank_transposed"])
def test_non_contiguous_inputs(layout):
    gen = torch.Generator().manual_seed(3)
    B, N, D = 10, 150, 40
    offsets = [0, 60, 61, 100, 150]
    x, bank = unit_rows(B, D, gen).float(), unit_rows(N, D, gen).float()
    xk, bk = x.clone(), bank.clone()
    if layout == "x_strided":
        big = torch.zeros(B, 2 * D)
        big[:, ::2] = x
        xk = big[:, ::2]
    elif layout == "x_transposed":
        xk = x.T.contiguous().T
    else:
        bk = bank.T.contiguous().T
    assert not (xk.is_contiguous() and bk.is_contiguous())
    row_scale = torch.full((B,), 50.0)
    for splits in (1, 2):
        lse, max0, arg0 = run(xk.to(DEVICE), bk.to(DEVICE), offsets, row_scale.to(DEVICE), num_splits=splits)
        ref_lse, ref_max, ref_arg, logits = segment_truth(x, bank, offsets, row_scale)
        assert max_abs_err(lse, ref_lse) <= 1e-4
        assert max_abs_err(max0, ref_max) <= 1e-4
        check_argmax(arg0, ref_arg, logits, offsets, tol=1e-4)


# ----------------------------------------------------------------- extreme numerics
def test_rows_equal_to_bank_rows_scale_100():
    """cos = 1 exactly on some columns at scale 100: finite, accurate, argmax found."""
    gen = torch.Generator().manual_seed(5)
    N, D = 120, 32
    offsets = [0, 50, 80, 120]
    bank = unit_rows(N, D, gen).float()
    pick = torch.tensor([0, 7, 33, 49, 50, 119])
    x = bank[pick].clone()
    row_scale = torch.full((len(pick),), 100.0)
    for splits in (1, 3):
        lse, max0, arg0 = run(x.to(DEVICE), bank.to(DEVICE), offsets, row_scale.to(DEVICE), num_splits=splits)
        assert torch.isfinite(lse).all() and torch.isfinite(max0).all()
        ref_lse, ref_max, ref_arg, logits = segment_truth(x, bank, offsets, row_scale)
        assert max_abs_err(lse, ref_lse) <= 1e-4
        assert max_abs_err(max0, ref_max) <= 1e-4
        in_seg0 = pick < 50
        assert torch.equal(arg0.cpu()[in_seg0], pick[in_seg0])


@pytest.mark.parametrize("scale", [1e-3, 1e3, 3e4])
def test_extreme_scale(scale):
    """Tiny and huge logits (up to ~3e4 nats): no overflow, error within 2x torch fp32 + 1e-4."""
    gen = torch.Generator().manual_seed(9)
    B, N, D = 6, 90, 32
    offsets = [0, 40, 41, 90]
    x, bank = unit_rows(B, D, gen).float(), unit_rows(N, D, gen).float()
    row_scale = torch.full((B,), scale)
    ref_lse, ref_max, _, _ = segment_truth(x, bank, offsets, row_scale)
    torch_lse = torch_fp32_segment_lse(x, bank, offsets, row_scale)
    budget = 2 * max_abs_err(torch_lse, ref_lse) + 1e-4 * max(1.0, scale / 100)
    for splits in (1, 2):
        lse, max0, _ = run(x.to(DEVICE), bank.to(DEVICE), offsets, row_scale.to(DEVICE), num_splits=splits)
        assert max_abs_err(lse, ref_lse) <= budget
        assert max_abs_err(max0, ref_max) <= budget


def test_argmax_ties_first_index_across_tiles_and_splits():
    """Duplicated maximiser in segment 0 (in different tiles and splits): first index wins."""
    gen = torch.Generator().manual_seed(13)
    N, D = 140, 32
    offsets = [0, 130, 140]
    bank = unit_rows(N, D, gen).float()
    bank[70] = bank[5]
    bank[100] = bank[5]
    bank[6] = bank[5]
    x = bank[5:6].clone().repeat(3, 1)
    row_scale = torch.tensor([100.0, 1.0, 10.0])
    for splits in (1, 2, 4):
        _, _, arg0 = run(x.to(DEVICE), bank.to(DEVICE), offsets, row_scale.to(DEVICE), num_splits=splits)
        assert arg0.cpu().tolist() == [5, 5, 5]


# ---------------------------------------------------------------------- API details
def test_without_argmax_returns_empty_and_same_values():
    gen = torch.Generator().manual_seed(17)
    B, N, D = 5, 100, 32
    offsets = [0, 45, 100]
    x, bank = unit_rows(B, D, gen).float().to(DEVICE), unit_rows(N, D, gen).float().to(DEVICE)
    row_scale = torch.full((B,), 100.0, device=DEVICE)
    for splits in (1, 2):
        lse_a, max_a, arg_a = run(x, bank, offsets, row_scale, want_argmax=True, num_splits=splits)
        lse_b, max_b, arg_b = run(x, bank, offsets, row_scale, want_argmax=False, num_splits=splits)
        assert arg_b.shape == (0,) and arg_b.dtype == torch.int64
        assert arg_a.shape == (B,)
        assert torch.equal(lse_a, lse_b) and torch.equal(max_a, max_b)


def test_batch_of_one_and_empty_segment_zero():
    gen = torch.Generator().manual_seed(19)
    N, D = 64, 40
    offsets = [0, 0, 64]
    x, bank = unit_rows(1, D, gen).float(), unit_rows(N, D, gen).float()
    row_scale = torch.full((1,), 100.0)
    for splits in (1, 2):
        lse, max0, arg0 = run(x.to(DEVICE), bank.to(DEVICE), offsets, row_scale.to(DEVICE), num_splits=splits)
        assert lse.shape == (1, 2)
        assert lse[0, 0].item() == NEG_INF and max0[0].item() == NEG_INF and arg0.cpu().tolist() == [0]
        ref_lse, _, _, _ = segment_truth(x, bank, offsets, row_scale)
        assert max_abs_err(lse, ref_lse) <= 1e-4


@pytest.mark.parametrize("splits", [1, 3])
def test_deterministic(splits):
    gen = torch.Generator().manual_seed(23)
    B, N, D = 17, 300, 64
    offsets = neglabel_offsets(100, 8, 25)
    x, bank = unit_rows(B, D, gen).half().to(DEVICE), unit_rows(N, D, gen).half().to(DEVICE)
    row_scale = torch.full((B,), 100.0, device=DEVICE)
    a = run(x, bank, offsets, row_scale, num_splits=splits)
    b = run(x, bank, offsets, row_scale, num_splits=splits)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("B", [1, 37, 4100])
def test_gpu_autotuned_default_path(dtype, B):
    """CUDA only: autotuned tiles, heuristic split choice, D = 512, NegLabel-sized bank."""
    gen = torch.Generator().manual_seed(29)
    D = 512
    offsets = neglabel_offsets(1000, 100, 104)
    N = offsets[-1]
    x64, bank64 = unit_rows(B, D, gen), unit_rows(N, D, gen)
    row_scale = torch.full((B,), 100.0)
    x, bank = x64.to(dtype), bank64.to(dtype)
    lse, max0, arg0 = run(x.cuda(), bank.cuda(), offsets, row_scale.cuda())
    base_lse, base_max, base_arg, logits = segment_truth(x.float(), bank.float(), offsets, row_scale)
    # Truth of the (rounded) inputs: only fp32 accumulation error remains, x100 by the scale.
    assert max_abs_err(lse, base_lse) <= 3e-4
    assert max_abs_err(max0, base_max) <= 3e-4
    check_argmax(arg0, base_arg, logits, offsets, tol=3e-4)
    again = run(x.cuda(), bank.cuda(), offsets, row_scale.cuda())
    assert all(torch.equal(u, v) for u, v in zip((lse, max0, arg0), again))


# ------------------------------------------------- launch routes (issue 10 §4 risks)
class _StubTuner:
    """Stands in for a triton Autotuner: records the flags it is asked to tune with,
    runs ``kernel`` with one fixed config and exposes it as ``best_config``."""

    def __init__(self, kernel, config):
        self.kernel, self.best_config, self.calls = kernel, config, []

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.calls.append(dict(kw))
            g = grid(self.best_config.kwargs) if callable(grid) else grid
            self.kernel[g](*args, **kw, **self.best_config.all_kwargs())
        return launch


class _Recorder:
    """Wraps a jitted kernel: records every launch's arguments and flags, then runs it."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.launches.append((args, dict(kw)))
            self.kernel[grid](*args, **kw)
        return launch


def _tuned_path(monkeypatch, module, tuner_name, kernel_name, config):
    """Make ``module`` take its CUDA (autotuned) launch path on interpreter tensors."""
    module._TUNED.clear() if hasattr(module, "_TUNED") else None
    monkeypatch.setattr(module, "_interpreting", lambda x: False)
    rec = _Recorder(getattr(module, kernel_name))
    tuner = _StubTuner(getattr(module, kernel_name), config)
    monkeypatch.setattr(module, tuner_name, tuner)
    monkeypatch.setattr(module, kernel_name, rec)
    return tuner, rec


def test_argmax_variant_reuses_the_plain_variants_tuned_config(monkeypatch):
    """§4: with and without argmax the launcher runs the same tile config (tuned on the plain
    variant, whichever call comes first), so lse / max0 agree bit for bit by construction."""
    import fastood.ops._triton_segment_lse as K

    monkeypatch.setattr(K, "_TUNED", {}, raising=False)
    cfg = triton.Config({"BLOCK_B": 16, "BLOCK_N": 32, "BLOCK_D": 32}, num_warps=4, num_stages=2)
    tuner, rec = _tuned_path(monkeypatch, K, "_segment_lse_fwd_tuned", "_segment_lse_fwd_kernel", cfg)
    gen = torch.Generator().manual_seed(41)
    B, N, D = 6, 100, 32
    offsets = [0, 45, 100]
    x, bank = unit_rows(B, D, gen).float(), unit_rows(N, D, gen).float()
    rs = torch.full((B,), 100.0)
    lse_a, max_a, arg_a = run(x, bank, offsets, rs, want_argmax=True, num_splits=1)   # argmax first
    lse_b, max_b, _ = run(x, bank, offsets, rs, want_argmax=False, num_splits=1)
    assert [c["WANT_ARGMAX"] for c in tuner.calls] == [False]  # tuned once, on the plain variant
    assert [kw["WANT_ARGMAX"] for _, kw in rec.launches] == [True, False]
    assert all(kw["BLOCK_N"] == 32 and kw["num_warps"] == 4 for _, kw in rec.launches)
    assert torch.equal(lse_a, lse_b) and torch.equal(max_a, max_b)
    ref_lse, _, ref_arg, logits = segment_truth(x, bank, offsets, rs)
    assert max_abs_err(lse_a, ref_lse) <= 1e-4
    check_argmax(arg_a, ref_arg, logits, offsets, tol=1e-4)


def test_size_bucket():
    from fastood.ops._triton_segment_lse import size_bucket

    assert [size_bucket(n) for n in (0, 1, 2, 3, 4, 5, 1000, 1024, 1025, 65536)] == \
        [0, 1, 2, 4, 4, 8, 1024, 1024, 2048, 65536]
    with pytest.raises(TypeError, match="n must be an int"):
        size_bucket(3.0)


def test_cma_autotune_is_keyed_on_size_buckets(monkeypatch):
    """§4: batch sizes in one power-of-two bucket share one tuning run (no re-tune per size)."""
    import fastood.ops._triton_cma as C
    import fastood.ops._triton_segment_lse as K

    monkeypatch.setattr(K, "_TUNED", {}, raising=False)  # the cache _launch_tuned (imported by C) uses
    cfg = triton.Config({"BLOCK_N": 16, "BLOCK_D": 16}, num_warps=4, num_stages=2)
    monkeypatch.setattr(C, "_FWD_BLOCK_M", 16)
    tuner, rec = _tuned_path(monkeypatch, C, "_cma_fwd_tuned", "_cma_fwd_kernel", cfg)
    gen = torch.Generator().manual_seed(43)
    D, N = 16, 24
    t = unit_rows(N, D, gen).float()
    for M in (20, 30, 17, 40):  # 32, 32, 32, 64
        x = unit_rows(M, D, gen).float()
        labels = torch.randint(0, N, (M,), generator=gen)
        ones = torch.ones(M), torch.ones(N)
        row_lse, row_ce, *_ = C.cma_fwd_triton(x, t, *ones, torch.tensor(10.0), labels, num_splits=1)
        ref = torch.logsumexp(10.0 * x.double() @ t.double().T, dim=1)
        assert max_abs_err(row_lse, ref) <= 1e-4
    assert len(tuner.calls) == 2 and len(rec.launches) == 2  # one tuning per bucket, reused after


def _launch_specialisation(args, kernel) -> dict:
    """What the JIT specialises each runtime argument as (type, 'D' = divisible by 16 / 16-byte
    aligned, or 'constexpr' for ints equal to 1), by Triton's own specialisation function."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    names = kernel.arg_names
    out = {}
    for name, a in zip(names, args):
        kind, spec = native_specialize_impl(BaseBackend, a, False, True, True)
        out[name] = "constexpr" if kind == "constexpr" else spec
    return out


@pytest.mark.parametrize("layout", ["D40", "x_inner_stride2", "x_offset_by_one", "bank_row_stride_520"])
def test_misaligned_operands_are_routed_to_the_aligned_variant(monkeypatch, layout):
    """§4: D or strides that are not multiples of 16 elements (or a misaligned base) would
    compile a variant without vector loads / cp.async pipeline (and with spills); the
    launcher copies them to an aligned zero-padded layout: the kernel then gets exactly the
    specialisation the AOT compile checks cover (tests/test_static_compile.py)."""
    import fastood.ops._triton_segment_lse as K

    rec = _Recorder(K._segment_lse_fwd_kernel)
    monkeypatch.setattr(K, "_segment_lse_fwd_kernel", rec)
    gen = torch.Generator().manual_seed(47)
    B, N = 7, 90
    D = 40 if layout == "D40" else 48
    offsets = [0, 30, 31, 90]
    x, bank = unit_rows(B, D, gen).float(), unit_rows(N, D, gen).float()
    xk, bk = x, bank
    if layout == "x_inner_stride2":
        big = torch.zeros(B, 2 * D)
        big[:, ::2] = x
        xk = big[:, ::2]
    elif layout == "x_offset_by_one":
        big = torch.zeros(B * D + 1)
        xk = big[1:].view(B, D)
        xk.copy_(x)
    elif layout == "bank_row_stride_520":
        big = torch.zeros(N, 520)
        big[:, :D] = bank
        bk = big[:, :D]
    rs = torch.full((B,), 100.0)
    lse, max0, arg0 = run(xk, bk, offsets, rs, num_splits=1)
    ref_lse, ref_max, ref_arg, logits = segment_truth(x, bank, offsets, rs)
    assert max_abs_err(lse, ref_lse) <= 1e-4 and max_abs_err(max0, ref_max) <= 1e-4
    check_argmax(arg0, ref_arg, logits, offsets, tol=1e-4)

    (args, _), = rec.launches
    spec = _launch_specialisation(args, rec.kernel)
    aot = next(s for s in K.aot_specs(90, torch.float16, full=False) if s.name.startswith("segment_lse_fwd["))
    # Every argument the AOT spec compiles as aligned / divisible is so at this launch, and
    # the inner strides are the constant 1 the spec compiles with.
    for name in aot.aligned:
        assert spec[name] == "D", (name, spec[name])
    assert spec["stride_xd"] == spec["stride_bd"] == "constexpr"


def test_autotuner_offers_only_the_configs_that_compile_without_spills_on_the_gpus_arch(monkeypatch):
    """The sm_80 spilling tiles (bench/results/static-sm80.md) are pruned by device capability;
    the AOT specs of each arch are exactly the configs the pruner keeps there."""
    import fastood.ops._triton_cma as C
    import fastood.ops._triton_segment_lse as K

    x = torch.zeros(2, 16)
    for arch, dropped in ((80, K._SM80_SPILLING), (90, set())):
        monkeypatch.setattr(K, "_arch_of", lambda t, arch=arch: arch)
        kept = K._prune_for_arch(K._CUDA_CONFIGS, {"x_ptr": x})
        tiles = {(c.kwargs["BLOCK_B"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_D"], c.num_warps, c.num_stages)
                 for c in kept}
        assert tiles.isdisjoint(dropped) and len(kept) == len(K._CUDA_CONFIGS) - len(dropped)
        names = {s.name for s in K.aot_specs(arch, torch.float16, full=True) if s.name.startswith("segment_lse_fwd[")}
        assert names == {f"segment_lse_fwd[{b}x{n}x{d} w{w} s{st}{sp}{am}]" for b, n, d, w, st in tiles
                         for sp in ("", " split") for am in ("", " argmax")}
    assert len(C.bwd_configs_for_arch(80)) == len(C._CUDA_BWD_CONFIGS) - len(C._SM80_BWD_SPILLING)
    assert C.bwd_configs_for_arch(90) == C._CUDA_BWD_CONFIGS
