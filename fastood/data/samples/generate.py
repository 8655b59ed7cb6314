"""Regenerate fastood's bundled sample images (procedural, no third-party content).

    python fastood/data/samples/generate.py [OUT_DIR]

Every image is drawn from scratch with PIL and numpy from a fixed seed; the
files are what ``fastood demo`` scores. They deliberately cover the input
modes the loader must convert to RGB: RGB JPEG/PNG, grayscale (L), RGBA with
transparency, and a palette (P) GIF.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 224


def sunset(rng: np.random.Generator) -> Image.Image:
    y = np.linspace(0, 1, SIZE)[:, None]
    sky = np.stack([255 * (0.95 - 0.3 * y), 160 * (1 - y) + 60, 90 + 120 * y], -1) * np.ones((1, SIZE, 1))
    img = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse([80, 70, 144, 134], fill=(255, 215, 90))
    d.rectangle([0, 130, SIZE, SIZE], fill=(25, 60, 110))
    for i in range(12):  # reflections
        x = 112 + int(rng.normal(0, 12))
        d.line([x - 20 + i, 136 + 7 * i, x + 20 - i, 136 + 7 * i], fill=(240, 190, 80), width=2)
    return img


def house(rng: np.random.Generator) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), (150, 200, 245))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 160, SIZE, SIZE], fill=(70, 150, 60))
    d.rectangle([50, 100, 150, 175], fill=(200, 80, 60))
    d.polygon([(40, 100), (100, 50), (160, 100)], fill=(110, 50, 40))
    d.rectangle([88, 135, 112, 175], fill=(90, 60, 30))
    d.rectangle([62, 115, 80, 133], fill=(250, 250, 200))
    d.rectangle([120, 115, 138, 133], fill=(250, 250, 200))
    d.rectangle([180, 120, 190, 170], fill=(100, 70, 40))
    d.ellipse([160, 80, 210, 130], fill=(40, 120, 40))
    return img


def checkerboard(rng: np.random.Generator) -> Image.Image:
    yy, xx = np.mgrid[:SIZE, :SIZE] // 28
    board = ((yy + xx) % 2).astype(np.uint8)
    rgb = np.where(board[..., None] == 1, [235, 235, 225], [30, 30, 40]).astype(np.uint8)
    return Image.fromarray(rgb)


def stripes(rng: np.random.Generator) -> Image.Image:
    x = np.arange(SIZE)
    colors = rng.integers(0, 256, size=(8, 3))
    rgb = colors[((x[None, :] + x[:, None]) // 20) % 8].astype(np.uint8)
    return Image.fromarray(rgb)


def traffic_light(rng: np.random.Generator) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), (120, 170, 220))
    d = ImageDraw.Draw(img)
    d.rectangle([104, 150, 120, SIZE], fill=(60, 60, 60))
    d.rounded_rectangle([82, 20, 142, 160], radius=12, fill=(30, 30, 30))
    for i, c in enumerate([(230, 40, 30), (240, 200, 40), (40, 200, 80)]):
        d.ellipse([96, 30 + 42 * i, 128, 62 + 42 * i], fill=c)
    return img


def noise(rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8))


def clouds_gray(rng: np.random.Generator) -> Image.Image:
    small = Image.fromarray(rng.integers(0, 256, size=(14, 14), dtype=np.uint8), mode="L")
    return small.resize((SIZE, SIZE), Image.BICUBIC).filter(ImageFilter.GaussianBlur(3))


def target_rgba(rng: np.random.Generator) -> Image.Image:
    img = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    for i, c in enumerate([(220, 30, 30, 255), (250, 250, 250, 255)] * 4):
        r = 100 - 12 * i
        d.ellipse([112 - r, 112 - r, 112 + r, 112 + r], fill=c)
    return img


def mandelbrot(rng: np.random.Generator) -> Image.Image:
    y, x = np.mgrid[-1.2:1.2:SIZE * 1j, -2.0:0.8:SIZE * 1j]
    c = x + 1j * y
    z = np.zeros_like(c)
    it = np.zeros(c.shape, dtype=np.int32)
    for k in range(40):
        m = np.abs(z) <= 2
        z[m] = z[m] * z[m] + c[m]
        it[m] = k
    t = it / it.max()
    rgb = np.stack([255 * t ** 0.5, 255 * t ** 2, 255 * (1 - t) * t * 4], -1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def mosaic_palette(rng: np.random.Generator) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for _ in range(40):
        x0, y0 = rng.integers(0, SIZE, size=2)
        w, h = rng.integers(10, 70, size=2)
        d.rectangle([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return img.convert("P", palette=Image.ADAPTIVE, colors=16)


SAMPLES = [
    ("sunset.jpg", sunset),
    ("house.png", house),
    ("checkerboard.png", checkerboard),
    ("stripes.png", stripes),
    ("traffic_light.png", traffic_light),
    ("noise.jpg", noise),
    ("clouds_gray.png", clouds_gray),
    ("target_rgba.png", target_rgba),
    ("mandelbrot.jpg", mandelbrot),
    ("mosaic_palette.gif", mosaic_palette),
]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for i, (name, fn) in enumerate(SAMPLES):
        img = fn(np.random.default_rng(i))
        kw = {"quality": 80} if name.endswith(".jpg") else {"optimize": True} if name.endswith(".png") else {}
        img.save(out / name, **kw)
        print(f"{name:20s} {img.mode:5s} {(out / name).stat().st_size:7d} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
