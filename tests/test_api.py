"""fastood.load / fastood.score with a tiny random open_clip model, against an
independent recomputation: open_clip's own preprocess + encode_image, then the
float64 NegLabel formula (fastood.reference) on the detector's bank."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import fastood
from fastood import api
from fastood import reference as R
from fastood.images import UnreadableImageError
from fastood.labels import load_corpus

SIZE = 32
MODEL_KWARGS = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": SIZE, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLASSES = ["dog", "cat", "house", "tree"]


@pytest.fixture(scope="module")
def corpus():
    full = load_corpus("neglabel")
    keep = np.zeros(len(full), dtype=bool)
    keep[::151] = True  # ~470 words, nouns and adjectives
    return full.filter(keep)


@pytest.fixture(scope="module")
def kwargs(corpus, tmp_path_factory):
    return dict(method="neglabel", model="ViT-B-32", pretrained="none", model_kwargs=MODEL_KWARGS, classes=CLASSES,
                device="cpu", corpus=corpus, groups=4, cache=str(tmp_path_factory.mktemp("cache")), progress=False)


@pytest.fixture(scope="module")
def arrays():
    """Five RGB uint8 images at the model's input size (resize/crop are then identities)."""
    gen = np.random.default_rng(0)
    base = gen.integers(0, 256, size=(5, SIZE, SIZE, 3), dtype=np.uint8)
    # smooth some of them so images differ in more than noise
    base[1] = np.linspace(0, 255, SIZE, dtype=np.uint8)[None, :, None]
    base[2, :, : SIZE // 2] = (200, 30, 30)
    return base


@pytest.fixture(scope="module")
def image_dir(arrays, tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("imgs")
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(d / f"img{i}.png")
    return d


@pytest.fixture(scope="module")
def det(kwargs):
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        return fastood.load(**kwargs)


@pytest.fixture(scope="module")
def truth(det, arrays):
    """float64 NegLabel scores from open_clip's preprocess + encode_image and the bank."""
    from PIL import Image

    pixels = torch.stack([det.clip.preprocess(Image.fromarray(a)) for a in arrays])
    with torch.no_grad():
        feats = det.clip.model.encode_image(pixels).double()
    bank = det.bank.embeddings.double()
    return R.neglabel_score(feats, bank, len(CLASSES), groups=4), pixels


def _check(out, expected):
    """Relative error: a random model's NegLabel scores are small (1e-9 … 1e-4), and τ = 0.01
    turns a cosine error ε into a relative score error of about 100·ε."""
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert out.shape == expected.shape
    assert ((out.double() - expected).abs() / expected).max().item() < 1e-3


def test_truth_is_informative(truth):
    s, _ = truth
    assert (s > 0).all() and s.max() / s.min() > 10  # scores differ between images: the comparisons can fail


def test_load_builds_the_requested_detector(det):
    assert det.name == "neglabel" and det.classes == CLASSES and det.groups == 4
    assert det.clip.pretrained == api.RANDOM_TAG and det.device.type == "cpu"


def test_score_every_input_kind(kwargs, arrays, image_dir, truth):
    from PIL import Image

    expected, pixels = truth
    files = sorted(image_dir.iterdir())
    pil = [Image.open(f) for f in files]
    u8 = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(pixels, torch.arange(5)), batch_size=2)
    cases = {
        "directory": str(image_dir),
        "list of paths": [str(f) for f in files],
        "list of PIL": pil,
        "uint8 batch": u8,
        "float batch": pixels,
        "DataLoader of (x, y)": loader,
        "generator of float batches": (pixels[i : i + 3] for i in range(0, 5, 3)),
    }
    for name, images in cases.items():
        out = fastood.score(images, **kwargs)
        try:
            _check(out, expected)
        except AssertionError as exc:
            raise AssertionError(f"input kind {name!r}: {exc}") from None
    # single items
    _check(fastood.score(str(files[2]), **kwargs), expected[2:3])
    _check(fastood.score(files[3], **kwargs), expected[3:4])
    _check(fastood.score(pil[1], **kwargs), expected[1:2])
    _check(fastood.score(u8[4], **kwargs), expected[4:5])


def test_score_caches_the_detector_by_value(kwargs, image_dir, monkeypatch):
    api.clear_cache()
    calls = []
    real = api.load

    def counting(*a, **k):
        calls.append(k)
        return real(*a, **k)

    monkeypatch.setattr(api, "load", counting)
    a = fastood.score(image_dir, **kwargs)
    b = fastood.score(image_dir, **{**kwargs, "classes": list(CLASSES), "model_kwargs": dict(MODEL_KWARGS)})
    assert len(calls) == 1 and torch.equal(a, b)
    fastood.score(image_dir, **{**kwargs, "groups": 2})  # a different detector
    assert len(calls) == 2
    fastood.score(image_dir, **kwargs, batch_size=2)  # batch size is not part of the detector's identity
    assert len(calls) == 2


def test_per_call_options_are_checked_first_and_never_stored(kwargs, image_dir, truth):
    """A bad per-call option is rejected before the detector is cached, and a good one does not stick to it."""
    api.clear_cache()
    det = api._cached({k: v for k, v in kwargs.items() if k != "progress"})  # the detector score() caches
    default = det.batch_size
    for bad in (True, 0, 2.0):
        with pytest.raises(ValueError, match="batch_size"):
            fastood.score(image_dir, batch_size=bad, **kwargs)
        assert det.batch_size == default and api._cached({k: v for k, v in kwargs.items() if k != "progress"}) is det
    _check(fastood.score(image_dir, batch_size=1, **kwargs), truth[0])
    assert det.batch_size == default  # per-call: the cached detector keeps its own
    _check(fastood.score(image_dir, **kwargs), truth[0])  # later calls are unaffected


def test_unreadable_file_raises_or_is_skipped(kwargs, image_dir, tmp_path, truth):
    import shutil

    for f in sorted(image_dir.iterdir()):
        shutil.copy(f, tmp_path / f.name)
    bad = tmp_path / "img2_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(UnreadableImageError, match="img2_broken.png"):
        fastood.score(tmp_path, **kwargs)
    skipped: list = []
    out = fastood.score(tmp_path, on_error="skip", skipped=skipped, **kwargs)
    assert [p for p, _ in skipped] == [str(bad)]
    _check(out, truth[0])


def test_bad_arguments(kwargs, image_dir):
    with pytest.raises(ValueError, match="unknown method 'nope'.*neglabel"):
        fastood.load("nope", pretrained="none")
    with pytest.raises(TypeError, match="does not take option"):
        fastood.load(**{**kwargs, "not_an_option": 1})
    with pytest.raises(ValueError, match="fit"):
        fastood.score(image_dir, method="knn", pretrained="none")
    with pytest.raises(ValueError, match="on_error"):
        fastood.score(image_dir, on_error="ignore", **kwargs)
    with pytest.raises(TypeError, match="model_kwargs"):
        api.load_model("ViT-B-32", "none", model_kwargs="embed_dim=32")


def test_random_weights_are_seeded_and_leave_the_global_rng_alone():
    state = torch.random.get_rng_state()
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        a = api.load_model("ViT-B-32", "none", device="cpu", model_kwargs=MODEL_KWARGS, seed=3)
        b = api.load_model("ViT-B-32", "none", device="cpu", model_kwargs=MODEL_KWARGS, seed=3)
        c = api.load_model("ViT-B-32", "none", device="cpu", model_kwargs=MODEL_KWARGS, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_import_fastood_is_lazy_and_works_without_open_clip():
    code = (
        "import sys; sys.modules['open_clip'] = None\n"
        "import fastood\n"
        "assert 'open_clip' not in sys.modules or sys.modules['open_clip'] is None\n"
        "assert 'fastood.api' not in sys.modules and 'fastood.detectors' not in sys.modules\n"
        "assert callable(fastood.neglabel_score) and callable(fastood.load) and callable(fastood.score)\n"
        "assert fastood.NegLabel.name == 'neglabel'\n"
        "try:\n"
        "    fastood.load('neglabel', pretrained='none')\n"
        "except ImportError as e:\n"
        "    print('IMPORT-ERROR', e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "IMPORT-ERROR" in res.stdout and "open_clip" in res.stdout
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        fastood.nonexistent  # noqa: B018


def test_detector_classes_are_reexported():
    from fastood.detectors import DETECTORS

    for name in ("NegLabel", "MCM", "KNN", "Mahalanobis", "RMD", "MSP", "PLP", "InterNeg"):
        cls = getattr(fastood, name)
        assert cls.__name__ == name and DETECTORS[cls.name] is cls
    assert all(issubclass(c, fastood.Detector) for c in DETECTORS.values())
