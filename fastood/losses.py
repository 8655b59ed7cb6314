"""Training losses for CLIP-like models, fused (drop them into open_clip or your own loop).

- :func:`cma_loss` — the CMA loss (Kim et al., CVPR 2025; shared/SPEC.md §3): CLIP's
  symmetric contrastive loss plus a cross-modal alignment regulariser, or its
  class-bank form (image → class-prompt cross-entropy plus the image-side term).
  ``lam=0`` in pair mode is exactly open_clip's ``ClipLoss``.

Math (``u = x/||x||``, ``v = t/||t||``, ``L_ij = s·u_i·v_j``)::

    pair mode (labels=None):
      loss = (1/2B) Σ_i [−L_ii + (1−λ) LSE_j L_ij] + (1/2B) Σ_j [−L_jj + (1−λ) LSE_i L_ij]
    class-bank mode (labels (B,) in [0, K)):
      loss = (1/B) Σ_i [−L_{i,y_i} + (1−λ) LSE_k L_ik]

Gradients (pair mode), with P the row softmax and Q the column softmax of L::

    ∂loss/∂L_ij = (1/2B)[(1−λ)(P_ij + Q_ij) − 2δ_ij]
    ∂u_i = s Σ_j ∂L_ij v_j,   ∂v_j = s Σ_i ∂L_ij u_i,   ∂s = Σ_ij ∂L_ij u_i·v_j

The fused op never materialises the B×B (B×K) logits: the forward keeps online
log-sum-exp states tile by tile (row LSEs per program, column LSEs from per-row-block
partials merged in a fixed order), and the backward recomputes each tile from the
saved LSEs in a row-parallel pass (∂image) and a column-parallel pass (∂text).
Memory is O((B + N)·D) instead of O(B·N); results are deterministic.

For distributed training use :class:`fastood.nn.CMALoss` with ``gather=True``.
"""

from fastood.ops.cma_loss import cma_loss

__all__ = ["cma_loss"]
