"""Run a call that might block (on a FIFO, a special file) without letting it hang the suite."""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest


def within(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    """``fn()`` in a daemon thread; fail (instead of hanging) when it does not return in time.
    An exception raised by ``fn`` is re-raised here."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"the call did not return within {timeout} s (blocked on a FIFO or special file?)")
    if "error" in box:
        raise box["error"]
    return box["value"]
