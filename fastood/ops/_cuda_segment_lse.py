"""The ``cuda`` backend: the CUDA C++ segmented-LSE kernel in ``fastood._C``.

Same contract and math as the other backends (``fastood/ops/_dispatch.py``)::

    L[i, j]   = row_scale[i] · <x_i, bank_j>
    lse[i, s] = log Σ_{j ∈ [offsets[s], offsets[s+1])} exp(L[i, j])     (-inf when empty)
    max0[i]   = max_{j ∈ seg 0} L[i, j],   argmax0[i] = first maximiser

The kernel (``csrc/cuda/segment_lse.cu``) tiles the GEMM in 128-row × 64-column tiles —
fp16/bf16 on tensor cores (WMMA ``mma.sync``, fp32 accumulation), fp32 with IEEE FMAs
(no TF32) — and reduces each tile into an fp32 online (max, rescaled sum) state per row
in base 2; the B×N logits are never written. Small batches split the columns across
blocks and a second kernel merges the partial states in split order (no atomics:
bitwise deterministic for a given split plan).

In a build with ``FASTOOD_TRITON_AOT=ON`` (CMake), ``fastood._C`` embeds the Triton kernel
of ``_triton_segment_lse.py`` compiled ahead of time for the listed sm_XX / dtypes and
launches it instead when the device and the 16-element alignment match
(``csrc/cuda/segment_lse_aot.cpp``; ``FASTOOD_CUDA_KERNEL=wmma`` keeps the C++ kernel).
On a compute-capability-9.x GPU with fp16/bf16 inputs and at least 1,024 rows it runs the
Hopper sequence (``segment_lse_sm90_aot``) first when an sm90 set is embedded
(``csrc/cuda/cuda_path.h``; ``FASTOOD_CUDA_PATH=sm90|aot|cuda`` forces a path). The
workspace is sized for whichever path runs: ``max(plan_splits' bytes, cuda_sm90_request's)``;
``last_path()`` says which kernels the last call ran.

The split planner fills one wave: SMs × the resident blocks per SM that
``cudaOccupancyMaxActiveBlocksPerMultiprocessor`` reports for the forward-kernel variant
that will run (``_blocks_per_sm``).

The launcher passes raw device pointers, element strides and torch's current stream
to ``fastood._C`` (no libtorch link). Layout requirement: unit stride along D. Inputs
with another stride along D are copied to a contiguous tensor first; any row stride
is used as is (16-byte vector loads are used when rows are 16-byte aligned and D is a
multiple of 8, scalar loads otherwise).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from fastood._backends import load_extension

__all__ = ["segment_lse_cuda", "plan_splits", "sm90_request", "workspace_bytes", "head_score_cuda", "last_path",
           "WORKSPACE_BYTES"]

# Cap on the split-N workspace (partial m, l per split × segment × row, argmax per split × row).
WORKSPACE_BYTES = 64 * 2**20

_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}

# The path of the last segment_lse_cuda / head_score_cuda call in this process (selfcheck, tests).
_LAST_PATH: str | None = None


def last_path() -> str | None:
    """Which kernels the last ``segment_lse_cuda`` / ``head_score_cuda`` call ran: ``"sm90 tma"``,
    ``"sm90 ptr: <why>"``, ``"aot (<why not sm90>)"`` or ``"cuda (<why not the others>)"``; None
    before the first call."""
    return _LAST_PATH


def _ext():
    """``fastood._C`` with its CUDA kernels, or a RuntimeError saying why not."""
    mod, why = load_extension()
    if mod is None:
        raise RuntimeError(f"the cuda backend needs the compiled extension: {why}")
    if not mod.cuda_available():
        raise RuntimeError(
            "the cuda backend is not available: fastood._C was built without CUDA kernels "
            "(no nvcc at build time, or FASTOOD_CUDA=OFF); rebuild with nvcc on the PATH"
        )
    return mod


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _check_cuda(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cuda":
        raise ValueError(f"the cuda backend needs CUDA tensors, got {name} on {t.device}")


def _rows(t: Tensor) -> tuple[Tensor, int]:
    """``t`` with unit stride along dim 1, and its row stride in elements."""
    if t.shape[1] > 1 and t.stride(1) != 1:
        t = t.contiguous()
    ld = t.stride(0) if t.shape[0] > 1 else t.shape[1]
    return t, int(ld)


@functools.lru_cache(maxsize=None)
def _blocks_per_sm(device_index: int, dtype_name: str, vector_loads: bool) -> int:
    """Resident forward-kernel blocks per SM: the CUDA occupancy API for the exact kernel
    variant (its registers bind: 164-168 per thread give 3 blocks of 128 threads)."""
    with torch.cuda.device(device_index):
        return int(_ext().cuda_fwd_blocks_per_sm(dtype_name, vector_loads))


def plan_splits(
    B: int, N: int, S: int, device: torch.device, num_splits: int | None = None, *,
    dtype: torch.dtype = torch.float16, vector_loads: bool = True,
) -> tuple[int, int, int]:
    """``(splits, chunk, workspace_bytes)`` the kernel will use for this problem on ``device``.

    Without ``num_splits`` the columns are split until ``ceil(B/128) · splits`` blocks fill
    one wave, ``SMs × blocks_per_sm``, with ``blocks_per_sm`` from the occupancy API for
    the forward kernel of ``dtype`` (``vector_loads``: the 16-byte-load variant).
    """
    ext = _ext()
    index = device.index if device.index is not None else torch.cuda.current_device()
    n = 0 if num_splits is None else int(num_splits)
    per_sm = _blocks_per_sm(index, _DTYPE_NAMES[dtype], bool(vector_loads))
    return tuple(ext.cuda_plan_splits(B, N, S, _sm_count(index), per_sm, n, WORKSPACE_BYTES))  # type: ignore[return-value]


def sm90_request(
    B: int, N: int, S: int, device: torch.device, num_splits: int | None = None, *, dtype: torch.dtype = torch.float16,
) -> tuple[int, int, int] | None:
    """``(programs, splits0, workspace_bytes)`` of the Hopper AOT sequence on ``device``, or None
    when ``fastood._C`` embeds no sm90 kernel set for that device and ``dtype``.

    ``programs``: the hot kernel's stream-K grid (two per SM, at most one per tile:
    ``stream_k_programs`` in csrc/cuda/split_plan.h); ``splits0``: the segment-0 kernel's
    column splits (the Python launcher's rule on the device's SMs, or ``num_splits``); the
    workspace is colseg (N int32) + row-block flags + the stream-K boundary records (P + 1
    boundaries) + segment 0's partials, fitted to ``2 · WORKSPACE_BYTES``.
    """
    ext = _ext()
    index = device.index if device.index is not None else torch.cuda.current_device()
    n = 0 if num_splits is None else int(num_splits)
    with torch.cuda.device(index):
        r = ext.cuda_sm90_request(_DTYPE_NAMES[dtype], B, N, S, _sm_count(index), n, 2 * WORKSPACE_BYTES)
    return None if r is None else tuple(r)  # type: ignore[return-value]


def workspace_bytes(
    B: int, N: int, S: int, device: torch.device, num_splits: int | None = None, *,
    dtype: torch.dtype = torch.float16, vector_loads: bool = True,
) -> int:
    """Bytes ``segment_lse_cuda`` reserves: ``max(plan_splits(...)[2], sm90_request(...)[2])`` —
    enough for whichever path ``fastood._C`` takes (CUDA C++, portable AOT or Hopper AOT)."""
    portable = plan_splits(B, N, S, device, num_splits, dtype=dtype, vector_loads=vector_loads)[2]
    sm90 = sm90_request(B, N, S, device, num_splits, dtype=dtype)
    return max(portable, 0 if sm90 is None else sm90[2])


def segment_lse_cuda(
    x: Tensor,
    bank: Tensor,
    offsets: Tensor,
    row_scale: Tensor,
    want_argmax: bool,
    *,
    num_splits: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Launcher contract of ``fastood.ops._dispatch`` on the CUDA C++ kernel.

    Args:
        x: (B, D) CUDA float16 / bfloat16 / float32.
        bank: (N, D) in ``x``'s dtype on ``x``'s device.
        offsets: (S+1,) integer, 0 = offsets[0] <= ... <= offsets[S] = N (validated by the
            caller; the kernel trusts them).
        row_scale: (B,) float32; ``L[i, j] = row_scale[i] · x_i · bank_j``.
        want_argmax: also return the first argmax of segment 0.
        num_splits: force the number of column splits (rounded to whole 64-column tiles;
            1 = single pass). Default: split only when the row blocks cannot fill the GPU.

    Returns:
        ``(lse (B, S) f32, max0 (B,) f32, argmax0 (B,) int64 or (0,) int64)``.

    Raises:
        ValueError: CPU tensors, mismatched dtypes/devices/widths, bad ``num_splits``.
        RuntimeError: the extension has no CUDA kernels, or a kernel launch failed.
    """
    _check_cuda("x", x)
    _check_cuda("bank", bank)
    if x.device != bank.device:
        raise ValueError(f"x is on {x.device} but bank is on {bank.device}: put both on one device")
    if x.dim() != 2 or bank.dim() != 2:
        raise ValueError(f"x and bank must be 2-D, got shapes {tuple(x.shape)} and {tuple(bank.shape)}")
    if x.dtype not in _DTYPE_NAMES:
        raise TypeError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if bank.dtype != x.dtype:
        raise TypeError(f"bank has dtype {bank.dtype} but x has {x.dtype}: they must match")
    if x.shape[1] != bank.shape[1]:
        raise ValueError(f"x has width D={x.shape[1]} but bank has width D={bank.shape[1]}: they must match")
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"num_splits must be a positive int or None, got {num_splits!r}")
    ext = _ext()

    device = x.device
    B, D = x.shape
    N = bank.shape[0]
    S = offsets.numel() - 1
    if S < 1:
        raise ValueError(f"offsets must have at least 2 entries, got shape {tuple(offsets.shape)}")
    lse = torch.empty(B, S, dtype=torch.float32, device=device)
    max0 = torch.empty(B, dtype=torch.float32, device=device)
    arg0 = torch.zeros(B if want_argmax else 0, dtype=torch.int64, device=device)
    if B == 0:
        return lse, max0, arg0
    if N == 0 or D == 0:
        # No column (every segment empty), or zero width (every logit 0): no kernel needed.
        if N == 0:
            lse.fill_(float("-inf"))
            max0.fill_(float("-inf"))
            return lse, max0, arg0
        sizes = (offsets[1:] - offsets[:-1]).to(device=device, dtype=torch.float32)
        lse.copy_(torch.log(sizes).expand(B, S))
        max0.fill_(0.0 if int(offsets[1]) > int(offsets[0]) else float("-inf"))
        return lse, max0, arg0

    x, ldx = _rows(x)
    bank, ldb = _rows(bank)
    off = offsets.to(device=device, dtype=torch.int64).contiguous()
    rs = row_scale.to(device=device, dtype=torch.float32).contiguous()
    if rs.numel() != B:
        raise ValueError(f"row_scale must have {B} entries, got {rs.numel()}")

    vec = ext.cuda_fwd_vector_loads(x.data_ptr(), ldx, bank.data_ptr(), ldb, D)
    splits, chunk, ws_bytes = plan_splits(B, N, S, device, num_splits, dtype=x.dtype, vector_loads=vec)
    # The Hopper sequence's own splits and workspace (None: not embedded for this device/dtype).
    req = sm90_request(B, N, S, device, num_splits, dtype=x.dtype)
    sm90_programs, sm90_splits0 = (0, 0) if req is None else req[:2]
    ws_bytes = max(ws_bytes, 0 if req is None else req[2])
    # torch's caching allocator returns 512-byte aligned blocks: the 256-byte requirement holds.
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device=device) if ws_bytes > 0 else None
    global _LAST_PATH
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        _LAST_PATH = ext.segment_lse_cuda(
            _DTYPE_NAMES[x.dtype],
            x.data_ptr(), ldx,
            bank.data_ptr(), ldb,
            B, N, D,
            off.data_ptr(), S,
            rs.data_ptr(),
            lse.data_ptr(), max0.data_ptr(),
            arg0.data_ptr() if want_argmax else 0,
            splits, chunk,
            ws.data_ptr() if ws is not None else 0, ws_bytes,
            stream, sm90_programs, sm90_splits0,
        )
    return lse, max0, arg0


def head_score_cuda(
    x: Tensor,
    bank: Tensor,
    num_id: int,
    *,
    method: str = "neglabel",
    groups: int = 1,
    temperature: float = 0.01,
    normalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """The TensorRT plugin's computation (``csrc/cuda/head.cu``) on torch tensors.

    ``method="neglabel"``: ``mean_g sigmoid(LSE_id − LSE_g)`` over the bank
    ``[ID (num_id) | negatives]`` in ``groups`` contiguous groups (the last
    ``(N − K) mod G`` negatives dropped); ``"mcm"``: ``exp(max/T − LSE)`` over the first
    ``num_id`` rows. Returns ``(score (B,) f32, pred (B,) int32)``; a zero-norm row of
    ``x`` (with ``normalize``) gives a NaN score. Lets the GPU tests check the plugin's
    kernels without TensorRT; ``fastood.ops.neglabel_score`` / ``mcm_score`` are the
    public API.
    """
    _check_cuda("x", x)
    _check_cuda("bank", bank)
    if x.dtype not in _DTYPE_NAMES or bank.dtype != x.dtype:
        raise TypeError(f"x and bank must share one of float16/bfloat16/float32, got {x.dtype} and {bank.dtype}")
    if x.dim() != 2 or bank.dim() != 2 or x.shape[1] != bank.shape[1] or x.shape[0] == 0:
        raise ValueError(f"expected x (B>0, D) and bank (N, D), got {tuple(x.shape)} and {tuple(bank.shape)}")
    ext = _ext()
    device = x.device
    x, ldx = _rows(x)
    bank, ldb = _rows(bank)
    B, D = x.shape
    N = bank.shape[0]
    index = device.index if device.index is not None else torch.cuda.current_device()
    sms = _sm_count(index)
    ws_bytes = ext.cuda_head_workspace_bytes(method, num_id, groups, float(temperature), bool(normalize), B, N)
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device=device)
    score = torch.empty(B, dtype=torch.float32, device=device)
    pred = torch.empty(B, dtype=torch.int32, device=device)
    global _LAST_PATH
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        _LAST_PATH = ext.head_score_cuda(
            _DTYPE_NAMES[x.dtype], x.data_ptr(), ldx, bank.data_ptr(), ldb, B, N, D,
            method, num_id, groups, float(temperature), bool(normalize),
            score.data_ptr(), pred.data_ptr(), ws.data_ptr(), ws_bytes, sms, stream,
        )
    return score, pred
