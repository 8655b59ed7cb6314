"""The CMA fine-tuning loop (shared/SPEC.md §3): :class:`Trainer` and :func:`train`.

One optimizer step on a global batch of G images ``x_i`` with class labels ``y_i``:
texts ``p_i = template.format(classname[y_i])`` (one prompt per image: same-class
duplicates in a batch are negatives, as in the reference), raw features
``f(x_i)``, ``g(p_i)`` and the scale ``s = exp(logit_scale)`` go to
``CMALoss(lam, gather=True)`` — the fused loss of the *global* batch (SPEC §3)::

    loss = (1/2G) Σ_i [−L_ii + (1−λ) LSE_j L_ij] + (1/2G) Σ_j [−L_jj + (1−λ) LSE_i L_ij],
    L_ij = s · f̂(x_i)·ĝ(p_j)

**Distributed.** Under ``torchrun`` every rank holds G/W images; the loss all-gathers
the features with gradients and DDP averages the parameter gradients, which gives
exactly the single-process gradient of the global-batch loss
(:class:`fastood.nn.CMALoss`). The data order does not depend on W
(:mod:`fastood.train.data`), so a run on W ranks follows the same trajectory as on
one, up to floating-point summation order.

**Gradient accumulation is exact** (``accum_steps = A``): the contrastive loss of
the global batch does not split into micro-batch losses, so the step first encodes
all A micro-batches without gradients, then for each micro-batch ``m`` re-encodes it
with gradients, substitutes its features into the cached global batch and
back-propagates the full loss. Micro-pass ``m`` contributes exactly the gradient
through micro-batch ``m``'s features; the logit scale takes its gradient once (in
the last pass, the one DDP synchronises). Cost: one extra no-grad forward.

**Resumption is exact**: a checkpoint (``fastood.train.checkpoint``) holds the
weights, AdamW's moments, the schedule step, the grad-scaler state, every rank's
RNG states, and the data sampler's generator state and position; crops are seeded
per sample. Resuming from step k reproduces the uninterrupted run's parameters
(bitwise on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import csv
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from fastood.train.checkpoint import (
    CheckpointError, atomic_write_text, list_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint,
    write_final_model,
)
from fastood.train.config import PER_INVOCATION_KEYS, TRAJECTORY_KEYS, TrainConfig
from fastood.train.data import (
    Batch, GlobalBatchSampler, ImageFolderDataset, ImageListDataset, TrainTransform, collate_skip_failed,
)
from fastood.train.schedule import WarmupCosine

__all__ = ["Trainer", "TrainResult", "ClipTrainModule", "train"]

CSV_FIELDS = ("step", "epoch", "loss", "lr", "logit_scale", "images_per_s", "images", "skipped_images", "time_s")


def _log(msg: str) -> None:
    print(f"[fastood.train] {msg}", file=sys.stderr, flush=True)


class ClipTrainModule(nn.Module):
    """open_clip model → ``(raw image features, raw text features, exp(logit_scale))``.

    Features are *not* normalised here: the fused loss normalises inside its kernel
    (one pass less over the features than open_clip's ``forward``). Wrapping the
    model in one ``forward`` keeps DDP's hooks in the path.
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return (self.clip.encode_image(images, normalize=False), self.clip.encode_text(tokens, normalize=False),
                self.clip.logit_scale.exp())


class _OpenClipLoss(nn.Module):
    """open_clip's ``ClipLoss`` (global batch, gather with grad) on normalised features: the baseline."""

    def __init__(self, rank: int, world: int):
        super().__init__()
        from open_clip.loss import ClipLoss

        self.inner = ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world)

    def forward(self, image: Tensor, text: Tensor, scale: Tensor) -> Tensor:
        return self.inner(nn.functional.normalize(image, dim=-1), nn.functional.normalize(text, dim=-1), scale)


@dataclass
class TrainResult:
    """What a :meth:`Trainer.run` did."""

    run_dir: Path
    step: int
    total_steps: int
    finished: bool
    checkpoint: Path | None
    model_path: Path | None
    last_loss: float | None
    skipped_images: int
    skipped_steps: int
    evaluations: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------------ RNG states
def _rng_state() -> dict:
    keys, pos, has_gauss, cached = np.random.get_state()[1:]
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------ trainer
class Trainer:
    """Set up (or resume) a CMA fine-tuning run; :meth:`run` trains it.

    Args:
        cfg: the run's configuration.
        explicit: the config fields the user set explicitly (CLI); on resume these
            override the checkpoint's config where allowed, and must agree with it on
            :data:`~fastood.train.config.TRAJECTORY_KEYS`. ``None`` = every field.
    """

    def __init__(self, cfg: TrainConfig, explicit: set[str] | None = None):
        self._init_distributed(cfg)
        self._owns_signals = False
        self._stop_requested = False
        self._tb = None
        self.last_checkpoint: Path | None = None
        checkpoint = None
        if cfg.resume is not None:
            checkpoint, cfg = self._open_resume(cfg, explicit)
        self._fresh = checkpoint is None
        cfg.validate()
        self.cfg = cfg
        self.run_dir = Path(cfg.out).expanduser()
        if checkpoint is None and list_checkpoints(self.run_dir):
            raise ValueError(f"{str(self.run_dir)!r} already holds a run (checkpoints/): pass --resume to continue it "
                             "or choose another --out")
        self.device = self._pick_device(cfg)
        if cfg.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device (use 'bf16' or 'fp32' on the CPU)")
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]

        # data (every rank lists the folders, so a bad folder fails everywhere at once)
        self.dataset = ImageFolderDataset(cfg.data)
        self.classes = self.dataset.classes
        self.classnames = self._classnames(cfg, self.classes)
        self.sampler = GlobalBatchSampler(len(self.dataset), cfg.batch_size, world=self.world, rank=self.rank,
                                          seed=cfg.seed)
        if self.sampler.local_batch % cfg.accum_steps:
            raise ValueError(f"per-rank batch {self.sampler.local_batch} (batch_size {cfg.batch_size} / {self.world} "
                             f"ranks) must be a multiple of accum_steps {cfg.accum_steps}")
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.eval_sets = self._eval_sets(cfg)

        # model (the starting weights: pretrained, or random; on resume the checkpoint's)
        torch.manual_seed(cfg.seed)
        need_start_weights = checkpoint is None or (self.eval_sets is not None and not self._negatives_path().exists()
                                                     and not cfg.eval_negatives)
        self.bundle = self._load_model(cfg, pretrained=need_start_weights)
        self.clip = self.bundle.model
        self.clip.train()
        size = cfg.image_size or int(self._model_image_size())
        pcfg = getattr(self.clip.visual, "preprocess_cfg", {}) or {}
        self.dataset.transform = TrainTransform(
            size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, interpolation=cfg.interpolation,
            mean=pcfg.get("mean", (0.48145466, 0.4578275, 0.40821073)),
            std=pcfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
        if cfg.grad_checkpointing:
            self.clip.set_grad_checkpointing(True)
        self.negatives = self._prepare_negatives() if self.eval_sets is not None else None

        self.module = ClipTrainModule(self.clip)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp: nn.Module = nn.parallel.DistributedDataParallel(self.module, device_ids=ids)
        else:
            self.ddp = self.module
        self.optimizer = self._make_optimizer(cfg)
        self.schedule = WarmupCosine(self.optimizer, cfg.lr, cfg.warmup, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        if cfg.loss == "cma":
            from fastood.nn import CMALoss

            self.loss_fn: nn.Module = CMALoss(lam=cfg.lam, gather=True, backend=cfg.loss_backend)
        else:
            self.loss_fn = _OpenClipLoss(self.rank, self.world)
        self.tokens = self.bundle.tokenizer([cfg.template.format(c) for c in self.classnames]).to(self.device)

        self.step = 0
        self.skipped_images = 0
        self.skipped_steps = 0
        self.images_seen = 0
        self.last_loss: float | None = None
        self.evaluations: list[dict] = []
        torch.manual_seed(cfg.seed + 1 + self.rank)  # per-rank stream for anything random in the model (dropout)
        np.random.seed((cfg.seed + 1 + self.rank) % 2**32)
        random.seed(cfg.seed + 1 + self.rank)
        if checkpoint is not None:
            self._restore(*checkpoint)

    # -------------------------------------------------------------------- setup helpers
    def _init_distributed(self, cfg: TrainConfig) -> None:
        self._own_pg = False
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            use_cuda = torch.cuda.is_available() and (cfg.device is None or str(cfg.device).startswith("cuda"))
            if use_cuda:
                torch.cuda.set_device(local)
            # rank 0 alone mines the negatives and runs evaluations while the others wait at a barrier:
            # allow for that rather than NCCL's 10-minute default
            dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=60))
            self._own_pg = True
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.is_main = self.rank == 0

    def _pick_device(self, cfg: TrainConfig) -> torch.device:
        if cfg.device:
            dev = torch.device(cfg.device)
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"device {cfg.device!r}: no CUDA GPU is visible")
            if dev.type == "cuda" and dev.index is None:
                dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            return dev
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")

    def _open_resume(self, cfg: TrainConfig, explicit: set[str] | None):
        source = cfg.resume or cfg.out
        if not source:
            raise ValueError("--resume without a checkpoint needs --out RUN_DIR")
        ckpt_dir = resolve_checkpoint(source)
        model_state, state, ckpt_dir = load_checkpoint(ckpt_dir)
        saved = TrainConfig.from_json(state["config"])
        given = set(f for f in asdict(cfg)) if explicit is None else set(explicit)
        given.discard("resume")
        clash = [k for k in TRAJECTORY_KEYS if k in given and getattr(cfg, k) != getattr(saved, k)]
        if clash:
            detail = ", ".join(f"{k}: checkpoint {getattr(saved, k)!r} vs given {getattr(cfg, k)!r}" for k in clash)
            raise ValueError(f"cannot resume {str(ckpt_dir)!r} with a different training setup ({detail})")
        keep = {k for k in given if k not in TRAJECTORY_KEYS} | set(PER_INVOCATION_KEYS)
        merged = replace(saved, **{k: getattr(cfg, k) for k in keep})
        if "out" not in given:
            merged.out = str(ckpt_dir.parent.parent)
        if self.rank == 0:
            _log(f"resuming from {ckpt_dir} (step {state['step']})")
        return (model_state, state, ckpt_dir), merged

    @staticmethod
    def _classnames(cfg: TrainConfig, classes: list[str]) -> list[str]:
        if cfg.classnames is None:
            return [c.replace("_", " ") for c in classes]
        from fastood.labels import load_classnames

        names = load_classnames(cfg.classnames)
        if len(names) != len(classes):
            raise ValueError(f"classnames {cfg.classnames!r} has {len(names)} names but the data folder has "
                             f"{len(classes)} class folders")
        return names

    def _eval_sets(self, cfg: TrainConfig):
        if not cfg.eval_data:
            return None
        pre = None  # set once the model (and its preprocess) exists
        id_set = ImageFolderDataset(cfg.eval_data, pre, classes=self.classes)
        ood: dict[str, ImageFolderDataset] = {}
        for spec in cfg.ood:
            name, sep, path = spec.partition("=")
            if not sep:
                name, path = Path(spec.rstrip("/")).name, spec
            if name in ood:
                raise ValueError(f"two OOD sets are named {name!r}: use NAME=DIR to tell them apart")
            ood[name] = ImageListDataset(path, pre)
        return id_set, ood

    def _load_model(self, cfg: TrainConfig, *, pretrained: bool):
        from fastood.models import load_clip

        weights = cfg.pretrained if pretrained else ""
        if weights.lower() in ("none", ""):
            weights = ""
            if pretrained and self.is_main:
                _log(f"--pretrained none: {cfg.model} starts from RANDOM weights (no pretrained checkpoint loaded)")
        bundle = load_clip(cfg.model, pretrained=weights, device=self.device, **cfg.model_kwargs)
        if self.eval_sets is not None:
            self.eval_sets[0].transform = bundle.preprocess
            for ds in self.eval_sets[1].values():
                ds.transform = bundle.preprocess
        return bundle

    def _model_image_size(self) -> int:
        size = getattr(self.clip.visual, "image_size", 224)
        return size[0] if isinstance(size, (tuple, list)) else size

    def _negatives_path(self) -> Path:
        return Path(self.cfg.out).expanduser() / "negatives.tsv"

    def _prepare_negatives(self):
        from fastood.train.evaluate import mine_negatives, read_negatives, write_negatives

        path = self._negatives_path()
        if self.is_main and (self._fresh or not path.exists()):  # a fresh run never inherits a stale list
            if self.cfg.eval_negatives:
                negatives = read_negatives(self.cfg.eval_negatives)
            else:
                _log("mining the evaluation negatives with the starting model (NegMining, SPEC §1)")
                self.clip.eval()
                negatives = mine_negatives(self.bundle, self.classnames, stride=self.cfg.eval_corpus_stride,
                                           progress=self.cfg.progress)
                self.clip.train()
            write_negatives(path, negatives)
        self._barrier()
        return read_negatives(path)

    def _make_optimizer(self, cfg: TrainConfig) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.clip.named_parameters():
            if not p.requires_grad:
                continue
            exempt = p.ndim < 2 or "bias" in name or "logit_scale" in name or "ln" in name or "bn" in name
            (no_decay if cfg.no_decay_norm_bias and exempt else decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        fused = self.device.type == "cuda"
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                 **({"fused": True} if fused else {"foreach": False}))

    # ----------------------------------------------------------------------- collectives
    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def _gather_ints(self, values: list[int]) -> Tensor:
        """(world, len(values)) int64 on the CPU: every rank's values."""
        local = torch.tensor(values, dtype=torch.int64)
        if self.world == 1:
            return local[None]
        dev = self.device if self.device.type == "cuda" else torch.device("cpu")
        parts = [torch.empty_like(local, device=dev) for _ in range(self.world)]
        dist.all_gather(parts, local.to(dev))
        return torch.stack([p.cpu() for p in parts])

    # ------------------------------------------------------------------ checkpointing
    def _state(self) -> dict[str, Any]:
        rng = _rng_state()
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        return {
            "format": "fastood.train.state",
            "step": self.step,
            "config": self.cfg.to_json(),
            "world_size": self.world,
            "classes": list(self.classes),
            "classnames": list(self.classnames),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": gathered,
            "sampler": self.sampler.state_dict(),
            "data_position": {"epoch": self.step // self.steps_per_epoch,
                              "step_in_epoch": self.step % self.steps_per_epoch,
                              "steps_per_epoch": self.steps_per_epoch},
            "stats": {"skipped_images": self.skipped_images, "skipped_steps": self.skipped_steps,
                      "images_seen": self.images_seen, "last_loss": self.last_loss},
            "versions": {"torch": str(torch.__version__)},
        }

    def save(self) -> Path | None:
        """Checkpoint the current step (rank 0 writes; every rank takes part)."""
        state = self._state()  # collective (RNG states of all ranks)
        path = None
        if self.is_main:
            path = save_checkpoint(self.run_dir, self.step, self.clip.state_dict(), state, keep=self.cfg.keep_checkpoints)
        self._barrier()
        self.last_checkpoint = path
        return path

    def _restore(self, model_state: dict, state: dict, ckpt_dir: Path) -> None:
        if list(state["classes"]) != list(self.classes):
            raise CheckpointError(f"checkpoint {str(ckpt_dir)!r} was trained on classes {state['classes'][:5]}…, "
                                  f"the data folder has {self.classes[:5]}…")
        missing, unexpected = self.clip.load_state_dict(model_state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {str(ckpt_dir / 'model.safetensors')!r} does not fit {self.cfg.model}: "
                                  f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        rng = state["rng"]
        if state["world_size"] == self.world:
            _set_rng_state(rng[self.rank])
        else:
            if self.is_main:
                _log(f"the checkpoint was written by {state['world_size']} ranks, this run has {self.world}: "
                     "per-rank RNG streams are re-seeded (the data order and the loss do not depend on them)")
            torch.manual_seed(self.cfg.seed + 1 + self.rank + 7919 * state["step"])
        self.step = int(state["step"])
        stats = state["stats"]
        self.skipped_images, self.skipped_steps = int(stats["skipped_images"]), int(stats["skipped_steps"])
        self.images_seen, self.last_loss = int(stats["images_seen"]), stats["last_loss"]
        self.last_checkpoint = ckpt_dir

    # -------------------------------------------------------------------- one step
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def forward_backward(self, pixels: Tensor, labels: Tensor) -> Tensor:
        """Accumulate into ``.grad`` the gradient of the global-batch loss (this rank's share
        under DDP) for this rank's ``pixels`` / ``labels``; return the loss (detached)."""
        pixels = pixels.to(self.device, non_blocking=True)
        tokens = self.tokens[labels.to(self.device)]
        accum = self.cfg.accum_steps
        if accum == 1:
            with self._autocast():
                img, txt, scale = self.ddp(pixels, tokens)
                loss = self.loss_fn(img, txt, scale)
            self.scaler.scale(loss).backward()
            return loss.detach()
        px, tk = pixels.tensor_split(accum), tokens.tensor_split(accum)
        with torch.no_grad(), self._autocast():
            cached = [self.module(p, t)[:2] for p, t in zip(px, tk)]
        imgs, txts = [c[0] for c in cached], [c[1] for c in cached]
        loss = None
        for m in range(accum):
            last = m == accum - 1
            sync = contextlib.nullcontext() if (last or self.world == 1) else self.ddp.no_sync()
            with sync:
                with self._autocast():
                    img, txt, scale = self.ddp(px[m], tk[m])
                    if not last:
                        scale = scale.detach()  # d(loss)/d(scale) is taken once, in the synchronised pass
                    loss = self.loss_fn(torch.cat(imgs[:m] + [img] + imgs[m + 1:]),
                                        torch.cat(txts[:m] + [txt] + txts[m + 1:]), scale)
                self.scaler.scale(loss).backward()
        return loss.detach()

    def train_step(self, batch: Batch) -> dict | None:
        """One optimizer step on this rank's share of a global batch. Returns the log row
        (rank 0; others get it too), with ``loss=None`` when the step was skipped."""
        for path, reason in batch.failed:
            _log(f"rank {self.rank}: skipping unreadable image {path} ({reason})")
        counts = self._gather_ints([len(batch), len(batch.failed), int(self._stop_requested)])
        self.skipped_images += int(counts[:, 1].sum())
        if counts[:, 2].any():
            self._stop_requested = True
        n_images = int(counts[:, 0].sum())
        lr = self.schedule.apply(self.step)
        loss_value = None
        if int(counts[:, 0].min()) < self.cfg.accum_steps:
            # some rank has nothing (or too little) left to encode: every rank skips the update
            self.skipped_steps += 1
            if self.is_main:
                _log(f"step {self.step + 1}: skipped (a rank had fewer than {self.cfg.accum_steps} readable images)")
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.forward_backward(batch.pixels, batch.labels)
            if self.cfg.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.clip.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.cfg.clamp_logit_scale is not None:
                with torch.no_grad():
                    self.clip.logit_scale.clamp_(0, math.log(self.cfg.clamp_logit_scale))
            loss_value = float(loss)
            self.last_loss = loss_value
            self.images_seen += n_images
        self.step += 1
        return {"step": self.step, "epoch": (self.step - 1) // self.steps_per_epoch, "loss": loss_value, "lr": lr,
                "logit_scale": float(self.clip.logit_scale.detach().exp()), "images": n_images,
                "skipped_images": self.skipped_images}

    # ---------------------------------------------------------------------- evaluation
    def evaluate(self) -> dict | None:
        """SPEC §3 test-time evaluation on rank 0 (others wait); appended to RUN_DIR/eval.jsonl."""
        if self.eval_sets is None:
            return None
        result = None
        if self.is_main:
            from fastood.train.evaluate import evaluate_cma

            id_set, ood = self.eval_sets
            amp = self.amp_dtype if self.device.type == "cuda" else None
            result = evaluate_cma(self.clip, self.bundle.tokenizer, self.classnames, self.negatives, id_set, ood,
                                  temperature=self.cfg.eval_temperature, convention=self.cfg.eval_convention,
                                  batch_size=self.cfg.eval_batch_size, num_workers=self.cfg.workers, amp_dtype=amp,
                                  progress=self.cfg.progress)
            result = {"step": self.step, **result}
            for path, reason in result["skipped_images"]:
                _log(f"evaluation: skipped unreadable image {path} ({reason})")
            result["skipped_images"] = len(result["skipped_images"])
            with open(self.run_dir / "eval.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(result) + "\n")
            line = f"eval @ step {self.step}: ID accuracy {100 * result['id_accuracy']:.2f}%"
            if "average" in result:
                line += (f", average FPR95 ({self.cfg.eval_convention}) {100 * result['average']['fpr95']:.2f}%, "
                         f"AUROC {100 * result['average']['auroc']:.2f}%")
            _log(line)
            if self._tb is not None:
                self._tb.add_scalar("eval/id_accuracy", result["id_accuracy"], self.step)
                if "average" in result:
                    self._tb.add_scalar("eval/fpr95", result["average"]["fpr95"], self.step)
                    self._tb.add_scalar("eval/auroc", result["average"]["auroc"], self.step)
            self.evaluations.append(result)
        self._barrier()
        return result

    # ----------------------------------------------------------------------------- logs
    def _open_logs(self) -> None:
        self._tb = None
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "log.csv"
        rows: list[dict] = []
        if path.exists():  # keep what the resumed trajectory already logged, drop steps after the checkpoint
            with open(path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= self.step]
        text = ",".join(CSV_FIELDS) + "\n" + "".join(",".join(r.get(k, "") for k in CSV_FIELDS) + "\n" for r in rows)
        atomic_write_text(path, text)
        evals = self.run_dir / "eval.jsonl"
        if evals.exists():  # likewise: evaluations after the checkpoint (or of an abandoned fresh start) go
            kept = [ln for ln in evals.read_text(encoding="utf-8").splitlines()
                    if ln.strip() and not self._fresh and json.loads(ln).get("step", 0) <= self.step]
            atomic_write_text(evals, "".join(ln + "\n" for ln in kept))
        self._csv = open(path, "a", newline="", encoding="utf-8")
        self._csv_writer = csv.DictWriter(self._csv, fieldnames=CSV_FIELDS)
        if self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                _log("--tensorboard: tensorboard is not installed (pip install tensorboard); logging to log.csv only")
            else:
                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step + 1)

    def _write_row(self, row: dict) -> None:
        if not self.is_main:
            return
        out = {k: row.get(k) for k in CSV_FIELDS}
        out = {k: ("" if v is None else (f"{v:.8g}" if isinstance(v, float) else v)) for k, v in out.items()}
        self._csv_writer.writerow(out)
        self._csv.flush()
        if self._tb is not None and row.get("loss") is not None:
            for k in ("loss", "lr", "logit_scale", "images_per_s"):
                self._tb.add_scalar(f"train/{k}", row[k], row["step"])

    def _close_logs(self) -> None:
        if self.is_main:
            self._csv.close()
            if self._tb is not None:
                self._tb.close()

    # ------------------------------------------------------------------------- signals
    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._old_handlers = {}

        def handler(signum, frame):
            if self._stop_requested:  # second signal: give up now
                signal.signal(signum, self._old_handlers.get(signum, signal.SIG_DFL))
                raise KeyboardInterrupt
            self._stop_requested = True
            _log(f"rank {self.rank}: signal {signum}: checkpointing after this step (send again to abort)")

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, handler)
        self._owns_signals = True

    def _restore_signals(self) -> None:
        if self._owns_signals:
            for sig, h in self._old_handlers.items():
                signal.signal(sig, h)
            self._owns_signals = False

    # ---------------------------------------------------------------------------- run
    def _loader(self, start: int):
        batches = list(self.sampler.batches(start))
        return torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batches, collate_fn=collate_skip_failed, num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False)

    def _final_model(self) -> Path:
        import open_clip

        name = self.bundle.name
        pretrained = self.cfg.pretrained
        if pretrained and Path(pretrained).expanduser().is_dir():
            name = f"local-dir:{Path(pretrained).expanduser()}"
        model_cfg = copy.deepcopy(open_clip.get_model_config(name)) or {}
        model_cfg.update(copy.deepcopy(self.cfg.model_kwargs))
        pcfg = dict(getattr(self.clip.visual, "preprocess_cfg", {}) or {})
        pcfg = json.loads(json.dumps(pcfg, default=list))
        meta = {"fastood": json.dumps({"model": self.cfg.model, "step": self.step, "classnames": self.classnames,
                                       "template": self.cfg.template, "lam": self.cfg.lam})}
        path = write_final_model(self.run_dir, self.clip.state_dict(), {"model_cfg": model_cfg, "preprocess_cfg": pcfg},
                                 metadata=meta)
        atomic_write_text(self.run_dir / "train_config.json", json.dumps(
            {"config": asdict(self.cfg), "classes": self.classes, "classnames": self.classnames, "step": self.step},
            indent=2, default=list))
        return path

    def run(self) -> TrainResult:
        """Train to the end (or to ``stop_at_step`` / a signal), checkpointing on the way."""
        cfg = self.cfg
        self._open_logs()
        self._install_signals()
        if self.is_main:
            _log(f"{cfg.model}: {len(self.dataset)} images in {len(self.classes)} classes, global batch "
                 f"{cfg.batch_size} = {self.world} rank(s) × {self.sampler.local_batch // cfg.accum_steps} × "
                 f"{cfg.accum_steps} accumulation; {self.steps_per_epoch} steps/epoch, {self.total_steps} steps; "
                 f"loss {cfg.loss} (λ = {cfg.lam}); {self.device}, {cfg.precision}")
        from fastood.progress import progress as progress_bar  # a tqdm bar on a terminal, plain lines in a log

        bar = progress_bar(total=self.total_steps, initial=self.step, disable=not (self.is_main and cfg.progress),
                   desc="CMA fine-tuning", dynamic_ncols=True)
        model_path = None
        try:
            if cfg.eval_at_start and self.step == 0:
                self.evaluate()
            saved_at = self.step if self.last_checkpoint is not None else None
            t_prev = time.perf_counter()
            t_start = t_prev
            stop = cfg.stop_at_step is not None and self.step >= cfg.stop_at_step
            while self.step < self.total_steps and not stop:
                epoch, start = divmod(self.step, self.steps_per_epoch)
                self.sampler.set_epoch(epoch)
                for batch in self._loader(start):
                    row = self.train_step(batch)
                    now = time.perf_counter()
                    row["images_per_s"] = row["images"] / max(now - t_prev, 1e-9)
                    row["time_s"] = round(now - t_start, 3)
                    t_prev = now
                    self._write_row(row)
                    bar.update(1)
                    if row["loss"] is not None:
                        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}",
                                        scale=f"{row['logit_scale']:.1f}", img_s=f"{row['images_per_s']:.1f}")
                    done = self.step >= self.total_steps
                    stop = self._stop_requested or (cfg.stop_at_step is not None and self.step >= cfg.stop_at_step)
                    if (cfg.save_every and self.step % cfg.save_every == 0) or stop or done:
                        self.save()
                        saved_at = self.step
                    if cfg.eval_every and self.step % cfg.eval_every == 0 and not done:
                        self.evaluate()
                    if stop or done:
                        break
                    t_prev = time.perf_counter()  # images/s counts data loading + the step, not saves/evals
            finished = self.step >= self.total_steps
            if finished:
                if saved_at != self.step:
                    self.save()
                if self.is_main:
                    model_path = self._final_model()
                    _log(f"done: {self.step} steps; model at {model_path}")
                self._barrier()
                self.evaluate()
            elif self.is_main:
                _log(f"stopped at step {self.step}/{self.total_steps}; continue with --resume (checkpoint "
                     f"{self.last_checkpoint})")
            if self.is_main and self.skipped_images:
                _log(f"{self.skipped_images} unreadable image(s) were skipped")
        finally:
            bar.close()
            self._close_logs()
            self._restore_signals()
        return TrainResult(self.run_dir, self.step, self.total_steps, self.step >= self.total_steps,
                           self.last_checkpoint, model_path, self.last_loss, self.skipped_images, self.skipped_steps,
                           list(self.evaluations))

    def close(self) -> None:
        """Tear down the process group if this trainer created it."""
        if self._own_pg and dist.is_initialized():
            dist.destroy_process_group()
            self._own_pg = False


def train(cfg: TrainConfig, explicit: set[str] | None = None) -> TrainResult:
    """Set up (or resume) and run a CMA fine-tuning; see :class:`Trainer`."""
    trainer = Trainer(cfg, explicit)
    try:
        return trainer.run()
    finally:
        trainer.close()

