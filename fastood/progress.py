r"""Progress reporting that fits both terminals and log files.

A live tqdm bar redraws itself with carriage returns several times a second; written to
a log file (stderr redirected, a batch job, CI) that is tens of kilobytes of ``\r``-joined
redraws per stage. :func:`progress` picks the form from the stream:

* **a terminal** (``stream.isatty()``, or a notebook's stderr): a normal tqdm bar;
* **anything else**: plain lines, no carriage returns — one line when the stage ends
  (``desc: n/total unit in T s (r unit/s)``) and, for long stages, one line every
  ``interval`` seconds while it runs (``desc: n/total unit (p %), T s, r unit/s``).
  A stage of ``S`` seconds therefore writes at most ``⌊S / interval⌋ + 1`` lines;
* **disabled** (``disable=True``, the CLI's ``--quiet``): nothing at all.

``FASTOOD_PROGRESS`` overrides the choice (``bar``, ``log`` or ``off``) and
``FASTOOD_PROGRESS_INTERVAL`` sets the default interval in seconds (30).

The returned object has the part of tqdm's interface fastood uses — iteration,
``update(n)``, ``set_postfix(**kw)``, ``set_description(s)``, ``reset(total)``, ``close()``, ``n``,
``total`` and use as a context manager — so call sites only swap the constructor.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO

__all__ = ["progress", "LogProgress", "NullProgress", "MODES"]

MODES = ("auto", "bar", "log", "off")
DEFAULT_INTERVAL = 30.0


def _is_tty(stream: Any) -> bool:
    if stream is sys.stderr and "ipykernel" in sys.modules:  # a notebook: tqdm.auto draws a widget there
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed or not a real file
        return False


def _fmt_num(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


class NullProgress:
    """Silent stand-in with tqdm's interface (``--quiet``)."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, initial: int = 0) -> None:
        self.iterable = iterable
        self.total = total
        self.n = initial

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress object was made without an iterable: call update(n) instead")
        for item in self.iterable:
            yield item
            self.n += 1

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kw: Any) -> None:
        pass

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        pass

    def reset(self, total: int | None = None) -> None:
        self.n = 0
        if total is not None:
            self.total = total

    def close(self) -> None:
        pass

    def __enter__(self) -> "NullProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LogProgress(NullProgress):
    """Line-per-stage progress for non-terminal streams (see the module docstring).

    Args:
        iterable: optional; iterating the object iterates it and counts one per item.
        desc: the stage's name, the start of every line.
        total: expected count (``None``: unknown; lines then give the count only).
        unit: what is counted (``"img"``, ``"step"``).
        initial: count already done (resumed runs); rates count only new progress.
        stream: where lines go (``sys.stderr`` by default).
        interval: seconds between lines while the stage runs (> 0).
        clock: monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
                 unit: str = "it", initial: int = 0, stream: TextIO | None = None,
                 interval: float = DEFAULT_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(iterable, total, initial)
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval = float(interval)
        self.clock = clock
        self.postfix = ""
        self._initial = initial
        self._t0 = clock()
        self._last = self._t0
        self._closed = False

    # -- counting
    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress object was made without an iterable: call update(n) instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self._last >= self.interval:  # a heartbeat line for long stages
            self._last = now
            self._write(self._line(now, final=False))

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kw: Any) -> None:
        items = dict(ordered_dict or {}, **kw)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def reset(self, total: int | None = None) -> None:
        """End the current sub-stage with its line and start counting again (tqdm's ``reset``)."""
        now = self.clock()
        if self.n > self._initial:
            self._write(self._line(now, final=True))
        super().reset(total)
        self._initial = 0
        self._t0 = self._last = now

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._write(self._line(self.clock(), final=True))

    # -- output
    def _line(self, now: float, final: bool) -> str:
        elapsed = max(now - self._t0, 0.0)
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        parts = [f"{self.desc}: {count} {self.unit}"]
        if not final and self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.0f} %)"
        done = self.n - self._initial
        rate = f", {_fmt_num(done / elapsed)} {self.unit}/s" if elapsed > 0 and done > 0 else ""
        parts.append(f" in {elapsed:.1f} s{rate}" if final else f", {elapsed:.1f} s{rate}")
        if self.postfix:
            parts.append(f" [{self.postfix}]")
        return "".join(parts)

    def _write(self, line: str) -> None:
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (ValueError, OSError):  # the log was closed under us: progress is not worth a crash
            pass


def _default_interval() -> float:
    raw = os.environ.get("FASTOOD_PROGRESS_INTERVAL")
    if raw is None:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"FASTOOD_PROGRESS_INTERVAL must be a number of seconds, got {raw!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"FASTOOD_PROGRESS_INTERVAL must be > 0 seconds, got {raw!r}")
    return value


def progress(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None, unit: str = "it",
             initial: int = 0, disable: bool = False, stream: TextIO | None = None, mode: str | None = None,
             interval: float | None = None, clock: Callable[[], float] = time.monotonic,
             **tqdm_kwargs: Any) -> Any:
    """A progress reporter over ``iterable`` (or driven by ``update(n)``) that suits ``stream``.

    Args:
        iterable: iterate the returned object to iterate this (optional).
        desc: stage name; total: expected count (taken from ``len(iterable)`` when omitted);
        unit: what is counted; initial: count already done (resumed runs).
        disable: silent (``--quiet``).
        stream: the output stream, ``sys.stderr`` by default.
        mode: ``"auto"`` (a tqdm bar on a terminal, lines otherwise), ``"bar"``, ``"log"`` or
            ``"off"``; default: ``$FASTOOD_PROGRESS`` or ``"auto"``.
        interval: seconds between lines for long stages in log mode
            (default ``$FASTOOD_PROGRESS_INTERVAL`` or 30).
        clock: monotonic clock for log mode (tests inject one).
        tqdm_kwargs: passed to tqdm in bar mode (``leave``, ``dynamic_ncols``, ...).

    Returns a tqdm bar, a :class:`LogProgress` or a :class:`NullProgress`.
    """
    if mode is None:
        mode = os.environ.get("FASTOOD_PROGRESS") or "auto"
    if mode not in MODES:
        raise ValueError(f"mode (or $FASTOOD_PROGRESS) must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(initial, bool) or not isinstance(initial, int) or initial < 0:
        raise ValueError(f"initial must be an int >= 0, got {initial!r}")
    if interval is None:
        interval = _default_interval()
    elif isinstance(interval, bool) or not isinstance(interval, (int, float)) or not (
            interval > 0 and math.isfinite(interval)):
        raise ValueError(f"interval must be a number of seconds > 0, got {interval!r}")
    if total is None and iterable is not None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if disable or mode == "off":
        return NullProgress(iterable, total, initial)
    out = stream if stream is not None else sys.stderr
    if mode == "bar" or (mode == "auto" and _is_tty(out)):
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial, file=out, **tqdm_kwargs)
    return LogProgress(iterable, desc=desc, total=total, unit=unit, initial=initial, stream=out,
                       interval=interval, clock=clock)
