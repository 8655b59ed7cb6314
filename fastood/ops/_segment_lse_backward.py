"""The gradient of the fused segmented log-sum-exp with respect to the image features.

Forward (``fastood.ops.segment_lse``), with ``r_i = scale / ||x_i||`` (or ``scale``
without normalisation) and ``x̂_i = x_i / ||x_i||``::

    L_ij      = r_i · x_i · t_j = scale · x̂_i · t_j
    lse_{i,s} = log Σ_{j ∈ s} exp(L_ij),       max0_i = max_{j ∈ seg 0} L_ij

Backward, for upstream gradients ``g_{i,s} = ∂ℓ/∂lse_{i,s}`` and ``h_i = ∂ℓ/∂max0_i``.
With the segment softmax weights ``w_ij = exp(L_ij − lse_{i,s(j)})`` (``s(j)`` the
segment of column ``j``; the forward's ``lse`` is saved, so ``w`` needs no second
reduction)::

    ∂ℓ/∂L_ij = G_ij = g_{i,s(j)} · w_ij + h_i · [j = argmax0_i]
    u_i      = Σ_j G_ij · t_j                     (the fused pass: a (B, D) accumulator)
    ∂ℓ/∂x̂_i  = scale · u_i
    ∂ℓ/∂x_i  = (I − x̂_i x̂_iᵀ) ∂ℓ/∂x̂_i / ||x_i|| = r_i · (u_i − x̂_i (x̂_i · u_i))

(without normalisation ``∂ℓ/∂x_i = scale · u_i``). ``max0`` has a subgradient: the
one-hot at the argmax the forward reports (ties: the first maximiser). The bank is
a constant: a bank that requires grad is refused (``ValueError``).

Only ``u`` touches the bank: each backend recomputes each tile of logits (flash-
attention-backward style) and never holds more than a bounded slice of them. The
``(B, D)`` epilogue is cheap and shared; it runs in float64 (the ``1/||x||`` factor of
a row rescaled by :func:`~fastood.ops._dispatch.prepare_rows` may exceed the fp32 range).

NegLabel / MCM on the cpu and torch backends compute ``v_i = Σ_j ∂S_i/∂L_ij t_j`` inside the
forward's row loop instead (``score_with_grad``, at the end of this file): two logits GEMMs
for forward + backward instead of three.

float64 inputs: the fused forward kernels are fp32-only, so a float64 call computes
its forward with :func:`segment_lse_float64` (chunked torch in float64) on every
backend; the backward runs on the chosen backend in float64 (triton: in the
interpreter; the GPU kernels are compiled for fp16/bf16/fp32 only). This is what the
gradient tests use as the 1e-10 check of every backend's backward math.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fastood.ops._dispatch import (
    as_offsets,
    check_scale,
    prepare_rows,
    resolve_backend,
)

__all__ = [
    "segment_lse_backward",
    "segment_lse_grad_u_torch",
    "segment_lse_float64",
    "normalization_backward",
    "MAX_CHUNK_BYTES",
]

#: bytes of logits-sized temporaries (logits, gathered lse and g) the torch backward holds at a time
MAX_CHUNK_BYTES = 32 * 2**20

WIDE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ------------------------------------------------------------------------ shared helpers
def segment_of_columns(offsets: Tensor, n_cols: int) -> Tensor:
    """``seg[j] = s`` with ``offsets[s] ≤ j < offsets[s+1]`` (int64, on ``offsets``' device).

    Empty segments own no column, so ``seg`` only names segments whose ``lse`` is finite
    wherever the row's logits are.
    """
    sizes = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(sizes.numel(), device=offsets.device), sizes, output_size=n_cols)


def check_float64_pair(x: Tensor, bank: Tensor, x_name: str = "x", bank_name: str = "bank") -> None:
    """The checks of ``check_pair`` for the float64 path (the fp32 ones refuse float64)."""
    for name, t in ((x_name, x), (bank_name, bank)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
        if t.dtype not in WIDE_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
        if t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)}): expected at least one row and column")
    if x.shape[1] != bank.shape[1]:
        raise ValueError(f"{x_name} has width D={x.shape[1]} but {bank_name} has width D={bank.shape[1]}: they must match")
    if x.device != bank.device:
        raise ValueError(f"{x_name} is on {x.device} but {bank_name} is on {bank.device}: put both on one device")


def prepare_rows_float64(x: Tensor, scale: float, normalize: bool, name: str = "x") -> tuple[Tensor, Tensor]:
    """``(x, row_scale)`` in float64: ``row_scale_i = scale / ||x_i||`` (float64 has the range)."""
    x = x.double()
    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        raise ValueError(f"{name} has non-finite values (first in row {int(torch.nonzero(bad)[0, 0])})")
    if not normalize:
        return x, torch.full((x.shape[0],), scale, dtype=torch.float64, device=x.device)
    norms = torch.linalg.vector_norm(x, dim=1)
    zero = norms == 0
    if bool(zero.any()):
        i = int(torch.nonzero(zero)[0, 0])
        raise ValueError(f"{name} row {i} has zero norm: it cannot be L2-normalised (pass normalize=False or drop it)")
    return x, scale / norms


def segment_lse_float64(
    x: Tensor, bank: Tensor, offsets: Tensor, scale: float, normalize: bool, want_argmax: bool,
    *, max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> tuple[Tensor, Tensor, Tensor]:
    """The forward in float64, chunked over rows: ``(lse (B, S), max0 (B,), argmax0)`` all float64 / int64.

    Same semantics as the launcher contract of ``fastood.ops._dispatch`` (``-inf`` for an
    empty segment, first maximiser), never more than ``max_chunk_bytes`` of logits.
    """
    check_float64_pair(x, bank)
    scale = check_scale("scale", scale)
    off = as_offsets(offsets, bank.shape[0])
    x64, rs = prepare_rows_float64(x, scale, normalize)
    t64 = bank.double()
    B, N, S = x64.shape[0], t64.shape[0], off.numel() - 1
    lse = torch.full((B, S), float("-inf"), dtype=torch.float64, device=x.device)
    max0 = torch.full((B,), float("-inf"), dtype=torch.float64, device=x.device)
    arg0 = torch.zeros(B if want_argmax else 0, dtype=torch.int64, device=x.device)
    o = off.tolist()
    rows = max(1, max_chunk_bytes // (8 * max(N, 1)))
    for r0 in range(0, B, rows):
        r1 = min(B, r0 + rows)
        logits = (x64[r0:r1] * rs[r0:r1, None]) @ t64.T
        for s in range(S):
            if o[s + 1] > o[s]:
                lse[r0:r1, s] = torch.logsumexp(logits[:, o[s]: o[s + 1]], dim=1)
        if o[1] > 0:
            idx = torch.argmax(logits[:, : o[1]], dim=1)  # first maximiser
            max0[r0:r1] = logits[:, : o[1]].gather(1, idx[:, None])[:, 0]
            if want_argmax:
                arg0[r0:r1] = idx
    return lse, max0, arg0


def normalization_backward(x: Tensor, x_used: Tensor, row_scale: Tensor, u: Tensor, normalize: bool) -> Tensor:
    """``∂ℓ/∂x`` from ``u_i = Σ_j G_ij t_j``, in float64, cast to ``x.dtype``.

    ``x_used`` is the row-rescaled copy the kernels saw (``x_used_i = c_i x_i`` with
    ``c_i`` an exact power of two, 1 for in-range rows) and ``row_scale_i = scale/||x_used_i||``.
    Then ``x̂_i = x_used_i / ||x_used_i||`` and ``r_i = scale/||x_i|| = c_i · row_scale_i``::

        ∂ℓ/∂x_i = r_i (u_i − x̂_i (x̂_i·u_i))    (normalize)        ∂ℓ/∂x_i = scale · u_i (not)
    """
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    # float64 in row blocks of ~256 KiB per temporary: all of x at once in float64 held ~6 copies
    # of it (20 MiB at B = 1,024, D = 512 — most of the fused gradient's peak memory)
    step = max(1, (256 << 10) // (8 * max(1, x.shape[1])))
    for r0 in range(0, x.shape[0], step):
        r1 = min(x.shape[0], r0 + step)
        u64 = u[r0:r1].double()
        rs = row_scale[r0:r1].double()
        if not normalize:
            out[r0:r1] = rs[:, None] * u64
            continue
        xu = x_used[r0:r1].double()
        xh = xu / torch.linalg.vector_norm(xu, dim=1, keepdim=True)
        # c_i = max|x_used_i| / max|x_i|: a ratio of two exactly representable numbers that is a power of two
        c = torch.amax(xu.abs(), dim=1) / torch.amax(x[r0:r1].double().abs(), dim=1)
        proj = (xh * u64).sum(dim=1, keepdim=True)
        out[r0:r1] = (c * rs)[:, None] * (u64 - xh * proj)
    return out


# ------------------------------------------------------------------- the torch backend
def segment_lse_grad_u_torch(
    x: Tensor, bank: Tensor, offsets: Tensor, row_scale: Tensor, lse: Tensor, g_lse: Tensor,
    arg0: Optional[Tensor], g_max0: Optional[Tensor], *, max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> Tensor:
    """``u_i = Σ_j (g_{i,s(j)} w_ij + h_i [j = arg0_i]) t_j`` in chunked torch.

    The backward launcher contract (every backend): ``x`` (B, D) and ``bank`` (N, D) in one
    dtype, ``offsets`` (S+1,) int64, ``row_scale`` (B,), ``lse`` / ``g_lse`` (B, S),
    ``arg0`` / ``g_max0`` (B,) or None. Returns ``u`` (B, D) in fp32 (float64 for float64
    inputs). Holds ≤ ``max_chunk_bytes`` of logits-sized temporaries at a time.
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    B, N = x.shape[0], bank.shape[0]
    u = torch.zeros(B, x.shape[1], dtype=acc, device=x.device)
    if N == 0:
        return u
    t = bank.to(acc)
    seg = segment_of_columns(offsets.to(x.device), N)
    # three chunk-sized tensors live at once (logits, the gathered lse, the gathered g)
    rows = max(1, max_chunk_bytes // (3 * acc.itemsize * N))
    for r0 in range(0, B, rows):
        r1 = min(B, r0 + rows)
        logits = (x[r0:r1].to(acc) * row_scale[r0:r1, None].to(acc)) @ t.T
        # G = g · exp(L − lse) per column's segment, in place over the logits buffer
        logits.sub_(lse[r0:r1].to(acc)[:, seg]).exp_().mul_(g_lse[r0:r1].to(acc)[:, seg])
        if g_max0 is not None and arg0 is not None:
            logits.scatter_add_(1, arg0[r0:r1, None], g_max0[r0:r1, None].to(acc))
        torch.mm(logits, t, out=u[r0:r1])
    return u


# ------------------------------------------------------------------------ dispatch
def _grad_u(name: str, x: Tensor, bank: Tensor, off: Tensor, rs: Tensor, lse: Tensor, g: Tensor,
            arg0: Optional[Tensor], h: Optional[Tensor]) -> Tensor:
    if name == "torch" or (name == "cuda"):
        # the CUDA C++ backend has no backward kernel: chunked torch on the GPU (bounded memory)
        return segment_lse_grad_u_torch(x, bank, off, rs, lse, g, arg0, h)
    if name == "cpu":
        from fastood.ops._cpu_segment_lse_bwd import segment_lse_grad_u_cpu

        return segment_lse_grad_u_cpu(x, bank, off, rs, lse, g, arg0, h)
    if name == "triton":
        from fastood.ops._triton_segment_lse_bwd import segment_lse_grad_u_triton

        return segment_lse_grad_u_triton(x, bank, off, rs, lse, g, arg0, h)
    raise AssertionError(name)


def run_segment_lse_backward(
    x: Tensor, bank: Tensor, offsets: Tensor, scale: float, normalize: bool, lse: Tensor,
    arg0: Tensor, g_lse: Optional[Tensor], g_max0: Optional[Tensor], backend: str,
) -> Tensor:
    """``∂ℓ/∂x`` for the forward ``segment_lse_max(x, bank, offsets, scale, normalize)``.

    ``arg0`` may be empty (the forward did not compute it): then, if ``g_max0`` has a
    non-zero entry and segment 0 is not empty, the argmax is recomputed (one forward pass).
    """
    B = x.shape[0]
    off = as_offsets(offsets, bank.shape[0]).to(x.device)
    name = resolve_backend(backend, x.device)
    wide = x.dtype == torch.float64 or bank.dtype == torch.float64
    if wide:
        x_used, rs = prepare_rows_float64(x, scale, normalize)
        dtype = torch.float64
        if name == "triton" and x.device.type == "cuda":
            name = "torch"  # the GPU Triton kernels are compiled for fp16/bf16/fp32 only
    else:
        x_used, rs = prepare_rows(x, scale, normalize)
        dtype = torch.promote_types(x.dtype, bank.dtype)
    acc = torch.float64 if wide else torch.float32
    g = torch.zeros_like(lse, dtype=acc) if g_lse is None else g_lse.to(acc)
    h = None
    if g_max0 is not None and int(off[1]) > 0 and bool((g_max0 != 0).any()):
        h = g_max0.to(acc)
        if arg0.numel() != B:
            if wide:
                arg0 = segment_lse_float64(x, bank, off, scale, normalize, True)[2]
            else:
                from fastood.ops._dispatch import run_segment_lse

                arg0 = run_segment_lse(x, bank, off, scale, normalize, True, backend)[2]
    with torch.autocast(x.device.type, enabled=False):
        u = _grad_u(name, x_used.to(dtype), bank.to(dtype), off, rs.to(acc).contiguous(), lse.to(acc).contiguous(),
                    g.contiguous(), None if h is None else arg0.contiguous(), h)
    return normalization_backward(x, x_used, rs, u, normalize)


@torch.library.custom_op("fastood::segment_lse_backward", mutates_args=())
def segment_lse_backward(
    x: Tensor, bank: Tensor, offsets: Tensor, scale: float, normalize: bool, lse: Tensor, arg0: Tensor,
    g_lse: Optional[Tensor], g_max0: Optional[Tensor], backend: str,
) -> Tensor:
    """The backward op: ``∂ℓ/∂x`` (``x``'s shape and dtype) — see the module docstring."""
    return run_segment_lse_backward(x, bank, offsets, scale, normalize, lse, arg0, g_lse, g_max0, backend)


@segment_lse_backward.register_fake
def _(x, bank, offsets, scale, normalize, lse, arg0, g_lse, g_max0, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# ------------------------------------------------------------- autograd registration
def _setup_context(ctx, inputs, output) -> None:
    x, bank, offsets, scale, normalize, want_argmax, backend = inputs
    if isinstance(bank, Tensor) and bank.requires_grad:
        raise ValueError("bank requires grad, but the fused segment_lse differentiates with respect to x only "
                         "(the text bank is a constant): pass bank.detach()")
    lse, _max0, arg0 = output
    ctx.save_for_backward(x, bank, offsets, lse, arg0)
    ctx.scale, ctx.normalize, ctx.backend = scale, normalize, backend


def _backward(ctx, g_lse, g_max0, _g_arg0):
    x, bank, offsets, lse, arg0 = ctx.saved_tensors
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = segment_lse_backward(x, bank, offsets, ctx.scale, ctx.normalize, lse, arg0, g_lse, g_max0,
                                      ctx.backend)
    return grad_x, None, None, None, None, None, None


def register(op) -> None:
    """Attach the fused backward to the forward custom op ``fastood::segment_lse``."""
    op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------- scores with the gradient fused into the forward
# NegLabel and MCM are fixed functions S(lse, max0) of the primitive, so ∂S_i/∂lse_{i,s} and
# ∂S_i/∂max0_i are known as soon as a row block's lse is: the weights pass and the GEMM
# with the bank can run on the logits block still in memory (as Liger's fused linear
# cross-entropy does), instead of recomputing it in the backward. The backward is then
# O(B·D): ∂ℓ/∂x_i = ∂ℓ/∂S_i · (normalisation backward of v_i), v_i = Σ_j ∂S_i/∂L_ij · t_j.
# Used for the cpu and torch backends (where a GEMM dominates the cost); one extra GEMM in
# the forward when x requires grad and backward is never called.
SCORE_KINDS = ("neglabel", "mcm")


def score_from_lse(kind: str, lse: Tensor, max0: Tensor) -> Tensor:
    """NegLabel ``mean_g sigmoid(lse_0 − lse_g)`` or MCM ``exp(max0 − lse_0)`` (the ops' formulas)."""
    if kind == "neglabel":
        return torch.sigmoid(lse[:, :1] - lse[:, 1:]).mean(dim=1)
    return torch.exp(max0 - lse[:, 0])


def score_partials(kind: str, lse: Tensor, max0: Tensor) -> tuple[Tensor, Optional[Tensor]]:
    """``(c, h)``: ``c_{i,s} = ∂S_i/∂lse_{i,s}`` (B, S), ``h_i = ∂S_i/∂max0_i`` (B,) or None.

    NegLabel, ``σ_g = sigmoid(lse_0 − lse_g)``: ``c_0 = mean_g σ_g(1 − σ_g)``,
    ``c_g = −σ_g(1 − σ_g)/G``. MCM, ``S = exp(max0 − lse_0)``: ``c_0 = −S``, ``h = S``.
    """
    if kind == "neglabel":
        sig = torch.sigmoid(lse[:, :1] - lse[:, 1:])
        d = sig * (1 - sig) / sig.shape[1]
        return torch.cat([d.sum(dim=1, keepdim=True), -d], dim=1), None
    s = torch.exp(max0 - lse[:, 0])
    return (-s)[:, None], s


def run_score_with_grad(
    x: Tensor, bank: Tensor, offsets: Tensor, scale: float, normalize: bool, want_pred: bool, backend: str,
    kind: str, *, max_block_bytes: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(score (B,), pred, v (B, D))`` in one pass over row blocks (cpu or torch backend).

    Per block: logits ``= (x_blk · r) @ bankᵀ`` (BLAS), the segmented reduction (C++ on the cpu
    backend, torch otherwise), ``(c, h)`` from :func:`score_partials`, the weights
    ``c_{i,s(j)} w_ij + h_i [j = argmax0_i]`` written over the logits (C++ / torch), and
    ``v_blk = weights @ bank``. float64 inputs compute in float64 (torch reductions).
    """
    if kind not in SCORE_KINDS:
        raise ValueError(f"kind must be one of {SCORE_KINDS}, got {kind!r}")
    wide = x.dtype == torch.float64 or bank.dtype == torch.float64
    if wide:
        check_float64_pair(x, bank)
        scale = check_scale("scale", scale)
        x_used, rs = prepare_rows_float64(x, scale, normalize)
    else:
        from fastood.ops._dispatch import check_pair

        check_pair(x, bank)
        scale = check_scale("scale", scale)
        x_used, rs = prepare_rows(x, scale, normalize)
    off = as_offsets(offsets, bank.shape[0])
    name = resolve_backend(backend, x.device)
    if name not in ("cpu", "torch"):
        raise ValueError(f"the forward-fused gradient runs on the cpu and torch backends, got {name!r}")
    use_c = name == "cpu" and not wide
    acc = torch.float64 if wide else torch.float32
    B, D, N = x.shape[0], x.shape[1], bank.shape[0]
    S = off.numel() - 1
    t = bank.to(acc)
    if use_c:
        from fastood.ops._cpu_segment_lse import MAX_BLOCK_BYTES, _bank_operand, _ext, block_rows_for

        ext = _ext()
        t = _bank_operand(bank)  # fp32, BLAS layout (an fp16/bf16 bank's copy is cached as in the forward)
        rows = block_rows_for(B, N, None, MAX_BLOCK_BYTES if max_block_bytes is None else max_block_bytes)
    else:
        cap = MAX_CHUNK_BYTES if max_block_bytes is None else max_block_bytes
        # the logits block plus two gathered (lse, c) temporaries of its size
        rows = max(1, min(B, cap // (3 * acc.itemsize * max(N, 1))))
    seg = segment_of_columns(off.to(x.device), N)
    o = off.tolist()
    score = torch.empty(B, dtype=acc, device=x.device)
    pred = torch.zeros(B if want_pred else 0, dtype=torch.int64, device=x.device)
    v = torch.empty(B, D, dtype=acc, device=x.device)
    buf = torch.empty(rows, N, dtype=acc, device=x.device)
    lse = torch.empty(rows, S, dtype=acc, device=x.device)
    max0 = torch.empty(rows, dtype=acc, device=x.device)
    arg0 = torch.zeros(rows, dtype=torch.int64, device=x.device)
    with torch.autocast(x.device.type, enabled=False), torch.no_grad():
        for r0 in range(0, B, rows):
            r1 = min(B, r0 + rows)
            n = r1 - r0
            L = buf[:n]
            torch.mm(x_used[r0:r1].to(acc) * rs[r0:r1, None].to(acc), t.T, out=L)
            lb, mb, ab = lse[:n], max0[:n], arg0[:n]
            if use_c:
                ext.segment_lse_reduce(L.numpy(), off.numpy(), lb.numpy(), mb.numpy(), ab.numpy(), torch.get_num_threads(),
                                       "auto")
            else:
                for s in range(S):
                    if o[s + 1] > o[s]:
                        lb[:, s] = torch.logsumexp(L[:, o[s]: o[s + 1]], dim=1)
                    else:
                        lb[:, s] = float("-inf")
                ab.copy_(torch.argmax(L[:, : o[1]], dim=1))  # first maximiser
                mb.copy_(L[:, : o[1]].gather(1, ab[:, None])[:, 0])
            score[r0:r1] = score_from_lse(kind, lb, mb)
            if want_pred:
                pred[r0:r1] = ab
            c, h = score_partials(kind, lb, mb)
            if use_c:
                ext.segment_lse_bwd_weights(L.numpy(), off.numpy(), lb.contiguous().numpy(), c.contiguous().numpy(),
                                            None if h is None else ab.numpy(),
                                            None if h is None else h.contiguous().numpy(), torch.get_num_threads())
            else:
                L.sub_(lb[:, seg]).exp_().mul_(c[:, seg])
                if h is not None:
                    L.scatter_add_(1, ab[:, None], h[:, None])
            torch.mm(L, t, out=v[r0:r1])
    out_dtype = torch.float64 if wide else torch.float32
    return score.to(out_dtype), pred, v


@torch.library.custom_op("fastood::score_with_grad", mutates_args=())
def score_with_grad(
    x: Tensor, bank: Tensor, offsets: Tensor, scale: float, normalize: bool, want_pred: bool, backend: str, kind: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """NegLabel / MCM score with ``v = Σ_j ∂S/∂L_ij t_j`` computed in the same pass (see above)."""
    return run_score_with_grad(x, bank, offsets, scale, normalize, want_pred, backend, kind)


@score_with_grad.register_fake
def _(x, bank, offsets, scale, normalize, want_pred, backend, kind):
    wide = torch.float64 in (x.dtype, bank.dtype)
    dt = torch.float64 if wide else torch.float32
    B = x.shape[0]
    return (x.new_empty((B,), dtype=dt), x.new_empty((B if want_pred else 0,), dtype=torch.int64),
            x.new_empty((B, x.shape[1]), dtype=dt))


def _score_setup(ctx, inputs, output) -> None:
    x, bank, offsets, scale, normalize, want_pred, backend, kind = inputs
    if isinstance(bank, Tensor) and bank.requires_grad:
        raise ValueError("bank requires grad, but the fused scores differentiate with respect to x only "
                         "(the text bank is a constant): pass bank.detach()")
    ctx.save_for_backward(x, output[2])
    ctx.scale, ctx.normalize = scale, normalize


@torch.library.custom_op("fastood::score_with_grad_backward", mutates_args=())
def score_with_grad_backward(x: Tensor, v: Tensor, g_score: Tensor, scale: float, normalize: bool) -> Tensor:
    """``∂ℓ/∂x`` from the forward's ``v``: the normalisation backward of ``g_score_i · v_i`` (O(B·D))."""
    if x.dtype == torch.float64:
        x_used, rs = prepare_rows_float64(x, scale, normalize)
    else:
        x_used, rs = prepare_rows(x, scale, normalize)
    return normalization_backward(x, x_used, rs, g_score.to(v.dtype)[:, None] * v, normalize)


@score_with_grad_backward.register_fake
def _(x, v, g_score, scale, normalize):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _score_backward(ctx, g_score, _g_pred, _g_v):
    x, v = ctx.saved_tensors
    if not ctx.needs_input_grad[0] or g_score is None:
        return (None,) * 8
    return (score_with_grad_backward(x, v, g_score, ctx.scale, ctx.normalize),) + (None,) * 7


score_with_grad.register_autograd(_score_backward, setup_context=_score_setup)
