"""A small, thread-safe, by-value cache of the per-layout device tensors a launcher builds.

A detector scores batch after batch against one bank and one segment layout: the device
copy of the offsets and the tables derived from them (the column → segment map, the first
segment of each column split) are the same every call. Built per call they cost a copy and
a few small kernel launches — tens of µs, as much as the fused kernel itself at a batch of
256 on an H100 (bench/sol.py's launcher accounting). Keys are plain Python values (the
offsets read on the host, never a device tensor: no sync); entries are tuples of tensors,
at most ``MAX_ENTRIES`` of them, least recently used evicted first.

A cached tensor may be read by a launch on any stream. On a hit the current CUDA stream
first waits for the event recorded when the entry was built (the kernels that filled it
were queued on the building stream, possibly not finished: a wait on a completed event
costs nothing), and each tensor is recorded on it (``Tensor.record_stream``), so that if
its entry is evicted while that launch is still queued the caching allocator does not hand
its memory to another stream.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable, TypeVar

import torch

__all__ = ["cached", "clear", "size", "MAX_ENTRIES"]

MAX_ENTRIES = 16
T = TypeVar("T")

_ENTRIES: "OrderedDict[Hashable, tuple]" = OrderedDict()  # key → (value, event recorded after its build)
_LOCK = threading.Lock()


def _tensors(value: object):
    """The tensors of a cached value: itself, a tuple/list's items or a dataclass' fields."""
    if isinstance(value, torch.Tensor):
        return [value]
    items = value if isinstance(value, (tuple, list)) else getattr(value, "__dict__", {}).values()
    return [v for v in items if isinstance(v, torch.Tensor)]


def cached(key: Hashable, build: Callable[[], T]) -> T:
    """The value cached under ``key``, built by ``build()`` on a miss (outside the lock: two
    threads may both build it once; either result is correct and one is kept, and every
    caller gets the kept one)."""
    with _LOCK:
        entry = _ENTRIES.get(key)
        if entry is not None:
            _ENTRIES.move_to_end(key)
    if entry is None:
        value = build()
        cuda = [t for t in _tensors(value) if t.is_cuda]
        ready = None
        if cuda:  # the building stream's work that fills them: later readers wait for it
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(cuda[0].device))
        with _LOCK:
            entry = _ENTRIES.setdefault(key, (value, ready))
            _ENTRIES.move_to_end(key)
            while len(_ENTRIES) > MAX_ENTRIES:
                _ENTRIES.popitem(last=False)
        if entry[0] is value:
            return value  # type: ignore[return-value]
    value, ready = entry
    for t in _tensors(value):
        if t.is_cuda:
            stream = torch.cuda.current_stream(t.device)
            if ready is not None:
                stream.wait_event(ready)
                ready = None
            t.record_stream(stream)
    return value  # type: ignore[return-value]


def clear() -> None:
    """Drop every entry (tests)."""
    with _LOCK:
        _ENTRIES.clear()


def size() -> int:
    with _LOCK:
        return len(_ENTRIES)
