"""pytest-benchmark: images/s decoded + preprocessed (224 px, CLIP normalisation) from WebDataset
shards vs from a folder of the same JPEG files, on the CPU, through the one input path the
detectors and ``fastood score`` use (:func:`fastood.images.iter_image_batches`).

Run: ``pytest bench/test_bench_shards.py --benchmark-enable`` (``FASTOOD_BENCH_SHAPES=full``: 2048
images of 400 px in 16 shards). ``extra_info["images"]`` holds the image count: images/s = images / mean.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

pytest.importorskip("webdataset")
from fastood.images import iter_image_batches  # noqa: E402
from fastood.shards import Shards  # noqa: E402
from bench.shapes import shapes  # noqa: E402

S = shapes()
N, SIDE, NSHARDS = S["io_images"], S["io_side"], S["io_shards"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("io")
    (root / "folder").mkdir()
    rng = np.random.default_rng(0)
    blobs = []
    for i in range(N):  # smooth random images: JPEG sizes like photos', not like noise
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((SIDE, SIDE * 3 // 4), Image.BILINEAR)
        b = io.BytesIO()
        img.save(b, "JPEG", quality=90)
        blobs.append(b.getvalue())
        (root / "folder" / f"{i:06d}.jpg").write_bytes(blobs[-1])
    per = -(-N // NSHARDS)
    for s in range(NSHARDS):
        with tarfile.open(root / f"{s:06d}.tar", "w") as tf:
            for i in range(s * per, min(N, (s + 1) * per)):
                info = tarfile.TarInfo(f"{i:06d}.jpg")
                info.size = len(blobs[i])
                tf.addfile(info, io.BytesIO(blobs[i]))
    return root


@pytest.fixture(scope="module")
def preprocess():
    from open_clip import image_transform

    return image_transform(224, is_train=False)


def _drain(images, preprocess, workers: int) -> int:
    return sum(len(b) for b in iter_image_batches(images, preprocess, batch_size=64, num_workers=workers))


@pytest.mark.parametrize("workers", [0, 4])
@pytest.mark.parametrize("source", ["folder", "shards"])
def test_decode_throughput(benchmark, corpus, preprocess, source, workers):
    images = (str(corpus / "folder") if source == "folder"
              else Shards(str(corpus / f"{{000000..{NSHARDS - 1:06d}}}.tar")))
    benchmark.group = f"decode+preprocess {N} JPEG {SIDE}px → 224"
    benchmark.extra_info["images"] = N
    assert benchmark(lambda: _drain(images, preprocess, workers)) == N
