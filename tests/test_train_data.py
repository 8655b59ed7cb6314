"""The trainer's data walk (fastood.train.data) on unusual folders: symbolic-link loops, FIFOs,
empty class folders, 16-bit images. Truth: the files and labels the test itself created."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from PIL import Image

import fastood.images as I
from fastood.train.data import EmptyDatasetError, Failed, ImageFolderDataset, list_images
from tests.timeout import within


def _png(path, seed: int = 0) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(path)


def _folders(root, counts: dict[str, int]) -> None:
    for k, (cls, n) in enumerate(counts.items()):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            _png(root / cls / f"{cls}{i}.png", 10 * k + i)


def test_a_symlink_loop_does_not_repeat_or_relabel_images(tmp_path):
    _folders(tmp_path, {"cat": 2, "dog": 3})
    os.symlink("..", tmp_path / "cat" / "up")  # cat/up/dog/... would be dog images labelled cat
    with pytest.warns(UserWarning, match="cat/up: symbolic link to a directory: not followed"):
        ds = ImageFolderDataset(tmp_path)
    truth = [(tmp_path / "cat" / f"cat{i}.png", 0) for i in range(2)] + \
            [(tmp_path / "dog" / f"dog{i}.png", 1) for i in range(3)]
    assert ds.samples == truth
    assert [p for p, _ in ds.skipped] == [str(tmp_path / "cat" / "up")]
    # one listing for training and scoring
    assert list_images(tmp_path, []) == I.scan_image_files(tmp_path, include_hidden=False)[0] == [p for p, _ in truth]


def test_a_class_folder_linking_back_to_the_root_is_refused(tmp_path):
    _folders(tmp_path, {"cat": 1, "dog": 1})
    os.symlink(".", tmp_path / "zloop")
    with pytest.raises(ValueError, match="zloop.*links back to the data folder"):
        ImageFolderDataset(tmp_path)
    os.unlink(tmp_path / "zloop")
    os.symlink("cat", tmp_path / "kitty")
    with pytest.raises(ValueError, match="'cat' and 'kitty' are the same folder"):
        ImageFolderDataset(tmp_path)


def test_a_fifo_in_a_class_folder_is_skipped_without_opening(tmp_path):
    _folders(tmp_path, {"cat": 2, "dog": 1})
    fifo = tmp_path / "dog" / "stream.png"
    os.mkfifo(fifo)
    try:
        with pytest.warns(UserWarning, match="stream.png: not a regular file: a FIFO"):
            ds = within(lambda: ImageFolderDataset(tmp_path))
        items = within(lambda: [ds[i] for i in range(len(ds))])
        assert not any(isinstance(it, Failed) for it in items)
        assert [lab for _, lab, _ in items] == [0, 0, 1] and len(ds) == 3
        assert ds.skipped == [(str(fifo), "not a regular file: a FIFO (named pipe) (not opened)")]
    finally:  # release a reader a regression may have left blocked in open()
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_an_empty_class_folder_is_named(tmp_path):
    _folders(tmp_path, {"cat": 2, "dog": 0, "emu": 1})
    (tmp_path / "dog" / "readme.txt").write_text("todo")
    with pytest.raises(EmptyDatasetError, match=r"class folder\(s\) without any image .*\['dog'\]"):
        ImageFolderDataset(tmp_path)
    with pytest.warns(UserWarning, match=r"without any image .*\['dog'\]"):  # evaluation: given classes
        ds = ImageFolderDataset(tmp_path, classes=["cat", "dog", "emu"])
    assert ds.class_counts() == [2, 0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _png(tmp_path / "dog" / "d.png")
        assert ImageFolderDataset(tmp_path).class_counts() == [2, 1, 1]


def test_16bit_images_reach_the_trainer_scaled(tmp_path):
    (tmp_path / "a").mkdir()
    v = np.arange(0, 65536, 256, dtype=np.uint16).reshape(16, 16)
    Image.frombytes("I;16", (16, 16), v.astype("<u2").tobytes()).save(tmp_path / "a" / "g.png")
    pixels, label, _ = ImageFolderDataset(tmp_path)[0]
    expect = np.floor(v / 257.0 + 0.5) / 255.0  # round(v / 257) in 8 bits, then to_tensor's / 255
    assert label == 0 and np.allclose(pixels.numpy(), expect[None].repeat(3, 0), atol=1e-6)
