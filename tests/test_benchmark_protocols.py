"""fastood eval --benchmark on generated folder trees with the papers' real layouts (tiny random model).

Truth: the same files scored through the public API (fastood.load with the paper's preprocessing),
fastood.metrics on those scores under the paper's convention, and the published numbers of SPEC §1
and §10 typed in here by hand (the differences must be computed − published).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import fastood
from fastood import benchmarks as B
from fastood.cli import main
from fastood.metrics import evaluate_many
from tests.tiny import TINY_KWARGS

CLASSES = ["tench", "goldfish", "great white shark"]
WNIDS = ["n01440764", "n01443537", "n01484850"]


def _image(path: Path, seed: int, size: int = 36) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, size=(size, size + 4 * (seed % 3), 3), dtype=np.uint8)
    Image.fromarray(a).save(path)


def _words(root: Path) -> Path:
    from fastood.labels import load_corpus

    full = load_corpus("neglabel")
    p = root / "words.tsv"
    p.write_text("".join(f"{w}\t{pos}\n" for w, pos in list(zip(full.words, full.pos))[::400]))
    return p


def _mos_tree(root: Path) -> Path:
    """MCM / NegLabel layout: imagenet/val/<wnid>/*.JPEG, iNaturalist/images, SUN/images, Places/images, dtd/images/<cat>."""
    for c, w in enumerate(WNIDS):
        for i in range(2):
            _image(root / "imagenet" / "val" / w / f"ILSVRC2012_val_{c * 2 + i:08d}.JPEG", c * 10 + i)
    for k, rel in enumerate(["iNaturalist/images", "SUN/images", "Places/images", "dtd/images/banded"]):
        for i in range(3):
            _image(root / rel / f"img{i}.jpg", 100 * (k + 1) + i)
    return root


@pytest.fixture(scope="module")
def common(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_common")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    args = ["--model", "ViT-B-32", "--pretrained", "none", "--model-kwargs", json.dumps(TINY_KWARGS),
            "--corpus", str(_words(root)), "-o", "groups=3", "--cache", str(root / "cache"), "--device", "cpu",
            "--quiet", "--batch-size", "4", "--classes", str(root / "classes.txt"), "--no-plots"]
    return root, args


def _api(common_root: Path, interpolation: str | None):
    from fastood.cli import _read_corpus_file

    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        return fastood.load(method="neglabel", model="ViT-B-32", pretrained="none", model_kwargs=TINY_KWARGS,
                            classes=CLASSES, device="cpu", corpus=_read_corpus_file(str(common_root / "words.tsv")),
                            groups=3, cache=str(common_root / "cache"), progress=False, interpolation=interpolation)


def test_mos_protocol_table_equals_api_scores_and_published_differences(common, tmp_path, capsys):
    croot, args = common
    root = _mos_tree(tmp_path / "data")
    (root / "SUN" / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")  # unreadable: skipped
    out = tmp_path / "out"
    assert main(["eval", "--benchmark", "imagenet1k", "--data-root", str(root), "--out", str(out), *args]) == 0
    cap = capsys.readouterr()
    rep = json.loads((out / "benchmark.json").read_text())
    assert rep["convention"] == "neglabel" and rep["aupr_method"] == "ap" and rep["published"] == "neglabel"
    assert rep["interpolation"] == "bilinear"  # the NegLabel reference's resize, by default
    assert rep["skipped"] == 1 and "broken.jpg" in cap.err

    # truth: the public API on the same files, with the paper's preprocessing and convention
    det = _api(croot, "bilinear")
    id_files = sorted(str(p) for p in (root / "imagenet" / "val").rglob("*.JPEG"))
    pred = det.predict(id_files)
    sets = {"inaturalist": "iNaturalist", "sun": "SUN", "places": "Places", "textures": "dtd/images"}
    ood = {k: det.score(sorted(str(p) for p in (root / rel).rglob("img*.jpg"))) for k, rel in sets.items()}
    want = evaluate_many(pred.scores, ood, convention="neglabel", aupr_method="ap")
    published = {"inaturalist": (1.91, 99.49), "sun": (20.53, 95.49), "places": (35.59, 91.64),
                 "textures": (43.56, 90.22), "average": (25.40, 94.21)}  # SPEC §1, NegLabel, ViT-B/16
    rows = {r["set"]: r for r in rep["rows"]}
    assert list(rows) == ["inaturalist", "sun", "places", "textures", "average"]
    for key, (pf, pa) in published.items():
        m = want["average"] if key == "average" else want["per_set"][key]
        r = rows[key]
        assert r["fpr95"] == pytest.approx(100 * m["fpr95"], abs=1e-4)
        assert r["auroc"] == pytest.approx(100 * m["auroc"], abs=1e-4)
        assert (r["pub_fpr95"], r["pub_auroc"]) == (pf, pa)
        assert r["d_fpr95"] == pytest.approx(100 * m["fpr95"] - pf, abs=1e-4)
        assert r["d_auroc"] == pytest.approx(100 * m["auroc"] - pa, abs=1e-4)
    assert rows["sun"]["images"] == 3  # the unreadable file is not counted
    # ID labels from the wnid folders (sorted = class order) → accuracy of the API's predictions
    truth = np.repeat(np.arange(3), 2)
    assert rep["accuracy"] == pytest.approx(float((pred.labels.numpy() == truth).mean()))
    # the printed side-by-side table and the size warning
    assert "iNaturalist" in cap.out and "1.91" in cap.out and "25.40" in cap.out and "Δ FPR95" in cap.out
    assert "RANDOM WEIGHTS" in cap.out and "the protocol has 10,000" in cap.err
    assert "| iNaturalist | 3 |" in (out / "benchmark.md").read_text()
    assert (out / "report.json").is_file()


def test_openood_layout_with_list_files_and_near_far_averages(common, tmp_path, capsys):
    croot, args = common
    root = tmp_path / "openood"
    img = root / "images_largescale"
    lists = root / "benchmark_imglist" / "imagenet"
    lists.mkdir(parents=True)
    id_lines = []
    for i in range(6):  # OpenOOD's ImageNet val is flat; labels come from test_imagenet.txt
        name = f"imagenet_1k/val/ILSVRC2012_val_{i + 1:08d}.JPEG"
        _image(img / name, i)
        id_lines.append(f"{name} {i % 3}")
    (lists / "test_imagenet.txt").write_text("\n".join(id_lines) + "\n")
    keys = ["ssb_hard", "ninco", "inaturalist", "textures", "openimage_o"]
    for k, key in enumerate(keys):
        for i in range(4):
            _image(img / key / f"x{i}.jpg", 200 + 10 * k + i)
        # the list names 3 of the 4 files: only those are scored, as OpenOOD does
        (lists / f"test_{key}.txt").write_text("".join(f"{key}/x{i}.jpg -1\n" for i in range(3)))
    out = tmp_path / "out"
    assert main(["eval", "--benchmark", "openood-v1.5", "--data-root", str(root), "--out", str(out),
                 "--published", "none", *args]) == 0
    cap = capsys.readouterr()
    rep = json.loads((out / "benchmark.json").read_text())
    assert rep["convention"] == "openood" and rep["aupr_method"] == "trapezoid" and rep["published"] is None
    assert rep["interpolation"] is None  # no paper preprocessing to apply: the model's own

    det = _api(croot, None)
    id_files = [str(img / ln.split()[0]) for ln in id_lines]
    pred = det.predict(id_files)
    ood = {key: det.score([str(img / key / f"x{i}.jpg") for i in range(3)]) for key in keys}
    want = evaluate_many(pred.scores, ood, convention="openood", aupr_method="trapezoid")
    rows = {r["set"]: r for r in rep["rows"]}
    assert list(rows) == keys + ["near_average", "far_average", "average"]
    for key in keys:
        assert rows[key]["images"] == 3
        assert rows[key]["fpr95"] == pytest.approx(100 * want["per_set"][key]["fpr95"], abs=1e-4)
        assert rows[key]["auroc"] == pytest.approx(100 * want["per_set"][key]["auroc"], abs=1e-4)
        assert rows[key]["pub_fpr95"] is None and rows[key]["d_fpr95"] is None
    near = np.mean([100 * want["per_set"][k]["auroc"] for k in keys[:2]])
    far = np.mean([100 * want["per_set"][k]["auroc"] for k in keys[2:]])
    assert rows["near_average"]["auroc"] == pytest.approx(near, abs=1e-4)
    assert rows["far_average"]["auroc"] == pytest.approx(far, abs=1e-4)
    assert rows["average"]["auroc"] == pytest.approx(100 * want["average"]["auroc"], abs=1e-4)
    assert rep["accuracy"] == pytest.approx(float((pred.labels.numpy() == np.arange(6) % 3).mean()))
    assert "near-OOD average" in cap.out and "far-OOD average" in cap.out


def test_cma_row_brings_its_convention_and_one_group_and_overrides_are_flagged(common, tmp_path, capsys):
    croot, args = common
    root = _mos_tree(tmp_path / "data")
    out = tmp_path / "out"
    args = [a for a in args if a != "groups=3"]
    args.remove("-o")
    assert main(["eval", "--benchmark", "imagenet1k", "--data-root", str(root), "--out", str(out),
                 "--published", "cma-neglabel", *args]) == 0
    rep = json.loads((out / "benchmark.json").read_text())
    run = json.loads((out / "report.json").read_text())["run"]
    assert rep["convention"] == "interp" and rep["interpolation"] is None  # SPEC §3/§10: CMA reports `interp`
    assert run["options"]["groups"] == 1  # CMA's test-time NegLabel score has no grouping
    rows = {r["set"]: r for r in rep["rows"]}
    assert (rows["average"]["pub_fpr95"], rows["average"]["pub_auroc"]) == (19.93, 95.13)
    assert rows["sun"]["pub_fpr95"] is None and rows["sun"]["d_auroc"] is None  # no per-set numbers in the SPEC
    capsys.readouterr()
    i = args.index("--corpus")
    mcm_args = args[:i] + args[i + 2:]  # MCM takes no negative-label corpus
    assert main(["eval", "--benchmark", "imagenet1k", "--data-root", str(root), "--out", str(tmp_path / "o2"),
                 "--method", "mcm", "--published", "neglabel", "--convention", "openood", *mcm_args]) == 0
    text = capsys.readouterr().out
    assert "NOT the paper's neglabel: not comparable" in text and "WARNING: comparing --method mcm" in text


def test_flat_imagenet_with_kaggle_label_file(tmp_path):
    root = tmp_path / "d"
    val = root / "ILSVRC2012_img_val"
    wn = [WNIDS[2], WNIDS[0], WNIDS[1], WNIDS[0]]
    lines = ["ImageId,PredictionString"]
    for i, w in enumerate(wn):
        _image(val / f"ILSVRC2012_val_{i + 1:08d}.JPEG", i)
        lines.append(f"ILSVRC2012_val_{i + 1:08d},{w} 1 2 3 4")
    (root / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    for rel in ["iNaturalist", "SUN", "Places", "Textures"]:
        _image(root / rel / "a.jpg", 7)
    data = B.resolve("imagenet1k", root)
    assert data.id.path == val and data.id_label_source.startswith("label file")
    assert data.id_labels == [2, 0, 1, 0]  # wnids → sorted wnid index (ImageNet's class order)
    assert data.id_label_names == sorted(WNIDS)
    assert data.ood["textures"].path == root / "Textures"


def test_missing_empty_and_bad_input(common, tmp_path):
    _, args = common
    root = _mos_tree(tmp_path / "m")
    import shutil

    shutil.rmtree(root / "SUN")
    shutil.rmtree(root / "Places")
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--benchmark", "imagenet1k", "--data-root", str(root), "--out", str(tmp_path / "o"), *args])
    msg = str(exc.value)
    assert "2 set(s) missing" in msg and "SUN: looked for" in msg and "Places: looked for" in msg
    assert str(root / "SUN") in msg and str(root / "images_largescale" / "Places365") in msg
    assert "iNaturalist:" not in msg  # present sets are not listed
    (root / "SUN" / "images").mkdir(parents=True)
    (root / "SUN" / "images" / "notes.txt").write_text("no images here")
    _image(root / "Places" / "p.jpg", 1)
    with pytest.raises(B.BenchmarkDataError, match=r"set SUN at .*SUN contains no image files"):
        B.resolve("imagenet1k", root)
    with pytest.raises(SystemExit, match=r"set SUN at .*SUN contains no image files"):
        main(["eval", "--benchmark", "imagenet1k", "--data-root", str(root), "--out", str(tmp_path / "o"), *args])
    with pytest.raises(ValueError, match="unknown benchmark 'imagenet21k'"):
        B.resolve("imagenet21k", root)
    with pytest.raises(B.BenchmarkDataError, match="is not a directory"):
        B.resolve("imagenet1k", root / "nope")
    with pytest.raises(SystemExit, match="needs --data-root"):
        main(["eval", "--benchmark", "imagenet1k", "--out", str(tmp_path / "o"), *args])
    with pytest.raises(SystemExit, match="drop --id / --ood"):
        main(["eval", "--benchmark", "imagenet1k", "--data-root", str(root), "--id", str(root), "--out",
              str(tmp_path / "o"), *args])
    with pytest.raises(SystemExit, match="--published 'csp' is not a published row of imagenet1k"):
        main(["eval", "--benchmark", "imagenet1k", "--data-root", str(root), "--published", "csp", "--out",
              str(tmp_path / "o"), *args])
    with pytest.raises(SystemExit, match="--id DIR and at least one --ood are required"):
        main(["eval", "--out", str(tmp_path / "o"), *args])


def test_label_map_by_name_by_position_or_none():
    assert B.label_map(["goldfish", "Great_White_Shark"], CLASSES) == ([1, 2], "by name")
    assert B.label_map(WNIDS, CLASSES)[0] == [0, 1, 2]  # all wnids: sorted position = class order
    got, why = B.label_map(WNIDS[:2], CLASSES)  # a subset of wnid folders cannot be placed
    assert got is None and "accuracy not computed" in why
    assert B.label_map(None, CLASSES)[0] == [0, 1, 2]  # integer labels are class indices


def test_published_rows_follow_the_spec():
    mos = B.PROTOCOLS["imagenet1k"].published
    assert {k: (p.convention, p.average) for k, p in mos.items()} == {
        "neglabel": ("neglabel", (25.40, 94.21)), "mcm": ("neglabel", (42.74, 90.77)),
        "cma-neglabel": ("interp", (19.93, 95.13)), "interneg": ("openood", (14.04, 97.43)),
        "adaneg": ("openood", (18.92, 96.66))}
    # the NegLabel per-set numbers average to the published average (SPEC §1)
    per = np.array(list(mos["neglabel"].per_set.values()))
    assert per.mean(0) == pytest.approx(np.array([25.40, 94.21]), abs=0.01)
