"""Training checkpoints: atomic, verified, and loadable without unpickling code.

A checkpoint is a directory ``RUN_DIR/checkpoints/step-<8 digits>/``::

    model.safetensors   the open_clip state dict (what ``open_clip`` / ``fastood.models.load_clip``
                        loads), fp32 as trained
    state.pt            everything else, ``torch.save`` of plain dicts / lists / tensors / numbers
                        (loads with ``torch.load(weights_only=True)``): optimizer, LR schedule,
                        grad scaler, RNG states of every rank (torch, CUDA, numpy, python), the
                        data sampler's generator state and the data position, the run config
    manifest.json       format, version, step, and the size and sha256 of both files

**Atomicity.** Files are written into a hidden temporary directory next to the
final one, fsynced, then the directory is renamed into place (``os.replace``);
a reader never sees a half-written checkpoint, and a crash leaves at most a
``.step-*.tmp`` directory, which is ignored (and cleaned up on the next save).
Older checkpoints beyond ``keep`` are deleted only after the new one is in place.

**Verification.** :func:`load_checkpoint` checks the manifest, each file's size and
sha256, then parses both files; any failure raises :class:`CheckpointError` naming
the file and what is wrong, and touches nothing on disk.

:func:`write_final_model` writes ``RUN_DIR/model.safetensors`` and
``RUN_DIR/open_clip_config.json`` (atomically), so the run directory itself is an
open_clip ``local-dir:`` model and the file works as ``pretrained=``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastood._io import atomic_write, atomic_write_text, file_sha256, fsync_file, new_dir_mode, new_file_mode
from fastood.models import pickle_refusal_reason

__all__ = [
    "CheckpointError", "save_checkpoint", "load_checkpoint", "list_checkpoints", "resolve_checkpoint",
    "write_final_model", "atomic_write_text", "FORMAT", "VERSION",
]

FORMAT = "fastood.train.checkpoint"
VERSION = 1
MODEL_FILE, STATE_FILE, MANIFEST_FILE = "model.safetensors", "state.pt", "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt or does not belong to this run."""




def _plain_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU copies (safetensors refuses shared or non-contiguous storage)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Completed checkpoint directories of a run, oldest first."""
    ck = Path(run_dir) / "checkpoints"
    if not ck.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ck.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | os.PathLike, step: int, model_state: dict[str, Tensor], state: dict[str, Any],
                    *, keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically; keep the newest ``keep`` (≥ 1) checkpoints."""
    from safetensors.torch import save_file

    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    ck = Path(run_dir) / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    for stale in ck.glob(".step-*.tmp"):  # left by a crash during a save
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=ck))
    os.chmod(tmp, new_dir_mode())  # mkdtemp makes it 0700; the checkpoint follows the umask like every output
    try:
        save_file(_plain_state_dict(model_state), str(tmp / MODEL_FILE), metadata={"format": FORMAT, "step": str(step)})
        torch.save(state, tmp / STATE_FILE)
        files = {}
        for fname in (MODEL_FILE, STATE_FILE):
            os.chmod(tmp / fname, new_file_mode())  # safetensors' writer makes 0600: follow the umask instead
            fsync_file(tmp / fname)
            files[fname] = {"bytes": (tmp / fname).stat().st_size, "sha256": file_sha256(tmp / fname)}
        manifest = {"format": FORMAT, "version": VERSION, "step": step, "files": files}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        fsync_file(tmp / MANIFEST_FILE)
        _fsync_dir(tmp)
        final = ck / name
        if final.exists():  # the same step saved again (e.g. a periodic save then the final one)
            old = ck / f".{name}.old.tmp"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(ck)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory from: itself, a run directory or its ``checkpoints/`` folder
    (→ the newest checkpoint there)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if (path / MANIFEST_FILE).exists() or _STEP_DIR.match(path.name):
        return path
    run_dir = path.parent if path.name == "checkpoints" else path
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"no checkpoint in {str(run_dir)!r} (expected {str(run_dir / 'checkpoints')}/step-*/)")
    return found[-1]


def _others(path: Path) -> str:
    older = [p.name for p in list_checkpoints(path.parent.parent) if p != path]
    return f"; other checkpoints of this run: {', '.join(older)} (pass one to --resume)" if older else ""


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
                    ) -> tuple[dict[str, Tensor], dict[str, Any], Path]:
    """Verify and read a checkpoint: ``(model_state, state, checkpoint_dir)``.

    ``path`` is a checkpoint directory, or a run directory (→ its newest checkpoint).
    Raises :class:`CheckpointError` (naming the file) on a missing, truncated,
    modified or unreadable file; reads only (the run directory is left as it is).
    """
    from safetensors.torch import load_file

    ckpt = resolve_checkpoint(path)
    more = _others(ckpt)
    manifest_path = ckpt / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(ckpt)!r} is incomplete: {MANIFEST_FILE} is missing{more}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint manifest {str(manifest_path)!r} is corrupt: {exc}{more}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{str(manifest_path)!r} is not a fastood training checkpoint manifest{more}")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {str(ckpt)!r} has format version {manifest.get('version')}, "
                              f"this fastood reads version {VERSION}")
    files = manifest.get("files") or {}
    for fname in (MODEL_FILE, STATE_FILE):
        fpath = ckpt / fname
        want = files.get(fname)
        if not isinstance(want, dict):
            raise CheckpointError(f"checkpoint manifest {str(manifest_path)!r} does not list {fname}{more}")
        if not fpath.is_file():
            raise CheckpointError(f"checkpoint file {str(fpath)!r} is missing{more}")
        size = fpath.stat().st_size
        if size != want.get("bytes"):
            raise CheckpointError(f"checkpoint file {str(fpath)!r} is truncated or overwritten: {size} bytes, "
                                  f"the manifest says {want.get('bytes')}{more}")
        if file_sha256(fpath) != want.get("sha256"):
            raise CheckpointError(f"checkpoint file {str(fpath)!r} is corrupt: its sha256 does not match the "
                                  f"manifest{more}")
    try:
        model_state = load_file(str(ckpt / MODEL_FILE), device=str(map_location))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own types
        raise CheckpointError(f"checkpoint file {str(ckpt / MODEL_FILE)!r} is not a readable safetensors file: {exc}{more}") from None
    try:
        state = torch.load(ckpt / STATE_FILE, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # code in the pickle: refused without torch's "weights_only=False" advice
        raise CheckpointError(f"checkpoint file {str(ckpt / STATE_FILE)!r} cannot be read safely: "
                              f"{pickle_refusal_reason(exc)}{more}") from None
    except Exception as exc:  # noqa: BLE001 - truncated / foreign files
        raise CheckpointError(f"checkpoint file {str(ckpt / STATE_FILE)!r} cannot be read safely: {exc}{more}") from None
    if not isinstance(state, dict) or state.get("step") != manifest.get("step"):
        raise CheckpointError(f"checkpoint file {str(ckpt / STATE_FILE)!r} does not match its manifest (step){more}")
    return model_state, state, ckpt


def write_final_model(run_dir: str | os.PathLike, model_state: dict[str, Tensor], open_clip_config: dict,
                      metadata: dict[str, str] | None = None) -> Path:
    """``RUN_DIR/model.safetensors`` (open_clip state dict) + ``RUN_DIR/open_clip_config.json``."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / MODEL_FILE
    atomic_write(final, lambda tmp: save_file(_plain_state_dict(model_state), tmp,
                                              metadata={"format": "open_clip", **(metadata or {})}))
    atomic_write_text(run_dir / "open_clip_config.json", json.dumps(open_clip_config, indent=2))
    return final
