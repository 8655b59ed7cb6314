"""Negative-label mining: NegMining (NegLabel), InterNeg's criterion, CSP exclusion.

Pure tensor functions. Inputs are L2-normalised embeddings (rows of unit norm,
checked to 1e-3). Similarities are GEMMs over chunks of candidates on the
embeddings' device, accumulated in float64 and rounded to the working precision
(float32; float64 when an input is float64). The float64 accumulation makes each
cosine independent of the chunking and of the GEMM kernel the BLAS picks for a
given shape, so results do not change with ``chunk_size`` and identical
candidates get identical keys. Every sort is stable: equal keys keep the lower
candidate index first.

``cand_pos`` (the part of speech of each candidate) may be a sequence or numpy
array of ``'n'`` / ``'a'`` strings (``'s'``, WordNet's satellite adjective, counts
as ``'a'``), e.g. :attr:`fastood.labels.Corpus.pos`, or a boolean array / tensor
that is True for adjectives.

Rounding rules (see the function docs):

* :func:`mine_neglabel` keeps ``int(count * ratio)`` (floor) candidates of each
  POS -- the NegLabel reference's ``int(len(ind) * neg_topk)``. (``int(n * 0.15)``
  equals the exact ``floor(3n / 20)`` for every n up to 200,000.) Its published
  ImageNet result, 8,578 nouns + 1,921 adjectives, means 57,187-57,193 nouns and
  12,807-12,813 adjectives under floor (57,184-57,189 / 12,804-12,810 under
  round), i.e. a corpus of about 70,000 words; fastood's ``"neglabel"`` corpus
  (58,514 + 12,280, see :mod:`fastood.labels.corpus`) gives 8,777 + 1,842.
* :func:`mine_neglabel` ranks in float64 by default (``precision="float64"``: cosines
  accumulated in float64 and rounded once to the working precision, the quantile
  interpolated in float64: independent of chunking and of the BLAS). ``precision="float32"``
  ranks exactly as the NegLabel reference does on the CPU: candidates in its order
  (nouns, then adjectives), fp32 GEMMs of ``OFFICIAL_CHUNK`` (its ``emb_batchsize``,
  1000) rows against the ID embeddings, ``torch.quantile`` on the fp32 cosines (which
  rounds ``percentile`` to fp32), then an ascending sort per POS. On the ImageNet-1k
  bank the two keep the same set of negatives; 467 of 10,619 positions swap at
  near-ties, and since the group permutation acts on positions, NegLabel scores move
  by up to 6e-3 between the two (issue 12's measurement against the reference).
* :func:`mine_interneg` gives adjectives ``int(m * (A / (A + N)))`` slots (floor,
  A / N = surviving adjective / noun counts) and nouns ``m`` minus that -- the
  InterNeg reference's rule.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "MINING_PRECISIONS",
    "OFFICIAL_CHUNK",
    "mine_neglabel",
    "image_prototypes",
    "interneg_criterion",
    "mine_interneg",
    "csp_exclude",
    "quantile_similarity",
]

_NORM_TOL = 1e-3
_QUANTILE_MAX_NUMEL = 1 << 24  # older torch.quantile refuse inputs above 16M elements
_DEFAULT_CHUNK = 4096
MINING_PRECISIONS = ("float64", "float32")
OFFICIAL_CHUNK = 1000  # the NegLabel reference's emb_batchsize: rows per fp32 GEMM + quantile call


# ----------------------------------------------------------------------------
# validation helpers

def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_emb(x, name: str, *, check_norm: bool = True) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows x width), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if check_norm and x.shape[0] > 0:
        norms = torch.linalg.vector_norm(x.to(_compute_dtype(x.dtype)), dim=1)
        if not torch.isfinite(norms).all():
            raise ValueError(f"{name} has non-finite values")
        err = (norms - 1).abs().max().item()
        if err > _NORM_TOL:
            raise ValueError(f"{name} rows must be unit-norm (max |norm - 1| = {err:.3g} > {_NORM_TOL})")
    return x


def _check_pair(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{a_name} and {b_name} must have the same width, got {a.shape[1]} and {b.shape[1]}")
    if a.device != b.device:
        raise ValueError(f"{a_name} and {b_name} must be on the same device, got {a.device} and {b.device}")


def _check_chunk(chunk_size) -> int:
    if chunk_size is None:
        return _DEFAULT_CHUNK
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return chunk_size


def _adjective_mask(cand_pos, n: int) -> np.ndarray:
    """Boolean numpy array, True for adjectives."""
    if isinstance(cand_pos, torch.Tensor):
        cand_pos = cand_pos.detach().cpu().numpy()
    arr = np.asarray(cand_pos)
    if arr.size == 0 and n == 0:
        return np.zeros(0, dtype=np.bool_)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"cand_pos must have one entry per candidate ({n}), got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.copy()
    if arr.dtype.kind in "US" or arr.dtype == object:
        low = np.char.lower(arr.astype(str))
        bad = sorted(set(np.unique(low).tolist()) - {"n", "a", "s"})
        if bad:
            raise ValueError(f"cand_pos entries must be 'n' or 'a' ('s' counts as 'a'), got {bad[:5]}")
        return low != "n"
    raise ValueError(f"cand_pos must hold 'n'/'a' strings or booleans (True = adjective), got dtype {arr.dtype}")


def _check_percent(value, name: str, lo_open: bool) -> float:
    v = float(value)
    ok = (0.0 < v <= 1.0) if lo_open else (0.0 <= v <= 1.0)
    if not ok or math.isnan(v):
        rng = "(0, 1]" if lo_open else "[0, 1]"
        raise ValueError(f"{name} must be in {rng}, got {value!r}")
    return v


def _chunk_rows(k: int, chunk_size: int) -> int:
    # keep every quantile call under the 16M-element limit of older torch versions
    return max(1, min(chunk_size, _QUANTILE_MAX_NUMEL // max(k, 1)))


# ----------------------------------------------------------------------------
# NegLabel

def _check_precision(precision) -> str:
    if precision not in MINING_PRECISIONS:
        raise ValueError(f"precision must be one of {MINING_PRECISIONS}, got {precision!r}")
    return precision


def _quantile_similarity_fp32(id_emb, cand_emb, percentile, chunk_size, order=None):
    """The reference's q: fp32 ``cand[rows] @ id.T`` per chunk, ``torch.quantile`` in fp32.

    ``order`` (candidate indices) is the row order the chunks are cut from (the
    reference's nouns-then-adjectives list); the result is in candidate order.
    """
    t = id_emb.to(torch.float32)
    c = cand_emb.to(torch.float32)
    n = c.shape[0]
    order = torch.arange(n, device=c.device) if order is None else order
    out = torch.empty(n, dtype=torch.float32, device=c.device)
    for s in range(0, n, chunk_size):
        rows = order[s:s + chunk_size]
        out[rows] = torch.quantile(c[rows] @ t.T, percentile, dim=-1)
    return out


def quantile_similarity(id_emb: torch.Tensor, cand_emb: torch.Tensor, *, percentile: float = 0.95,
                        chunk_size: int | None = None, precision: str = "float64") -> torch.Tensor:
    """``q_i = quantile_percentile({cos(cand_i, id_k)}_k)`` (torch.quantile, linear), float64.

    The interpolation runs in float64 on the working-precision cosines, so
    ``percentile`` is used at double precision: with K = 21 and 0.95 the rank
    is exactly 19 and ``q`` is exactly the 20th smallest cosine. (Running
    torch.quantile on float32 data, as the reference does, rounds 0.95 to
    float32 first and lands 1 ulp below such values, which can split exact ties.)
    ``precision="float32"`` computes it the reference's way instead (fp32 GEMM of
    ``chunk_size`` rows, default ``OFFICIAL_CHUNK``, then fp32 ``torch.quantile``)
    and returns float32.
    """
    _check_emb(id_emb, "id_emb")
    _check_emb(cand_emb, "cand_emb")
    _check_pair(id_emb, "id_emb", cand_emb, "cand_emb")
    percentile = _check_percent(percentile, "percentile", lo_open=False)
    if _check_precision(precision) == "float32":
        if id_emb.shape[0] == 0:
            raise ValueError("id_emb must have at least one row")
        chunk = OFFICIAL_CHUNK if chunk_size is None else _check_chunk(chunk_size)
        return _quantile_similarity_fp32(id_emb, cand_emb, percentile, chunk)
    return _quantile_similarity(id_emb, cand_emb, percentile, _check_chunk(chunk_size))


def _sims(cand_chunk: torch.Tensor, ref64: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """cand_chunk @ ref.T accumulated in float64, rounded to ``dt``."""
    return (cand_chunk.to(torch.float64) @ ref64.T).to(dt)


def _quantile_similarity(id_emb, cand_emb, percentile, chunk_size):
    dt = _compute_dtype(torch.promote_types(id_emb.dtype, cand_emb.dtype))
    k = id_emb.shape[0]
    n = cand_emb.shape[0]
    if k == 0:
        raise ValueError("id_emb must have at least one row")
    t = id_emb.to(torch.float64)
    rows = _chunk_rows(k, chunk_size)
    out = torch.empty(n, dtype=torch.float64, device=cand_emb.device)
    for s in range(0, n, rows):
        sims = _sims(cand_emb[s:s + rows], t, dt).to(torch.float64)
        out[s:s + rows] = torch.quantile(sims, percentile, dim=1)
    return out


@torch.no_grad()
def mine_neglabel(id_emb: torch.Tensor, cand_emb: torch.Tensor, cand_pos, *, percentile: float = 0.95,
                  ratio: float = 0.15, exclude=None, chunk_size: int | None = None,
                  precision: str = "float64") -> torch.Tensor:
    """NegMining (NegLabel): pick the candidates farthest from the ID labels.

    ``q_i`` is the ``percentile``-quantile (linear interpolation, as
    ``torch.quantile``, interpolated in float64 -- see
    :func:`quantile_similarity`) of the cosines of candidate ``i`` to the K ID
    embeddings. Nouns and adjectives are ranked separately by ascending ``q``
    (stable: ties keep the lower index first) and the lowest
    ``int(count * ratio)`` of each POS are kept -- floor, as the reference.

    Args:
        id_emb: ``[K, D]`` unit-norm ID label embeddings.
        cand_emb: ``[N, D]`` unit-norm candidate embeddings.
        cand_pos: POS per candidate (see the module doc).
        percentile: quantile level in ``[0, 1]``.
        ratio: fraction kept per POS, in ``(0, 1]``.
        exclude: optional boolean mask ``[N]``; excluded candidates are ranked
            last (``q = +inf``) but still counted, which is how CSP's reference
            applies its ``max cos > 0.95`` rule. To drop them from the counts
            instead, filter with :func:`csp_exclude` first.
        chunk_size: candidates per GEMM/quantile chunk (default 4096, lowered so
            a chunk never exceeds 2**24 similarities; ``OFFICIAL_CHUNK`` = 1000 with
            ``precision="float32"``).
        precision: ``"float64"`` (default: float64 cosines and interpolation, so the
            ranking does not depend on chunking or the BLAS) or ``"float32"`` (the
            NegLabel reference's ranking on the CPU: chunks of ``chunk_size`` rows of the
            nouns-then-adjectives list, fp32 GEMM, fp32 ``torch.quantile``); see the
            module docstring.

    Returns:
        LongTensor of candidate indices on ``cand_emb.device``: the kept nouns in
        ascending ``q``, then the kept adjectives in ascending ``q``.
    """
    _check_emb(id_emb, "id_emb")
    _check_emb(cand_emb, "cand_emb")
    _check_pair(id_emb, "id_emb", cand_emb, "cand_emb")
    percentile = _check_percent(percentile, "percentile", lo_open=False)
    ratio = _check_percent(ratio, "ratio", lo_open=True)
    precision = _check_precision(precision)
    n = cand_emb.shape[0]
    is_adj = torch.from_numpy(_adjective_mask(cand_pos, n)).to(cand_emb.device)

    if precision == "float32":
        if id_emb.shape[0] == 0:
            raise ValueError("id_emb must have at least one row")
        chunk = OFFICIAL_CHUNK if chunk_size is None else _check_chunk(chunk_size)
        # the reference cuts its chunks from the list [nouns | adjectives]
        order = torch.cat([torch.nonzero(~is_adj).flatten(), torch.nonzero(is_adj).flatten()])
        q = _quantile_similarity_fp32(id_emb, cand_emb, percentile, chunk, order)
    else:
        q = _quantile_similarity(id_emb, cand_emb, percentile, _check_chunk(chunk_size))
    if exclude is not None:
        ex = torch.as_tensor(exclude, device=cand_emb.device)
        if ex.dtype != torch.bool or ex.shape != (n,):
            raise ValueError(f"exclude must be a boolean mask of shape ({n},)")
        q = q.masked_fill(ex, float("inf"))

    picked = []
    for sel in (~is_adj, is_adj):
        idx = torch.nonzero(sel, as_tuple=False).flatten()
        keep = int(idx.numel() * ratio)
        order = torch.sort(q[idx], stable=True).indices
        picked.append(idx[order[:keep]])
    return torch.cat(picked).to(torch.long)


# ----------------------------------------------------------------------------
# InterNeg

@torch.no_grad()
def image_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Visual class prototypes ``c_k = normalize(mean_k(normalize(features)))``.

    Args:
        features: ``[N, D]`` image features (normalised here).
        labels: ``[N]`` integer class indices in ``[0, num_classes)``.
        num_classes: defaults to ``labels.max() + 1``.

    Returns ``[num_classes, D]`` in float32 (float64 for float64 input). Raises
    ``ValueError`` when a class has no sample.
    """
    _check_emb(features, "features", check_norm=False)
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels must be 1-D with one entry per feature row ({features.shape[0]}), "
                         f"got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if features.shape[0] == 0:
        raise ValueError("features is empty")
    labels = labels.to(device=features.device, dtype=torch.long)
    lo, hi = int(labels.min()), int(labels.max())
    if num_classes is None:
        num_classes = hi + 1
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{lo}, {hi}]")
    dt = _compute_dtype(features.dtype)
    f = torch.nn.functional.normalize(features.to(dt), dim=1)
    sums = torch.zeros(num_classes, f.shape[1], dtype=dt, device=f.device).index_add_(0, labels, f)
    counts = torch.bincount(labels, minlength=num_classes)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        raise ValueError(f"{len(empty)} class(es) have no samples: {shown}")
    return torch.nn.functional.normalize(sums / counts.unsqueeze(1).to(dt), dim=1)


def _check_interneg_inputs(id_emb, prototypes, cand_emb):
    _check_emb(id_emb, "id_emb")
    _check_emb(prototypes, "prototypes")
    _check_emb(cand_emb, "cand_emb")
    if id_emb.shape != prototypes.shape:
        raise ValueError(f"id_emb and prototypes must have the same shape, got {tuple(id_emb.shape)} "
                         f"and {tuple(prototypes.shape)}")
    _check_pair(id_emb, "id_emb", prototypes, "prototypes")
    _check_pair(prototypes, "prototypes", cand_emb, "cand_emb")
    if id_emb.shape[0] == 0:
        raise ValueError("id_emb must have at least one row")


def _interneg(id_emb, prototypes, cand_emb, chunk_size):
    dt = _compute_dtype(torch.promote_types(torch.promote_types(id_emb.dtype, prototypes.dtype), cand_emb.dtype))
    c = prototypes.to(torch.float64)
    b = (id_emb.to(torch.float64) * c).sum(dim=1).to(dt)  # b_k = cos(t_k, c_k)
    b64 = b.to(torch.float64)
    n = cand_emb.shape[0]
    keep = torch.empty(n, dtype=torch.bool, device=cand_emb.device)
    dev = torch.empty(n, dtype=dt, device=cand_emb.device)
    for s in range(0, n, chunk_size):
        sims = _sims(cand_emb[s:s + chunk_size], c, dt)  # cos(n, c_k)
        keep[s:s + chunk_size] = (sims < b).all(dim=1)
        dev[s:s + chunk_size] = (b64 - sims.to(torch.float64)).mean(dim=1).to(dt)
    return keep, dev


@torch.no_grad()
def interneg_criterion(id_emb: torch.Tensor, prototypes: torch.Tensor, cand_emb: torch.Tensor, *,
                       chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """InterNeg's inter-modal criterion.

    With ``b_k = cos(t_k, c_k)`` (ID text embedding vs. visual prototype of class
    k), a candidate ``n`` passes iff ``cos(n, c_k) < b_k`` for every k; its
    deviation is ``D(n) = mean_k [b_k - cos(n, c_k)]``.

    Returns ``(keep_mask [N] bool, deviation [N])``.
    """
    _check_interneg_inputs(id_emb, prototypes, cand_emb)
    return _interneg(id_emb, prototypes, cand_emb, _check_chunk(chunk_size))


@torch.no_grad()
def mine_interneg(id_emb: torch.Tensor, prototypes: torch.Tensor, cand_emb: torch.Tensor, cand_pos, *,
                  m: int = 2000, chunk_size: int | None = None) -> torch.Tensor:
    """InterNeg's static negatives.

    Candidates that pass :func:`interneg_criterion` are ranked per POS by ``D``
    descending (stable). With ``A`` / ``N`` surviving adjectives / nouns, the
    adjectives get ``int(m * (A / (A + N)))`` slots (floor, as the reference) and
    the nouns ``m - that``; if ``m >= A + N`` everything that survives is kept.

    Returns a LongTensor of candidate indices: the kept adjectives by ``D``
    descending, then the kept nouns by ``D`` descending (the reference stores
    adjectives first).
    """
    _check_interneg_inputs(id_emb, prototypes, cand_emb)
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
        raise ValueError(f"m must be a non-negative int, got {m!r}")
    chunk_size = _check_chunk(chunk_size)
    n = cand_emb.shape[0]
    is_adj = torch.from_numpy(_adjective_mask(cand_pos, n)).to(cand_emb.device)
    keep, dev = _interneg(id_emb, prototypes, cand_emb, chunk_size)

    adj_idx = torch.nonzero(keep & is_adj).flatten()
    noun_idx = torch.nonzero(keep & ~is_adj).flatten()
    a, nn_ = adj_idx.numel(), noun_idx.numel()
    if a + nn_ == 0 or m == 0:
        return torch.empty(0, dtype=torch.long, device=cand_emb.device)
    if m >= a + nn_:
        n_adj, n_noun = a, nn_
    else:
        n_adj = int(m * (a / (a + nn_)))
        n_noun = min(m - n_adj, nn_)
    picked = []
    for idx, k in ((adj_idx, n_adj), (noun_idx, n_noun)):
        order = torch.sort(dev[idx], descending=True, stable=True).indices
        picked.append(idx[order[:k]])
    return torch.cat(picked).to(torch.long)


# ----------------------------------------------------------------------------
# CSP

@torch.no_grad()
def csp_exclude(id_emb: torch.Tensor, cand_emb: torch.Tensor, *, max_cos: float = 0.95,
                chunk_size: int | None = None) -> torch.Tensor:
    """CSP's exclusion rule: keep mask, False where ``max_k cos(cand, id_k) > max_cos``."""
    _check_emb(id_emb, "id_emb")
    _check_emb(cand_emb, "cand_emb")
    _check_pair(id_emb, "id_emb", cand_emb, "cand_emb")
    max_cos = float(max_cos)
    if math.isnan(max_cos):
        raise ValueError("max_cos must not be NaN")
    if id_emb.shape[0] == 0:
        return torch.ones(cand_emb.shape[0], dtype=torch.bool, device=cand_emb.device)
    chunk_size = _check_chunk(chunk_size)
    dt = _compute_dtype(torch.promote_types(id_emb.dtype, cand_emb.dtype))
    t = id_emb.to(torch.float64)
    n = cand_emb.shape[0]
    keep = torch.empty(n, dtype=torch.bool, device=cand_emb.device)
    for s in range(0, n, chunk_size):
        keep[s:s + chunk_size] = _sims(cand_emb[s:s + chunk_size], t, dt).amax(dim=1) <= max_cos
    return keep
