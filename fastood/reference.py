"""Plain-torch oracles for fastood's scores (shared/SPEC.md §1–§2).

Everything here is written for clarity, not speed: it materialises the full
B×N logits. It runs in any dtype, and in float64 it is the ground truth the
kernels are tested against. ``neglabel_score_official_style`` is a literal
transcription of the NegLabel formula (concatenate ID and group logits, softmax,
sum the ID part) used as the "official-style" baseline in benchmarks.

Notation: ``x`` (B, D) image features, ``bank`` (N, D) unit-norm label
embeddings, ``c = x̂ · bankᵀ`` the cosines, ``x̂ = x / ||x||``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "cosine_logits",
    "segment_lse",
    "neglabel_groups",
    "neglabel_score",
    "neglabel_score_official_style",
    "mcm_score",
]


def cosine_logits(x: Tensor, bank: Tensor, scale: float, normalize: bool = True) -> Tensor:
    """``scale · x̂ · bankᵀ`` in the dtype of the inputs (B×N, materialised)."""
    if normalize:
        x = x / x.norm(dim=1, keepdim=True)
    return scale * (x @ bank.T)


def segment_lse(
    x: Tensor,
    bank: Tensor,
    offsets: Sequence[int] | Tensor,
    *,
    scale: float = 100.0,
    normalize: bool = True,
) -> Tensor:
    """``lse[i, s] = log Σ_{j ∈ [offsets[s], offsets[s+1])} exp(scale · x̂_i · bank_j)``.

    An empty segment gives ``-inf``. Returns (B, S) in the inputs' dtype.
    """
    offsets = [int(o) for o in offsets]
    logits = cosine_logits(x, bank, scale, normalize)
    cols = []
    for lo, hi in zip(offsets[:-1], offsets[1:]):
        if hi > lo:
            cols.append(torch.logsumexp(logits[:, lo:hi], dim=1))
        else:
            cols.append(torch.full((x.shape[0],), float("-inf"), dtype=logits.dtype, device=x.device))
    return torch.stack(cols, dim=1)


def neglabel_groups(num_id: int, num_bank: int, groups: int) -> list[int]:
    """Segment offsets ``[0, K, K+m, …, K+G·m]`` of the NegLabel layout.

    The bank is ``[ID (K) | negatives (M)]``; the last ``M mod G`` negatives are
    dropped and the rest form G contiguous groups of ``m = M // G`` rows.
    """
    num_neg = num_bank - num_id
    m = num_neg // groups
    return [0, num_id] + [num_id + (g + 1) * m for g in range(groups)]


def neglabel_score(
    x: Tensor,
    bank: Tensor,
    num_id: int,
    *,
    groups: int = 1,
    temperature: float = 0.01,
    normalize: bool = True,
) -> Tensor:
    """NegLabel score ``S = mean_g sigmoid(LSE_id − LSE_g)`` (SPEC §1, stable form).

    Logits are ``cos / temperature``. ``groups = 1`` is the ungrouped score
    ``sigmoid(LSE_id − LSE_neg)`` (the softmax form, not the reference code's
    raw-logit sum).
    """
    offsets = neglabel_groups(num_id, bank.shape[0], groups)
    lse = segment_lse(x, bank, offsets, scale=1.0 / temperature, normalize=normalize)
    return torch.sigmoid(lse[:, :1] - lse[:, 1:]).mean(dim=1)


def neglabel_score_official_style(
    x: Tensor,
    bank: Tensor,
    num_id: int,
    *,
    groups: int = 1,
    temperature: float = 0.01,
    normalize: bool = True,
) -> Tensor:
    """Literal per-group transcription of SPEC §1's formula.

    ``S = (1/G) Σ_g Σ_{k≤K} e^{c_k/τ} / (Σ_{k≤K} e^{c_k/τ} + Σ_{j∈g} e^{c_j/τ})``,
    computed as research code does it: the full logits, then for every group a
    concatenation ``[ID | group]``, a softmax, and the ID part summed.
    """
    logits = cosine_logits(x, bank, 1.0 / temperature, normalize)
    pos = logits[:, :num_id]
    neg = logits[:, num_id:]
    m = neg.shape[1] // groups
    neg = neg[:, : m * groups].reshape(x.shape[0], groups, m)
    total = torch.zeros(x.shape[0], dtype=logits.dtype, device=logits.device)
    for g in range(groups):
        probs = torch.cat([pos, neg[:, g]], dim=1).softmax(dim=1)
        total = total + probs[:, :num_id].sum(dim=1)
    return total / groups


def mcm_score(x: Tensor, id_bank: Tensor, *, temperature: float = 1.0, normalize: bool = True) -> Tensor:
    """MCM score ``max_k softmax_k(c_k / T)`` (SPEC §2)."""
    logits = cosine_logits(x, id_bank, 1.0 / temperature, normalize)
    return logits.softmax(dim=1).max(dim=1).values
