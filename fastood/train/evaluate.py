"""CMA's test-time evaluation of a (fine-tuned) CLIP: ID accuracy and NegLabel OOD metrics.

shared/SPEC.md §3, test time: the fine-tuned encoders; ID prompts ``"The nice {c}"``;
a *fixed* list of negative labels (mined once, with the model the run started
from) **re-encoded by the fine-tuned text encoder** — nouns with ``"the nice {}"``,
adjectives with ``"This is a {} photo"`` (NegLabel's templates); the NegLabel score
with no grouping (G = 1)::

    S(x) = sigmoid(LSE_{k≤K}(c_k/τ) − LSE_{j∈neg}(c_j/τ)),   τ = 0.01

ID prediction = argmax over the K ID cosines. Metrics: :func:`fastood.metrics.evaluate_many`
(FPR95 in CMA's ``"interp"`` convention by default; see SPEC §7).

The negative list is a TSV file (``word<TAB>n|a`` per line) so a run keeps using
the same words across evaluations and resumptions: :func:`mine_negatives` makes it
with :func:`fastood.build_bank` (NegMining), :func:`write_negatives` /
:func:`read_negatives` store it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from fastood.labels.prompts import CMA_TEST_TEMPLATE, NEGLABEL_ADJ_TEMPLATE, NEGLABEL_NOUN_TEMPLATE
from fastood.train.checkpoint import atomic_write_text
from fastood.train.data import Batch, ImageFolderDataset, collate_skip_failed

__all__ = ["mine_negatives", "read_negatives", "write_negatives", "encode_images", "evaluate_cma", "text_bank"]

Negatives = list[tuple[str, str]]  # (word, "n" | "a")


def mine_negatives(clip, classnames: Sequence[str], *, corpus=None, stride: int = 1, progress: bool = True) -> Negatives:
    """NegMining (SPEC §1) with ``clip``'s text tower: ``(word, pos)`` of every selected negative,
    nouns first (the order within each is irrelevant for the ungrouped score). ``stride > 1``
    keeps every stride-th corpus word first (quick runs; the paper setting is 1)."""
    import numpy as np

    from fastood.build_bank import build_bank
    from fastood.labels import load_corpus

    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    corpus = load_corpus("neglabel") if corpus is None else corpus
    if stride > 1:
        keep = np.zeros(len(corpus), dtype=bool)
        keep[::stride] = True
        corpus = corpus.filter(keep)
    pos_of = dict(zip(corpus.words, corpus.pos.tolist()))
    bank = build_bank(clip, list(classnames), corpus=corpus, groups=1, permutation=None, seed=0, progress=progress)
    words = sorted(bank.neg_labels, key=lambda w: (pos_of[w] == "a",))  # nouns first (stable sort)
    return [(w, pos_of[w]) for w in words]


def write_negatives(path: str | os.PathLike, negatives: Negatives) -> Path:
    """Atomically write ``word<TAB>pos`` lines."""
    for w, p in negatives:
        if p not in ("n", "a") or "\t" in w or "\n" in w:
            raise ValueError(f"bad negative entry {(w, p)!r}: expected (word without tabs/newlines, 'n' or 'a')")
    return atomic_write_text(path, "".join(f"{w}\t{p}\n" for w, p in negatives))


def read_negatives(path: str | os.PathLike) -> Negatives:
    """Read a negatives TSV: ``word<TAB>pos`` per line (a line without a tab is a noun);
    blank lines and ``#`` comments are skipped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"negatives file {str(path)!r} does not exist")
    out: Negatives = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        word, _, pos = s.partition("\t")
        pos = pos.strip() or "n"
        if pos not in ("n", "a"):
            raise ValueError(f"{str(path)!r} line {n}: part of speech must be 'n' or 'a', got {pos!r}")
        out.append((word.strip(), pos))
    if not out:
        raise ValueError(f"negatives file {str(path)!r} is empty")
    return out


@torch.no_grad()
def text_bank(model, tokenizer, classnames: Sequence[str], negatives: Negatives, *,
              id_template: str = CMA_TEST_TEMPLATE, noun_template: str = NEGLABEL_NOUN_TEMPLATE,
              adj_template: str = NEGLABEL_ADJ_TEMPLATE, batch_size: int = 1024, progress: bool = False) -> Tensor:
    """``[ID | negatives]`` unit-norm text embeddings (K + M, D) float32, encoded by ``model`` now."""
    from fastood.models import encode_texts

    prompts = [id_template.format(c) for c in classnames]
    prompts += [(adj_template if p == "a" else noun_template).format(w) for w, p in negatives]
    return encode_texts(model, tokenizer, prompts, batch_size=batch_size, progress=progress,
                        desc="re-encoding the bank")


@torch.no_grad()
def encode_images(model, dataset: ImageFolderDataset, *, batch_size: int = 64, num_workers: int = 0,
                  device: torch.device | None = None, amp_dtype: torch.dtype | None = None,
                  progress: bool = False, desc: str = "encoding images") -> tuple[Tensor, Tensor, list[tuple[str, str]]]:
    """Image features (n, D) float32 on the CPU, their labels, and the unreadable files skipped."""
    from fastood.progress import progress as progress_bar  # a tqdm bar on a terminal, plain lines in a log

    device = device or next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=collate_skip_failed)
    feats, labels, failed = [], [], []
    for batch in progress_bar(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        batch: Batch
        failed.extend(batch.failed)
        if len(batch) == 0:
            continue
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            f = model.encode_image(batch.pixels.to(device, non_blocking=True))
        feats.append(f.float().cpu())
        labels.append(batch.labels)
    if not feats:
        raise ValueError(f"no readable image in {str(dataset.root)!r} ({len(failed)} unreadable)")
    return torch.cat(feats), torch.cat(labels), failed


@torch.no_grad()
def evaluate_cma(
    model,
    tokenizer: Callable,
    classnames: Sequence[str],
    negatives: Negatives,
    id_dataset: ImageFolderDataset,
    ood_datasets: Mapping[str, ImageFolderDataset],
    *,
    temperature: float = 0.01,
    convention: str = "interp",
    id_template: str = CMA_TEST_TEMPLATE,
    batch_size: int = 64,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict:
    """ID accuracy and NegLabel (G = 1) OOD metrics of ``model`` as it is now (see module doc).

    Returns ``{"id_accuracy", "num_id", "num_classes", "num_negatives", "temperature",
    "ood": {name: metrics}, "average": metrics, "skipped_images": [(path, reason)]}``;
    the metrics are :func:`fastood.metrics.evaluate_many`'s (fractions, not percent).
    """
    from fastood.metrics import evaluate_many
    from fastood.ops import neglabel_score

    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        bank = text_bank(model, tokenizer, classnames, negatives, id_template=id_template, progress=progress).to(device)
        K = len(classnames)
        enc = dict(batch_size=batch_size, num_workers=num_workers, device=device, amp_dtype=amp_dtype, progress=progress)
        x_id, y_id, skipped = encode_images(model, id_dataset, desc="encoding ID images", **enc)
        s_id, pred = neglabel_score(x_id.to(device), bank, K, groups=1, temperature=temperature, return_pred=True)
        result: dict = {
            "id_accuracy": float((pred.cpu() == y_id).double().mean()),
            "num_id": int(y_id.numel()),
            "num_classes": K,
            "num_negatives": len(negatives),
            "temperature": temperature,
        }
        ood_scores = {}
        for name, ds in ood_datasets.items():
            x, _, bad = encode_images(model, ds, desc=f"encoding {name}", **enc)
            skipped += bad
            ood_scores[name] = neglabel_score(x.to(device), bank, K, groups=1, temperature=temperature).cpu()
        if ood_scores:
            metrics = evaluate_many(s_id.cpu(), ood_scores, convention=convention)
            result["ood"], result["average"] = metrics["per_set"], metrics["average"]
        result["skipped_images"] = skipped
        return result
    finally:
        model.train(was_training)
