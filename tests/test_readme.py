"""Every ```python block of README.md, executed (one test id per block: ``block-<line>``).

A README example must never stop running. This module cuts README.md into its fenced
```` ```python ```` blocks and ``exec``s each one in a fresh namespace, in a fresh temporary
working directory. A block preceded, on the line right above its fence, by

    <!-- readme-test: skip (reason) -->

is reported as skipped with that reason; reserve it for what this machine cannot do
(a GPU, TensorRT, the network, real weights that change the meaning of the example).

What stands in for the reader's world (documented here because the blocks assume it):

================================  ==========================================================
name / path in a block            stand-in
================================  ==========================================================
any model / ``pretrained=``       ``fastood.models.load_clip`` (and ``fastood.api``'s copy)
                                  return ONE shared tiny random open_clip model
                                  (:func:`tests.tiny.tiny_clip`), whatever architecture
                                  name or checkpoint path the block gives
the WordNet corpus of a bank      ``fastood.build_bank.load_corpus`` returns an evenly
                                  spaced 2,000-word subset of the preset (what
                                  ``fastood demo --max-candidates`` does), so a bank takes
                                  seconds; ``load_corpus`` itself is the real one
``~/.cache/fastood``              ``$FASTOOD_CACHE`` = one session temporary directory
                                  (banks are built once and shared between blocks)
``photos/``, ``a.jpg``, ``b.png`` four random 40×40 PNGs / one JPEG / one PNG in the
                                  block's working directory
``bank.safetensors``              a NegLabel bank of the tiny model (5 classes), saved there
``clip``                          the shared tiny :class:`fastood.models.ClipBundle`
``model``                         a tiny open_clip ``CLIP`` with ``output_dict=True`` (as
                                  open_clip's training loop creates it)
``images``, ``pixels``            preprocessed float tensors ``(4, 3, 32, 32)`` / ``(2, …)``
``texts``                         4 tokenized prompts
``id_val_images``                 the list of ``photos/`` paths
``train_loader``                  a ``DataLoader`` of ``(x, y)``: 12 images, 3 classes
``fewshot_loader``                a ``DataLoader`` of ``(x, y)``: one image per ImageNet class
``test_stream``                   a ``DataLoader`` of 8 images (no labels)
``features``                      ``(5, 64)`` pre-projection features (the tiny tower's width)
``image_features``/``text_features``  ``(8, 32)`` random embeddings
``text_bank``                     ``(11,400, 32)`` unit rows (``[1,000 ID | 10,400 negatives]``)
``class_prompt_features``, ``y``  ``(10, 32)`` embeddings and ``(8,)`` labels in ``[0, 10)``
``scale``                         ``torch.tensor(100.0)``
``id_scores``/``ood_scores``/``s1``/``s2``  random numpy score arrays
================================  ==========================================================

Nothing else is provided: a block must import what it uses.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP_RE = re.compile(r"^<!--\s*readme-test:\s*skip\s*\((?P<reason>.+)\)\s*-->\s*$")
FENCE_RE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<info>[^\s`]*)")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None  # the reason of a skip marker right above the fence


def readme_blocks(text: str) -> list[Block]:
    """The fenced ``python`` blocks of ``text`` with their skip markers.

    Raises ``ValueError`` for an unclosed fence and for a skip marker that is not
    directly above a ```python fence (a marker that silently skipped nothing would let
    a broken example through).
    """
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE_RE.match(lines[i])
        if m is None:
            if SKIP_RE.match(lines[i].strip()):
                nxt = FENCE_RE.match(lines[i + 1]) if i + 1 < len(lines) else None
                if nxt is None or nxt.group("info").lower() != "python":
                    raise ValueError(f"README.md:{i + 1}: a readme-test skip marker must be on the line "
                                     "right above a ```python fence")
            i += 1
            continue
        fence, indent = m.group("fence"), m.group("indent")
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"README.md:{start + 1}: fence {fence} is never closed")
        i += 1  # the closing fence
        if m.group("info").lower() == "python":
            above = SKIP_RE.match(lines[start - 1].strip()) if start > 0 else None
            blocks.append(Block(start + 1, "\n".join(body) + "\n", above.group("reason") if above else None))
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


#: what may justify skipping a README example: what CI machines do not have
SKIP_JUSTIFIED = re.compile(r"GPU|CUDA|sm_\d+|TensorRT|network|download|real weights|pretrained weights", re.I)


def test_skips_name_a_missing_resource():
    """A skip marker must say which resource CI lacks (GPU, TensorRT, network, real
    weights), not just silence a broken example."""
    bad = [(b.line, b.skip) for b in BLOCKS if b.skip is not None and not SKIP_JUSTIFIED.search(b.skip)]
    assert not bad, f"README blocks skipped without naming a missing GPU / TensorRT / network / weights: {bad}"


def test_harness_finds_the_blocks():
    # the README has had 7+ python examples since the detectors section existed; finding
    # none would mean the parser broke and every example went untested
    assert len(BLOCKS) >= 7
    text = "a\n<!-- readme-test: skip (needs a GPU) -->\n```python\nx = 1\n```\n\n```bash\nls\n```\n```python\ny = 2\n```\n"
    got = readme_blocks(text)
    assert [(b.line, b.code, b.skip) for b in got] == [(3, "x = 1\n", "needs a GPU"), (10, "y = 2\n", None)]
    with pytest.raises(ValueError, match="skip marker"):
        readme_blocks("<!-- readme-test: skip (x) -->\n```bash\nls\n```\n")
    with pytest.raises(ValueError, match="never closed"):
        readme_blocks("```python\nx = 1\n")


# ----------------------------------------------------------------------------- the stand-in world

CORPUS_WORDS = 2000


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """Files and objects shared by every block (built once: the tiny models, the banks' cache)."""
    from PIL import Image

    from tests.tiny import tiny_clip

    root = tmp_path_factory.mktemp("readme_world")
    files = root / "files"
    (files / "photos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(files / "photos" / f"img{k}.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(files / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(files / "b.png")

    clip = tiny_clip(0)
    train_model = tiny_clip(1).model
    train_model.output_dict = True
    return {"root": root, "files": files, "clip": clip, "train_model": train_model, "cache": root / "cache"}


def _subset_corpus(load_corpus):
    def load(*args, **kwargs):
        corpus = load_corpus(*args, **kwargs)
        if len(corpus) <= CORPUS_WORDS:
            return corpus
        keep = np.zeros(len(corpus), dtype=bool)
        keep[np.unique(np.linspace(0, len(corpus) - 1, CORPUS_WORDS).round().astype(np.int64))] = True
        return corpus.filter(keep)
    return load


@pytest.fixture
def namespace(world, tmp_path, monkeypatch):
    """A fresh namespace and working directory for one block, the stand-ins patched in."""
    import fastood.api
    import fastood.build_bank
    import fastood.models
    from torch.utils.data import DataLoader, TensorDataset

    clip = world["clip"]

    def stand_in_load_clip(model="ViT-B-16-quickgelu", pretrained=None, **kwargs):
        return clip

    monkeypatch.setattr(fastood.models, "load_clip", stand_in_load_clip)
    monkeypatch.setattr(fastood.api, "load_clip", stand_in_load_clip)
    monkeypatch.setattr(fastood.build_bank, "load_corpus", _subset_corpus(fastood.build_bank.load_corpus))
    monkeypatch.setenv("FASTOOD_CACHE", str(world["cache"]))
    shutil.copytree(world["files"], tmp_path, dirs_exist_ok=True)
    if not (world["files"] / "bank.safetensors").exists():
        from fastood.build_bank import bank_for

        bank = bank_for(clip, ["cat", "dog", "car", "tree", "house"], method="neglabel")
        bank.save(world["files"] / "bank.safetensors")
        shutil.copy(world["files"] / "bank.safetensors", tmp_path / "bank.safetensors")
    monkeypatch.chdir(tmp_path)

    g = torch.Generator().manual_seed(0)
    size = clip.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size

    def pix(n):
        return torch.randn(n, 3, size, size, generator=g)

    def unit(n, d=32):
        return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)

    train = TensorDataset(pix(12), torch.arange(12) % 3)
    fewshot = TensorDataset(pix(1000), torch.arange(1000))
    return {
        "__name__": "readme_block",
        "clip": clip,
        "model": world["train_model"],
        "preprocess": clip.preprocess,
        "tokenizer": clip.tokenizer,
        "images": pix(4),
        "pixels": pix(2),
        "texts": clip.tokenizer(["a photo of a cat", "a photo of a dog", "a photo of a car", "a photo of a tree"]),
        "id_val_images": sorted(str(p) for p in Path("photos").iterdir()),
        "train_loader": DataLoader(train, batch_size=4),
        "fewshot_loader": DataLoader(fewshot, batch_size=256),
        "test_stream": DataLoader(pix(8), batch_size=4),
        "features": torch.randn(5, clip.model.visual.transformer.width, generator=g),
        "image_features": torch.randn(8, 32, generator=g),
        "text_features": torch.randn(8, 32, generator=g),
        "text_bank": unit(11400),
        "class_prompt_features": torch.randn(10, 32, generator=g),
        "y": torch.randint(0, 10, (8,), generator=g),
        "scale": torch.tensor(100.0),
        "id_scores": np.random.default_rng(1).random(50) + 0.3,
        "ood_scores": np.random.default_rng(2).random(40),
        "s1": np.random.default_rng(3).random(40),
        "s2": np.random.default_rng(4).random(30),
    }


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block-{b.line}" for b in BLOCKS])
def test_readme_block(block: Block, namespace):
    if block.skip is not None:
        pytest.skip(f"README.md:{block.line}: {block.skip}")
    code = compile(block.code, f"README.md:{block.line}", "exec")
    exec(code, namespace)  # noqa: S102 - the README's own example code
