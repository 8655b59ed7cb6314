"""Which kernel backends this installation can run, and why the others cannot.

``fastood.backends()`` answers with one :class:`BackendStatus` per backend:

- ``torch``  — chunked plain-torch path; always available.
- ``cpu``    — the C++ (OpenMP) path in ``fastood._C``; needs the compiled extension.
- ``triton`` — the Triton kernel; needs triton and a CUDA GPU, or
  ``TRITON_INTERPRET=1`` (then it also runs on CPU tensors, slowly: for tests).
- ``cuda``   — the CUDA C++ kernel in ``fastood._C``; needs ``_C`` built with CUDA
  and a CUDA GPU.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import NamedTuple

import torch

__all__ = ["BackendStatus", "backends", "load_extension", "triton_interpreting"]


class BackendStatus(NamedTuple):
    available: bool
    reason: str

    def __bool__(self) -> bool:  # `if fastood.backends()["cpu"]:` reads naturally
        return self.available


@functools.lru_cache(maxsize=None)
def load_extension():
    """Import ``fastood._C``; returns ``(module or None, reason)``."""
    try:
        mod = importlib.import_module("fastood._C")
    except ImportError as exc:  # not built (e.g. a source checkout without `pip install .`)
        return None, f"fastood._C is not importable ({exc}); build it with `pip install .`"
    return mod, "fastood._C loaded"


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _triton_importable() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising at import
        return False, f"triton is not importable ({exc})"
    return True, f"triton {triton.__version__}"


def backends() -> dict[str, BackendStatus]:
    """Availability of every backend on this machine, with the reason."""
    out: dict[str, BackendStatus] = {"torch": BackendStatus(True, f"torch {torch.__version__}")}

    ext, ext_why = load_extension()
    out["cpu"] = BackendStatus(ext is not None, ext_why if ext is None else "C++ OpenMP kernels in fastood._C")

    ok, triton_why = _triton_importable()
    if not ok:
        out["triton"] = BackendStatus(False, triton_why)
    elif torch.cuda.is_available():
        out["triton"] = BackendStatus(True, f"{triton_why} on {torch.cuda.get_device_name()}")
    elif triton_interpreting():
        out["triton"] = BackendStatus(True, f"{triton_why} in interpreter mode (TRITON_INTERPRET=1, CPU tensors)")
    else:
        out["triton"] = BackendStatus(False, f"{triton_why} but no CUDA GPU (set TRITON_INTERPRET=1 to run it on CPU)")

    if ext is None:
        out["cuda"] = BackendStatus(False, ext_why)
    elif not ext.cuda_available():
        out["cuda"] = BackendStatus(False, "fastood._C was built without CUDA kernels (no nvcc, or FASTOOD_CUDA=OFF)")
    elif not torch.cuda.is_available():
        out["cuda"] = BackendStatus(False, "fastood._C has CUDA kernels but no CUDA GPU is visible")
    else:
        out["cuda"] = BackendStatus(True, "CUDA C++ kernels in fastood._C")
    return out
