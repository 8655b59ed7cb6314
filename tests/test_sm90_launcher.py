"""The Hopper scoring launcher's host side (fastood/ops/_triton_segment_lse_sm90.py): the
per-layout table cache, the rule that pre-fills outputs only when a segment is empty, and
the column-split rules — against float64 and hand counts.

The "every output written" tests make ``torch.empty`` return NaN-filled memory (torch's
deterministic mode), so an output entry (or a workspace slot the merge reads) that no
kernel writes shows up as NaN instead of whatever the allocator handed back.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

triton = pytest.importorskip("triton")

from fastood.ops import _triton_segment_lse_sm90 as sm90  # noqa: E402
from fastood.ops._split_plan import wave_splits  # noqa: E402
from tests.numerics import check_argmax, max_abs_err, neglabel_offsets, segment_truth, unit_rows  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def nan_for_uninitialised():
    det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    assert torch.isnan(torch.empty(4)).all()   # the premise of the tests below
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.utils.deterministic.fill_uninitialized_memory = fill


LAYOUTS = [
    ("neglabel_no_empty", 150, neglabel_offsets(40, 5, 22)),
    ("wide_segment0", 230, [0, 200, 201, 230]),
    ("one_segment", 77, [0, 77]),
    ("empty_middle", 100, [0, 30, 30, 70, 100]),
    ("empty_segment0", 129, [0, 0, 64, 64, 96, 128, 129]),
    ("empty_last", 90, [0, 50, 90, 90]),
]


@pytest.mark.parametrize("name,N,offsets", LAYOUTS, ids=[c[0] for c in LAYOUTS])
@pytest.mark.parametrize("splits,programs", [(1, None), (3, None), (1, 4), (3, 9), (1, 40)])
@pytest.mark.parametrize("want_argmax", [True, False])
def test_every_output_is_written(nan_for_uninitialised, name, N, offsets, splits, programs, want_argmax):
    """``splits``: the segment-0 kernel's; ``programs``: the hot kernel's stream-K grid — its
    boundary slots (``flag``, ``bflag``, ``part_seg``, ``part_v``) come from ``torch.empty``
    too, so a slot the exact kernel reads that no piece wrote shows up as NaN or garbage."""
    gen = torch.Generator().manual_seed(5 * N + splits)
    B, D = 21, 40
    x, bank = unit_rows(B, D, gen).float(), unit_rows(N, D, gen).float()
    row_scale = torch.linspace(1.0, 100.0, B)
    off = torch.tensor(offsets, dtype=torch.int64)   # on the host: the cached, fill-free path
    lse, max0, arg0 = sm90.segment_lse_triton_sm90(x.to(DEVICE), bank.to(DEVICE), off, row_scale.to(DEVICE),
                                                   want_argmax, num_splits=splits, num_programs=programs)
    assert not torch.isnan(lse).any() and not torch.isnan(max0).any()
    ref_lse, ref_max, ref_arg, logits = segment_truth(x, bank, offsets, row_scale)
    assert max_abs_err(lse, ref_lse) <= 1e-4       # −inf where a segment is empty, on both sides
    assert max_abs_err(max0, ref_max) <= 1e-4
    if want_argmax:
        assert arg0.shape == (B,)
        check_argmax(arg0, ref_arg, logits, offsets, tol=1e-4)
    else:
        assert arg0.numel() == 0


def test_the_table_is_cached_by_value_and_bounded():
    from fastood.ops import _layout_cache

    cpu = torch.device("cpu")
    _layout_cache.clear()
    a = sm90._segment_table(torch.tensor([0, 3, 5]), 5, cpu)
    b = sm90._segment_table(torch.tensor([0, 3, 5]), 5, cpu)     # another tensor, the same layout
    assert a is b
    assert a.end0 == 3 and not a.any_empty
    assert a.colseg.tolist() == [0, 0, 0, 1, 1]
    assert a.colseg.tolist() == sm90.column_segments(torch.tensor([0, 3, 5]), 5).tolist()
    c = sm90._segment_table(torch.tensor([0, 3, 3, 5]), 5, cpu)
    assert c is not a and c.any_empty and c.colseg.tolist() == [0, 0, 0, 2, 2]
    assert sm90._segment_table(torch.tensor([0, 0, 5]), 5, cpu).end0 == 0
    for n in range(40):
        sm90._segment_table(torch.tensor([0, 1, 2 + n]), 2 + n, cpu)
    assert _layout_cache.size() <= _layout_cache.MAX_ENTRIES


def test_sol_splits_is_the_wave_rule_within_the_workspace():
    # B = 4,096 on an H100 (132 SMs, 2 blocks each): 32 row blocks × 8 splits = one wave.
    assert sm90.sol_splits(4096, 11400, 101, 132, 128, 128, 2) == 8
    assert sm90.sol_splits(65536, 11400, 101, 132, 128, 128, 2) == 1
    # The workspace cap: B·S·8 bytes per split, 64 MB in all → 1 split at B = 1,024, S = 10,000.
    assert sm90.sol_splits(1024, 11400, 10_000, 132, 128, 128, 2) == 1
    for B in (128, 1000, 3000, 9000):
        cap = max(1, sm90.SPLIT_WORKSPACE_BYTES // (B * 101 * 8))
        assert sm90.sol_splits(B, 11400, 101, 132, 128, 128, 1) == wave_splits(
            -(-B // 128), 90, 132, blocks_per_sm=1, max_splits=cap)


def test_segment0_splits_follow_segment0s_columns(monkeypatch):
    monkeypatch.setattr(sm90, "_sm_count", lambda index: 132)
    gpu = torch.device("cuda", 0)   # a device object only: nothing runs
    # 1,000 ID columns = 8 tiles of 128: 32 row blocks × 8 splits, one tile each.
    assert sm90._segment0_splits(4096, 11400, gpu, False, 128, 128, None, end0=1000) == 8
    assert sm90._segment0_splits(4096, 11400, gpu, False, 128, 128, None, end0=0) == 1
    assert sm90._segment0_splits(4096, 11400, gpu, False, 128, 128, None, end0=None) == \
        sm90.sol_splits(4096, 11400, 1, 132, 128, 128, 2)
    assert sm90._segment0_splits(4096, 11400, gpu, False, 128, 128, 5, end0=1000) == 5   # forced
    assert sm90._segment0_splits(4096, 11400, gpu, True, 128, 128, None, end0=1000) == 1  # interpreter
