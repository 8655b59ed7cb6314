"""The CMA trainer (fastood.train) on a tiny random open_clip model and a synthetic ImageFolder.

Truths used: hand-computed schedule values; the sampler's definition (the union of
the ranks' shares is the single-process batch); an uninterrupted run (kill-and-resume
must reproduce its parameters bitwise on the CPU; a 2-rank torchrun run its losses to
fp32 rounding); the full-batch gradient (exact accumulation must match it); an
independent recomputation of the evaluation (open_clip encoders, float64 NegLabel
reference, sklearn AUROC); open_clip's own loader for the final model file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastood.train import CheckpointError, EmptyDatasetError, Trainer, TrainConfig, train
from fastood.train.__main__ import main as cli_main
from fastood.train.data import (
    GlobalBatchSampler, ImageFolderDataset, TrainTransform, collate_skip_failed, random_resized_crop_params,
)
from fastood.train.evaluate import read_negatives, write_negatives
from fastood.train.schedule import WarmupCosine

REPO = Path(__file__).resolve().parent.parent
MODEL_KWARGS = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLASSES = ("golden_retriever", "tabby_cat")


def _write_images(folder: Path, n: int, color, rng, size=(32, 32)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = size if i % 2 == 0 else (size[0] + 8, size[1] + 4)  # mixed sizes and aspect ratios
        a = np.clip(np.asarray(color) + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(folder / f"{i:02d}.png")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for cls, color in zip(CLASSES, ((200, 150, 50), (60, 80, 200))):
        _write_images(root / "train" / cls, 6, color, rng)
        _write_images(root / "val" / cls, 3, color, rng)
        _write_images(root / "broken" / cls, 6, color, rng)
    (root / "broken" / CLASSES[1] / "00.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # 12 files, one unreadable
    ood = root / "ood" / "nested"
    ood.mkdir(parents=True)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)).save(ood / f"{i}.jpg")
    return {k: root / k for k in ("train", "val", "broken", "ood")}


def make_cfg(folders: dict[str, Path], out: Path, **over) -> TrainConfig:
    base = dict(data=str(folders["train"]), out=str(out), model="ViT-B-32", pretrained="none", model_kwargs=MODEL_KWARGS,
                batch_size=4, epochs=2, lr=1e-3, warmup=1, workers=0, device="cpu", save_every=0, progress=False)
    base.update(over)
    return TrainConfig(**base)


def params(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def log_rows(run_dir: Path) -> list[dict]:
    import csv

    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory):
    """6 uninterrupted steps (2 epochs × 3), the trajectory other runs must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "run"
    result = train(make_cfg(data, out))
    return out, result


# --------------------------------------------------------------------------- pieces
def test_schedule_by_hand():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    sched = WarmupCosine(opt, base_lr=2.0, warmup=4, total=10)
    want = {0: 0.5, 1: 1.0, 2: 1.5, 3: 2.0, 4: 2.0, 7: 1.0, 10: 0.0}  # cos: ½(1 + cos(π·(t−4)/6))·2
    for step, lr in want.items():
        assert sched.apply(step) == pytest.approx(lr, abs=1e-12)
        assert opt.param_groups[0]["lr"] == pytest.approx(lr, abs=1e-12)
    assert WarmupCosine(opt, 1.0, 0, 5).lr_at(0) == 1.0  # no warm-up


def test_random_resized_crop_params_and_transform():
    gen = torch.Generator().manual_seed(0)
    for W, H in ((40, 32), (32, 32), (300, 20)):
        for _ in range(300):
            top, left, h, w = random_resized_crop_params(W, H, (0.9, 1.0), (3 / 4, 4 / 3), gen)
            assert 0 <= top and 0 <= left and top + h <= H and left + w <= W and h > 0 and w > 0
            if (W, H) != (300, 20):  # a 15:1 image never fits the ratio: centred fallback crop
                area = h * w / (W * H)
                assert 0.9 - 2 * (h + w) / (W * H) <= area <= 1.0  # rounding of h and w
                assert 3 / 4 - 1.5 / min(h, w) <= w / h <= 4 / 3 + 1.5 / min(h, w)
    # the 15:1 image: ratio clamped to 4/3, full height, centred
    assert random_resized_crop_params(300, 20, (0.9, 1.0), (3 / 4, 4 / 3), gen) == (0, (300 - 27) // 2, 20, 27)
    t = TrainTransform(24)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 36, 3)).astype(np.uint8))
    a, b, c = t(img, 5), t(img, 5), t(img, 6)
    assert a.shape == (3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    # normalised with CLIP's mean/std: a constant grey image maps to (v − mean)/std exactly
    grey = Image.new("RGB", (30, 30), (128, 128, 128))
    g = t(grey, 0)
    want = (128 / 255 - torch.tensor(t.mean)) / torch.tensor(t.std)
    torch.testing.assert_close(g.mean(dim=(1, 2)), want.float(), atol=1e-5, rtol=0)


def test_sampler_shares_do_not_depend_on_world_size():
    single = GlobalBatchSampler(23, 6, world=1, rank=0, seed=3)
    ranks = [GlobalBatchSampler(23, 6, world=3, rank=r, seed=3) for r in range(3)]
    assert single.steps_per_epoch == 3
    for epoch in range(3):
        single.set_epoch(epoch)
        for s in ranks:
            s.set_epoch(epoch)
        per_rank = [list(s.batches()) for s in ranks]
        for b, batch in enumerate(single.batches()):
            assert len(batch) == 6
            assert batch == [item for r in range(3) for item in per_rank[r][b]]
        if epoch == 1:
            state = single.state_dict()
    # restoring the epoch-1 state redraws epoch 1 and continues identically
    again = GlobalBatchSampler(23, 6, seed=3)
    again.load_state_dict(state)
    single2 = GlobalBatchSampler(23, 6, seed=3)
    single2.set_epoch(1)
    assert list(again.batches(1)) == list(single2.batches(1))
    again.set_epoch(2)
    single2.set_epoch(2)
    assert list(again.batches()) == list(single2.batches())
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalBatchSampler(3, 4)
    with pytest.raises(ValueError, match="multiple of the world size"):
        GlobalBatchSampler(30, 5, world=2)


def test_empty_and_missing_data(tmp_path, data, capsys):
    (tmp_path / "empty" / "cls_a").mkdir(parents=True)
    (tmp_path / "empty" / "cls_a" / "notes.txt").write_text("no images here")
    with pytest.raises(EmptyDatasetError, match="has 1 class folder\\(s\\) but no images"):
        ImageFolderDataset(tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(EmptyDatasetError, match="no class sub-folders \\(1 images lie directly in it"):
        ImageFolderDataset(tmp_path / "flat")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    # through the CLI: exit status 2 and the message, nothing trained
    out = tmp_path / "run"
    argv = ["--data", str(tmp_path / "empty"), "--out", str(out), "--model", "ViT-B-32", "--pretrained", "none",
            "--model-kwargs", json.dumps(MODEL_KWARGS), "--device", "cpu", "--no-progress"]
    assert cli_main(argv) == 2
    assert "no images" in capsys.readouterr().err
    assert not (out / "checkpoints").exists()


def test_bad_arguments(tmp_path, data, capsys):
    base = ["--data", str(data["train"]), "--out", str(tmp_path / "r"), "--model", "ViT-B-32", "--device", "cpu",
            "--pretrained", "none", "--no-progress", "--workers", "0"]
    assert cli_main(base + ["--model-kwargs", "{not json"]) == 2
    assert "--model-kwargs must be a JSON object" in capsys.readouterr().err
    with pytest.raises(ValueError, match="must be a multiple of accum_steps"):
        make_cfg(data, tmp_path / "r", batch_size=4, accum_steps=3).validate()
    with pytest.raises(ValueError, match="lam must be in"):
        make_cfg(data, tmp_path / "r", lam=2.0).validate()
    with pytest.raises(ValueError, match="ood folders need eval_data"):
        make_cfg(data, tmp_path / "r", ood=[str(data["ood"])]).validate()
    with pytest.raises(ValueError, match="fewer than one global batch"):
        Trainer(make_cfg(data, tmp_path / "r", batch_size=16))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16' needs a CUDA device"):
            Trainer(make_cfg(data, tmp_path / "r", precision="fp16"))


# ------------------------------------------------------------------------ training
def _dataset_loss(trainer: Trainer, dataset: ImageFolderDataset) -> float:
    """CMA loss of the whole training set as one batch, eval preprocessing (no randomness)."""
    ds = ImageFolderDataset(dataset.root, trainer.bundle.preprocess)
    batch = collate_skip_failed([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        img, txt, scale = trainer.module(batch.pixels, trainer.tokens[batch.labels])
        return float(trainer.loss_fn(img, txt, scale))


def test_runs_logs_learns_and_writes_an_open_clip_model(data, tmp_path, capfd):
    from fastood.models import load_clip

    cfg = make_cfg(data, tmp_path / "run", epochs=4)
    trainer = Trainer(cfg)
    before = _dataset_loss(trainer, trainer.dataset)
    result = trainer.run()
    after = _dataset_loss(trainer, trainer.dataset)
    assert "starts from RANDOM weights" in capfd.readouterr().err
    assert result.finished and result.step == result.total_steps == 12
    assert after < before - 0.05, (before, after)
    rows = log_rows(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert [int(r["epoch"]) for r in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for r in rows:
        assert math.isfinite(float(r["loss"])) and float(r["images_per_s"]) > 0 and int(r["images"]) == 4
        assert float(r["logit_scale"]) == pytest.approx(1 / 0.07, rel=0.05)  # init 1/0.07, moves slowly
    assert float(rows[0]["lr"]) == pytest.approx(1e-3) and float(rows[-1]["lr"]) < 1e-4  # warm-up 1, cosine
    # the final model: what load_clip / open_clip accept, equal to the trained weights
    trained = {k: v.detach().clone() for k, v in trainer.clip.state_dict().items()}
    by_file = load_clip("ViT-B-32", pretrained=tmp_path / "run" / "model.safetensors", device="cpu", **MODEL_KWARGS)
    by_dir = load_clip("ViT-B-32", pretrained=tmp_path / "run", device="cpu")  # open_clip local-dir: no kwargs needed
    for bundle in (by_file, by_dir):
        sd = bundle.model.state_dict()
        assert sd.keys() == trained.keys()
        assert all(torch.equal(sd[k], trained[k]) for k in trained)
    assert by_dir.preprocess is not None


def test_stop_and_resume_is_exact(data, tmp_path, reference_run):
    ref_dir, ref = reference_run
    out = tmp_path / "run"
    first = train(make_cfg(data, out, save_every=2, stop_at_step=3))
    assert not first.finished and first.step == 3
    assert not (out / "model.safetensors").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    second = train(make_cfg(data, out, save_every=2, resume=""))
    assert second.finished and second.step == 6
    a, b = params(ref_dir / "model.safetensors"), params(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    cols = ("step", "epoch", "loss", "lr", "logit_scale", "images", "skipped_images")
    assert [[r[c] for c in cols] for r in log_rows(out)] == [[r[c] for c in cols] for r in log_rows(ref_dir)]
    # AdamW's moments too
    sa = torch.load(ref.checkpoint / "state.pt", weights_only=True)["optimizer"]["state"]
    sb = torch.load(second.checkpoint / "state.pt", weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])


def test_resume_refuses_a_different_setup_and_an_occupied_run_dir(data, tmp_path, capfd):
    out = tmp_path / "run"
    first = train(make_cfg(data, out, stop_at_step=1, precision="bf16", tensorboard=True))  # CPU autocast path
    assert math.isfinite(first.last_loss) and len(log_rows(out)) == 1
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert "tensorboard is not installed" in capfd.readouterr().err
    else:
        assert any((out / "tensorboard").iterdir())
    with pytest.raises(ValueError, match="lr: checkpoint 0.001 vs given 0.01"):
        Trainer(make_cfg(data, out, lr=1e-2, precision="bf16", resume=""), explicit={"lr", "out", "resume"})
    with pytest.raises(ValueError, match="precision: checkpoint 'bf16' vs given 'fp32'"):
        Trainer(make_cfg(data, out, resume=""))
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(make_cfg(data, out, precision="bf16"))
    with pytest.raises(CheckpointError, match="nothing_here' does not exist"):
        Trainer(make_cfg(data, tmp_path / "nothing_here", resume=""))
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in .*empty_run"):
        Trainer(make_cfg(data, tmp_path / "empty_run", resume=""))


def test_corrupt_checkpoint_is_refused_and_the_run_dir_untouched(data, tmp_path, capsys):
    out = tmp_path / "run"
    train(make_cfg(data, out, save_every=1, stop_at_step=2))
    ck = out / "checkpoints" / "step-00000002"

    def damage_model():
        raw = bytearray((ck / "model.safetensors").read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (ck / "model.safetensors").write_bytes(bytes(raw))

    def truncate_state():
        raw = (ck / "state.pt").read_bytes()
        (ck / "state.pt").write_bytes(raw[: len(raw) // 3])

    def drop_manifest():
        (ck / "manifest.json").unlink()

    cases = [(damage_model, "model.safetensors' is corrupt: its sha256"),
             (truncate_state, "state.pt' is truncated or overwritten"),
             (drop_manifest, "is incomplete: manifest.json is missing")]
    pristine = {f: (ck / f).read_bytes() for f in ("model.safetensors", "state.pt", "manifest.json")}
    for damage, message in cases:
        damage()
        before = tree_digest(out)
        with pytest.raises(CheckpointError, match=message) as info:
            Trainer(make_cfg(data, out, save_every=1, resume=""))
        assert "step-00000001 (pass one to --resume)" in str(info.value)
        assert tree_digest(out) == before
        argv = ["--out", str(out), "--resume", "--no-progress", "--workers", "0", "--device", "cpu"]
        assert cli_main(argv) == 2 and message.split("'")[0] in capsys.readouterr().err
        assert tree_digest(out) == before
        for f, raw in pristine.items():
            (ck / f).write_bytes(raw)
    # a state file that is intact per its manifest but pickles a non-tensor object (code on load):
    # refused by torch.load(weights_only=True), not executed
    import argparse

    torch.save({"step": 2, "payload": argparse.Namespace(x=1)}, ck / "state.pt")
    manifest = json.loads((ck / "manifest.json").read_text())
    raw = (ck / "state.pt").read_bytes()
    manifest["files"]["state.pt"] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    (ck / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="state.pt' cannot be read safely"):
        Trainer(make_cfg(data, out, save_every=1, resume=""))


def test_unreadable_images_are_skipped_and_counted(data, tmp_path, capfd):
    out = tmp_path / "run"
    result = train(make_cfg(data, out, data=str(data["broken"]), epochs=2, workers=2))
    assert result.finished and result.skipped_images == 2  # 12 files, 3 steps/epoch: every file drawn once per epoch
    err = capfd.readouterr().err
    assert err.count(f"skipping unreadable image {data['broken'] / CLASSES[1] / '00.png'}") == 2
    rows = log_rows(out)
    assert int(rows[-1]["skipped_images"]) == 2
    assert sorted(int(r["images"]) for r in rows) == [3, 3, 4, 4, 4, 4]


@pytest.mark.parametrize("loss", ["cma", "clip"])
def test_gradient_accumulation_is_exact(data, tmp_path, loss):
    """accum_steps = 2 computes the gradient of the same global-batch loss; so does gradient
    checkpointing; and the fused loss with λ = 0 is open_clip's ClipLoss inside the trainer."""
    over = dict(loss=loss, lam=0.0 if loss == "clip" else 0.3)
    full = Trainer(make_cfg(data, tmp_path / "a", **over))
    acc = Trainer(make_cfg(data, tmp_path / "b", accum_steps=2, **over))
    full.sampler.set_epoch(0)
    batch = collate_skip_failed([full.dataset[k] for k in next(full.sampler.batches())])
    if loss == "clip":  # the fused loss at λ = 0 is the same objective
        extra = [Trainer(make_cfg(data, tmp_path / "c", lam=0.0))]
    else:  # activation checkpointing changes memory, not the gradient
        extra = [Trainer(make_cfg(data, tmp_path / "c", grad_checkpointing=True, **over))]
    runs = [full, acc] + extra
    losses = [float(t.forward_backward(batch.pixels, batch.labels)) for t in runs]
    grads = [{n: p.grad.clone() for n, p in t.clip.named_parameters()} for t in runs]
    for other, lval in zip(grads[1:], losses[1:]):
        assert lval == pytest.approx(losses[0], rel=1e-6)
        for name, g in grads[0].items():  # fp32 rounding, relative to each gradient's scale
            err = (other[name] - g).abs().max().item()
            assert err <= 1e-5 * g.abs().max().item() + 1e-10, (name, err, g.abs().max().item())
    assert grads[0]["logit_scale"].abs().item() > 0
    # a naive accumulation (mean of the two micro-batch losses) is a different gradient
    naive = Trainer(make_cfg(data, tmp_path / "d", **over))
    for half in (slice(0, 2), slice(2, 4)):
        img, txt, s = naive.module(batch.pixels[half], naive.tokens[batch.labels[half]])
        (naive.loss_fn(img, txt, s) / 2).backward()
    g_naive = naive.clip.visual.conv1.weight.grad
    assert not torch.allclose(g_naive, grads[0]["visual.conv1.weight"], rtol=1e-2, atol=1e-6)


def test_evaluation_matches_an_independent_recomputation(data, tmp_path):
    from sklearn.metrics import roc_auc_score

    from fastood import reference as R
    from fastood.labels import load_corpus
    from fastood.models import load_clip

    out = tmp_path / "run"
    cfg = make_cfg(data, out, epochs=1, eval_data=str(data["val"]), ood=[f"noise={data['ood']}"],
                   eval_corpus_stride=150, eval_temperature=0.05, eval_at_start=True)
    result = train(cfg)
    assert [e["step"] for e in result.evaluations] == [0, 3]
    lines = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 3]
    got = lines[-1]
    negatives = read_negatives(out / "negatives.tsv")
    corpus = load_corpus("neglabel")
    pos_of = dict(zip(corpus.words, corpus.pos.tolist()))
    assert all(pos_of[w] == p for w, p in negatives) and {p for _, p in negatives} == {"n", "a"}
    assert got["num_negatives"] == len(negatives)

    clip = load_clip("ViT-B-32", pretrained=out / "model.safetensors", device="cpu", **MODEL_KWARGS)
    prompts = [f"The nice {c.replace('_', ' ')}" for c in CLASSES]
    prompts += [("This is a {} photo" if p == "a" else "the nice {}").format(w) for w, p in negatives]
    with torch.no_grad():
        bank = clip.model.encode_text(clip.tokenizer(prompts), normalize=True).double()

        def feats(paths):
            return clip.model.encode_image(torch.stack([clip.preprocess(Image.open(p).convert("RGB")) for p in paths]))

        id_paths = sorted((data["val"]).rglob("*.png"))
        id_labels = torch.tensor([CLASSES.index(p.parent.name) for p in id_paths])
        x_id, x_ood = feats(id_paths).double(), feats(sorted(data["ood"].rglob("*.jpg"))).double()
    s_id = R.neglabel_score(x_id, bank, 2, groups=1, temperature=0.05)
    s_ood = R.neglabel_score(x_ood, bank, 2, groups=1, temperature=0.05)
    acc = float(((torch.nn.functional.normalize(x_id, dim=1) @ bank[:2].T).argmax(1) == id_labels).double().mean())
    assert got["id_accuracy"] == pytest.approx(acc)
    auroc = roc_auc_score(np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))], np.r_[s_id.numpy(), s_ood.numpy()])
    assert got["ood"]["noise"]["auroc"] == pytest.approx(auroc, abs=1e-6)
    assert got["ood"]["noise"]["convention"] == "interp" and got["num_id"] == 6


def test_negatives_file_round_trip(tmp_path):
    items = [("aardvark", "n"), ("blue", "a"), ("new york", "n")]
    write_negatives(tmp_path / "neg.tsv", items)
    assert read_negatives(tmp_path / "neg.tsv") == items
    (tmp_path / "bad.tsv").write_text("word\tx\n")
    with pytest.raises(ValueError, match="line 1: part of speech must be 'n' or 'a'"):
        read_negatives(tmp_path / "bad.tsv")


# ------------------------------------------------------------------ real processes
def _cli_args(data: dict[str, Path], out: Path, **over) -> list[str]:
    args = {"--data": str(data["train"]), "--out": str(out), "--model": "ViT-B-32", "--pretrained": "none",
            "--model-kwargs": json.dumps(MODEL_KWARGS), "--batch-size": "4", "--epochs": "2", "--lr": "1e-3",
            "--warmup": "1", "--workers": "0", "--device": "cpu", "--save-every": "0"}
    args.update({k: str(v) for k, v in over.items()})
    return [x for kv in args.items() for x in kv] + ["--no-progress"]


def _env(threads: int | None = 1) -> dict[str, str]:
    """Subprocess environment; ``threads=None`` keeps this process's thread count (bitwise
    comparisons with in-process runs need the same BLAS reduction order)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    else:
        env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    return env


def _checkpoint_steps(out: Path) -> list[int]:
    ck = out / "checkpoints"
    return sorted(int(p.name.split("-")[1]) for p in ck.iterdir() if p.name.startswith("step-")) if ck.is_dir() else []


def _interrupt(cmd: list[str], out: Path, after_step: int, sig: int) -> subprocess.CompletedProcess:
    """Start ``cmd``, wait until checkpoint ``after_step`` exists, send ``sig``, collect the process."""
    proc = subprocess.Popen(cmd, env=_env(threads=None), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not any(s >= after_step for s in _checkpoint_steps(out)):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no checkpoint within 90 s"
            time.sleep(0.01)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, "", err)


def test_killed_process_resumes_to_the_same_parameters(data, tmp_path):
    """Real processes: SIGTERM (checkpoint after the current step, exit 0), then a resumed
    process SIGKILLed (a crash: everything since its last checkpoint is lost), then a
    resumed process to the end — the parameters equal the uninterrupted run's, bitwise."""
    epochs, every = 10, 3  # 30 steps, a checkpoint every 3
    ref = train(make_cfg(data, tmp_path / "ref", epochs=epochs))
    out = tmp_path / "run"
    first = [sys.executable, "-m", "fastood.train", *_cli_args(data, out, **{"--epochs": epochs, "--save-every": every,
                                                                           "--keep-checkpoints": 100})]
    resume = [sys.executable, "-m", "fastood.train", "--out", str(out), "--resume", "--no-progress", "--workers", "0",
              "--device", "cpu"]
    p = _interrupt(first, out, every, signal.SIGTERM)
    assert p.returncode == 0 and "stopped at step" in p.stderr, p.stderr
    stopped = _checkpoint_steps(out)[-1]
    p = _interrupt(resume, out, stopped + every, signal.SIGKILL)
    assert p.returncode == -signal.SIGKILL
    crashed = _checkpoint_steps(out)[-1]
    assert stopped < crashed < ref.total_steps, "a run finished before it was stopped: nothing was tested"
    assert not (out / "model.safetensors").exists()
    p = subprocess.run(resume, env=_env(threads=None), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    a, b = params(ref.run_dir / "model.safetensors"), params(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in log_rows(out)] == [r["loss"] for r in log_rows(ref.run_dir)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(sys.platform == "win32", reason="gloo over loopback")
def test_torchrun_two_ranks_follows_the_single_process_run(data, tmp_path, reference_run):
    """2 CPU ranks (gloo, loopback) on the same global batch of 4 (2 per rank): the logged
    global-batch losses equal the single-process run's to fp32 rounding, the run
    checkpoints and writes its model, and the parameters agree up to AdamW's
    amplification of rounding (each step moves a parameter by at most ~lr)."""
    ref_dir, ref = reference_run
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "fastood.train", *_cli_args(data, out, **{"--save-every": 3})]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "global batch 4 = 2 rank(s) × 2 × 1 accumulation" in proc.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]
    state = torch.load(out / "checkpoints" / "step-00000006" / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    mine, theirs = log_rows(out), log_rows(ref_dir)
    assert len(mine) == len(theirs) == 6
    for r, s in zip(mine, theirs):
        assert float(r["loss"]) == pytest.approx(float(s["loss"]), rel=1e-5)
        assert r["lr"] == s["lr"]
    a, b = params(ref_dir / "model.safetensors"), params(out / "model.safetensors")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 2 * 1e-3 * ref.total_steps
    assert_params_agree(a, b)


def assert_params_agree(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Every tensor (not the parameter count overall: the token embedding alone is 90 % of
    the tiny model) has ≥ 99 % of its entries equal to rtol 1e-5 / atol 1e-6, and both
    towers' weight matrices are checked by name.

    Left out: the key third of each attention ``in_proj_bias``. Softmax is invariant to
    the key bias, so its exact gradient is 0 and AdamW turns the rounding noise of a
    different summation order into ±lr steps there (measured: exactly that third differs).
    """
    assert a.keys() == b.keys()
    worst: dict[str, float] = {}
    for k in a:
        x, y = a[k], b[k]
        if k.endswith("attn.in_proj_bias"):
            width = x.shape[0] // 3
            x, y = torch.cat([x[:width], x[2 * width:]]), torch.cat([y[:width], y[2 * width:]])
        worst[k] = torch.isclose(x, y, rtol=1e-5, atol=1e-6).double().mean().item()
    bad = {k: f"{v:.1%}" for k, v in worst.items() if v < 0.99}
    assert not bad, f"tensors whose entries disagree: {bad}"
    towers = ["visual.conv1.weight", "visual.proj", "text_projection", "token_embedding.weight",
              "visual.transformer.resblocks.0.attn.in_proj_weight", "visual.transformer.resblocks.0.mlp.c_fc.weight",
              "transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.0.mlp.c_fc.weight"]
    assert all(k in worst for k in towers), sorted(set(towers) - set(worst))


def test_param_agreement_check_is_per_tensor():
    """The check above fails when one tower weight is wrong although ≥ 99 % of all the
    parameters agree (what the previous, global check accepted), and ignores the key bias."""
    g = torch.Generator().manual_seed(0)
    shapes = {"token_embedding.weight": (49408, 32), "visual.conv1.weight": (64, 3, 16, 16), "visual.proj": (64, 32),
              "text_projection": (32, 32), "visual.transformer.resblocks.0.attn.in_proj_weight": (192, 64),
              "visual.transformer.resblocks.0.attn.in_proj_bias": (192,),
              "visual.transformer.resblocks.0.mlp.c_fc.weight": (256, 64),
              "transformer.resblocks.0.attn.in_proj_weight": (96, 32), "transformer.resblocks.0.mlp.c_fc.weight": (128, 32)}
    a = {k: torch.randn(*v, generator=g) for k, v in shapes.items()}
    b = {k: v.clone() for k, v in a.items()}
    b["visual.transformer.resblocks.0.attn.in_proj_bias"][64:128] += 1e-3  # the key bias
    assert_params_agree(a, b)
    b["visual.transformer.resblocks.0.attn.in_proj_weight"] += 1e-3  # one whole tower matrix wrong
    overall = sum(int(torch.isclose(a[k], b[k], rtol=1e-5, atol=1e-6).sum()) for k in a)
    assert overall >= 0.99 * sum(v.numel() for v in a.values())  # the old global check passes
    with pytest.raises(AssertionError, match="visual.transformer.resblocks.0.attn.in_proj_weight"):
        assert_params_agree(a, b)


def test_fp16_grad_scaler_path_on_cpu(data, tmp_path):
    """The trainer's fp16 path (autocast fp16 + GradScaler: scaled backward, unscale before
    clipping, scaler.step / update), driven on the CPU. The trainer accepts fp16 only on
    CUDA (where it pays), so the test switches on CPU fp16 autocast and a CPU GradScaler
    after construction; every other line is the trainer's own.

    Truths: the same trainer without a scaler (scaling by 2^12 is exact; the two differ
    only where unscaled fp16 gradients underflow: the first step is bitwise the same loss,
    after two steps every tensor agrees to ≤ 7 % of how far it moved); a gradient forced
    to inf must skip the step (every parameter unchanged) and halve the scale.
    """
    try:  # where torch has no fp16 autocast on the CPU, the scaler logic still runs (fp32 math)
        with torch.autocast("cpu", dtype=torch.float16):
            cpu_fp16 = torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.float16
    except RuntimeError:
        cpu_fp16 = False

    def fp16_trainer(name: str, scaled: bool) -> Trainer:
        t = Trainer(make_cfg(data, tmp_path / name, grad_clip=0.05))
        t.amp_dtype = torch.float16 if cpu_fp16 else None
        t.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1000, enabled=scaled)
        return t

    scaled, plain = fp16_trainer("scaled", True), fp16_trainer("plain", False)
    scaled.sampler.set_epoch(0)
    batches = [collate_skip_failed([scaled.dataset[k] for k in ks]) for ks in scaled.sampler.batches()]

    def snapshot(t: Trainer) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in t.clip.named_parameters()}

    start = snapshot(scaled)
    for batch in batches[:2]:
        rows = [t.train_step(batch) for t in (scaled, plain)]
        assert rows[0]["loss"] is not None and math.isfinite(rows[0]["loss"])
        assert rows[0]["loss"] == pytest.approx(rows[1]["loss"], rel=1e-4)
    a, b = snapshot(scaled), snapshot(plain)
    for name in a:  # per tensor; the key bias (exact gradient 0, see assert_params_agree) excepted
        if not name.endswith("attn.in_proj_bias"):
            err, moved = (a[name] - b[name]).abs().max().item(), (a[name] - start[name]).abs().max().item()
            assert err <= 0.15 * moved, (name, err, moved)  # measured ≤ 7 %: fp16 rounding, no underflow
    assert (a["visual.conv1.weight"] - start["visual.conv1.weight"]).abs().max() > 1e-4  # it trained
    assert scaled.scaler.get_scale() == 2.0**12  # finite steps: no back-off

    # a non-finite gradient: the step is skipped on every parameter and the scale halves
    hook = scaled.clip.visual.conv1.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    try:
        before = snapshot(scaled)
        row = scaled.train_step(batches[2])
    finally:
        hook.remove()
    after = snapshot(scaled)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert scaled.scaler.get_scale() == 2.0**11
    assert row["loss"] is not None  # the loss itself was finite
    # the scaler's state is part of the checkpoint
    assert scaled.scaler.state_dict()["scale"] == 2.0**11
