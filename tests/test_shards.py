"""WebDataset shards (fastood.shards) through the real webdataset package, the detectors and `fastood score`.

Truth: the same images written as files and scored through the ordinary file path (the API on a
list of paths), the keys written into the tars, and hand-listed shard assignments.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import webdataset  # noqa: E402,F401  (the dev extra installs it: a missing package fails, not skips)
import fastood  # noqa: E402
from fastood import outputs as O  # noqa: E402
from fastood.cli import main  # noqa: E402
from fastood.images import UnreadableImageError  # noqa: E402
from fastood.shards import Shards, expand_shards, iter_shard_batches, shards_for_rank  # noqa: E402
from tests.tiny import TINY_KWARGS  # noqa: E402

CLASSES = ["dog", "cat", "tree"]


def _png(seed: int) -> bytes:
    from PIL import Image

    a = np.random.default_rng(seed).integers(0, 256, size=(36, 36 + 4 * (seed % 3), 3), dtype=np.uint8)
    b = io.BytesIO()
    Image.fromarray(a).save(b, "PNG")
    return b.getvalue()


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3 shards of 4, 3 and 2 samples (keys 000000…000008) plus the same images as files; in shard 1 one
    sample has corrupt bytes and one has no image member."""
    root = tmp_path_factory.mktemp("shards")
    (root / "shards").mkdir()
    (root / "files").mkdir()
    good: dict[str, Path] = {}
    k = 0
    for s, n in enumerate([4, 3, 2]):
        members = []
        for _ in range(n):
            key = f"{k:06d}"
            data = _png(k)
            members += [(f"{key}.png", data), (f"{key}.txt", f"caption {k}".encode())]
            (root / "files" / f"{key}.png").write_bytes(data)
            good[key] = root / "files" / f"{key}.png"
            k += 1
        if s == 1:
            members += [("bad001.jpg", b"\xff\xd8\xff not a jpeg"), ("noimg01.txt", b"text only")]
        _write_tar(root / "shards" / f"{s:06d}.tar", members)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    args = ["--model", "ViT-B-32", "--pretrained", "none", "--model-kwargs", json.dumps(TINY_KWARGS), "--method",
            "mcm", "--classes", str(root / "classes.txt"), "--device", "cpu", "--quiet", "--batch-size", "3"]
    return root, good, args


@pytest.fixture(scope="module")
def det(data):
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        return fastood.load(method="mcm", model="ViT-B-32", pretrained="none", model_kwargs=TINY_KWARGS,
                            classes=CLASSES, device="cpu", progress=False)


def test_expand_and_rank_assignment(data, tmp_path):
    root, _, _ = data
    pattern = str(root / "shards" / "{000000..000002}.tar")
    urls = expand_shards([pattern, str(root / "shards" / "000001.tar")])
    assert urls == [str(root / "shards" / f"{i:06d}.tar") for i in range(3)]  # duplicates dropped, order kept
    assert shards_for_rank(urls, 0, 2) == [urls[0], urls[2]] and shards_for_rank(urls, 1, 2) == [urls[1]]
    with pytest.raises(ValueError, match=r"2 shard\(s\) not found: .*000003.tar, .*000004.tar"):
        expand_shards(str(root / "shards" / "{000000..000004}.tar"))
    with pytest.raises(ValueError, match="is not a WebDataset shard spec"):
        expand_shards(str(root / "files"))
    with pytest.raises(ValueError, match="need 0 <= rank < world"):
        shards_for_rank(urls, 2, 2)


def test_detector_scores_shards_like_the_same_files(data, det):
    root, good, _ = data
    skipped: list = []
    pred = det.predict(Shards(str(root / "shards" / "{000000..000002}.tar")), on_error="skip", skipped=skipped)
    assert pred.names == sorted(good)  # keys are the row ids, in shard order
    want = det.predict([str(good[k]) for k in pred.names])
    assert np.allclose(pred.scores.numpy(), want.scores.numpy(), rtol=1e-5, atol=1e-6)
    assert (pred.labels == want.labels).all()
    shard1 = str(root / "shards" / "000001.tar")
    assert [s[0] for s in skipped] == [f"{shard1}#bad001", f"{shard1}#noimg01"]
    assert "cannot decode jpg" in skipped[0][1] and "no image member (has txt)" in skipped[1][1]
    with pytest.raises(UnreadableImageError, match="bad001"):
        det.score(Shards(shard1))  # on_error="raise" by default
    # a shard spec string (or a list of them) is read as shards by every image input
    by_spec = det.predict(str(root / "shards" / "{000000..000002}.tar"), on_error="skip")
    assert by_spec.names == pred.names and np.array_equal(by_spec.scores.numpy(), pred.scores.numpy())
    assert det.predict([shard1, str(root / "shards" / "000002.tar")], on_error="skip").names == [
        "000004", "000005", "000006", "000007", "000008"]
    # rank 1 of 2 takes shard 1 only
    assert det.predict(Shards(str(root / "shards" / "{000000..000002}.tar"), rank=1, world=2),
                       on_error="skip").names == ["000004", "000005", "000006"]


def test_batches_never_span_shards_and_skip_keys(data, det):
    root, _, _ = data
    urls = expand_shards(str(root / "shards" / "{000000..000002}.tar"))
    got = [(Path(b.shard).name, b.batch.names, b.last)
           for b in iter_shard_batches(urls, det.clip.preprocess, batch_size=3, skip_keys={"000001"})]
    assert got == [("000000.tar", ["000000", "000002", "000003"], False), ("000000.tar", [], True),
                   ("000001.tar", ["000004", "000005", "000006"], False),
                   ("000001.tar", [], True), ("000002.tar", ["000007", "000008"], True)]


def test_score_cli_resumes_per_shard(data, det, tmp_path, capsys):
    root, good, args = data
    out = tmp_path / "scores.csv"
    spec = str(root / "shards" / "{000000..000001}.tar")
    assert main(["score", spec, "--out", str(out), *args]) == 0
    cap = capsys.readouterr()
    rows = O.read_rows(out)
    assert [r["path"] for r in rows] == [f"{i:06d}" for i in range(7)]
    want = det.score([str(good[r["path"]]) for r in rows]).numpy()
    assert np.allclose([r["score"] for r in rows], want, rtol=1e-5, atol=1e-6)
    record = json.loads((out.parent / "scores.csv.shards.json").read_text())["done"]
    assert record == {str(root / "shards" / "000000.tar"): 4, str(root / "shards" / "000001.tar"): 3}
    assert "bad001" in cap.err and "2/2 shard(s) finished" in cap.out

    # rerun with one more shard: the finished ones are not opened again (shard 0 is now garbage)
    saved = (root / "shards" / "000000.tar").read_bytes()
    try:
        (root / "shards" / "000000.tar").write_bytes(b"garbage, not a tar")
        assert main(["score", str(root / "shards" / "{000000..000002}.tar"), "--out", str(out), *args]) == 0
    finally:
        (root / "shards" / "000000.tar").write_bytes(saved)
    cap = capsys.readouterr()
    assert "2 already finished" in cap.err and "scored 2 new image(s)" in cap.out and "garbage" not in cap.err
    assert [r["path"] for r in O.read_rows(out)] == [f"{i:06d}" for i in range(9)]

    # a shard interrupted half-way (in the rows, not in the record) is read again; its scored keys are skipped
    rec = out.parent / "scores.csv.shards.json"
    done = json.loads(rec.read_text())["done"]
    del done[str(root / "shards" / "000002.tar")]
    rec.write_text(json.dumps({"done": done}))
    assert main(["score", str(root / "shards" / "{000000..000002}.tar"), "--out", str(out), *args]) == 0
    cap = capsys.readouterr()
    assert "scored 0 new image(s)" in cap.out and "3/3 shard(s) finished" in cap.out
    with pytest.raises(SystemExit, match="mix of WebDataset shards and other inputs"):
        main(["score", spec, str(root / "files"), "--out", str(tmp_path / "x.csv"), *args])
    with pytest.raises(SystemExit, match=r"1 shard\(s\) not found"):
        main(["score", str(root / "shards" / "000009.tar"), "--out", str(tmp_path / "x.csv"), *args])


def test_a_broken_shard_is_reported_and_left_unfinished(data, tmp_path, capsys):
    root, _, args = data
    d = tmp_path / "s"
    d.mkdir()
    whole = (root / "shards" / "000002.tar").read_bytes()
    (d / "000000.tar").write_bytes((root / "shards" / "000000.tar").read_bytes())
    (d / "000001.tar").write_bytes(b"\x00garbage" * 100)  # not a tar at all
    out = tmp_path / "o.jsonl"
    assert main(["score", str(d / "{000000..000001}.tar"), "--out", str(out), *args]) == 0
    cap = capsys.readouterr()
    assert "1/2 shard(s) finished (1 unfinished: rerun to retry)" in cap.out and "shard unreadable" in cap.err
    assert len(O.read_rows(out)) == 4
    (d / "000001.tar").write_bytes(whole)  # repaired: the rerun scores it
    assert main(["score", str(d / "{000000..000001}.tar"), "--out", str(out), *args]) == 0
    assert "2/2 shard(s) finished" in capsys.readouterr().out and len(O.read_rows(out)) == 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_take_whole_shards(data, det, tmp_path):
    root, good, args = data
    out = tmp_path / "dist.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "fastood.cli", "score",
           str(root / "shards" / "{000000..000002}.tar"), "--out", str(out), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = O.read_rows(out)
    assert [r["path"] for r in rows] == sorted(good)
    want = det.score([str(good[r["path"]]) for r in rows]).numpy()
    assert np.allclose([r["score"] for r in rows], want, rtol=1e-5, atol=1e-6)
    per_rank = [[r["path"] for r in O.read_rows(O.rank_path(out, r))] for r in range(2)]
    assert per_rank == [["000000", "000001", "000002", "000003", "000007", "000008"],  # shards 0 and 2
                        ["000004", "000005", "000006"]]  # shard 1


def test_a_crash_keeps_every_finished_shard_recorded(data, tmp_path, monkeypatch, capsys):
    """Killed during shard 3: the record still lists shards 0–2 (those of the earlier run too), and the
    rerun opens shard 3 only."""
    import fastood.cli as cli

    root, _, args = data
    d = tmp_path / "s"
    d.mkdir()
    for i in range(3):
        (d / f"{i:06d}.tar").write_bytes((root / "shards" / f"{i:06d}.tar").read_bytes())
    _write_tar(d / "000003.tar", [(f"extra{i}.png", _png(50 + i)) for i in range(2)])
    out = tmp_path / "o.csv"
    assert main(["score", str(d / "{000000..000001}.tar"), "--out", str(out), *args]) == 0
    real, calls = cli._predict_batch, []

    def dies_in_shard_3(det, pixels):
        calls.append(pixels.shape[0])
        if len(calls) == 2:  # shard 2 is one batch of 2; the next batch is shard 3's
            raise RuntimeError("killed")
        return real(det, pixels)

    monkeypatch.setattr(cli, "_predict_batch", dies_in_shard_3)
    with pytest.raises(RuntimeError, match="killed"):
        main(["score", str(d / "{000000..000003}.tar"), "--out", str(out), *args])
    done = json.loads((tmp_path / "o.csv.shards.json").read_text())["done"]
    assert sorted(Path(s).name for s in done) == ["000000.tar", "000001.tar", "000002.tar"]
    monkeypatch.setattr(cli, "_predict_batch", real)
    capsys.readouterr()
    assert main(["score", str(d / "{000000..000003}.tar"), "--out", str(out), *args]) == 0
    cap = capsys.readouterr()
    assert "3 already finished" in cap.err and "scored 2 new image(s)" in cap.out
    assert len(O.read_rows(out)) == 11
