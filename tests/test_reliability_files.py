"""Issue 11 (files): nothing lost, nothing hangs, nothing silently wrong with unusual files.

Each test holds one guarantee against an independent truth: the bytes of a file name, a
hand-computed 8-bit value, the file list we made, the mode ``0o666 & ~umask`` of
``open()``, or the rows of a run we control. Calls that could block on a FIFO run in a
thread with a timeout, so a regression fails instead of hanging CI.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastood import outputs as O
from fastood._io import atomic_write_bytes
from fastood.cli import main
import fastood.images as I
from fastood.images import UnreadableImageError, iter_image_batches, list_image_files, load_image
from tests.tiny import TINY_KWARGS
from tests.timeout import within

COLS = O.columns_for(False)
BAD_NAME = b"x\xff\xfe.png"  # not UTF-8: legal on Linux, where a file name is bytes


@pytest.fixture
def fifo(tmp_path):
    """A FIFO named like an image; afterwards a writer end is opened once, which releases any reader a
    regression left blocked in open()."""
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    yield path
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # ENXIO: nobody is blocked reading it
        pass


def _png(path, seed: int = 0, size: int = 12) -> None:
    a = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(a).save(path)


# ------------------------------------------------------------------------- non-UTF-8 file names


def _row(path: str, score: float) -> dict:
    return {"path": path, "score": score, "pred": 1, "pred_label": "cat"}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_non_utf8_names_round_trip_in_every_format(tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    bad = os.fsdecode(str(tmp_path).encode() + b"/" + BAD_NAME)
    rows = [_row(bad, 0.25), _row("plain é.png", 0.5)]
    out = O.write_rows(tmp_path / f"s{suffix}", rows, COLS)
    back = O.read_rows(out)
    assert [os.fsencode(r["path"]) for r in back] == [os.fsencode(r["path"]) for r in rows]
    assert [r["score"] for r in back] == [0.25, 0.5]
    if suffix == ".csv":  # the exact bytes are in the file
        assert BAD_NAME in out.read_bytes()
    if suffix == ".jsonl":  # an ASCII escape of the surrogate, valid JSON
        assert json.loads(out.read_bytes().splitlines()[0].decode("ascii"))["path"] == bad
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(out)
        assert t.column("path_bytes").to_pylist()[0].endswith(BAD_NAME)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_journal_appends_and_resumes_a_non_utf8_name(tmp_path, suffix):
    bad = os.fsdecode(BAD_NAME)
    path = tmp_path / f"j{suffix}"
    with O.RowJournal(path, COLS) as j:
        j.append([_row("a.png", 0.1), _row(bad, 0.2)])
    with open(path, "ab") as f:  # a crash mid-record
        f.write(b"c\xff.png,0.3" if suffix == ".csv" else b'{"path": "c')
    j = O.RowJournal(path, COLS)
    assert j.dropped_tail and {os.fsencode(p) for p in j.done()} == {b"a.png", BAD_NAME}
    j.close()
    merged = O.finalize(tmp_path / "final.csv", [path], COLS, order=[bad, "a.png"])
    assert [os.fsencode(r["path"]) for r in merged] == [BAD_NAME, b"a.png"]


def test_listing_and_loading_bytes_and_non_utf8_paths(tmp_path):
    root = os.fsencode(tmp_path)
    _png(root + b"/" + BAD_NAME)
    _png(tmp_path / "ok.png", 1)
    files = list_image_files(root)  # a bytes directory
    assert sorted(os.fsencode(f) for f in files) == sorted([root + b"/" + BAD_NAME, root + b"/ok.png"])
    assert load_image(root + b"/" + BAD_NAME).size == (12, 12)
    names = [n for b in iter_image_batches(root, _identity_preprocess()) for n in b.names]
    assert sorted(os.fsencode(n) for n in names) == sorted(os.fsencode(f) for f in files)
    with pytest.raises(TypeError, match="paths must be str, bytes or os.PathLike, got int"):
        list_image_files([3])


def _identity_preprocess():
    import torchvision.transforms as T

    return T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor()])


# ------------------------------------------------------------------------- special files


def test_a_fifo_is_refused_without_opening(fifo):
    with pytest.raises(UnreadableImageError, match="not a regular file: a FIFO"):
        within(lambda: load_image(fifo))
    files, skipped = within(lambda: I.scan_image_files(fifo.parent))
    assert files == [] and skipped == [(str(fifo), "not a regular file: a FIFO (named pipe) (not opened)")]


def test_fifo_broken_link_and_link_loop_in_a_directory_are_skipped_with_the_reason(tmp_path, fifo):
    _png(tmp_path / "a.png")
    os.symlink("nowhere.png", tmp_path / "broken.png")
    os.symlink("loop2.png", tmp_path / "loop1.png")
    os.symlink("loop1.png", tmp_path / "loop2.png")
    skipped: list = []
    batches = within(lambda: list(iter_image_batches(tmp_path, _identity_preprocess(), on_error="skip",
                                                      skipped=skipped)))
    assert [n for b in batches for n in b.names] == [str(tmp_path / "a.png")]
    reasons = dict(skipped)
    assert reasons[str(fifo)].startswith("not a regular file: a FIFO")
    assert reasons[str(tmp_path / "broken.png")] == "broken symbolic link (to 'nowhere.png')"
    assert reasons[str(tmp_path / "loop1.png")] == reasons[str(tmp_path / "loop2.png")] == "symbolic link loop"
    with pytest.raises(UnreadableImageError, match="broken symbolic link"):  # on_error="raise" names it
        within(lambda: list(iter_image_batches(tmp_path, _identity_preprocess())))


def test_directory_links_are_not_followed(tmp_path):
    (tmp_path / "d").mkdir()
    _png(tmp_path / "d" / "a.png")
    os.symlink("..", tmp_path / "d" / "up")  # a loop: every image again, forever deeper
    files, skipped = I.scan_image_files(tmp_path)
    assert files == [tmp_path / "d" / "a.png"]
    assert [p for p, _ in skipped] == [str(tmp_path / "d" / "up")] and "not followed" in skipped[0][1]


# ------------------------------------------------------------------------- 16-bit and float images


def _saved(tmp_path, img: Image.Image, name: str) -> Path:
    img.save(tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("mode,fmt", [("I;16", "png"), ("I;16", "tiff"), ("I;16B", "tiff")])
def test_16bit_gradient_is_scaled_by_257(tmp_path, mode, fmt):
    v = np.arange(0, 65536, 64, dtype=np.uint16).reshape(32, 32)  # a gradient over the whole 16-bit range
    raw = v.astype("<u2" if mode == "I;16" else ">u2").tobytes()
    path = _saved(tmp_path, Image.frombytes(mode, (32, 32), raw), f"g.{fmt}")
    got = np.asarray(load_image(path))
    expect = np.floor(v.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)  # round(v / 257), by hand
    assert got.shape == (32, 32, 3) and (got == expect[..., None]).all()
    assert got.min() == 0 and got.max() == 255 and abs(got.mean() - 127.3) < 1.0  # not saturated white


def test_32bit_int_and_float_images_by_range_or_refused(tmp_path):
    v = np.arange(0, 65536, 64, dtype=np.int32).reshape(32, 32)
    got = np.asarray(load_image(_saved(tmp_path, Image.fromarray(v), "i.tiff")))
    assert (got[..., 0] == np.floor(v / 257.0 + 0.5)).all()
    f = (np.arange(1024, dtype=np.float32) / 1023.0).reshape(32, 32)
    got = np.asarray(load_image(_saved(tmp_path, Image.fromarray(f), "f.tiff")))
    assert (got[..., 0] == np.floor(f.astype(np.float64) * 255.0 + 0.5)).all()
    with pytest.raises(UnreadableImageError, match="values in 0…65535.*-5…"):
        load_image(_saved(tmp_path, Image.fromarray(v - 5), "neg.tiff"))
    with pytest.raises(UnreadableImageError, match=r"values in \[0, 1\], got \[0, 2\]"):
        load_image(_saved(tmp_path, Image.fromarray(f * 2), "f2.tiff"))


# ------------------------------------------------------------------------- umask


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain", "w"):
            pass
        want = stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
        assert want == 0o666 & ~umask
        from tests.test_bank import make_bank

        made = [atomic_write_bytes(tmp_path / "a.bin", b"x"), O.write_rows(tmp_path / "s.csv", [], COLS),
                O.write_rows(tmp_path / "s.jsonl", [], COLS), O.write_json_atomic(tmp_path / "m.json", {}),
                make_bank()[0].save(tmp_path / "b.safetensors")]
        for p in made:
            assert stat.S_IMODE(os.stat(p).st_mode) == want, p
        import torch

        from fastood.train.checkpoint import save_checkpoint

        ck = save_checkpoint(tmp_path / "run", 1, {"w": torch.zeros(2)}, {"step": 1})
        (tmp_path / "plain_dir").mkdir()
        assert stat.S_IMODE(os.stat(ck).st_mode) == stat.S_IMODE(os.stat(tmp_path / "plain_dir").st_mode)
        assert all(stat.S_IMODE(os.stat(f).st_mode) == want for f in ck.iterdir())
    finally:
        os.umask(old)


# ------------------------------------------------------------------------- fastood score: resume and output files


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Three images and the MCM arguments of a tiny random model (fast: no negatives to mine)."""
    root = tmp_path_factory.mktemp("rel")
    (root / "imgs").mkdir()
    for i in range(3):
        _png(root / "imgs" / f"im{i}.png", i)
    (root / "classes.txt").write_text("dog\ncat\n")
    common = ["--method", "mcm", "--model", "ViT-B-32", "--pretrained", "none", "--model-kwargs",
              json.dumps(TINY_KWARGS), "--classes", str(root / "classes.txt"), "--device", "cpu", "--quiet",
              "--batch-size", "2"]
    return root, common


def _score(common, out, *paths, extra=()):
    return main(["score", *map(str, paths), "--out", str(out), *common, *extra])


def test_non_utf8_name_is_scored_end_to_end(tiny_run, tmp_path, capsys):
    root, common = tiny_run
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _png(os.fsencode(imgs) + b"/" + BAD_NAME, 5)
    _png(imgs / "ok.png", 6)
    suffixes = [".csv", ".jsonl"]
    try:
        import pyarrow  # noqa: F401

        suffixes.append(".parquet")
    except ImportError:
        pass
    for suffix in suffixes:
        out = tmp_path / f"s{suffix}"
        assert _score(common, out, imgs) == 0
        assert sorted(os.fsencode(r["path"]) for r in O.read_rows(out)) == sorted(
            [os.fsencode(imgs) + b"/" + BAD_NAME, os.fsencode(imgs / "ok.png")])
        assert _score(common, out, imgs) == 0  # resuming: the odd name is found again, not rescored
        assert "scored 0 new image(s)" in capsys.readouterr().out


def test_partial_output_without_a_readable_meta_is_refused(tiny_run, tmp_path):
    root, common = tiny_run
    out = tmp_path / "s.csv"
    assert _score(common, out, root / "imgs") == 0
    rows = O.read_rows(out)
    meta = out.with_name(out.name + ".meta.json")
    O.write_rows(out, rows[:1], COLS)  # an interrupted run ...
    meta.unlink()  # ... whose run record is gone: settings unknown
    with pytest.raises(SystemExit, match="holds rows but its run record .* is missing.*--overwrite"):
        _score(common, out, root / "imgs", extra=["-o", "temperature=0.5"])
    meta.write_text('{"method": "mcm", "options": {')  # cut short
    with pytest.raises(SystemExit, match="is unreadable.*--overwrite"):
        _score(common, out, root / "imgs", extra=["-o", "temperature=0.5"])
    assert O.read_rows(out) == rows[:1]  # nothing appended
    # a foreign file with the right header and no record of ours is not merged either
    foreign = tmp_path / "f.csv"
    foreign.write_text("path,score,pred,pred_label\nsomewhere.png,0.5,0,dog\n")
    with pytest.raises(SystemExit, match="holds rows but its run record"):
        _score(common, foreign, root / "imgs")
    assert not foreign.with_name("f.csv.meta.json").exists()
    # --overwrite starts again
    assert _score(common, out, root / "imgs", extra=["--overwrite"]) == 0
    assert O.read_rows(out) == rows and json.loads(meta.read_text())["method"] == "mcm"


def test_a_csv_renamed_parquet_is_refused_and_leaves_nothing(tiny_run, tmp_path):
    pytest.importorskip("pyarrow")
    root, common = tiny_run
    good = tmp_path / "good.csv"
    assert _score(common, good, root / "imgs") == 0
    out = tmp_path / "s.parquet"
    out.write_bytes(good.read_bytes())
    with pytest.raises(SystemExit, match="holds rows but its run record"):
        _score(common, out, root / "imgs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.csv", "good.csv.meta.json", "s.parquet"]
    # with a run record of the same settings it is still not a Parquet file: refused, nothing left
    (tmp_path / "s.parquet.meta.json").write_bytes((tmp_path / "good.csv.meta.json").read_bytes())
    with pytest.raises(SystemExit, match="not a readable parquet score file"):
        _score(common, out, root / "imgs")
    assert not O.journal_path(out).exists()


def test_another_spelling_of_the_paths_resumes_the_same_rows(tiny_run, tmp_path, monkeypatch, capsys):
    root, common = tiny_run
    out = tmp_path / "s.csv"
    monkeypatch.chdir(root)
    assert _score(common, out, "imgs") == 0  # relative
    first = O.read_rows(out)
    assert [r["path"] for r in first] == [f"imgs/im{i}.png" for i in range(3)]
    capsys.readouterr()
    assert _score(common, out, root / "imgs") == 0  # absolute: the same three images
    assert "3 already in the output" in capsys.readouterr().err
    rows = O.read_rows(out)
    assert [r["path"] for r in rows] == [str(root / "imgs" / f"im{i}.png") for i in range(3)]  # given spelling
    assert [r["score"] for r in rows] == [r["score"] for r in first]


def test_unwritable_out_is_reported_before_the_model_is_built(tiny_run, tmp_path, monkeypatch, capsys):
    import fastood.cli as cli

    root, common = tiny_run

    def boom(*a, **k):
        raise AssertionError("the model was built before --out was checked")

    monkeypatch.setattr(cli, "_build_detector", boom)
    (tmp_path / "d.csv").mkdir()
    targets = [(tmp_path / "d.csv", "it is a directory")]  # an existing directory as the output file
    if os.path.isdir("/proc/self"):
        targets.append((Path("/proc/x.csv"), ""))  # a kernel file system: no new files
    (tmp_path / "plainfile").write_text("")
    targets.append((tmp_path / "plainfile" / "s.csv", "plainfile' is not a directory"))
    for out, reason in targets:
        with pytest.raises(SystemExit) as exc:
            _score(common, out, root / "imgs")
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"fastood score: cannot write --out {str(out)!r}: ")
        assert reason in err[0]
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--id", str(root), "--ood", f"x={root / 'imgs'}", "--out", str(tmp_path / "plainfile"),
              *common])
    assert exc.value.code == 2 and "it exists and is not a directory" in capsys.readouterr().err


def test_score_skips_a_fifo_and_reports_it(tiny_run, tmp_path, capsys):
    root, common = tiny_run
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _png(imgs / "a.png")
    pipe = imgs / "b.png"
    os.mkfifo(pipe)
    try:
        assert within(lambda: _score(common, tmp_path / "s.csv", imgs), timeout=60) == 0
        assert [r["path"] for r in O.read_rows(tmp_path / "s.csv")] == [str(imgs / "a.png")]
        cap = capsys.readouterr()
        assert f"{pipe}: not a regular file: a FIFO" in cap.err and "skipped 1 unreadable" in cap.out
        with pytest.raises(SystemExit, match="no image files"):  # the FIFO alone, named on the command line
            within(lambda: _score(common, tmp_path / "t.csv", pipe), timeout=60)
        assert "not a regular file: a FIFO" in capsys.readouterr().err
    finally:
        try:
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_eval_report_keeps_a_non_utf8_name(tiny_run, tmp_path):
    root, common = tiny_run
    (tmp_path / "id" / "dog").mkdir(parents=True)
    (tmp_path / "id" / "cat").mkdir(parents=True)
    for i in range(2):
        _png(tmp_path / "id" / "dog" / f"d{i}.png", i)
        _png(tmp_path / "id" / "cat" / f"c{i}.png", 10 + i)
    ood = tmp_path / "ood"
    ood.mkdir()
    _png(os.fsencode(ood) + b"/" + BAD_NAME, 20)
    _png(ood / "o.png", 21)
    with open(os.fsencode(ood) + b"/bad\xff.jpg", "wb") as f:  # unreadable, and its name is not UTF-8
        f.write(b"not a jpeg")
    rep = tmp_path / "rep"
    assert main(["eval", "--id", str(tmp_path / "id"), "--ood", f"x={ood}", "--out", str(rep), "--no-plots",
                 *common]) == 0
    assert os.fsencode(ood) + b"/bad\xff.jpg" in (rep / "report.md").read_bytes()
    paths = {os.fsencode(r["path"]) for r in O.read_rows(rep / "scores.csv")}
    assert os.fsencode(ood) + b"/" + BAD_NAME in paths and len(paths) == 6


def test_a_numpy_float_image_is_refused_by_its_shape():
    with pytest.raises(ValueError, match=r"uint8 .* got float32 \(5, 6, 3\)"):
        list(iter_image_batches(np.zeros((5, 6, 3), np.float32), None))


def test_report_images_are_written_atomically(tmp_path, monkeypatch):
    """roc.png / hist.png go through the atomic writer: a failing save leaves the previous
    image intact and no temporary file; a new image follows the umask like every output."""
    import matplotlib.figure

    from fastood.report import plot_histograms, plot_roc

    ids, oods = [0.9, 0.8, 0.7], {"ood": [0.1, 0.75, 0.2]}
    old = os.umask(0o022)
    try:
        roc = plot_roc(tmp_path / "roc.png", ids, oods)
        hist = plot_histograms(tmp_path / "hist.png", ids, oods)
    finally:
        os.umask(old)
    for p in (roc, hist):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
    before = roc.read_bytes()

    def broken(self, fname, *a, **k):
        with open(fname, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plot_roc(tmp_path / "roc.png", ids, oods)
    assert roc.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hist.png", "roc.png"]
