"""Fused OOD-scoring ops. All are ``torch.library`` custom ops (``torch.ops.fastood.*``).

- :func:`segment_lse` — the one primitive: segmented log-sum-exp of ``scale · x̂ · bankᵀ``.
- :func:`neglabel_score` — NegLabel's grouped sum-softmax score.
- :func:`mcm_score` — MCM's max-softmax score.
"""

from fastood.ops._dispatch import BACKEND_NAMES
from fastood.ops.mcm import mcm_score
from fastood.ops.neglabel import neglabel_offsets, neglabel_score
from fastood.ops.segment_lse import segment_lse, segment_lse_max

__all__ = ["BACKEND_NAMES", "segment_lse", "segment_lse_max", "neglabel_score", "neglabel_offsets", "mcm_score"]
