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
from tests.numerics import NEG_INF, check_argmax, max_abs_err, neglabel_offsets, segment_truth, unit_rows  # noqa: E402

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
    logits32 = row_scale[:, None] * (x.float() @ bank.float().T)  # torch: rounded inputs, fp32 math
    torch_lse = torch.stack([torch.logsumexp(logits32[:, lo:hi], 1) for lo, hi in zip(offsets[:-1], offsets[1:])], 1)
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
    logits32 = row_scale[:, None] * (x @ bank.T)
    torch_lse = torch.stack([torch.logsumexp(logits32[:, lo:hi], 1) for lo, hi in zip(offsets[:-1], offsets[1:])], 1)
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
