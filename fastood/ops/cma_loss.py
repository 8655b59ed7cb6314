"""``cma_loss``: the fused CMA / CLIP contrastive loss (shared/SPEC.md §3).

Layers, as in flash-attention:

- backends: ``_triton_cma`` (CUDA, or CPU under ``TRITON_INTERPRET=1``) and the
  chunked torch path below (any device, float64 included), with one contract::

      fwd(x, t, rx, rt, s, labels) -> (row_lse, row_ce, row_comp, col_lse, col_ce, col_comp)
      bwd(x, t, rx, rt, s, row_lse, row_comp, col_lse, col_comp, labels,
          alpha, beta, want_rows, want_cols) -> (G~·v (B, D) or None, G~ᵀ·u (N, D) or None)

  for ``L_ij = s·rx_i·rt_j·<x_i, t_j>``, ``u = rx·x``, ``v = rt·t`` and
  ``G~ = α·P + β·Q − [target]`` (P row softmax, Q column softmax) = B·∂loss/∂L.
  Targets: the diagonal when ``labels`` is None (pair mode; column statistics too),
  else ``labels``. Besides ``lse`` the forward returns ``ce = lse − L_target`` and
  ``comp = 1 − softmax[target]``, both computed from the sum without the target
  rather than as differences: near convergence (softmax[target] → 1) the loss and
  the target entries of G~ (``(α + β − 1) − α·comp_row − β·comp_col``) keep full
  relative precision instead of cancelling at the ulp of the logit (~1e-5 at s = 100);
- raw ops ``torch.ops.fastood.cma_loss_fwd`` / ``cma_loss_bwd``
  (``torch.library.custom_op`` with fake implementations, so ``torch.compile`` and
  ``torch.export`` see single nodes); the forward op is made differentiable by
  ``torch.library.register_autograd`` with the backward op as its formula;
- the public :func:`cma_loss` (checks, dtype promotion, logit-scale handling).

The chain rule outside the kernels is O((B + N)·D) torch:
``∂u_i = (g/B)·s·(G~·v)_i``, ``∂s = (g/B)·Σ_i u_i·(G~·v)_i``, and through the
normalisation ``∂x_i = (∂u_i − u_i (u_i·∂u_i)) / ||x_i||``.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from fastood._backends import backends, triton_interpreting
from fastood.ops._dispatch import check_positive_finite

__all__ = ["cma_loss", "CMA_BACKENDS", "cma_fwd_torch", "cma_bwd_torch"]

CMA_BACKENDS = ("auto", "triton", "torch")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_CHUNK_BYTES = 16 * 2**20  # torch path: logits-sized buffers of one block of rows (two of them) in this budget


# ------------------------------------------------------------------ torch (chunked) backend
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows_per_chunk(N: int, dtype: torch.dtype, max_chunk_bytes: int | None) -> int:
    budget = MAX_CHUNK_BYTES if max_chunk_bytes is None else max_chunk_bytes
    return max(1, budget // (torch.finfo(dtype).bits // 8 * max(N, 1)))


def _target_index(labels: Tensor | None, r0: int, r1: int, device) -> tuple[Tensor, Tensor]:
    """(block-local rows, target columns) of rows r0..r1."""
    rows = torch.arange(r1 - r0, device=device)
    return rows, (rows + r0 if labels is None else labels[r0:r1])


def cma_fwd_torch(
    x: Tensor, t: Tensor, rx: Tensor, rt: Tensor, scale: Tensor, labels: Tensor | None,
    *, max_chunk_bytes: int | None = None,
) -> tuple[Tensor, ...]:
    """Backend contract in plain torch, over blocks of rows (bounded memory).

    Per row: max m, ``l = Σ_j e^{L_ij − m}`` and the same sum without the target,
    ``l_nt``; then ``lse = m + log l``, ``ce = (m − L_target) + log l`` and
    ``comp = l_nt / l`` (no difference of nearly equal numbers). The column
    statistics (pair mode) keep the same state per column, merged block after block
    in order. fp32 math (float64 for float64 inputs).
    """
    cd = _compute_dtype(x.dtype)
    B, N = x.shape[0], t.shape[0]
    dev = x.device
    pair = labels is None
    v = t.to(cd) * rt.to(cd)[:, None]
    srx = scale.to(cd) * rx.to(cd)  # row i of the logits is (x_i · s/||x_i||) · vᵀ, formed block by block
    row = [torch.empty(B, dtype=cd, device=dev) for _ in range(3)]
    ncol = N if pair else 0
    col_m = torch.full((ncol,), float("-inf"), dtype=cd, device=dev)
    col_l, col_lnt, col_tt = (torch.zeros(ncol, dtype=cd, device=dev) for _ in range(3))
    step = _rows_per_chunk(2 * N, cd, max_chunk_bytes)  # logits and their exponentials
    for r0 in range(0, B, step):
        r1 = min(B, r0 + step)
        logits = (x[r0:r1].to(cd) * srx[r0:r1, None]) @ v.T
        k, tgt = _target_index(labels, r0, r1, dev)
        m = logits.amax(dim=1)
        e = torch.sub(logits, m[:, None]).exp_()
        e_t = e[k, tgt].clone()
        e[k, tgt] = 0.0
        lnt = e.sum(dim=1)
        log_l = torch.log(lnt + e_t)
        row[0][r0:r1] = m + log_l
        row[1][r0:r1] = (m - logits[k, tgt]) + log_l
        row[2][r0:r1] = lnt / (lnt + e_t)
        if pair:  # diagonal of this block: columns r0..r1
            bm = logits.amax(dim=0)
            ec = torch.sub(logits, bm[None, :]).exp_()
            diag = ec[:, r0:r1].diagonal()
            ec_t = diag.clone()
            col_tt[r0:r1] = logits[:, r0:r1].diagonal()
            diag.zero_()
            b_lnt = ec.sum(dim=0)
            b_l = b_lnt.clone()
            b_l[r0:r1] += ec_t
            m_new = torch.maximum(col_m, bm)
            a, b = torch.exp(col_m - m_new), torch.exp(bm - m_new)
            col_l = col_l * a + b_l * b
            col_lnt = col_lnt * a + b_lnt * b
            col_m = m_new
    log_l = torch.log(col_l)
    col = (col_m + log_l, (col_m - col_tt) + log_l, col_lnt / col_l)
    return (*row, *col)


def cma_bwd_torch(
    x: Tensor, t: Tensor, rx: Tensor, rt: Tensor, scale: Tensor,
    row_lse: Tensor, row_comp: Tensor, col_lse: Tensor, col_comp: Tensor, labels: Tensor | None,
    alpha: float, beta: float, want_rows: bool, want_cols: bool,
    *, max_chunk_bytes: int | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Backend contract in plain torch: one pass over row blocks recomputes the logits,
    forms G~ in the compute dtype (target entries from the saved complements) and
    accumulates ``G~·v`` (rows) and ``G~ᵀ·u`` (summed block after block, in order)."""
    cd = _compute_dtype(x.dtype)
    B, N = x.shape[0], t.shape[0]
    dev = x.device
    pair = labels is None
    rxc = rx.to(cd)
    v = t.to(cd) * rt.to(cd)[:, None]
    srx = scale.to(cd) * rxc  # the forward's exact logits, block for block (u and s·u are never held whole)
    row_lse, row_comp = row_lse.to(cd), row_comp.to(cd)
    if pair:
        col_lse, col_comp = col_lse.to(cd), col_comp.to(cd)
    a = torch.empty(B, x.shape[1], dtype=cd, device=dev) if want_rows else None
    at = torch.zeros(N, x.shape[1], dtype=cd, device=dev) if want_cols else None
    step = _rows_per_chunk(2 * N, cd, max_chunk_bytes)  # logits and G~ side by side
    for r0 in range(0, B, step):
        r1 = min(B, r0 + step)
        xb = x[r0:r1].to(cd)
        logits = (xb * srx[r0:r1, None]) @ v.T
        g = torch.sub(logits, row_lse[r0:r1, None]).exp_().mul_(alpha)
        k, tgt = _target_index(labels, r0, r1, dev)
        if pair:  # target entries: (α + β − 1) − α·(1 − P_ii) − β·(1 − Q_ii)
            g.add_(logits.sub_(col_lse[None, :]).exp_(), alpha=beta)
            g_t = (alpha + beta - 1.0) - alpha * row_comp[r0:r1] - beta * col_comp[r0:r1]
        else:
            g_t = (alpha - 1.0) - alpha * row_comp[r0:r1]
        g[k, tgt] = g_t
        del logits
        if a is not None:
            torch.mm(g, v, out=a[r0:r1])
        if at is not None:
            at.addmm_(g.T, xb * rxc[r0:r1, None])
    return a, at


def _launchers(name: str):
    if name == "triton":
        from fastood.ops._triton_cma import cma_bwd_triton, cma_fwd_triton

        return cma_fwd_triton, cma_bwd_triton
    return cma_fwd_torch, cma_bwd_torch


# ------------------------------------------------------------------------------ checks
def _check_features(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point or t.dtype not in _DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch, width), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}): expected at least one row")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has zero feature width (shape {tuple(t.shape)})")
    return t


def _check_static(image: object, text: object, labels: object, lam: object, normalize: object) -> None:
    """Everything that can be checked without reading tensor values (no host sync)."""
    _check_features("image_features", image)
    _check_features("text_features", text)
    if image.shape[1] != text.shape[1]:
        raise ValueError(
            f"image_features has width D={image.shape[1]} but text_features has width D={text.shape[1]}: they must match"
        )
    if image.device != text.device:
        raise ValueError(f"image_features is on {image.device} but text_features is on {text.device}: put both on one device")
    if labels is None:
        if image.shape[0] != text.shape[0]:
            raise ValueError(
                f"pair mode (labels=None) needs one text per image, got {image.shape[0]} image_features "
                f"and {text.shape[0]} text_features; pass labels=... for a class bank"
            )
    else:
        if not isinstance(labels, Tensor):
            raise TypeError(f"labels must be a torch.Tensor or None, got {type(labels).__name__}")
        if labels.dtype != torch.int64:
            raise TypeError(f"labels must be int64 class indices, got {labels.dtype}")
        if labels.shape != (image.shape[0],):
            raise ValueError(f"labels must have shape ({image.shape[0]},) (one per image), got {tuple(labels.shape)}")
        if labels.device != image.device:
            raise ValueError(f"labels is on {labels.device} but image_features is on {image.device}: put both on one device")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise TypeError(f"lam must be a number, got {type(lam).__name__}")
    if not math.isfinite(lam) or not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")


def _scale_tensor(logit_scale: object, like: Tensor) -> Tensor:
    """A 0-d floating tensor on ``like``'s device (a view of the caller's tensor when given one)."""
    if isinstance(logit_scale, Tensor):
        if not logit_scale.dtype.is_floating_point:
            raise TypeError(f"logit_scale must be a floating tensor, got {logit_scale.dtype}")
        if logit_scale.numel() != 1:
            raise ValueError(f"logit_scale must hold one value (0-d or 1-element), got shape {tuple(logit_scale.shape)}")
        if logit_scale.device != like.device:
            raise ValueError(f"logit_scale is on {logit_scale.device} but the features are on {like.device}")
        return logit_scale.reshape(())
    try:
        value = check_positive_finite("logit_scale", logit_scale)
    except TypeError:
        raise TypeError(f"logit_scale must be a tensor or a number, got {type(logit_scale).__name__}") from None
    return torch.tensor(value, dtype=torch.float32, device=like.device)


@torch.compiler.assume_constant_result
def _triton_available() -> bool:
    return bool(backends()["triton"])


@torch.compiler.assume_constant_result
def _interpreting() -> bool:
    return triton_interpreting()


def _resolve_backend(backend: object, device: torch.device, dtype: torch.dtype) -> str:
    """``auto``: Triton for CUDA tensors (not float64), the chunked torch path elsewhere."""
    if not isinstance(backend, str) or backend not in CMA_BACKENDS:
        raise ValueError(f"backend must be one of {CMA_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and _triton_available() and dtype != torch.float64 else "torch"
    if backend == "triton":
        if not _triton_available():
            raise ValueError(f"backend 'triton' is not available: {backends()['triton'].reason}")
        if device.type != "cuda" and not (device.type == "cpu" and _interpreting()):
            raise ValueError(f"backend 'triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {device}")
        if dtype == torch.float64:
            raise ValueError("backend 'triton' does not take float64 features; use backend='torch'")
    return backend


def _inverse_norms(x: Tensor, cd: torch.dtype, normalize: bool) -> tuple[Tensor, Tensor]:
    norms = torch.linalg.vector_norm(x, dim=1, dtype=cd)
    return norms, (1.0 / norms if normalize else torch.ones_like(norms))


def _check_values(image: Tensor, text: Tensor, scale: Tensor, labels: Tensor | None,
                  nx: Tensor, nt: Tensor, normalize: bool) -> None:
    """Value checks with a single host sync; details are looked up only on failure."""
    flags = [~torch.isfinite(scale) | (scale <= 0), ~torch.isfinite(nx).all(), ~torch.isfinite(nt).all()]
    if normalize:
        flags += [(nx == 0).any(), (nt == 0).any()]
    if labels is not None:
        flags.append(((labels < 0) | (labels >= text.shape[0])).any())
    if not any(torch.stack([f.reshape(()) for f in flags]).tolist()):
        return
    if bool(flags[0]):
        raise ValueError(f"logit_scale must be a positive finite number, got {scale.item()}")
    for name, n in (("image_features", nx), ("text_features", nt)):
        bad = ~torch.isfinite(n)
        if bool(bad.any()):
            raise ValueError(f"{name} has non-finite values (first in row {int(torch.nonzero(bad)[0, 0])})")
        if normalize and bool((n == 0).any()):
            i = int(torch.nonzero(n == 0)[0, 0])
            raise ValueError(f"{name} row {i} has zero norm: it cannot be L2-normalised (pass normalize=False or drop it)")
    bad = (labels < 0) | (labels >= text.shape[0])
    i = int(torch.nonzero(bad)[0, 0])
    raise ValueError(f"labels must be in [0, {text.shape[0]}) (rows of text_features), got labels[{i}] = {int(labels[i])}")


def _weights(B: int, lam: float, pair: bool) -> tuple[float, float]:
    """(alpha, beta): row- and column-LSE weights of G~ = B·∂loss/∂L."""
    return ((1.0 - lam) / 2, (1.0 - lam) / 2) if pair else (1.0 - lam, 0.0)


# ----------------------------------------------------------------------------- raw ops
def _no_autocast(device: torch.device):
    """Autocast off inside the op bodies.

    A custom op is not on autocast's cast lists, so its inputs pass through unchanged,
    but the autocast state stays on while its implementation runs: the torch backend's
    fp32 GEMMs would silently drop to bf16/fp16 (at s = 100 that moves the loss in the
    third digit). The op's own dtype policy (fp32 compute) must hold under AMP.
    """
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


@torch.library.custom_op("fastood::cma_loss_fwd", mutates_args=())
def _cma_loss_fwd(
    image: Tensor, text: Tensor, scale: Tensor, labels: Tensor | None, lam: float, normalize: bool, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns ``(loss, row_lse, row_comp, col_lse, col_comp, inv_norm_image, inv_norm_text)``;
    all but the loss are saved for the backward (``col_*`` are empty in class-bank mode)."""
    with _no_autocast(image.device):
        return _cma_loss_fwd_impl(image, text, scale, labels, lam, normalize, backend)


def _cma_loss_fwd_impl(image, text, scale, labels, lam, normalize, backend):
    cd = _compute_dtype(image.dtype)
    nx, rx = _inverse_norms(image, cd, normalize)
    nt, rt = _inverse_norms(text, cd, normalize)
    _check_values(image, text, scale, labels, nx, nt, normalize)
    fwd, _ = _launchers(backend)
    row_lse, row_ce, row_comp, col_lse, col_ce, col_comp = (v.to(cd) for v in fwd(image, text, rx, rt, scale.to(cd), labels))
    # −L_target + (1−λ)·lse = ce − λ·lse, with ce = lse − L_target computed without cancellation.
    B = image.shape[0]
    if labels is None:
        loss = (row_ce.sum() + col_ce.sum() - lam * (row_lse.sum() + col_lse.sum())) / (2 * B)
    else:
        loss = (row_ce.sum() - lam * row_lse.sum()) / B
    return loss, row_lse, row_comp, col_lse, col_comp, rx, rt


@_cma_loss_fwd.register_fake
def _(image, text, scale, labels, lam, normalize, backend):
    cd = _compute_dtype(image.dtype)
    B, N = image.shape[0], text.shape[0]
    nc = N if labels is None else 0
    return (
        image.new_empty((), dtype=cd),
        image.new_empty((B,), dtype=cd),
        image.new_empty((B,), dtype=cd),
        image.new_empty((nc,), dtype=cd),
        image.new_empty((nc,), dtype=cd),
        image.new_empty((B,), dtype=cd),
        image.new_empty((N,), dtype=cd),
    )


@torch.library.custom_op("fastood::cma_loss_bwd", mutates_args=())
def _cma_loss_bwd(
    grad: Tensor, image: Tensor, text: Tensor, scale: Tensor, labels: Tensor | None,
    row_lse: Tensor, row_comp: Tensor, col_lse: Tensor, col_comp: Tensor, rx: Tensor, rt: Tensor,
    lam: float, normalize: bool, need_image: bool, need_text: bool, need_scale: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of the loss (times ``grad``) w.r.t. image, text and scale; an empty (0,)
    tensor stands for each one not asked for."""
    with _no_autocast(image.device):
        return _cma_loss_bwd_impl(grad, image, text, scale, labels, row_lse, row_comp, col_lse, col_comp, rx, rt,
                                  lam, normalize, need_image, need_text, need_scale, backend)


def _cma_loss_bwd_impl(grad, image, text, scale, labels, row_lse, row_comp, col_lse, col_comp, rx, rt,
                       lam, normalize, need_image, need_text, need_scale, backend):
    cd = _compute_dtype(image.dtype)
    B = image.shape[0]
    s, c = scale.to(cd), grad.to(cd) / B
    alpha, beta = _weights(B, lam, labels is None)
    want_rows = need_image or (need_scale and not need_text)
    _, bwd = _launchers(backend)
    a, at = bwd(image, text, rx, rt, s, row_lse, row_comp, col_lse, col_comp, labels, alpha, beta, want_rows, need_text)

    def through(feat: Tensor, r: Tensor, acc: Tensor | None, need: bool) -> tuple[Tensor, Tensor | None]:
        """(∂feat or empty, ∂s or None) from acc = G~·(the other side's unit rows)."""
        if acc is None:
            return feat.new_empty((0,)), None
        acc = acc.to(cd)  # the backend's own buffer: updated in place below (bounded memory)
        u = feat.to(cd) * r[:, None]
        ds = c * torch.einsum("bd,bd->", u, acc) if need_scale else None
        if not need:
            return feat.new_empty((0,)), ds
        du = acc.mul_(c * s)
        if normalize:  # (I − u uᵀ) ∂u / ||x||
            du.sub_(u * torch.einsum("bd,bd->b", u, du)[:, None]).mul_(r[:, None])
        return du.to(feat.dtype), ds

    d_image, ds_rows = through(image, rx, a, need_image)
    d_text, ds_cols = through(text, rt, at, need_text)
    ds = ds_rows if ds_rows is not None else ds_cols
    d_scale = ds.to(scale.dtype).reshape(scale.shape) if need_scale else scale.new_empty((0,))
    return d_image, d_text, d_scale


@_cma_loss_bwd.register_fake
def _(grad, image, text, scale, labels, row_lse, row_comp, col_lse, col_comp, rx, rt,
      lam, normalize, need_image, need_text, need_scale, backend):
    return (
        torch.empty_like(image) if need_image else image.new_empty((0,)),
        torch.empty_like(text) if need_text else text.new_empty((0,)),
        torch.empty_like(scale) if need_scale else scale.new_empty((0,)),
    )


def _setup_context(ctx, inputs, output):
    image, text, scale, labels, lam, normalize, backend = inputs
    _, *stats = output
    ctx.save_for_backward(image, text, scale, labels, *stats)
    ctx.lam, ctx.normalize, ctx.backend = lam, normalize, backend
    ctx.mark_non_differentiable(*stats)


def _backward(ctx, grad, *_unused):
    image, text, scale, labels, *stats = ctx.saved_tensors
    need_image, need_text, need_scale = ctx.needs_input_grad[:3]
    if grad is None or not (need_image or need_text or need_scale):
        return None, None, None, None, None, None, None
    d_image, d_text, d_scale = torch.ops.fastood.cma_loss_bwd(
        grad, image, text, scale, labels, *stats,
        ctx.lam, ctx.normalize, need_image, need_text, need_scale, ctx.backend,
    )
    return (
        d_image if need_image else None,
        d_text if need_text else None,
        d_scale if need_scale else None,
        None, None, None, None,
    )


_cma_loss_fwd.register_autograd(_backward, setup_context=_setup_context)


# -------------------------------------------------------------------------- public op
def cma_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor | float,
    *,
    lam: float = 0.001,
    labels: Tensor | None = None,
    normalize: bool = True,
    backend: str = "auto",
) -> Tensor:
    r"""The CMA loss (Kim et al., CVPR 2025; shared/SPEC.md §3), fused.

    With ``u = x/||x||``, ``v = t/||t||`` (raw features when ``normalize=False``),
    ``L_ij = s·u_i·v_j``, ``LSE^I_i = log Σ_j e^{L_ij}``, ``LSE^T_j = log Σ_i e^{L_ij}``:

    - **pair mode** (``labels=None``): B images and their B texts, targets on the
      diagonal (same-class duplicates in a batch count as negatives)::

          loss = (1/2B) Σ_i [−L_ii + (1−λ) LSE^I_i] + (1/2B) Σ_j [−L_jj + (1−λ) LSE^T_j]

      i.e. CLIP's symmetric cross-entropy plus the alignment regulariser
      ``−(λ/2B)(Σ_i LSE^I_i + Σ_j LSE^T_j)``; ``lam=0`` is exactly open_clip's ``ClipLoss``.
    - **class-bank mode** (``labels`` given): B images against K class-prompt
      embeddings, image→class cross-entropy plus the image-side alignment term::

          loss = (1/B) Σ_i [−L_{i,y_i} + (1−λ) LSE^I_i]

    The B×N logits are never materialised: the forward computes the row (and, in
    pair mode, column) LSEs tile by tile; the backward recomputes the tiles from the
    saved LSEs. Gradients flow to both feature sets (through the normalisation) and
    to ``logit_scale``, each only when it requires grad. Deterministic (no atomics).

    Args:
        image_features: (B, D) float16 / bfloat16 / float32 / float64, any strides.
        text_features: (B, D) paired texts, or (K, D) class prompts with ``labels``.
        logit_scale: the multiplicative scale ``s`` (already exp'ed, as open_clip's
            ``ClipLoss`` receives it): a 0-d or 1-element tensor (may require grad)
            or a positive Python number.
        lam: the regulariser weight λ in [0, 1] (CMA's reference value 0.001).
        labels: None (pair mode) or (B,) int64 class indices in [0, K).
        normalize: L2-normalise both feature sets inside the op (zero-norm rows are
            then an error).
        backend: ``"auto"`` (Triton on CUDA, torch elsewhere and for float64),
            ``"triton"`` or ``"torch"`` (chunked, bounded-memory plain torch).

    Returns:
        A 0-d float32 tensor (float64 for float64 inputs). Mixed feature dtypes
        compute in ``torch.promote_types``; gradients come back in each input's dtype.
    """
    _check_static(image_features, text_features, labels, lam, normalize)
    dtype = torch.promote_types(image_features.dtype, text_features.dtype)
    scale = _scale_tensor(logit_scale, image_features)
    name = _resolve_backend(backend, image_features.device, dtype)
    loss, *_ = torch.ops.fastood.cma_loss_fwd(
        image_features.to(dtype), text_features.to(dtype), scale, labels, float(lam), normalize, name
    )
    return loss
