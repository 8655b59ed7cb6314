"""fastood/ops/_layout_cache.py and the portable Triton launcher's cached layout tables."""

from __future__ import annotations

import os
import threading

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fastood.ops import _layout_cache  # noqa: E402


def test_cached_by_key_built_once_and_bounded():
    _layout_cache.clear()
    built = []

    def build(v):
        built.append(v)
        return torch.full((3,), float(v))

    a = _layout_cache.cached(("k", 1), lambda: build(1))
    assert _layout_cache.cached(("k", 1), lambda: build(99)) is a and built == [1]
    for i in range(2, 2 + 3 * _layout_cache.MAX_ENTRIES):
        _layout_cache.cached(("k", i), lambda i=i: build(i))
    assert _layout_cache.size() == _layout_cache.MAX_ENTRIES
    b = _layout_cache.cached(("k", 1), lambda: build(1))     # evicted (least recently used): rebuilt
    assert b is not a and torch.equal(a, b)


def test_concurrent_callers_get_one_value():
    _layout_cache.clear()
    barrier = threading.Barrier(8)
    got = []

    def worker():
        barrier.wait()
        got.append(_layout_cache.cached(("same",), lambda: torch.arange(5)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(g is got[0] for g in got[1:])   # every caller gets the kept value


def test_portable_split_starts_cached_and_equal_to_searchsorted():
    pytest.importorskip("triton")
    from fastood.ops import _triton_segment_lse as P

    _layout_cache.clear()
    cpu = torch.device("cpu")
    host = (0, 3, 3, 40, 41, 100)
    off = torch.tensor(host)
    one = P._split_starts(off, host, 4, 32, cpu)
    two = P._split_starts(torch.tensor(host), host, 4, 32, cpu)
    assert one is two
    truth = torch.searchsorted(off[1:], torch.arange(4) * 32, right=True).to(torch.int32)
    assert one.tolist() == truth.tolist() == [0, 2, 4, 4]   # starts 0, 32, 64, 96 against ends 3, 3, 40, 41, 100
    assert P._split_starts(off, host, 2, 64, cpu).tolist() == [0, 4]      # another split: another entry
    assert P._device_offsets(off, host, cpu) is P._device_offsets(torch.tensor(host), host, cpu)
    assert P._split_starts(off, None, 4, 32, cpu) is not one            # device offsets: not cached


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_hit_on_another_stream_waits_for_the_build():
    _layout_cache.clear()
    side = torch.cuda.Stream()
    big = 1 << 24

    def build():  # queued work that fills the cached tensor (long enough to still run at the hit)
        t = torch.zeros(big, device="cuda")
        for _ in range(20):
            t.add_(1.0)
        return t

    built = _layout_cache.cached(("gpu",), build)
    with torch.cuda.stream(side):
        got = _layout_cache.cached(("gpu",), lambda: None)
        done = (got == 20.0).all()   # on the side stream: must see all 20 additions
    torch.cuda.synchronize()
    assert got is built and bool(done)
