"""Plain-torch oracle of the CMA loss (shared/SPEC.md §3): the test truth.

Written for clarity, not speed: it materialises the full logit matrix and lets
autograd differentiate it. It runs in the dtype of its inputs; in float64 it is
the ground truth the fused op (:func:`fastood.losses.cma_loss`) is tested
against, in float16 / float32 it is "plain torch's error in that dtype".

Notation: ``u = x / ||x||``, ``v = t / ||t||`` (or the raw features when
``normalize=False``), ``L_ij = s · u_i · v_j``, ``LSE^I_i = log Σ_j e^{L_ij}``,
``LSE^T_j = log Σ_i e^{L_ij}``.

- pair mode (``labels=None``, B images × B texts, targets on the diagonal):
  ``loss = (1/2B) Σ_i [−L_ii + (1−λ) LSE^I_i] + (1/2B) Σ_j [−L_jj + (1−λ) LSE^T_j]``
- class-bank mode (``labels`` (B,), K class prompts):
  ``loss = (1/B) Σ_i [−L_{i,y_i} + (1−λ) LSE^I_i]``
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cma_logits", "cma_loss", "cma_loss_terms"]


def cma_logits(image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float, normalize: bool = True) -> Tensor:
    """``s · u · vᵀ`` (B×N, materialised) in the dtype of the features."""
    u, v = image_features, text_features
    if normalize:
        u = u / torch.linalg.vector_norm(u, dim=1, keepdim=True)
        v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True)
    if isinstance(logit_scale, Tensor):
        logit_scale = logit_scale.reshape(()).to(u.dtype)
    return logit_scale * (u @ v.T)


def cma_loss_terms(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor | float,
    *,
    labels: Tensor | None = None,
    normalize: bool = True,
) -> dict[str, Tensor]:
    """The pieces of the loss: target logits, row LSEs and (pair mode) column LSEs."""
    logits = cma_logits(image_features, text_features, logit_scale, normalize)
    B = logits.shape[0]
    rows = torch.arange(B, device=logits.device)
    if labels is None:
        return {
            "target": logits[rows, rows],
            "row_lse": torch.logsumexp(logits, dim=1),
            "col_lse": torch.logsumexp(logits, dim=0),
        }
    return {"target": logits[rows, labels], "row_lse": torch.logsumexp(logits, dim=1)}


def cma_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor | float,
    *,
    lam: float = 0.001,
    labels: Tensor | None = None,
    normalize: bool = True,
) -> Tensor:
    """The CMA loss, literally (see the module docstring); differentiable by autograd.

    With ``lam=0`` and ``labels=None`` this is CLIP's symmetric contrastive loss
    (open_clip's ``ClipLoss`` on the normalised features).
    """
    terms = cma_loss_terms(image_features, text_features, logit_scale, labels=labels, normalize=normalize)
    B = terms["target"].shape[0]
    if labels is None:
        rows = (-terms["target"] + (1 - lam) * terms["row_lse"]).sum()
        cols = (-terms["target"] + (1 - lam) * terms["col_lse"]).sum()
        return (rows + cols) / (2 * B)
    return (-terms["target"] + (1 - lam) * terms["row_lse"]).sum() / B
