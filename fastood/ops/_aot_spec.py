"""The contract between the Triton kernel modules and the ahead-of-time compile checks.

Every module that defines Triton kernels the dispatcher can launch also defines::

    def aot_specs(arch: int, dtype: torch.dtype, *, full: bool) -> list[AotSpec]

returning one :class:`AotSpec` per kernel configuration the launcher (or its autotuner)
can pick on a GPU of compute capability ``arch`` (80, 90, ...) for inputs of ``dtype``.
``full=False`` may return a representative subset (CI); ``full=True`` every config.
The compile harness (``fastood.ops._aot``) turns each spec into
``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
options={"num_warps": ..., "num_stages": ..., **extra_options})`` and reads ptxas' report.

``aligned`` names the pointer / integer arguments the JIT would specialise as
16-byte-aligned / divisible by 16 at a real launch (the common, fast case); the harness
turns them into ``attrs`` so the compiled code is the one a launch would get.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["AotSpec", "TRITON_TYPES", "ptr"]


@dataclass(frozen=True)
class AotSpec:
    name: str                               # unique, readable: "segment_lse_fwd[128x128x64 w8 s3 argmax]"
    fn: Any                                 # the triton.JITFunction (not the Autotuner wrapper)
    signature: dict[str, str]               # every non-constexpr arg → "*fp16", "*fp32", "*i64", "i32", "fp32", ...
    constexprs: dict[str, Any]              # every tl.constexpr arg → its value
    num_warps: int
    num_stages: int
    aligned: tuple[str, ...] = ()           # args specialised as 16-byte aligned / divisible by 16
    intended_mma: str = "none"              # "wgmma" | "mma" | "none": the tensor-core path the main loop must use
    main_loop: bool = True                  # False for small helper kernels (merge): not held to the MMA rule
    extra_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"maxnreg": 128}


# torch dtype → the element type in a Triton signature ("*fp16" is a pointer to fp16).
TRITON_TYPES: dict[Any, str] = {}
try:  # torch is a dependency of every kernel module; kept optional here so the contract imports alone
    import torch as _torch

    TRITON_TYPES = {_torch.float16: "fp16", _torch.bfloat16: "bf16", _torch.float32: "fp32",
                    _torch.int32: "i32", _torch.int64: "i64"}
except ImportError:  # pragma: no cover
    pass


def ptr(dtype: Any) -> str:
    """The signature type of a pointer to ``dtype`` (a torch dtype or a Triton name): ``"*fp16"``."""
    if isinstance(dtype, str):
        return "*" + dtype
    if dtype not in TRITON_TYPES:
        raise TypeError(f"dtype must be one of {sorted(map(str, TRITON_TYPES))}, got {dtype!r}")
    return "*" + TRITON_TYPES[dtype]
