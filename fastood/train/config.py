"""The trainer's configuration: one dataclass, one flag per field (``python -m fastood.train -h``).

Defaults are CMA's reference recipe (shared/SPEC.md §3): AdamW lr 1e-5, weight decay
0.1, global batch 512, 10 epochs, 500 warm-up steps then cosine, fp32,
``RandomResizedCrop(224, scale=(0.9, 1), bicubic)``, no flip, prompt ``"a photo of a {}"``,
λ = 0.001, learnable logit scale not clamped.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Sequence

__all__ = ["TrainConfig", "TRAJECTORY_KEYS", "PER_INVOCATION_KEYS", "build_parser", "config_from_args"]

PRECISIONS = ("fp32", "bf16", "fp16")
LOSSES = ("cma", "clip")


@dataclass
class TrainConfig:
    """Everything a run needs (see ``python -m fastood.train -h`` for each field)."""

    data: str | None = None
    out: str | None = None
    model: str = "ViT-B-16-quickgelu"
    pretrained: str = "openai"
    model_kwargs: dict = field(default_factory=dict)
    classnames: str | None = None
    template: str = "a photo of a {}"
    lam: float = 0.001
    loss: str = "cma"
    loss_backend: str = "auto"
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 512
    accum_steps: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup: int = 500
    no_decay_norm_bias: bool = False
    grad_clip: float | None = None
    clamp_logit_scale: float | None = None
    image_size: int | None = None
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bicubic"
    precision: str = "fp32"
    grad_checkpointing: bool = False
    seed: int = 0
    device: str | None = None
    workers: int = 4
    save_every: int = 1000
    keep_checkpoints: int = 2
    resume: str | None = None
    stop_at_step: int | None = None
    tensorboard: bool = False
    progress: bool = True
    eval_data: str | None = None
    ood: list[str] = field(default_factory=list)
    eval_every: int = 0
    eval_at_start: bool = False
    eval_negatives: str | None = None
    eval_corpus_stride: int = 1
    eval_temperature: float = 0.01
    eval_convention: str = "interp"
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        self.crop_scale = tuple(float(v) for v in self.crop_scale)  # type: ignore[assignment]
        self.crop_ratio = tuple(float(v) for v in self.crop_ratio)  # type: ignore[assignment]
        self.ood = list(self.ood)
        if isinstance(self.model_kwargs, str):
            self.model_kwargs = _parse_json(self.model_kwargs)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        def positive_int(name: str, allow_none: bool = False, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if allow_zero else 1):
                raise ValueError(f"{name} must be an integer >= {0 if allow_zero else 1}, got {v!r}")

        def nonneg(name: str, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v != v or v == float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")

        if not self.out and not self.resume:
            raise ValueError("out (--out RUN_DIR) is required")
        if not self.data:
            raise ValueError("data (--data DIR, an ImageFolder of the ID training set) is required")
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"model_kwargs must be a JSON object, got {self.model_kwargs!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not 0 <= self.lam <= 1:
            raise ValueError(f"lam must be in [0, 1], got {self.lam!r}")
        for name in ("epochs", "batch_size", "accum_steps", "keep_checkpoints", "eval_corpus_stride", "eval_batch_size"):
            positive_int(name)
        for name in ("max_steps", "stop_at_step", "image_size"):
            positive_int(name, allow_none=True)
        for name in ("warmup", "save_every", "eval_every", "workers", "seed"):
            positive_int(name, allow_zero=True)
        for name in ("weight_decay",):
            nonneg(name)
        for name in ("grad_clip", "clamp_logit_scale"):
            nonneg(name, allow_none=True)
        for name in ("lr", "eps", "eval_temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"{name} must be in [0, 1), got {v!r}")
        if not (0 < self.crop_scale[0] <= self.crop_scale[1] <= 1) or len(self.crop_scale) != 2:
            raise ValueError(f"crop_scale must be two numbers 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not (0 < self.crop_ratio[0] <= self.crop_ratio[1]) or len(self.crop_ratio) != 2:
            raise ValueError(f"crop_ratio must be two numbers 0 < lo <= hi, got {self.crop_ratio}")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {self.interpolation!r}")
        if "{}" not in self.template:
            raise ValueError(f"template must contain one '{{}}' slot for the class name, got {self.template!r}")
        if self.batch_size % self.accum_steps:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of accum_steps {self.accum_steps}")
        if self.ood and not self.eval_data:
            raise ValueError("ood folders need eval_data (--eval-data DIR: the ID test set the OOD scores are compared with)")
        if self.eval_convention not in ("neglabel", "interp", "openood"):
            raise ValueError(f"eval_convention must be 'neglabel', 'interp' or 'openood', got {self.eval_convention!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


# Fields that determine the trajectory of the parameters: a resumed run must keep them.
# (accum_steps may change: accumulation computes the same global-batch loss; the
# world size may change too, for the same reason.)
TRAJECTORY_KEYS = (
    "data", "model", "pretrained", "model_kwargs", "classnames", "template", "lam", "loss", "epochs", "max_steps",
    "batch_size", "lr", "weight_decay", "beta1", "beta2", "eps", "warmup", "no_decay_norm_bias", "grad_clip",
    "clamp_logit_scale", "image_size", "crop_scale", "crop_ratio", "interpolation", "precision", "seed",
)

# Fields that belong to one invocation: on resume they come from the command line (or
# their defaults), never from the checkpoint.
PER_INVOCATION_KEYS = ("resume", "stop_at_step", "device", "workers", "progress")


def _parse_json(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--model-kwargs must be a JSON object, got {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"--model-kwargs must be a JSON object, got {text!r}")
    return value


def _bool_flag(p: argparse.ArgumentParser, name: str, help: str) -> None:
    p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, help=help)


def build_parser(suppress: bool = False) -> argparse.ArgumentParser:
    """The CLI. With ``suppress=True`` unset flags are absent from the namespace (used to
    learn which flags were given explicitly)."""
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m fastood.train",
        description="CMA fine-tuning of an open_clip model on an ImageFolder ID dataset (shared/SPEC.md §3). "
                    "Runs under torchrun (DDP, the loss over the global batch).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data and model")
    g.add_argument("--data", help="ImageFolder of the ID training set: DIR/<class>/<image>")
    g.add_argument("--out", help="run directory (checkpoints, log.csv, model.safetensors)")
    g.add_argument("--model", default=d.model, help="open_clip architecture")
    g.add_argument("--pretrained", default=d.pretrained,
                   help="hub tag, local checkpoint file or open_clip directory; 'none' = random weights")
    g.add_argument("--model-kwargs", default="{}", help="JSON of open_clip model overrides (e.g. tiny test models)")
    g.add_argument("--classnames", help="class names for the prompts: a file (one per line, in sorted folder order) "
                                        "or 'imagenet1k'; default: the folder names with '_' as spaces")
    g.add_argument("--template", default=d.template, help="training prompt template")
    g = p.add_argument_group("objective and optimisation")
    g.add_argument("--lam", type=float, default=d.lam, help="CMA regulariser weight λ")
    g.add_argument("--loss", choices=LOSSES, default=d.loss, help="'cma' (fastood's fused loss) or 'clip' (open_clip ClipLoss)")
    g.add_argument("--loss-backend", default=d.loss_backend, choices=("auto", "triton", "torch"))
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--max-steps", type=int, help="total optimizer steps (overrides --epochs for the schedule)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="GLOBAL batch (over ranks and accumulation)")
    g.add_argument("--accum-steps", type=int, default=d.accum_steps,
                   help="gradient accumulation micro-batches per step (exact: the loss is still the global batch's)")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--weight-decay", "--wd", type=float, default=d.weight_decay)
    g.add_argument("--beta1", type=float, default=d.beta1)
    g.add_argument("--beta2", type=float, default=d.beta2)
    g.add_argument("--eps", type=float, default=d.eps)
    g.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps, then cosine to 0")
    _bool_flag(g, "no-decay-norm-bias", "no weight decay on gains, biases and logit_scale (open_clip's rule; "
                                        "the reference decays everything)")
    g.add_argument("--grad-clip", type=float, help="clip the global gradient norm to this value")
    g.add_argument("--clamp-logit-scale", type=float, metavar="MAX_SCALE",
                   help="clamp exp(logit_scale) to at most this after each step (the reference does not clamp)")
    g.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="fp32, or autocast bf16 / fp16 (fp16 with a grad scaler; GPU)")
    _bool_flag(g, "grad-checkpointing", "activation checkpointing in both towers (less memory, ~30%% more compute)")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("augmentation")
    g.add_argument("--image-size", type=int, help="crop size (default: the model's input size)")
    g.add_argument("--crop-scale", type=float, nargs=2, default=list(d.crop_scale), metavar=("LO", "HI"))
    g.add_argument("--crop-ratio", type=float, nargs=2, default=list(d.crop_ratio), metavar=("LO", "HI"))
    g.add_argument("--interpolation", choices=("bicubic", "bilinear"), default=d.interpolation)
    g = p.add_argument_group("run")
    g.add_argument("--device", help="default: cuda (cuda:LOCAL_RANK under torchrun) when available, else cpu")
    g.add_argument("--workers", type=int, default=d.workers, help="data-loader worker processes per rank")
    g.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every N steps (0: only at the end)")
    g.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    g.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                   help="continue a run: no value = the newest checkpoint of --out; or a checkpoint / run directory")
    g.add_argument("--stop-at-step", type=int, help="checkpoint and exit after this step (time-sliced jobs)")
    _bool_flag(g, "tensorboard", "also log to RUN_DIR/tensorboard (if tensorboard is installed)")
    _bool_flag(g, "progress", "progress bar")
    g = p.add_argument_group("evaluation (SPEC §3 test time: NegLabel, G = 1, bank re-encoded)")
    g.add_argument("--eval-data", help="ImageFolder of the ID test set (same class folders as --data)")
    g.add_argument("--ood", nargs="*", default=[], metavar="[NAME=]DIR", help="OOD image folders")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="evaluate every N steps (0: at the end only)")
    _bool_flag(g, "eval-at-start", "also evaluate the starting model (step 0)")
    g.add_argument("--eval-negatives", help="TSV of negative labels (word<TAB>n|a); default: mined with the "
                                            "starting model and kept in RUN_DIR/negatives.tsv")
    g.add_argument("--eval-corpus-stride", type=int, default=d.eval_corpus_stride,
                   help="mine from every N-th corpus word (quick runs)")
    g.add_argument("--eval-temperature", type=float, default=d.eval_temperature)
    g.add_argument("--eval-convention", choices=("neglabel", "interp", "openood"), default=d.eval_convention,
                   help="FPR95 convention (CMA reports 'interp')")
    g.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    if suppress:
        for action in p._actions:
            action.default = argparse.SUPPRESS
    return p


def config_from_args(argv: Sequence[str] | None = None) -> tuple[TrainConfig, set[str]]:
    """Parse the CLI into a :class:`TrainConfig` and the set of fields given explicitly."""
    ns = vars(build_parser().parse_args(argv))
    explicit = set(vars(build_parser(suppress=True).parse_args(argv)))
    ns["model_kwargs"] = _parse_json(ns["model_kwargs"])
    for flag in ("no_decay_norm_bias", "grad_checkpointing", "tensorboard", "eval_at_start"):
        ns[flag] = bool(ns[flag])
    ns["progress"] = True if ns["progress"] is None else ns["progress"]
    return TrainConfig(**ns), explicit
