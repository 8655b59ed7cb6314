"""Build text banks end to end: corpus → prompts → text embeddings → mining → grouped layout.

``build_bank(clip, classes, method="neglabel")`` returns a :class:`fastood.bank.TextBank`;
``bank_for(...)`` does the same through the disk cache. The ``fastood mine`` command
wraps both.

SPEC §1 (NegLabel): ID labels and noun negatives use ``"the nice {}"``, adjectives
``"This is a {} photo"``; NegMining keeps the 15 % of each POS with the lowest
0.95-quantile cosine to the ID labels; G = 100 groups after dropping ``M mod G``.
SPEC §6 (CSP): the ``csp`` corpus encoded with prompt ensembles (mean of the unit
embeddings, renormalised), candidates with max cos > 0.95 to an ID label
excluded, then NegMining. SPEC §4 (InterNeg): the ``interneg`` corpus (class names
removed), InterNeg's prompts, the inter-modal criterion against visual prototypes
and the deviation ranking (M = 2000), stored as one group (the InterNeg scorer regroups
into G = 5 at test time).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import torch

from fastood.bank import TextBank, cached_bank
from fastood.labels import Corpus, load_corpus
from fastood.labels.mining import csp_exclude, mine_interneg, mine_neglabel
from fastood.labels.prompts import (
    CSP_ADJ_TEMPLATES,
    CSP_NOUN_TEMPLATES,
    INTERNEG_ADJ_TEMPLATE,
    INTERNEG_ID_TEMPLATE,
    INTERNEG_NOUN_TEMPLATE,
    NEGLABEL_ADJ_TEMPLATE,
    NEGLABEL_ID_TEMPLATE,
    NEGLABEL_NOUN_TEMPLATE,
    load_classnames,
)
from fastood.models import ClipBundle, encode_texts

__all__ = ["build_bank", "bank_for", "BANK_METHODS", "DEFAULT_GROUPS"]

BANK_METHODS = ("neglabel", "csp", "interneg")
# InterNeg: one group at build time. The published scorer regroups [static | test-time bank]
# into G = 5 on every pass (grouping="official", the default), and needs every mined negative;
# grouping="fixed" builds its own G-group layout from the mined order.
DEFAULT_GROUPS = {"neglabel": 100, "csp": 100, "interneg": 1}
# (ID template, noun templates, adjective templates) per method; several = an ensemble
TEMPLATES = {
    "neglabel": (NEGLABEL_ID_TEMPLATE, (NEGLABEL_NOUN_TEMPLATE,), (NEGLABEL_ADJ_TEMPLATE,)),
    "csp": (NEGLABEL_ID_TEMPLATE, CSP_NOUN_TEMPLATES, CSP_ADJ_TEMPLATES),
    "interneg": (INTERNEG_ID_TEMPLATE, (INTERNEG_NOUN_TEMPLATE,), (INTERNEG_ADJ_TEMPLATE,)),
}


class _LoadedNames(list):
    """Class names already through :func:`load_classnames` (checked, warned about once)."""


def _classnames(classes: str | Sequence[str]) -> list[str]:
    return list(classes) if isinstance(classes, _LoadedNames) else load_classnames(classes)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _encode_ensemble(clip: ClipBundle, words: Sequence[str], templates: Sequence[str], *, batch_size: int,
                     progress: bool, desc: str) -> torch.Tensor:
    """Unit-norm mean over ``templates`` of the unit-norm prompt embeddings of ``words``."""
    acc = None
    for t in templates:
        e = encode_texts(clip.model, clip.tokenizer, [t.format(w) for w in words], batch_size=batch_size,
                         progress=progress, desc=desc)
        acc = e if acc is None else acc + e
    return torch.nn.functional.normalize(acc, dim=1)


def bank_request(clip: ClipBundle, classes: Sequence[str], method: str, **params: Any) -> dict[str, Any]:
    """Everything that determines the bank's contents (the cache key)."""
    return {
        "kind": "text-bank",
        "method": method,
        "model": clip.name,
        "text_weights_sha256": clip.text_hash(),
        "classes_sha": _sha(list(classes)),
        **params,
    }


def build_bank(
    clip: ClipBundle,
    classes: str | Sequence[str] = "imagenet1k",
    *,
    method: str = "neglabel",
    prototypes: torch.Tensor | None = None,
    corpus: Corpus | None = None,
    percentile: float = 0.95,
    ratio: float = 0.15,
    mining_precision: str = "float64",
    num_negatives: int = 2000,
    groups: int | None = None,
    seed: int | None = 0,
    permutation: Sequence[int] | None = None,
    templates: tuple[str, Sequence[str], Sequence[str]] | None = None,
    csp_max_cos: float = 0.95,
    batch_size: int = 1024,
    progress: bool = True,
) -> TextBank:
    """Encode the corpus with ``clip``'s text tower, mine negatives and lay out the bank.

    Args:
        clip: model + tokenizer (:func:`fastood.models.load_clip` or your own).
        classes: ``"imagenet1k"``, a list of names, or a file of names.
        corpus: the candidate corpus (default: the method's preset,
            :func:`fastood.labels.load_corpus`; class names removed for InterNeg).
        method: ``"neglabel"`` (NegMining), ``"csp"`` (conjugated adjective
            phrases, ensembles, max-cos exclusion, NegMining) or ``"interneg"``
            (needs ``prototypes``: (K, D) visual class prototypes from
            :func:`fastood.labels.image_prototypes`).
        percentile, ratio: NegMining's quantile and kept fraction per POS.
        mining_precision: NegMining's ranking precision, ``"float64"`` or ``"float32"`` (the
            NegLabel reference's CPU ranking; see :func:`fastood.labels.mine_neglabel`).
        num_negatives: InterNeg's M.
        groups: G (default 100; 1 for InterNeg, whose scorer regroups at test time); the last
            ``M mod G`` are dropped.
        seed / permutation: the grouping permutation (see :meth:`TextBank.from_mined`).
        templates: ``(id, noun templates, adjective templates)`` override.
    """
    if method not in BANK_METHODS:
        raise ValueError(f"method must be one of {BANK_METHODS}, got {method!r}")
    if method == "interneg" and prototypes is None:
        raise ValueError("method='interneg' needs prototypes: (K, D) image prototypes of the ID classes")
    names = _classnames(classes)
    id_t, noun_ts, adj_ts = templates or TEMPLATES[method]
    if corpus is None:
        corpus = load_corpus(method, remove=names) if method == "interneg" else load_corpus(method)
    enc = dict(batch_size=batch_size, progress=progress)
    id_emb = encode_texts(clip.model, clip.tokenizer, [id_t.format(c) for c in names], desc="encoding ID labels", **enc)
    words, pos = list(corpus.words), list(corpus.pos)
    nouns = [i for i, p in enumerate(pos) if p != "a"]
    adjs = [i for i, p in enumerate(pos) if p == "a"]
    cand = torch.empty(len(words), id_emb.shape[1])
    if nouns:
        cand[nouns] = _encode_ensemble(clip, [words[i] for i in nouns], noun_ts, desc="encoding nouns", **enc)
    if adjs:
        cand[adjs] = _encode_ensemble(clip, [words[i] for i in adjs], adj_ts, desc="encoding adjectives", **enc)
    mining: dict[str, Any] = {"candidates": len(words)}
    dev = clip.device  # mining GEMMs run where the model runs (the fastest device we were given)
    if method == "csp":
        keep = torch.nonzero(csp_exclude(id_emb.to(dev), cand.to(dev), max_cos=csp_max_cos))[:, 0].cpu()
        cand, words, pos = cand[keep], [words[i] for i in keep.tolist()], [pos[i] for i in keep.tolist()]
        mining["csp_max_cos"] = csp_max_cos
        mining["after_exclusion"] = len(words)
    if method == "interneg":
        protos = prototypes.detach().float().cpu()
        selected = mine_interneg(id_emb.to(dev), protos.to(dev), cand.to(dev), pos, m=num_negatives).cpu()
        mining.update(m=num_negatives, prototypes_sha256=hashlib.sha256(protos.numpy().tobytes()).hexdigest())
    else:
        selected = mine_neglabel(id_emb.to(dev), cand.to(dev), pos, percentile=percentile, ratio=ratio,
                                 precision=mining_precision).cpu()
        mining.update(percentile=percentile, ratio=ratio)
        if mining_precision != "float64":
            mining["precision"] = mining_precision
    mining["selected"] = int(selected.numel())
    meta = {
        "method": method,
        "model": clip.name,
        "pretrained": clip.pretrained,
        "text_weights_sha256": clip.text_hash(),
        "corpus_sha256": corpus.sha256(),
        "prompts": {"id": id_t, "noun": list(noun_ts), "adj": list(adj_ts)},
        "mining": mining,
    }
    sel = selected.tolist()
    return TextBank.from_mined(id_emb, names, cand[selected], [words[i] for i in sel],
                               groups=DEFAULT_GROUPS[method] if groups is None else groups,
                               seed=seed, permutation=permutation, meta=meta)


def bank_for(
    clip: ClipBundle,
    classes: str | Sequence[str] = "imagenet1k",
    *,
    method: str = "neglabel",
    cache: str | None = None,
    on_mismatch: str = "rebuild",
    **params: Any,
) -> TextBank:
    """:func:`build_bank` through the disk cache (``~/.cache/fastood`` unless ``cache``)."""
    names = _LoadedNames(load_classnames(classes))  # build_bank does not load (and warn about) them again
    key_params: dict[str, Any] = {}
    for k, v in params.items():
        if k in ("batch_size", "progress"):
            continue  # do not change the result
        if k == "corpus" and v is not None:
            v = v.sha256()
        elif isinstance(v, torch.Tensor) or (k == "permutation" and v is not None):
            v = _sha(torch.as_tensor(v).tolist())  # large: keyed by content hash
        key_params[k] = v
    request = bank_request(clip, list(names), method, **key_params)
    return cached_bank(request, lambda: build_bank(clip, names, method=method, **params), directory=cache, on_mismatch=on_mismatch)
