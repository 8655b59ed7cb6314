"""fastood.images: the one image-input contract (files, directories, PIL, tensors, loaders).

Ground truth is open_clip's own preprocess transform applied image by image (PIL),
and torchvision's functional ops for the hand-built pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fastood.images import (
    IMAGE_EXTENSIONS,
    ImageBatch,
    UnreadableImageError,
    iter_image_batches,
    list_image_files,
    make_preprocess,
    preprocess_config,
    preprocess_uint8,
)

SIZE = 32


@pytest.fixture(scope="module")
def oc_preprocess():
    import open_clip

    return open_clip.image_transform(SIZE, is_train=False)


def _smooth(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 4) % 256, (yy * 6) % 256, ((xx + yy) * 3) % 256], -1)
    return ((base + rng.integers(0, 8, base.shape)) % 256).astype(np.uint8)


@pytest.fixture()
def image_dir(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(_smooth(40, 50, 1)).save(d / "a_rgb.png")
    Image.fromarray(_smooth(36, 36, 2)[..., 0]).save(d / "b_gray.jpg")                    # mode L
    Image.fromarray(np.dstack([_smooth(30, 44, 3), np.full((30, 44), 128, np.uint8)])).save(d / "c_rgba.PNG")
    pal = Image.fromarray(_smooth(34, 34, 4)).convert("P")
    pal.info["transparency"] = 0
    pal.save(d / "sub" / "d_palette.gif", transparency=0)
    (d / "e_corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (d / "notes.txt").write_text("not an image")
    return d


# ------------------------------------------------------------------- listing
def test_list_image_files(image_dir):
    files = list_image_files(image_dir)
    names = [f.relative_to(image_dir).as_posix() for f in files]
    assert names == sorted(names) and "notes.txt" not in names
    assert names == ["a_rgb.png", "b_gray.jpg", "c_rgba.PNG", "e_corrupt.jpg", "sub/d_palette.gif"]
    assert [f.name for f in list_image_files(image_dir, recursive=False)] == ["a_rgb.png", "b_gray.jpg", "c_rgba.PNG",
                                                                              "e_corrupt.jpg"]
    # an explicit file is kept whatever its suffix; order of the arguments is kept
    assert list_image_files([image_dir / "notes.txt", image_dir / "a_rgb.png"]) == [image_dir / "notes.txt",
                                                                                   image_dir / "a_rgb.png"]
    with pytest.raises(FileNotFoundError, match="missing.png"):
        list_image_files([image_dir / "missing.png"])
    assert ".jpeg" in IMAGE_EXTENSIONS and ".webp" in IMAGE_EXTENSIONS


# ------------------------------------------------------------------- files
def test_directory_matches_open_clip_preprocess_and_reports_corrupt_file(image_dir, oc_preprocess):
    with pytest.raises(UnreadableImageError, match="e_corrupt.jpg"):
        list(iter_image_batches(image_dir, oc_preprocess, batch_size=2))
    skipped: list[tuple[str, str]] = []
    batches = list(iter_image_batches(image_dir, oc_preprocess, batch_size=2, on_error="skip", skipped=skipped))
    assert [len(b) for b in batches] == [2, 1, 1]  # the corrupt file leaves a batch one short
    assert len(skipped) == 1 and skipped[0][0].endswith("e_corrupt.jpg") and skipped[0][1]
    names = [n for b in batches for n in b.names]
    assert [n.rsplit("/", 1)[-1] for n in names] == ["a_rgb.png", "b_gray.jpg", "c_rgba.PNG", "d_palette.gif"]
    pixels = torch.cat([b.pixels for b in batches])
    assert pixels.dtype == torch.float32 and pixels.shape == (4, 3, SIZE, SIZE)
    for name, px in zip(names, pixels):
        with Image.open(name) as im:
            rgb = (im.convert("RGBA") if im.mode == "P" else im).convert("RGB")
        assert torch.equal(px, oc_preprocess(rgb))
    gray = pixels[1]  # a grayscale file gives three equal channels before normalisation
    mean = torch.tensor(preprocess_config(oc_preprocess)["mean"]).view(3, 1, 1)
    std = torch.tensor(preprocess_config(oc_preprocess)["std"]).view(3, 1, 1)
    raw = gray * std + mean
    assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[1], raw[2], atol=1e-5)
    assert all(b.labels is None for b in batches)


def test_unreadable_single_file_and_worker_loading(image_dir, oc_preprocess):
    with pytest.raises(UnreadableImageError) as err:
        list(iter_image_batches(str(image_dir / "e_corrupt.jpg"), oc_preprocess))
    assert err.value.path.endswith("e_corrupt.jpg") and isinstance(err.value, ValueError)
    files = [image_dir / "a_rgb.png", image_dir / "e_corrupt.jpg", image_dir / "b_gray.jpg"]
    skipped: list = []
    seq = list(iter_image_batches(files, oc_preprocess, on_error="skip", skipped=skipped))
    par = list(iter_image_batches(files, oc_preprocess, on_error="skip", skipped=skipped, num_workers=1))
    assert len(seq) == len(par) == 1 and torch.equal(seq[0].pixels, par[0].pixels) and seq[0].names == par[0].names
    assert len(skipped) == 2
    with pytest.raises(UnreadableImageError, match="e_corrupt"):
        list(iter_image_batches(files, oc_preprocess, num_workers=1))


# ------------------------------------------------------------------- in memory
def test_pil_numpy_and_tensors(oc_preprocess):
    imgs = [Image.fromarray(_smooth(40, 50, i)) for i in range(3)]
    [b] = list(iter_image_batches(imgs, oc_preprocess))
    assert b.names == ["<input 0>", "<input 1>", "<input 2>"]
    assert torch.equal(b.pixels, torch.stack([oc_preprocess(im) for im in imgs]))
    [one] = list(iter_image_batches(imgs[0].convert("L"), oc_preprocess))
    assert torch.equal(one.pixels[0], oc_preprocess(imgs[0].convert("L").convert("RGB")))
    [arr] = list(iter_image_batches(_smooth(40, 50, 0), oc_preprocess))
    assert torch.equal(arr.pixels[0], oc_preprocess(imgs[0]))

    # uint8 at the model size: resize and crop are identities → exactly ToTensor + Normalize
    a = _smooth(SIZE, SIZE, 5)
    raw = torch.from_numpy(a).permute(2, 0, 1).contiguous()
    [t] = list(iter_image_batches(raw, oc_preprocess))
    assert torch.allclose(t.pixels[0], oc_preprocess(Image.fromarray(a)), atol=1e-6)
    # uint8 that needs resizing: tensor resize vs PIL resize agree to interpolation rounding
    big = torch.from_numpy(np.stack([_smooth(48, 60, i) for i in range(5)])).permute(0, 3, 1, 2).contiguous()
    batches = list(iter_image_batches(big, oc_preprocess, batch_size=2))
    assert [len(x) for x in batches] == [2, 2, 1]
    assert [n for x in batches for n in x.names] == [f"<input {i}>" for i in range(5)]
    got = torch.cat([x.pixels for x in batches])
    want = torch.stack([oc_preprocess(Image.fromarray(big[i].permute(1, 2, 0).numpy())) for i in range(5)])
    assert got.shape == want.shape and (got - want).abs().mean() < 0.05
    # float tensors are already preprocessed: used as is
    f = torch.randn(3, 3, SIZE, SIZE, dtype=torch.float64)
    [fb] = list(iter_image_batches(f, None))
    assert fb.pixels.dtype == torch.float32 and torch.equal(fb.pixels, f.float())
    [single] = list(iter_image_batches(f[0], None))
    assert single.pixels.shape == (1, 3, SIZE, SIZE)
    # a list of single (3, H, W) tensors of different sizes is collated after preprocessing
    [mixed] = list(iter_image_batches([big[0], raw, imgs[1]], oc_preprocess))
    assert mixed.pixels.shape == (3, 3, SIZE, SIZE)


def test_loaders_and_datasets_carry_labels(image_dir, oc_preprocess):
    x = torch.randn(7, 3, SIZE, SIZE)
    y = torch.tensor([3, 1, 4, 1, 5, 9, 2])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    batches = list(iter_image_batches(loader, None, batch_size=2))
    assert torch.equal(torch.cat([b.labels for b in batches]), y)
    assert torch.equal(torch.cat([b.pixels for b in batches]), x)
    assert max(len(b) for b in batches) <= 2
    # OpenOOD-style dict batches
    dicts = [{"data": x[:4], "label": y[:4]}, {"data": x[4:], "label": y[4:]}]
    assert torch.equal(torch.cat([b.labels for b in iter_image_batches(dicts, None)]), y)
    # one (x, y) batch passed directly
    [b] = list(iter_image_batches((x, y), None))
    assert torch.equal(b.labels, y)
    # a torchvision ImageFolder (PIL, int) dataset: labels from the folder names
    from torchvision.datasets import ImageFolder

    root = image_dir.parent / "folder"
    for cls, seeds in (("ant", (1, 2)), ("bee", (3,))):
        (root / cls).mkdir(parents=True)
        for s in seeds:
            Image.fromarray(_smooth(40, 40, s)).save(root / cls / f"{s}.png")
    ds = ImageFolder(str(root))
    [b] = list(iter_image_batches(ds, oc_preprocess))
    assert b.labels.tolist() == [0, 0, 1]
    assert torch.equal(b.pixels[2], oc_preprocess(Image.open(root / "bee" / "3.png").convert("RGB")))
    ds_t = ImageFolder(str(root), transform=oc_preprocess)  # dataset already transforms → float tensors
    dl = torch.utils.data.DataLoader(ds_t, batch_size=2)
    assert torch.equal(torch.cat([b.pixels for b in iter_image_batches(dl, None)]), b.pixels)


def test_bad_inputs(image_dir, oc_preprocess):
    with pytest.raises(ValueError, match="3, H, W"):
        list(iter_image_batches(torch.zeros(2, 4, SIZE, SIZE), None))
    with pytest.raises(TypeError, match="uint8"):
        list(iter_image_batches(torch.zeros(2, 3, SIZE, SIZE, dtype=torch.int64), None))
    with pytest.raises(ValueError, match="preprocess"):
        list(iter_image_batches(torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8), None))
    with pytest.raises(ValueError, match="preprocess"):
        list(iter_image_batches(Image.new("RGB", (8, 8)), None))
    with pytest.raises(TypeError, match="unsupported image input"):
        list(iter_image_batches(3.5, oc_preprocess))
    with pytest.raises(TypeError, match="unsupported image input"):
        list(iter_image_batches([object()], oc_preprocess))
    with pytest.raises(ValueError, match="batch_size"):
        list(iter_image_batches(image_dir, oc_preprocess, batch_size=0))
    with pytest.raises(ValueError, match="on_error"):
        list(iter_image_batches(image_dir, oc_preprocess, on_error="ignore"))
    with pytest.raises(FileNotFoundError, match="nope"):
        list(iter_image_batches(image_dir / "nope", oc_preprocess))
    with pytest.raises(ValueError, match="labels"):
        list(iter_image_batches([(torch.zeros(2, 3, SIZE, SIZE), torch.tensor([1, 2, 3]))], None))
    assert list(iter_image_batches([], oc_preprocess)) == []


# ------------------------------------------------------------------- configs
def test_preprocess_config_and_make_preprocess():
    import open_clip
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    model, _, pp = open_clip.create_model_and_transforms(
        "ViT-B-32", pretrained=None, embed_dim=32, image_interpolation="bilinear",
        vision_cfg={"image_size": SIZE, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1})
    cfg = preprocess_config(pp)
    assert cfg["image_size"] == SIZE and cfg["size"] == (SIZE, SIZE) and cfg["interpolation"] == "bilinear"
    assert cfg["resize_mode"] == "shortest" and len(cfg["mean"]) == 3
    assert preprocess_config(model) == cfg
    assert preprocess_config(cfg) == cfg
    assert preprocess_config(open_clip.image_transform(SIZE, is_train=False, resize_mode="squash"))["resize_mode"] == "squash"
    with pytest.raises(TypeError, match="preprocessing config"):
        preprocess_config(object())

    # the NegLabel reference pipeline: Resize(bilinear) → CenterCrop → CLIP mean/std
    mine = make_preprocess(24, interpolation="bilinear")
    assert preprocess_config(mine)["interpolation"] == "bilinear" and preprocess_config(mine)["image_size"] == 24
    im = Image.fromarray(_smooth(30, 45, 7)).convert("RGBA")
    ref = TF.to_tensor(TF.center_crop(TF.resize(im.convert("RGB"), 24, InterpolationMode.BILINEAR), 24))
    ref = TF.normalize(ref, cfg["mean"], cfg["std"])
    assert torch.equal(mine(im), ref)
    with pytest.raises(ValueError, match="interpolation"):
        make_preprocess(24, interpolation="lanczos4")
    with pytest.raises(ValueError, match="image_size"):
        make_preprocess(0)
    with pytest.raises(ValueError, match="std"):
        make_preprocess(24, std=(1, 0, 1))

    # squash and longest modes of the tensor pipeline
    x = torch.from_numpy(_smooth(20, 40, 8)).permute(2, 0, 1)[None].contiguous()
    sq = preprocess_uint8(x, {**cfg, "resize_mode": "squash", "size": (16, 16)})
    assert sq.shape == (1, 3, 16, 16)
    lo = preprocess_uint8(x, {**cfg, "resize_mode": "longest", "size": (16, 16)})
    # longest side → 16, the other → 8, padded with black (0 before normalisation) top and bottom
    black = ((0 - torch.tensor(cfg["mean"])) / torch.tensor(cfg["std"])).view(3, 1)
    assert lo.shape == (1, 3, 16, 16) and torch.allclose(lo[0, :, 0, :], black.expand(3, 16))
    assert not torch.allclose(lo[0, :, 8, :], black.expand(3, 16))


def test_image_batch_len():
    assert len(ImageBatch(torch.zeros(4, 3, 2, 2), ["a"] * 4)) == 4
