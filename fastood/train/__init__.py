"""CMA fine-tuning of open_clip models (shared/SPEC.md §3): ``python -m fastood.train``.

- :func:`train` / :class:`Trainer` — the loop: fused CMA loss over the global batch
  (DDP under torchrun), AMP, exact gradient accumulation, gradient checkpointing,
  atomic verified checkpoints with exact resumption, evaluation hook.
- :class:`TrainConfig` — every constant of the reference recipe as a field / flag.
- :mod:`fastood.train.data` — ImageFolder, seeded crops, global-batch sampler,
  unreadable images skipped and counted.
- :mod:`fastood.train.checkpoint` — checkpoint format, save / verify / load.
- :mod:`fastood.train.evaluate` — SPEC §3 test time: ID accuracy, NegLabel (G = 1)
  OOD metrics with the bank re-encoded by the fine-tuned text encoder.
"""

from fastood.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fastood.train.config import TrainConfig
from fastood.train.data import EmptyDatasetError
from fastood.train.evaluate import evaluate_cma
from fastood.train.trainer import Trainer, TrainResult, train

__all__ = ["train", "Trainer", "TrainResult", "TrainConfig", "CheckpointError", "EmptyDatasetError",
           "load_checkpoint", "save_checkpoint", "evaluate_cma"]
