"""Learning-rate schedule: linear warm-up, then cosine decay to zero (CMA / FLYP's recipe).

For optimizer step ``t`` (0-based), base rate ``η``, ``W`` warm-up steps and ``T`` total::

    lr(t) = η · (t + 1) / W                               t < W
    lr(t) = η · ½ · (1 + cos(π · (t − W) / (T − W)))     t ≥ W

The schedule is a function of the step, so its state is the step (and the constants,
checked on resume).
"""

from __future__ import annotations

import math

import torch

__all__ = ["WarmupCosine"]


class WarmupCosine:
    """Sets ``lr`` of every parameter group of ``optimizer`` for a given step."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, warmup: int, total: int):
        if total < 1:
            raise ValueError(f"total steps must be >= 1, got {total}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        self.optimizer, self.base_lr, self.warmup, self.total = optimizer, float(base_lr), int(warmup), int(total)
        self.step = 0

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.base_lr * (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * min(step - self.warmup, span) / span))

    def apply(self, step: int) -> float:
        """Set the rate for optimizer step ``step`` and return it."""
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.step = step
        return lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "warmup": self.warmup, "total": self.total, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        mine = (self.base_lr, self.warmup, self.total)
        theirs = (state["base_lr"], state["warmup"], state["total"])
        if mine != theirs:
            raise ValueError(f"the checkpoint's schedule (lr, warmup, total) = {theirs} differs from this run's {mine}")
        self.step = int(state["step"])
