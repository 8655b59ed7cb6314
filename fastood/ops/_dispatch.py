"""Input checks and the one backend dispatch point for the segmented-LSE primitive.

Every backend implements the same launcher contract::

    launcher(x, bank, offsets, row_scale, want_argmax) -> (lse, max0, argmax0)

with ``x`` (B, D) and ``bank`` (N, D) of one floating dtype on one device,
``offsets`` (S+1,) int64 on that device, ``row_scale`` (B,) float32 such that the
logits are ``L[i, j] = row_scale[i] · x_i · bank_j`` (natural-log units), and

- ``lse[i, s] = log Σ_{j ∈ seg s} exp(L[i, j])`` (B, S) float32, ``-inf`` for an empty segment;
- ``max0[i] = max_{j ∈ seg 0} L[i, j]`` (B,) float32;
- ``argmax0[i]`` (B,) int64, the first maximiser, when ``want_argmax`` (else empty).

Normalisation and temperature are folded into ``row_scale`` here, once:
``row_scale[i] = scale / ||x_i||`` (or ``scale`` without normalisation).

Normalisation works over the whole float range (:func:`prepare_rows`): a row whose
largest magnitude ``m_i = max_j |x_ij|`` lies outside ``[2^-32, 2^32]`` (where
``||x_i||²`` would overflow or underflow in fp32, e.g. ``x·1e30`` or ``x·1e-30``) or
is so small that ``scale / ||x_i||`` would overflow, is first multiplied by the power
of two ``2^(1-e_i)`` (``m_i = f·2^{e_i}``, ``f ∈ [0.5, 1)``) that brings ``m_i`` into
``[1, 2)``. Multiplying by a power of two is exact, and ``x̂ = x/||x||`` does not
change under a positive factor, so such a row gives the same cosines as any
in-range multiple of it; rows already in range are passed on untouched (bitwise
the same result as before). Only a row that is exactly zero has "zero norm", and
only inf / NaN entries are "non-finite".
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from fastood._backends import backends, triton_interpreting

BACKEND_NAMES = ("auto", "triton", "cuda", "cpu", "torch")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

Launcher = Callable[[Tensor, Tensor, Tensor, Tensor, bool], tuple[Tensor, Tensor, Tensor]]


# ---------------------------------------------------------------------------- checks
def check_features(name: str, t: object, *, ndim: int = 2) -> Tensor:
    """A floating tensor of rank ``ndim`` with no zero-size batch."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}): expected at least one row")
    if t.dim() == 2 and t.shape[1] == 0:
        raise ValueError(f"{name} has zero feature width (shape {tuple(t.shape)})")
    return t


def check_pair(x: Tensor, bank: Tensor, x_name: str = "x", bank_name: str = "bank") -> None:
    check_features(x_name, x)
    check_features(bank_name, bank)
    if x.shape[1] != bank.shape[1]:
        raise ValueError(
            f"{x_name} has width D={x.shape[1]} but {bank_name} has width D={bank.shape[1]}: they must match"
        )
    if x.device != bank.device:
        raise ValueError(f"{x_name} is on {x.device} but {bank_name} is on {bank.device}: put both on one device")


FP32_MAX = float(torch.finfo(torch.float32).max)
#: the smallest temperature τ accepted: ``1/τ ≤ FLT_MAX / 2`` (τ ≥ ≈5.88e-39), so that the
#: scale, and the base-2 logits ``cos · log2(e) / τ`` the kernels form from it, are finite in fp32
MIN_TEMPERATURE = 2.0 / FP32_MAX


def check_positive_finite(name: str, value: float) -> float:
    """A positive number that is finite in float32 (the kernels compute in fp32), as a Python float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    if value > FP32_MAX:
        raise ValueError(f"{name} must be at most {FP32_MAX:.7g} (the float32 maximum: the kernels compute in fp32), "
                         f"got {value:g}")
    return value


def check_scale(name: str, value: float) -> float:
    """A logit scale (``1/τ``): positive and at most ``FLT_MAX/2``, so that the fp32 logits, also in
    the kernels' base 2 (``× log2(e)``), stay finite for unit cosines."""
    value = check_positive_finite(name, value)
    if value > FP32_MAX / 2:
        raise ValueError(f"{name} must be at most FLT_MAX/2 = {FP32_MAX / 2:.3g} (the fp32 kernels form "
                         f"{name} · log2(e) · cos), got {value:g}")
    return value


def check_temperature(name: str, value: float) -> float:
    """A temperature τ: positive, finite, and with ``1/τ`` finite in float32 — with the
    factor-2 headroom the kernels need (``1/τ ≤ FLT_MAX/2``, i.e. τ ≥ ≈5.88e-39).

    The logits are ``cos · (1/τ)`` in fp32 (the Triton / CUDA kernels use base 2,
    ``cos · log2(e)/τ``); a smaller τ turns the scale into ``inf`` and every score into NaN.
    """
    value = check_positive_finite(name, value)
    if value < MIN_TEMPERATURE:
        raise ValueError(f"{name} must be >= {MIN_TEMPERATURE:.3g}, got {value:g}: the logits cos/{name} are fp32 and "
                         f"1/{name} = {1.0 / value:.3g} exceeds FLT_MAX/2 = {FP32_MAX / 2:.3g} (the headroom the "
                         "kernels' base-2 logits need); scores would be NaN")
    return value


def check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be in {bound}, got {value}")
    return value


def as_offsets(offsets: Sequence[int] | Tensor, num_rows: int) -> Tensor:
    """Validate segment offsets and return them as a CPU int64 tensor."""
    if isinstance(offsets, Tensor):
        if offsets.dtype.is_floating_point or offsets.dtype.is_complex or offsets.dtype == torch.bool:
            raise TypeError(f"offsets must be an integer tensor, got {offsets.dtype}")
        off = offsets.detach().to("cpu", torch.int64)
    else:
        try:
            values = list(offsets)
        except TypeError:
            raise TypeError(f"offsets must be a sequence of ints or an int64 tensor, got {type(offsets).__name__}")
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise TypeError("offsets must contain Python ints")
        off = torch.tensor(values, dtype=torch.int64)
    if off.dim() != 1 or off.numel() < 2:
        raise ValueError(f"offsets must be 1-D with at least 2 entries (S+1 for S segments), got shape {tuple(off.shape)}")
    if off[0].item() != 0 or off[-1].item() != num_rows:
        raise ValueError(
            f"offsets must start at 0 and end at the number of bank rows ({num_rows}), "
            f"got first={off[0].item()} last={off[-1].item()}"
        )
    if bool((off[1:] < off[:-1]).any()):
        bad = int(torch.nonzero(off[1:] < off[:-1])[0, 0])
        raise ValueError(f"offsets must be non-decreasing, but offsets[{bad + 1}] < offsets[{bad}]")
    return off


_SAFE_LO, _SAFE_HI = 2.0**-32, 2.0**32  # max|x_i| range where ||x_i||² stays a normal fp32 number


def prepare_rows(x: Tensor, scale: float, normalize: bool, name: str = "x") -> tuple[Tensor, Tensor]:
    """``(x', row_scale)`` with ``row_scale · x'_i = scale · x_i / ||x_i||`` (or ``scale · x_i``), safely in fp32.

    Checks every row: an inf / NaN entry is an error ("non-finite"); with
    ``normalize`` an all-zero row is an error ("zero norm": its cosine is undefined).
    With ``normalize``, rows whose max-abs ``m_i`` is outside ``[2^-32, 2^32]``, or
    below ``scale / FLT_MAX`` (so ``scale / ||x_i||`` would overflow), are multiplied
    exactly by ``2^(1-e_i)`` (``m_i = f · 2^{e_i}``, ``f ∈ [0.5, 1)``) so that their
    max-abs is in ``[1, 2)``: then ``||x'_i||²`` neither overflows nor underflows and
    ``row_scale_i = scale / ||x'_i|| ≤ scale``. Other rows are returned as they are
    (``x`` itself when no row needs it), so in-range inputs keep their exact results.
    """
    mx = torch.amax(x.abs(), dim=1).float()
    bad_finite = ~torch.isfinite(mx)  # amax propagates NaN
    zero = mx == 0
    lo = max(_SAFE_LO, scale / FP32_MAX)
    need = (mx < lo) | (mx > _SAFE_HI)
    # one device → host transfer for the three checks (each bool() would synchronise a CUDA stream)
    any_bad, any_zero, any_need = torch.stack([bad_finite.any(), zero.any(), need.any()]).tolist()
    if any_bad:
        i = int(torch.nonzero(bad_finite)[0, 0])
        raise ValueError(f"{name} has non-finite values (first in row {i})")
    if not normalize:
        return x, torch.full((x.shape[0],), scale, dtype=torch.float32, device=x.device)
    if any_zero:
        i = int(torch.nonzero(zero)[0, 0])
        raise ValueError(f"{name} row {i} has zero norm: it cannot be L2-normalised (pass normalize=False or drop it)")
    if any_need:
        _, exp = torch.frexp(mx[need])
        # x · 2^(1-e) in float64 (exact: a power of two; the factor itself may exceed the fp32 range)
        factor = torch.pow(2.0, (1 - exp).double())
        x = x.clone()
        x[need] = (x[need].double() * factor[:, None]).to(x.dtype)
    norms = torch.linalg.vector_norm(x.float(), dim=1)
    return x, scale / norms


# -------------------------------------------------------------------------- dispatch
def _launcher(name: str) -> Launcher:
    if name == "torch":
        from fastood.ops._torch_segment_lse import segment_lse_torch

        return segment_lse_torch
    if name == "cpu":
        from fastood.ops._cpu_segment_lse import segment_lse_cpu

        return segment_lse_cpu
    if name == "triton":
        from fastood.ops._triton_segment_lse import segment_lse_triton

        return segment_lse_triton
    if name == "cuda":
        from fastood.ops._cuda_segment_lse import segment_lse_cuda  # type: ignore[import-not-found]

        return segment_lse_cuda
    raise AssertionError(name)


def resolve_backend(backend: str, device: torch.device) -> str:
    """Pick the backend for tensors on ``device``; error if the asked one cannot run there.

    ``auto``: CUDA tensors → Triton (the CUDA C++ kernel is opt-in); CPU tensors →
    the C++ path when built (bench/results: it beats chunked torch on CPU), else torch.
    """
    if not isinstance(backend, str) or backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {backend!r}")
    status = backends()
    if backend == "auto":
        if device.type == "cuda":
            return "triton" if status["triton"] else "torch"
        if device.type == "cpu":
            return "cpu" if status["cpu"] else "torch"
        return "torch"
    if not status[backend]:
        raise ValueError(f"backend {backend!r} is not available: {status[backend].reason}")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend 'cpu' needs CPU tensors, got tensors on {device}")
    if backend == "cuda" and device.type != "cuda":
        raise ValueError(f"backend 'cuda' needs CUDA tensors, got tensors on {device}")
    if backend == "triton" and device.type != "cuda" and not (device.type == "cpu" and triton_interpreting()):
        raise ValueError(f"backend 'triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {device}")
    return backend


def run_segment_lse(
    x: Tensor,
    bank: Tensor,
    offsets: Tensor,
    scale: float,
    normalize: bool,
    want_argmax: bool,
    backend: str,
    x_name: str = "x",
    bank_name: str = "bank",
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate, fold the row scale, promote dtypes and call the chosen backend."""
    check_pair(x, bank, x_name, bank_name)
    scale = check_scale("scale", scale)
    off = as_offsets(offsets, bank.shape[0])
    name = resolve_backend(backend, x.device)
    x, row_scale = prepare_rows(x, scale, normalize, x_name)
    dtype = torch.promote_types(x.dtype, bank.dtype)
    # A custom op's body still runs under the caller's autocast: without this, the torch
    # backend's GEMM would silently drop to bf16/fp16 (×100 at τ = 0.01). The inputs'
    # dtypes decide the precision, nothing else.
    with torch.autocast(x.device.type, enabled=False):
        lse, max0, arg0 = _launcher(name)(
            x.to(dtype), bank.to(dtype), off.to(x.device), row_scale.contiguous(), bool(want_argmax)
        )
    return lse, max0, arg0
