"""fastood.nn.CMALoss inside the real open_clip_train.main (fastood.integrations.open_clip_train).

The trainer runs in a subprocess (``python -m fastood.integrations.open_clip_train``) for 3 epochs
of one 8-image step on a tiny random model (open_clip's ``local-dir:`` config) and a generated CSV
dataset. Truth: the same model rebuilt here (open_clip_train's seeding, then its checkpoint after
each epoch), the same batch (solid-colour images, so the random crop cannot change a pixel; the
pair-mode loss does not depend on the order of the pairs), and ``fastood.losses.cma_loss``
recomputed in float64; the logged value must match it to the 5 significant digits the trainer
prints, and must differ from open_clip's own ClipLoss (λ = 0.5 makes the two far apart).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import open_clip_train.main  # noqa: E402,F401  (ships with open_clip_torch; pandas + braceexpand from the dev extra)
import open_clip  # noqa: E402
from PIL import Image  # noqa: E402

from fastood.losses import cma_loss  # noqa: E402
from tests.tiny import TINY_KWARGS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LAM = 0.5
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
RGB = [(220, 20, 20), (20, 200, 40), (30, 40, 210), (230, 220, 30), (140, 30, 150), (250, 140, 10),
       (250, 250, 250), (5, 5, 5)]


def _dataset(tmp: Path) -> tuple[Path, list[Path], list[str]]:
    paths, captions = [], []
    for name, rgb in zip(COLOURS, RGB):
        p = tmp / "images" / f"{name}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), rgb).save(p)
        paths.append(p)
        captions.append(f"a photo of something {name}")
    csv = tmp / "train.csv"
    csv.write_text("filepath\ttitle\n" + "".join(f"{p}\t{c}\n" for p, c in zip(paths, captions)))
    return csv, paths, captions


def _model_dir(tmp: Path) -> Path:
    d = tmp / "tiny_model"
    d.mkdir()
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_KWARGS, "preprocess_cfg": {}}))
    return d


def test_open_clip_train_logs_the_cma_loss(tmp_path):
    csv, paths, captions = _dataset(tmp_path)
    model_name = f"local-dir:{_model_dir(tmp_path)}"
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "fastood.integrations.open_clip_train", "--cma-lam", str(LAM), "--cma-backend",
           "torch", "--train-data", str(csv), "--dataset-type", "csv", "--model", model_name, "--batch-size", "8",
           "--epochs", "3", "--lr", "1e-3", "--warmup", "1", "--workers", "0", "--precision", "fp32", "--logs",
           str(logs), "--name", "run", "--report-to", "", "--save-frequency", "1", "--log-every-n-steps", "1",
           "--seed", "0"]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    log = (logs / "run" / "out.log").read_text()
    logged = {int(m.group(1)): float(m.group(2)) for m in
              re.finditer(r"Train Epoch: (\d+) \[.*?Contrastive_loss: ([0-9.e+-]+) ", log)}
    assert sorted(logged) == [0, 1, 2], log[-2000:]

    # rebuild the model exactly as open_clip_train.main does (random_seed(seed, 0) before creating it)
    from open_clip_train.main import random_seed

    random_seed(0, 0)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, output_dict=True)
    tokenizer = open_clip.get_tokenizer(model_name)
    images = torch.stack([preprocess(Image.open(p)) for p in paths])
    texts = tokenizer(captions)
    states = [None] + [torch.load(logs / "run" / "checkpoints" / f"epoch_{e}.pt", map_location="cpu",
                                  weights_only=False)["state_dict"] for e in (1, 2)]
    for epoch, state in enumerate(states):  # the step of epoch e ran on the weights saved after epoch e-1
        if state is not None:
            model.load_state_dict(state)
        with torch.no_grad():
            out = model(images, texts)
        x, t, s = (out["image_features"].double(), out["text_features"].double(),
                   out["logit_scale"].double())
        want = float(cma_loss(x, t, s, lam=LAM, backend="torch"))
        clip_loss = float(open_clip.ClipLoss()(x, t, s))
        assert logged[epoch] == pytest.approx(want, rel=1e-4), (epoch, logged[epoch], want)
        assert abs(logged[epoch] - clip_loss) > 100 * 1e-4 * abs(want)  # it really is not ClipLoss


def test_factory_refuses_other_losses_and_validates():
    from argparse import Namespace

    from fastood.integrations.open_clip_train import cma_loss_factory
    from fastood.nn import CMALoss

    make = cma_loss_factory(lam=0.25)
    loss = make(Namespace(siglip=False, distill=False, model="ViT-B-32", world_size=2))
    assert isinstance(loss, CMALoss) and loss.lam == 0.25 and loss.gather
    assert not make(Namespace(siglip=False, distill=False, model="ViT-B-32", world_size=1)).gather
    with pytest.raises(ValueError, match="cannot be used with --siglip"):
        make(Namespace(siglip=True, distill=False, model="ViT-B-16-SigLIP", world_size=1))
    with pytest.raises(ValueError, match="CoCa"):
        make(Namespace(siglip=False, distill=False, model="coca_ViT-B-32", world_size=1))
    with pytest.raises(ValueError, match="lam must be a number in"):
        cma_loss_factory(lam=2.0)
