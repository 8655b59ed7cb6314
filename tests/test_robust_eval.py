"""fastood.robust and `fastood eval --attack`: per-ε clean vs attacked metrics, success rate, robust.png.

Ground truth: fastood.metrics.evaluate_many on scores computed independently (the attack run
directly with the same seed; the saved adversarial PNGs re-scored by a separately built detector),
and hand-computed success rates.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fastood
from fastood import attacks
from fastood.cli import main
from fastood.detectors import DETECTORS
from fastood.metrics import evaluate_many
from fastood.robust import eps_label, robust_evaluate, success_rate
from tests.test_attacks import BLUE, RED, colour_images
from tests.tiny import TINY_KWARGS, tiny_clip


def test_success_rate_hand_computed():
    clean = torch.tensor([0.1, 0.5, 0.9, 0.3])
    att = torch.tensor([0.6, 0.4, 0.95, 0.2])
    # θ = 0.5: OOD detected when clean < θ: {0.1, 0.3}; flipped to ≥ θ: only 0.1 → 0.6
    assert success_rate(clean, att, 0.5, "ood_to_id") == 0.5
    # ID accepted when clean ≥ θ: {0.5, 0.9}; flipped below θ: 0.5 → 0.4
    assert success_rate(clean, att, 0.5, "id_to_ood") == 0.5
    assert success_rate(clean, att, 0.0, "ood_to_id") is None  # nothing detected: nothing to flip
    with pytest.raises(ValueError, match="direction"):
        success_rate(clean, att, 0.5, "sideways")


def test_eps_label():
    assert eps_label(8 / 255) == "8/255" and eps_label(0.0) == "0" and eps_label(0.01) == "0.01"


@pytest.fixture(scope="module")
def setup():
    clip = tiny_clip(0)
    det = DETECTORS["mahalanobis"](clip, device="cpu")
    with pytest.warns(RuntimeWarning):
        det.fit(colour_images(16, RED, 1), torch.arange(16) % 2)
    ood = {"blue": colour_images(3, BLUE, 3), "green": colour_images(3, (0.3, 0.8, 0.3), 4)}
    return det, colour_images(4, RED, 2), ood


def test_robust_table_is_evaluate_many_per_eps(setup, tmp_path):
    det, id_x, ood = setup
    rob = robust_evaluate(det, id_x, ood, eps="2/255,8/255", steps=2, target="both", seed=3, convention="openood",
                          save_adv=tmp_path)
    # truth: the attacks run directly, scored by the detector's ordinary path, then evaluate_many
    want_clean = evaluate_many(det.score(id_x), {k: det.score(v) for k, v in ood.items()}, convention="openood")
    for k in ("fpr95", "auroc", "aupr_in", "aupr_out"):
        assert rob["clean"]["average"][k] == pytest.approx(want_clean["average"][k], abs=1e-9)
    theta = rob["threshold"]
    for row, e in zip(rob["per_eps"], (2 / 255, 8 / 255)):
        assert row["eps"] == e and row["eps_label"] == f"{round(e * 255)}/255"
        adv_id = attacks.pgd(det, id_x, eps=e, steps=2, target="ood", seed=3)
        adv_ood = {k: attacks.pgd(det, v, eps=e, steps=2, target="id", seed=3) for k, v in ood.items()}
        want = evaluate_many(det.score(adv_id.images), {k: det.score(a.images) for k, a in adv_ood.items()},
                             convention="openood")
        for name in ("blue", "green"):
            assert row["metrics"]["per_set"][name]["auroc"] == pytest.approx(want["per_set"][name]["auroc"], abs=1e-9)
            assert row["metrics"]["per_set"][name]["fpr95"] == pytest.approx(want["per_set"][name]["fpr95"], abs=1e-9)
        ood_clean = torch.cat([det.score(v) for v in ood.values()])
        ood_att = torch.cat([det.score(a.images) for a in adv_ood.values()])
        det_mask = ood_clean < theta
        want_o2i = None if not det_mask.any() else float((ood_att[det_mask] >= theta).double().mean())
        assert row["success_rate"]["ood_to_id"] == (pytest.approx(want_o2i) if want_o2i is not None else None)
        acc = det.score(id_x) >= theta
        assert row["success_rate"]["id_to_ood"] == pytest.approx(float((det.score(adv_id.images)[acc] < theta)
                                                                       .double().mean()))
        # the saved PNGs are the attacked images
        saved = sorted((tmp_path / f"eps_{round(e * 255)}-255" / "blue").glob("*.png"))
        assert len(saved) == 3
        torch.testing.assert_close(det.score([str(p) for p in saved]), det.score(adv_ood["blue"].images),
                                   rtol=1e-5, atol=1e-5)
    # the constructed case: attacks at 8/255 lower the average AUROC
    assert rob["per_eps"][-1]["metrics"]["average"]["auroc"] < rob["clean"]["average"]["auroc"]


def test_chunks_stream_the_images(setup, tmp_path):
    """chunk=2: each chunk is attacked for every ε with seed + chunk index; files keep their set index."""
    det, id_x, ood = setup
    rob = robust_evaluate(det, id_x, {"blue": ood["blue"]}, eps=[8 / 255], steps=1, target="ood", seed=5, chunk=2,
                          save_adv=tmp_path)
    adv = torch.cat([attacks.pgd(det, id_x[i : i + 2], eps=8 / 255, steps=1, target="ood", seed=5 + k).images
                     for k, i in enumerate(range(0, 4, 2))])
    want = evaluate_many(det.score(adv), {"blue": det.score(ood["blue"])})
    assert rob["per_eps"][0]["metrics"]["average"]["auroc"] == pytest.approx(want["average"]["auroc"], abs=1e-9)
    files = sorted((tmp_path / "eps_8-255" / "id").glob("*.png"))
    assert [f.name for f in files] == [f"{i:05d}_input.png" for i in range(4)]
    torch.testing.assert_close(det.score([str(f) for f in files]), det.score(adv), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="chunk"):
        robust_evaluate(det, id_x, {"blue": ood["blue"]}, eps=[8 / 255], steps=1, chunk=0)


def test_target_id_leaves_id_scores_clean(setup):
    det, id_x, ood = setup
    rob = robust_evaluate(det, id_x, {"blue": ood["blue"]}, eps=[4 / 255], steps=1, target="id")
    r = rob["per_eps"][0]
    assert r["success_rate"]["id_to_ood"] is None and r["metrics"]["per_set"]["blue"]["num_id"] == 4
    adv = attacks.pgd(det, ood["blue"], eps=4 / 255, steps=1)
    want = evaluate_many(det.score(id_x), {"blue": det.score(adv.images)})
    assert r["metrics"]["average"]["auroc"] == pytest.approx(want["average"]["auroc"], abs=1e-9)


def test_feature_attack_evaluates_the_detector_on_manipulated_images(setup):
    det, id_x, ood = setup
    rob = robust_evaluate(det, id_x, {"blue": ood["blue"]}, attack="feature", eps=[8 / 255], steps=2, target="id")
    adv = attacks.feature_match(det, ood["blue"], id_x, eps=8 / 255, steps=2)
    want = evaluate_many(det.score(id_x), {"blue": det.score(adv.images)})
    assert rob["per_eps"][0]["metrics"]["average"]["auroc"] == pytest.approx(want["average"]["auroc"], abs=1e-9)


def test_robust_bad_arguments(setup):
    det, id_x, ood = setup
    with pytest.raises(ValueError, match="eps"):
        robust_evaluate(det, id_x, ood, eps="1/255,2", steps=1)
    with pytest.raises(ValueError, match="steps"):
        robust_evaluate(det, id_x, ood, eps="1/255", steps=0)
    with pytest.raises(ValueError, match="attack"):
        robust_evaluate(det, id_x, ood, attack="fgsm", eps="1/255", steps=1)
    with pytest.raises(ValueError, match="target"):
        robust_evaluate(det, id_x, ood, eps="1/255", steps=1, target="nowhere")
    with pytest.raises(ValueError, match="norm"):
        robust_evaluate(det, id_x, ood, attack="feature", eps="1/255", steps=1, norm="l2")


# ---------------------------------------------------------------------------- CLI
def _png(path: Path, colour, seed: int, size: int = 40) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    a = np.clip(np.asarray(colour) * 255 + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(a).save(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    for split, off in (("fit", 0), ("id", 50)):
        for c, cls in enumerate(["a", "b"]):
            (root / split / cls).mkdir(parents=True)
            for i in range(4 if split == "fit" else 2):
                _png(root / split / cls / f"{cls}{i}.png", RED, off + 10 * c + i)
    (root / "ood").mkdir()
    for i in range(3):
        _png(root / "ood" / f"o{i}.png", BLUE, 100 + i)
    common = ["--method", "mahalanobis", "--fit", str(root / "fit"), "--model", "ViT-B-32", "--pretrained", "none",
              "--model-kwargs", json.dumps(TINY_KWARGS), "--device", "cpu", "--quiet", "--batch-size", "4"]
    return root, common


def test_cli_eval_attack_end_to_end(folders, tmp_path, capsys):
    root, common = folders
    out, adv = tmp_path / "rep", tmp_path / "adv"
    with pytest.warns(RuntimeWarning):
        assert main(["eval", "--id", str(root / "id"), "--ood", f"blue={root / 'ood'}", "--out", str(out),
                     "--attack", "pgd", "--eps", "4/255,8/255", "--steps", "2", "--attack-target", "both",
                     "--save-adv", str(adv), *common]) == 0
    text = capsys.readouterr().out
    assert "attack pgd (linf, 2 steps, target both)" in text and "8/255" in text
    rep = json.loads((out / "report.json").read_text())
    rob = rep["robust"]
    assert [r["eps_label"] for r in rob["per_eps"]] == ["4/255", "8/255"] and rob["target"] == "both"
    # the clean row equals the main table (same pixels, same scores)
    assert rob["clean"]["average"]["auroc"] == pytest.approx(rep["metrics"]["average"]["auroc"], abs=1e-9)
    assert (out / "robust.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "## Adversarial robustness" in md and "| 8/255 |" in md and "robust.png" in md
    # truth: a separately built, identically fitted detector re-scores the saved adversarial PNGs
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        det = fastood.load("mahalanobis", model="ViT-B-32", pretrained="none", model_kwargs=TINY_KWARGS,
                           device="cpu", batch_size=4)
    fit_files = sorted(str(p) for p in (root / "fit").rglob("*.png"))
    with pytest.warns(RuntimeWarning):
        det.fit(fit_files, [0 if "/a/" in f else 1 for f in fit_files])
    for row in rob["per_eps"]:
        d = adv / ("eps_" + row["eps_label"].replace("/", "-"))
        id_png, ood_png = sorted(map(str, (d / "id").glob("*.png"))), sorted(map(str, (d / "blue").glob("*.png")))
        assert len(id_png) == 4 and len(ood_png) == 3
        want = evaluate_many(det.score(id_png), {"blue": det.score(ood_png)})
        assert row["metrics"]["per_set"]["blue"]["auroc"] == pytest.approx(want["per_set"]["blue"]["auroc"], abs=1e-6)
        assert row["metrics"]["per_set"]["blue"]["fpr95"] == pytest.approx(want["per_set"]["blue"]["fpr95"], abs=1e-6)


@pytest.mark.parametrize("flags, message", [
    (["--eps", "2"], "--eps must be in \\[0, 1\\]"),
    (["--eps", "1/255,x"], "--eps must be a number"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--attack-norm", "l2", "--attack", "feature"], "L∞"),
    (["--save-adv", "/proc/adv"], "cannot write --save-adv '/proc/adv'"),
])
def test_cli_attack_bad_flags(folders, tmp_path, flags, message):
    root, common = folders
    args = ["eval", "--id", str(root / "id"), "--ood", str(root / "ood"), "--out", str(tmp_path / "r"), *common]
    if "--attack" not in flags:
        args += ["--attack", "pgd"]
    with pytest.raises(SystemExit, match=message):
        main(args + flags)


def test_cli_attack_refuses_a_detector_without_gradients(folders, tmp_path, monkeypatch):
    """A detector whose score has no gradient: the command stops with the attack's message."""
    root, common = folders
    from fastood.detectors.mahalanobis import Mahalanobis

    monkeypatch.setattr(Mahalanobis, "_score_for_grad", lambda self, f: self._score_features(f)[0].detach())
    with pytest.warns(RuntimeWarning), pytest.raises(SystemExit, match="not differentiable"):
        main(["eval", "--id", str(root / "id"), "--ood", str(root / "ood"), "--out", str(tmp_path / "r"),
              "--attack", "pgd", "--eps", "1/255", "--steps", "1", *common])
