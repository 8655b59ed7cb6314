r"""The CMA loss inside open_clip's own trainer (``open_clip_train.main``).

open_clip's trainer builds its loss once, with ``create_loss(args)`` imported into
``open_clip_train.main``, and calls it as ``loss(**model_out, output_dict=True)`` with
``model_out = {"image_features", "text_features", "logit_scale"}``.
:class:`fastood.nn.CMALoss` has exactly that call signature and returns
``{"contrastive_loss": loss}`` under ``output_dict=True``, so **the smallest change is one
line** — replace the factory before calling ``main``::

    import open_clip_train.main as trainer
    from fastood.nn import CMALoss

    trainer.create_loss = lambda args: CMALoss(lam=0.001, gather=args.world_size > 1)
    trainer.main(sys.argv[1:])

or, with every ``open_clip_train`` flag unchanged plus two of fastood's::

    python -m fastood.integrations.open_clip_train --cma-lam 0.001 [--cma-backend auto] \
        --train-data train.csv --model ViT-B-16-quickgelu --pretrained openai ...

(``torchrun ... -m fastood.integrations.open_clip_train ...`` for several GPUs.)

What the trainer then optimises (SPEC §3, pair mode; ``L_ij = s·u_i·v_j`` on the batch)::

    loss = (1/2B) Σ_i [−L_ii + (1−λ) LSE_j L_ij] + (1/2B) Σ_j [−L_jj + (1−λ) LSE_i L_ij]

``λ = 0`` is open_clip's ``ClipLoss``. With several ranks ``gather=True`` all-gathers the
features with gradients, so every rank computes the loss of the global batch, as ``ClipLoss``
does without ``--local-loss``. The trainer logs it as ``Contrastive_loss`` (and ``Loss``).
Gradient accumulation (``--accum-freq``) works unchanged (the loss sees the concatenated
features). SigLIP (``--siglip``), distillation (``--distill``) and CoCa models have their own
losses and are refused.

Note: ``open_clip_train`` ships inside the ``open_clip_torch`` wheel but imports ``pandas``
and ``braceexpand``, which the wheel does not require (``pip install pandas braceexpand``).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence

from fastood.nn import CMALoss

__all__ = ["cma_loss_factory", "install", "main"]


def cma_loss_factory(lam: float = 0.001, backend: str = "auto") -> Callable[[Any], CMALoss]:
    """A drop-in for ``open_clip.create_loss(args)`` that returns :class:`fastood.nn.CMALoss`.

    ``gather`` is on when the trainer runs on more than one rank (``args.world_size > 1``).
    """
    CMALoss(lam=lam, backend=backend)  # validate now, not at the first step of a long job

    def create_loss(args: Any) -> CMALoss:
        refused = [flag for flag, on in (("--siglip", getattr(args, "siglip", False)),
                                         ("--distill", getattr(args, "distill", False)),
                                         ("a CoCa --model", "coca" in str(getattr(args, "model", "")).lower()))
                   if on]
        if refused:
            raise ValueError(f"the CMA loss replaces CLIP's contrastive loss; it cannot be used with {refused[0]}")
        return CMALoss(lam=lam, backend=backend, gather=int(getattr(args, "world_size", 1)) > 1)

    return create_loss


def install(lam: float = 0.001, backend: str = "auto") -> Callable[[Any], Any]:
    """Point ``open_clip_train.main.create_loss`` at :func:`cma_loss_factory`; returns the previous factory.

    (``open_clip_train.main`` binds ``create_loss`` by name at import, so patching that module's
    attribute is what its ``main`` sees.)
    """
    try:
        import open_clip_train.main as trainer
    except ImportError as exc:
        raise ImportError("open_clip_train could not be imported (it ships with open_clip_torch >= 2.24 and needs "
                          f"pandas and braceexpand: pip install pandas braceexpand): {exc}") from exc
    previous = trainer.create_loss
    trainer.create_loss = cma_loss_factory(lam, backend)
    return previous


def main(argv: Sequence[str] | None = None) -> None:
    """``open_clip_train.main.main`` with the CMA loss: ``--cma-lam`` / ``--cma-backend``, then its own flags."""
    import sys

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--cma-lam", type=float, default=0.001, help="CMA regulariser weight λ (default 0.001)")
    parser.add_argument("--cma-backend", default="auto", help="fused op backend: auto, triton or torch")
    ours, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    previous = install(ours.cma_lam, ours.cma_backend)
    import open_clip_train.main as trainer

    try:
        trainer.main(rest)
    finally:
        trainer.create_loss = previous


if __name__ == "__main__":
    main()
