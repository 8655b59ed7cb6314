"""Atomic file writes and file hashes shared by banks, checkpoints, exports and outputs.

A write goes to a temporary file in the destination's directory, is flushed and
fsynced, then renamed over the destination with ``os.replace`` (atomic on POSIX and
Windows): a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "current_umask", "new_dir_mode", "new_file_mode", "atomic_write_bytes", "atomic_write_text", "file_sha256", "fsync_file"]


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    Linux reports it in ``/proc/self/status`` (``Umask:``, kernel ≥ 4.7); elsewhere it is
    read by setting and restoring it (``os.umask`` has no read-only form).
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """Permission bits of a new file made by a plain ``open(path, "w")``: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def new_dir_mode() -> int:
    """Permission bits of a new folder made by ``os.mkdir``: ``0o777 & ~umask``. A folder made
    by ``tempfile.mkdtemp`` (``0700``) and renamed into place gets these first."""
    return 0o777 & ~current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a fresh temporary file beside ``path``, fsync it, rename it over ``path``.

    For writers that want a file name (``safetensors.save_file``, ``torch.save``);
    the temporary file is removed if ``write`` raises (or is interrupted).
    ``tempfile.mkstemp`` creates the file ``0600``; it is given the permissions of a plain
    ``open()`` (``0666 & ~umask``) before the rename, so every file fastood writes —
    outputs, metadata, banks, checkpoints, manifests, models — follows the umask alike.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        fsync_file(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(memoryview(data))

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
