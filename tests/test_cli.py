"""The `fastood score`, `eval` and `demo` commands (in-process through fastood.cli.main,
and under torchrun with 2 CPU processes), plus the resumable output files.

Ground truth: fastood.score (tested against the float64 formula in test_api.py) on
the same files, fastood.metrics.evaluate_many on those scores, and hand-written rows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fastood
from fastood import outputs as O
from fastood.cli import main
from fastood.metrics import evaluate_many

MODEL_KWARGS = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _words() -> str:
    """~240 WordNet nouns and adjectives as a 'word<TAB>n|a' file (NegMining keeps 15 % of each)."""
    from fastood.labels import load_corpus

    full = load_corpus("neglabel")
    return "".join(f"{w}\t{p}\n" for w, p in list(zip(full.words, full.pos))[::300])


def _image(path: Path, seed: int, size: int = 40) -> None:
    from PIL import Image

    a = np.random.default_rng(seed).integers(0, 256, size=(size, size + 8 * (seed % 3), 3), dtype=np.uint8)
    Image.fromarray(a).save(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    for c, cls in enumerate(["dog", "cat"]):
        (root / "id" / cls).mkdir(parents=True)
        for i in range(4):
            _image(root / "id" / cls / f"{cls}{i}.png", 10 * c + i)
    (root / "id" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    for name, offset in (("blobs", 100), ("noise", 200)):
        (root / name).mkdir()
        for i in range(5):
            _image(root / name / f"{name}{i}.jpg", offset + i)
    (root / "words.tsv").write_text(_words())
    (root / "classes.txt").write_text("dog\ncat\nhouse\n")
    cache = root / "cache"
    common = ["--model", "ViT-B-32", "--pretrained", "none", "--model-kwargs", json.dumps(MODEL_KWARGS),
              "--corpus", str(root / "words.tsv"), "-o", "groups=3", "--cache", str(cache), "--device", "cpu",
              "--quiet", "--batch-size", "3"]
    return root, common


def _close(a, b, rtol: float = 1e-3) -> bool:
    """Relative closeness (random-model NegLabel scores are small; τ = 0.01 scales errors by 100)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool((np.abs(a - b) <= rtol * np.abs(b)).all())


def _api_kwargs(root: Path, classes) -> dict:
    from fastood.cli import _read_corpus_file

    return dict(method="neglabel", model="ViT-B-32", pretrained="none", model_kwargs=MODEL_KWARGS, classes=classes,
                device="cpu", corpus=_read_corpus_file(str(root / "words.tsv")), groups=3,
                cache=str(root / "cache"), progress=False)


# ---------------------------------------------------------------------------------- score


def _score_rows(root: Path, common: list[str], out: Path, *extra: str, paths=None) -> int:
    paths = paths or [str(root / "id"), str(root / "blobs")]
    return main(["score", *paths, "--out", str(out), "--classes", str(root / "classes.txt"), *common, *extra])


def _copy_meta(src: Path, dst: Path) -> None:
    """Give ``dst`` the run record of ``src`` (a run with the same settings)."""
    import shutil

    shutil.copy(src.with_name(src.name + ".meta.json"), dst.with_name(dst.name + ".meta.json"))


@pytest.fixture(scope="module")
def single_run(data):
    root, common = data
    out = root / "single.csv"
    assert _score_rows(root, common, out) == 0
    return O.read_rows(out)


def test_score_csv_matches_the_api_and_skips_the_corrupt_file(data, single_run, capsys):
    root, common = data
    rows = single_run
    files = sorted(str(p) for p in (root / "id").rglob("*.png")) + sorted(str(p) for p in (root / "blobs").glob("*.jpg"))
    files = sorted(files)
    assert [r["path"] for r in rows] == files  # every readable image once, in sorted order; broken.jpg left out
    skipped: list = []
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        api = fastood.score(files + [str(root / "id" / "cat" / "broken.jpg")], on_error="skip", skipped=skipped,
                            **_api_kwargs(root, str(root / "classes.txt")))
    assert [p for p, _ in skipped] == [str(root / "id" / "cat" / "broken.jpg")]
    got = torch.tensor([r["score"] for r in rows], dtype=torch.float32)
    assert _close(got, api)
    assert (got > 0).all() and got.max() / got.min() > 10  # informative: scores differ between images
    for r in rows:
        assert r["pred_label"] == ["dog", "cat", "house"][r["pred"]]
        assert "is_ood" not in r  # no threshold, no column


def test_score_reports_skipped_and_counts(data, tmp_path, capsys):
    root, common = data
    assert _score_rows(root, common, tmp_path / "s.jsonl") == 0
    cap = capsys.readouterr()
    assert "broken.jpg" in cap.err and "skipped 1 unreadable" in cap.out
    assert "scored 13 new image(s)" in cap.out


def test_jsonl_and_parquet_outputs_hold_the_same_rows(data, single_run, tmp_path):
    pytest.importorskip("pyarrow")
    root, common = data
    for name in ("s.jsonl", "s.parquet"):
        assert _score_rows(root, common, tmp_path / name) == 0
        rows = O.read_rows(tmp_path / name)
        assert [r["path"] for r in rows] == [r["path"] for r in single_run]
        assert [r["pred"] for r in rows] == [r["pred"] for r in single_run]
        assert _close([r["score"] for r in rows], [r["score"] for r in single_run])
    assert not (tmp_path / "s.parquet.partial.jsonl").exists()


def test_threshold_adds_is_ood(data, single_run, tmp_path):
    root, common = data
    thr = float(np.median([r["score"] for r in single_run]))
    assert _score_rows(root, common, tmp_path / "t.csv", "--threshold", repr(thr)) == 0
    rows = O.read_rows(tmp_path / "t.csv")
    assert [r["is_ood"] for r in rows] == [r["score"] < thr for r in rows]
    assert any(r["is_ood"] for r in rows) and not all(r["is_ood"] for r in rows)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_resume_after_an_interrupted_run(data, single_run, tmp_path, capsys, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    root, common = data
    out = tmp_path / f"r{suffix}"
    half = single_run[: len(single_run) // 2]
    cols = O.columns_for(False)
    journal = O.journal_path(out)
    # an interrupted run (same settings, so the same run record): half the rows flushed, then a
    # record cut off mid-write
    _copy_meta(root / "single.csv", out)
    O.write_rows(journal, half, cols)
    with open(journal, "a") as f:
        f.write(f"{single_run[len(half)]['path']},0.12" if suffix == ".csv" else '{"path": "x.png", "sco')
    assert _score_rows(root, common, out) == 0
    cap = capsys.readouterr()
    assert f"{len(half)} already in the output" in cap.err
    assert f"scored {len(single_run) - len(half)} new image(s)" in cap.out
    rows = O.read_rows(out)
    assert [r["path"] for r in rows] == [r["path"] for r in single_run]
    assert [r["pred"] for r in rows] == [r["pred"] for r in single_run]
    assert _close([r["score"] for r in rows], [r["score"] for r in single_run])
    # a second resume has nothing left to do and changes nothing, byte for byte
    first = out.read_bytes()
    assert _score_rows(root, common, out) == 0
    assert "scored 0 new image(s)" in capsys.readouterr().out
    assert out.read_bytes() == first


def test_resumed_file_equals_the_uninterrupted_file_byte_for_byte(data, single_run, tmp_path):
    """README: "an interrupted and resumed run gives the same file as one uninterrupted run".

    The cut is not on a batch boundary: the resumed run must encode the remaining images of
    the cut batch in the same batch as the uninterrupted run (the tower's numerics depend on
    the batch), or their scores differ in the last bits."""
    root, common = data
    out = tmp_path / "r.csv"
    half = single_run[: len(single_run) // 2]
    _copy_meta(root / "single.csv", out)
    O.write_rows(O.journal_path(out), half, O.columns_for(False))
    assert _score_rows(root, common, out) == 0
    assert out.read_bytes() == (root / "single.csv").read_bytes()


def test_resume_keeps_rows_already_written(data, single_run, tmp_path):
    """Rows present in the output are not recomputed (sentinel scores survive)."""
    root, common = data
    out = tmp_path / "k.csv"
    fake = [dict(r, score=123.5) for r in single_run[:3]]
    _copy_meta(root / "single.csv", out)
    O.write_rows(out, fake, O.columns_for(False))
    assert _score_rows(root, common, out) == 0
    rows = O.read_rows(out)
    assert [r["score"] for r in rows[:3]] == [123.5] * 3
    assert _close([r["score"] for r in rows[3:]], [r["score"] for r in single_run[3:]])


def test_resume_refuses_other_settings(data, tmp_path):
    root, common = data
    out = tmp_path / "m.csv"
    one = [str(root / "blobs")]
    assert _score_rows(root, common, out, paths=one) == 0
    with pytest.raises(SystemExit, match="other settings.*groups.*--overwrite"):
        _score_rows(root, [*common, "-o", "groups=2"], out, paths=one)
    assert _score_rows(root, [*common, "-o", "groups=2"], out, "--overwrite", paths=one) == 0


def test_score_bad_output_and_missing_pyarrow(data, tmp_path, monkeypatch):
    root, common = data
    with pytest.raises(SystemExit, match="unknown format '.txt'"):
        _score_rows(root, common, tmp_path / "s.txt")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(SystemExit, match="pip install pyarrow"):
        _score_rows(root, common, tmp_path / "s.parquet")
    with pytest.raises(SystemExit, match="does not exist"):
        _score_rows(root, common, tmp_path / "s.csv", paths=[str(root / "nowhere")])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_ranks_match_a_single_process(data, single_run, tmp_path):
    root, common = data
    out = tmp_path / "dist.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "fastood.cli", "score", str(root / "id"), str(root / "blobs"), "--out", str(out),
           "--classes", str(root / "classes.txt"), *common]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = O.read_rows(out)
    assert [r["path"] for r in rows] == [r["path"] for r in single_run]
    assert [r["pred"] for r in rows] == [r["pred"] for r in single_run]
    assert _close([r["score"] for r in rows], [r["score"] for r in single_run])
    ranks = [O.read_rows(O.rank_path(out, r)) for r in range(2)]
    listed = sorted([r["path"] for r in single_run] + [str(root / "id" / "cat" / "broken.jpg")])
    for r in range(2):  # rank r took files r::2 of the sorted list (the unreadable one is skipped, not written)
        assert [x["path"] for x in ranks[r]] == [f for f in listed[r::2] if not f.endswith("broken.jpg")]
    assert "skipped 1 unreadable" in res.stdout


# ---------------------------------------------------------------------------------- eval


def test_eval_writes_the_report(data, tmp_path, capsys):
    root, common = data
    out = tmp_path / "report"
    assert main(["eval", "--id", str(root / "id"), "--ood", f"blobs={root / 'blobs'}", "--ood", str(root / "noise"),
                 "--out", str(out), "--convention", "openood", *common]) == 0
    cap = capsys.readouterr()
    rep = json.loads((out / "report.json").read_text())
    # truth: the API's scores of the same files, the metrics module on them
    kw = _api_kwargs(root, ["dog", "cat"])  # class names default to the ID folder names (sorted: cat, dog)
    kw["classes"] = ["cat", "dog"]
    id_files = sorted(str(p) for p in (root / "id").rglob("*.png"))
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        det = fastood.load(**kw)
    id_pred = det.predict(id_files)
    ood = {n: det.score(sorted(str(p) for p in (root / n).glob("*.jpg"))) for n in ("blobs", "noise")}
    want = evaluate_many(id_pred.scores, ood, convention="openood")
    for name in ("blobs", "noise"):
        for k in ("fpr95", "auroc", "aupr_in", "aupr_out"):
            assert rep["metrics"]["per_set"][name][k] == pytest.approx(want["per_set"][name][k], abs=1e-6)
    assert rep["metrics"]["average"]["auroc"] == pytest.approx(want["average"]["auroc"], abs=1e-6)
    assert rep["metrics"]["average"]["convention"] == "openood"
    labels = torch.tensor([0 if "/cat/" in f else 1 for f in id_files])
    assert rep["id"]["accuracy"] == pytest.approx(float((id_pred.labels == labels).double().mean()))
    assert rep["id"]["label_mapping"] == "by folder name" and rep["id"]["num_images"] == 8
    assert [s[0] for s in rep["skipped"]] == [str(root / "id" / "cat" / "broken.jpg")]
    assert rep["run"]["random_weights"] is True
    md = (out / "report.md").read_text()
    assert "RANDOM WEIGHTS" in md and "convention `openood`" in md and "| blobs | 5 |" in md
    for png in ("roc.png", "hist.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "scores.csv").read_text().splitlines()
    assert text[0] == "set,path,label,score,pred,pred_label" and len(text) == 1 + 8 + 10
    assert "broken.jpg" in cap.err and "skipped 1 unreadable" in cap.out


def test_eval_maps_labels_by_index_when_names_differ(data, tmp_path, capsys):
    root, common = data
    classes = tmp_path / "classes.txt"
    classes.write_text("first class\nsecond class\nthird class\n")
    out = tmp_path / "rep"
    assert main(["eval", "--id", str(root / "id"), "--ood", f"blobs={root / 'blobs'}", "--out", str(out),
                 "--classes", str(classes), "--no-plots", *common]) == 0
    assert "mapping the i-th folder" in capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert rep["id"]["label_mapping"].startswith("by sorted folder index")
    assert not (out / "roc.png").exists()
    with pytest.raises(SystemExit, match="ImageFolder"):
        main(["eval", "--id", str(root / "blobs"), "--ood", str(root / "noise"), "--out", str(out), *common])


# ---------------------------------------------------------------------------------- demo


def test_demo_runs_offline_on_the_samples(tmp_path, capsys):
    assert main(["demo", "--max-candidates", "200", "--cache", str(tmp_path), "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("RANDOM WEIGHTS") >= 2
    samples = sorted(p.name for p in (Path(fastood.__file__).parent / "data" / "samples").iterdir()
                     if p.suffix in (".jpg", ".png", ".gif"))
    assert len(samples) >= 8
    for name in samples:
        line = next(line for line in out.splitlines() if line.startswith(name))
        score, verdict = float(line.split()[1]), line.split()[-1]
        assert 0.0 <= score <= 1.0 and verdict == ("ID" if score >= 0.5 else "OOD")
    assert "images/s end to end" in out


SELFCHECK_ARGS = ["--device", "cpu", "--num-id", "50", "--num-neg", "500", "--groups", "10", "--dim", "32",
                  "--batch", "64", "--repeats", "1"]


def test_demo_kernels_self_check(capsys):
    assert main(["demo", "--kernels", *SELFCHECK_ARGS]) == 0
    out = capsys.readouterr().out
    assert "backends agree: yes" in out and "selfcheck passed" in out
    assert "within 1.0e-04 of the float64 reference" in out  # the bound is printed
    ran = [line.split()[0] for line in out.splitlines() if "max |err| vs float64" in line]
    assert "cpu" in ran or "torch" in ran
    assert all(line.rstrip().endswith("ok") for line in out.splitlines() if "max |err| vs float64" in line)


def test_selfcheck_fails_past_its_bound(capsys, monkeypatch):
    """One backend wrong by 1e-3 (all backends agreeing on a wrong answer would not be
    caught by comparing them with each other): exit status 1, the backend named."""
    import fastood

    right = fastood.neglabel_score

    def wrong_cpu(*args, backend="auto", **kwargs):
        out = right(*args, backend=backend, **kwargs)
        return out + 1e-3 if backend == "cpu" else out

    monkeypatch.setattr(fastood, "neglabel_score", wrong_cpu)
    if not fastood.backends()["cpu"]:
        pytest.skip("the cpu backend is not built")
    assert main(["selfcheck", *SELFCHECK_ARGS]) == 1
    out = capsys.readouterr().out
    assert "selfcheck FAILED: cpu beyond 1.0e-04" in out
    # every backend off by the same amount: they agree with each other, and still fail
    monkeypatch.setattr(fastood, "neglabel_score", lambda *a, **k: right(*a, **k) * 0.999)
    assert main(["selfcheck", *SELFCHECK_ARGS]) == 1
    out = capsys.readouterr().out
    assert "backends agree: yes" in out and "selfcheck FAILED" in out
    # a tighter --bound than the backends achieve fails too; a looser one passes
    monkeypatch.setattr(fastood, "neglabel_score", right)
    assert main(["selfcheck", *SELFCHECK_ARGS, "--bound", "1e-12"]) == 1
    assert main(["selfcheck", *SELFCHECK_ARGS, "--bound", "1e-3"]) == 0


def test_eval_fitted_method_with_fit_dir(data, tmp_path):
    """kNN is fitted on --fit (an ImageFolder); its predicted labels are the fit folders'."""
    root, common = data
    plain = [a for a in common if a not in ("--corpus", str(root / "words.tsv"), "-o", "groups=3")]
    out = tmp_path / "knn"
    with pytest.raises(SystemExit, match="--fit"):
        main(["eval", "--method", "knn", "--id", str(root / "id"), "--ood", str(root / "blobs"), "--out", str(out), *plain])
    assert main(["eval", "--method", "knn", "--fit", str(root / "id"), "--id", str(root / "id"), "--ood",
                 str(root / "blobs"), "--out", str(out), "--no-plots", *plain]) == 0
    rep = json.loads((out / "report.json").read_text())
    # fitted on the ID images themselves: every ID image is its own nearest neighbour (cosine 1, right label)
    assert rep["id"]["accuracy"] == 1.0 and rep["id"]["label_mapping"] == "by folder name"
    import csv

    with open(out / "scores.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["set"] == "id"]
    assert len(rows) == 8 and all(abs(float(r["score"]) - 1.0) < 1e-5 for r in rows)


def test_output_journal_and_merge_by_hand(tmp_path):
    """Hand-written rows: round trip, truncated tails (CSV and JSONL), header check, merge order + dedupe."""
    cols = O.columns_for(True)
    rows = [{"path": "b, \"quoted\".png", "score": 0.1 + 2 ** -30, "pred": 3, "pred_label": "x", "is_ood": True},
            {"path": "a.png", "score": float(np.float32(0.7)), "pred": None, "pred_label": None, "is_ood": False}]
    for suffix in (".csv", ".jsonl"):
        path = tmp_path / f"j{suffix}"
        with O.RowJournal(path, cols) as j:
            j.append(rows[:1])
            j.append(rows[1:])
        assert O.read_rows(path) == rows  # exact floats, quoting, empty cells
        with open(path, "a") as f:
            f.write("c.png,0.5" if suffix == ".csv" else '{"path": "c.png", "sc')
        j = O.RowJournal(path, cols)
        assert j.dropped_tail and j.rows == rows and j.done() == {r["path"] for r in rows}
        j.close()
        assert path.read_text().endswith("\n")  # rewritten without the cut record
    with pytest.raises(ValueError, match="columns"):
        O.RowJournal(tmp_path / "j.csv", O.columns_for(False))
    bad = tmp_path / "bad.csv"
    bad.write_text("path,score\na.png,notanumber\nb.png,0.5\n")
    with pytest.raises(ValueError, match="record 2"):
        O.read_rows(bad)
    # merge: one row per path (the later source wins), in the given order, unknown paths last
    src2 = tmp_path / "r1.csv"
    O.write_rows(src2, [dict(rows[1], score=0.25), {"path": "z.png", "score": 1.0, "pred": 0, "pred_label": "y",
                                                     "is_ood": False}], cols)
    merged = O.finalize(tmp_path / "out.csv", [tmp_path / "j.csv", src2], cols, order=["a.png", rows[0]["path"]])
    assert [r["path"] for r in merged] == ["a.png", rows[0]["path"], "z.png"]
    assert merged[0]["score"] == 0.25 and O.read_rows(tmp_path / "out.csv") == merged
    assert O.rank_path("x/scores.parquet", 1) == Path("x/scores.rank1.jsonl")
    assert O.journal_path("x/s.parquet") == Path("x/s.parquet.partial.jsonl")


def test_demo_with_a_checkpoint_file(tmp_path, capsys):
    """--pretrained FILE takes the real-weights branch (here: a saved tiny model), with no random-weights banner."""
    from safetensors.torch import save_file

    from fastood.api import load_model

    clip = load_model("ViT-B-32", "none", device="cpu", model_kwargs=MODEL_KWARGS, seed=7, warn_random=False)
    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(ckpt))
    assert main(["demo", "--pretrained", str(ckpt), "--model", "ViT-B-32", "--model-kwargs", json.dumps(MODEL_KWARGS),
                 "--max-candidates", "300", "--groups", "5", "--cache", str(tmp_path), "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" not in out and f"with weights {ckpt}" in out and "G=5 groups" in out


def test_report_without_matplotlib_skips_plots(tmp_path, monkeypatch):
    from fastood.report import write_report

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    id_s, ood_s = np.array([0.9, 0.8, 0.7, 0.95]), {"x": np.array([0.1, 0.85, 0.2])}
    metrics = evaluate_many(id_s, ood_s)
    with pytest.warns(UserWarning, match="matplotlib is not installed"):
        written = write_report(tmp_path, id_scores=id_s, ood_scores=ood_s, metrics=metrics,
                               id_info={"dir": "id", "num_images": 4, "num_classes": 1, "label_mapping": "none",
                                        "accuracy": None}, run_info={"method": "neglabel"})
    assert set(written) == {"json", "md"} and not (tmp_path / "roc.png").exists()
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["metrics"]["per_set"]["x"]["auroc"] == pytest.approx(10 / 12)  # 10 of the 12 (ID, OOD) pairs ordered
    assert "| x | 3 |" in (tmp_path / "report.md").read_text()


def test_export_and_train_are_forwarded_subcommands(tmp_path, capsys):
    """`fastood export ARGS` is `python -m fastood.export ARGS` (same exit code, same message); same for train."""
    from fastood.export.__main__ import main as export_main

    pytest.importorskip("onnx")
    args = ["--trt", "--out", str(tmp_path / "deploy")]  # no TensorRT here: a clear error, before any model loads
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed: --trt would really build")
    except ImportError:
        pass
    direct = export_main(list(args))
    direct_err = capsys.readouterr().err
    forwarded = main(["export", *args])
    forwarded_err = capsys.readouterr().err
    assert direct == forwarded == 2
    assert "TensorRT" in direct_err and direct_err == forwarded_err
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    assert "python -m fastood.train" in capsys.readouterr().out


def test_eval_warns_about_an_empty_id_class_folder(data, tmp_path, capsys):
    """An empty ImageFolder class still defines a class index but no image evaluates it:
    say so, naming the folder, instead of a silent class."""
    import shutil

    root, common = data
    id_dir = tmp_path / "id"
    shutil.copytree(root / "id", id_dir)
    (id_dir / "zebra").mkdir()
    out = tmp_path / "rep"
    assert main(["eval", "--id", str(id_dir), "--ood", f"blobs={root / 'blobs'}", "--out", str(out), *common]) == 0
    err = capsys.readouterr().err
    assert "class folder(s) with no images: 'zebra'" in err
    assert json.loads((out / "report.json").read_text())["id"]["num_classes"] == 3
