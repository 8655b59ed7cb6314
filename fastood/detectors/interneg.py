"""InterNeg (2026; shared/SPEC.md §4) — inter-modal static negatives + test-time visual negatives.

**Static negatives.** Visual prototypes ``c_k`` = normalised mean of the normalised
image features of a few labelled ID images per class
(:func:`fastood.labels.image_prototypes`, from ``fit`` / ``fit_features``). With the
ID text embeddings ``t_k`` (prompt ``"The nice {}."``), ``b_k = cos(t_k, c_k)``; a
candidate ``n`` passes the inter-modal criterion iff ``cos(n, c_k) < b_k`` for all k,
and its deviation is ``D(n) = mean_k [b_k − cos(n, c_k)]``
(:func:`fastood.labels.interneg_criterion`). The static bank keeps the top
``num_negatives = 2000`` by ``D`` (:func:`fastood.build_bank.bank_for` with
``method="interneg"``), in ``G = 5`` groups.

**Score.** The NegLabel formula over G groups of negatives drawn from the static
negatives and the test-time (dynamic) bank:

    S(x) = (1/G) Σ_g sigmoid(L_id − L_g),   L_id = LSE_k(c_k/τ),   L_g = LSE_{j ∈ group g}(c_j/τ)

τ = 0.01. How the groups are formed is ``grouping``:

* ``"official"`` (default; the published InterNeg scorer, re-done on every scoring
  pass): take ``N = [static | dynamic[:bank_size]]`` — the static negatives in mining
  order (adjectives by D descending, then nouns by D descending), then the dynamic bank
  by D descending — drop the last ``len(N) mod G`` entries (so the lowest-D test-time
  entries go first, and a 1-entry dynamic bank is dropped entirely when ``M_static`` is a
  multiple of G), permute the ``n_kept`` that remain with
  ``torch.randperm(n_kept, generator=torch.Generator().manual_seed(0))`` — the same
  draw as the official ``torch.manual_seed(0); torch.randperm(n_kept)`` on the CPU
  generator, so the permutation is a function of ``n_kept`` alone, and the global RNG
  is never reseeded — and cut the permuted list into G contiguous groups of
  ``n_kept / G`` (:func:`interneg_official_layout`). Every group changes whenever the
  bank grows. The official code keeps the dynamic bank and its D values in fp16, so its
  order within fp16 ties of D is arbitrary; fastood keeps fp32 and a stable sort
  (earlier entries win ties), so the two can differ only where fp16 D values tie.
* ``"fixed"`` (fastood's earlier rule): static group g is the g-th of G contiguous
  equal blocks of the bank's (already permuted) negatives, the last ``M mod G``
  dropped, as :func:`fastood.ops.neglabel_score`; the dynamic bank, sorted by D
  descending, is dealt round-robin: entry r joins group ``r mod G``
  (:func:`interneg_layout`). The static groups never change with the bank size, and
  a new test-time negative changes only the group it joins.

With an empty dynamic bank, ``"fixed"`` is exactly ``neglabel_score(x, bank, K,
groups=G)``. ``"official"`` needs the static negatives in mining order: the bank's
seeded (or explicit, passed again as ``permutation=``) grouping permutation is
inverted, and a bank that dropped negatives at build time (``M mod G`` of its own
grouping) is refused — a bank built by :meth:`InterNeg.fit` in this mode is built with
one group so nothing is dropped. One fused :func:`fastood.ops.segment_lse_max` call
gives all ``L``'s and the ID prediction ``argmax_k c_k``.

**Test-time visual negatives (streaming state).** Features are processed in batches
of ``batch_size`` (256) in order. For each batch: score it; images with
``S < beta`` (0.35) are inverted into text embeddings
(:class:`fastood.detectors._textual_inversion.TextInverter`: one pseudo-token per
image, 10 AdamW steps, lr 2e-2, wd 0.01, init N(0, 0.02²), a random one of CLIP's 80
ImageNet templates per step and image, loss ``1 − cos``; all low-score images of a
batch at once); an inverted embedding is kept iff it passes the inter-modal
criterion; kept ones join the dynamic bank, which is sorted by ``D`` (stable:
earlier entries win ties) and cut to the top ``bank_size`` (2000); the batch is then
rescored with the updated bank. The dynamic bank, the inversion generator (seeded by
``inversion_seed``) and the counters in ``stats`` are the streaming state
(``calibrate`` on images restores it afterwards):
:meth:`InterNeg.reset` clears the bank and counters and reseeds the generator, so a
replayed stream gives the same scores. ``score`` / ``predict`` / ``score_features``
/ ``predict_features`` all update the state; :meth:`InterNeg.head` scores with the
current bank without updating it. ``test_time=False`` disables the update (static
InterNeg).
"""

from __future__ import annotations

import os
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from fastood.bank import TextBank
from fastood.detectors.base import NotFittedError, ZeroShotDetector, _model_embed_dim, check_features
from fastood.detectors.neglabel import resolve_bank
from fastood.labels.mining import image_prototypes, interneg_criterion
from fastood.models import ClipBundle
from fastood.ops import segment_lse_max

__all__ = ["InterNeg", "interneg_layout", "interneg_official_layout", "official_permutation", "mined_order", "GROUPINGS"]

GROUPINGS = ("official", "fixed")


def interneg_layout(num_id: int, num_static: int, num_dynamic: int, groups: int) -> tuple[Tensor, list[int]]:
    """Row order and segment offsets of the combined bank ``[ID | static + dynamic negatives]``.

    Rows are indices into ``cat([ID (K), static negatives (M_s), dynamic negatives (M_d)])``.
    Group g holds static rows ``[g·m, (g+1)·m)`` (``m = M_s // G``) and dynamic rows
    ``r ≡ g (mod G)``. Returns ``(order (K + G·m + M_d,) int64, offsets (G + 2,))``.
    """
    m = num_static // groups
    parts = [torch.arange(num_id)]
    offsets = [0, num_id]
    for g in range(groups):
        static = num_id + torch.arange(g * m, (g + 1) * m)
        dynamic = num_id + num_static + torch.arange(num_dynamic)[g::groups]
        parts += [static, dynamic]
        offsets.append(offsets[-1] + static.numel() + dynamic.numel())
    return torch.cat(parts).to(torch.int64), offsets


def official_permutation(n: int) -> Tensor:
    """The official scorer's group permutation: ``torch.manual_seed(0); torch.randperm(n)`` on the CPU.

    Drawn from a local ``torch.Generator().manual_seed(0)`` — the same sequence as
    reseeding the global CPU generator, without touching the caller's RNG state. It is a
    function of ``n`` alone.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))


def interneg_official_layout(num_id: int, num_static: int, num_dynamic: int, groups: int) -> tuple[Tensor, list[int]]:
    """Row order and offsets of ``[ID | G groups]`` under the published InterNeg grouping.

    Rows index ``cat([ID (K), static negatives in mining order (M_s), dynamic bank by D
    descending (M_d)])``. The ``n = M_s + M_d`` negatives lose their last ``n mod G``
    (lowest-D dynamic entries first), the ``n_kept`` left are permuted by
    :func:`official_permutation` and cut into G contiguous groups of ``n_kept / G``.
    Returns ``(order (K + n_kept,) int64, offsets (G + 2,))``; ``n_kept ≥ G`` is required.
    """
    n = num_static + num_dynamic
    kept = n - n % groups
    if kept < groups:
        raise ValueError(f"{n} negatives cannot fill groups={groups} (official grouping)")
    neg = num_id + official_permutation(kept)
    m = kept // groups
    offsets = [0, num_id] + [num_id + (g + 1) * m for g in range(groups)]
    return torch.cat([torch.arange(num_id), neg]).to(torch.int64), offsets


def mined_order(bank: TextBank, permutation: Sequence[int] | Tensor | None = None) -> Tensor:
    """The bank's negatives put back in mining order (its grouping permutation inverted).

    A :class:`~fastood.bank.TextBank` stores ``mined[:kept][perm]``; ``perm`` is redrawn
    from the recorded seed, or taken from ``permutation`` for a bank built with an
    explicit one, and checked against the recorded ``permutation_sha256``.
    ``ValueError`` when it cannot be recovered or when the bank dropped negatives.
    """
    meta = bank.meta or {}
    kept = bank.num_neg
    hint = "or use grouping='fixed'"
    if permutation is not None:
        perm = torch.as_tensor(permutation, dtype=torch.int64).flatten()
    elif meta.get("permutation") == "seeded" and (meta.get("seed") is None or type(meta.get("seed")) is int):
        seed = meta.get("seed")
        perm = torch.randperm(kept, generator=torch.Generator().manual_seed(0 if seed is None else int(seed)))
    else:
        raise ValueError("grouping='official' needs the static negatives in mining order, but this bank's grouping "
                         f"permutation is not recorded (meta permutation={meta.get('permutation')!r}): pass the "
                         f"permutation it was built with (permutation=), {hint}")
    if perm.numel() != kept or not torch.equal(perm.sort().values, torch.arange(kept)):
        raise ValueError(f"permutation must be a permutation of range({kept}) (the bank's negatives)")
    want = meta.get("permutation_sha256")
    if want is not None:
        from fastood.bank import _sha256_tensor

        if _sha256_tensor(perm) != want:
            raise ValueError("the permutation does not match the one the bank was built with "
                             f"(permutation_sha256 differs): pass the bank's own permutation=, {hint}")
    if int(meta.get("dropped", 0) or 0):
        raise ValueError(f"grouping='official' needs every mined static negative, but this bank dropped "
                         f"{meta['dropped']} at build time (M mod G of its own grouping): build it with one group "
                         f"(build_bank(..., groups=1) / fastood mine --groups 1), {hint}")
    neg = bank.embeddings[bank.num_id :]
    out = torch.empty_like(neg)
    out[perm] = neg
    return out


class InterNeg(ZeroShotDetector):
    """InterNeg detector (see the module docstring for the math and the streaming state).

    Args:
        clip / model / tokenizer / preprocess / device / amp / threshold:
            see :class:`fastood.detectors.Detector`.
        batch_size: images per forward pass *and* per test-time update step (SPEC: 256).
        classes: ID classes (``"imagenet1k"`` default when building; with ``bank=`` they must match).
        bank: a static InterNeg :class:`~fastood.bank.TextBank` (or file); ``None`` = built at
            ``fit`` from the prototypes with :func:`fastood.build_bank.bank_for` (``method="interneg"``).
        prototypes: (K, D) visual prototypes; with ``bank`` and ``prototypes`` given the
            detector is ready without ``fit``.
        groups: G (5). temperature: τ (0.01).
        grouping: ``"official"`` (default: the published scorer's regrouping of
            ``[static | dynamic]`` on every pass) or ``"fixed"`` (static blocks + round-robin
            test-time entries); see the module docstring.
        corpus, num_negatives, seed, permutation, cache, progress: static bank building
            (corpus: preset name or :class:`fastood.labels.Corpus`; default the ``interneg`` preset).
        test_time: add test-time visual negatives (True).
        beta: invert images with score < beta (0.35).
        bank_size: cap of the dynamic bank (2000).
        steps, lr, weight_decay, init_std, templates, final_template: the textual inversion
            (10, 2e-2, 0.01, 0.02, CLIP's 80 ImageNet templates, ``"a photo of a {}."``;
            see :class:`~fastood.detectors._textual_inversion.TextInverter`).
        inversion_seed: seed of the inversion's generator (inits and template draws).
        backend: the fused op's backend.
    """

    name: ClassVar[str] = "interneg"
    needs_fit: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = True

    def __init__(
        self,
        clip: ClipBundle | None = None,
        *,
        model: nn.Module | None = None,
        tokenizer: Callable[[Sequence[str]], Tensor] | None = None,
        preprocess: Callable[[Any], Tensor] | None = None,
        classes: str | Sequence[str] | os.PathLike | None = None,
        bank: TextBank | str | os.PathLike | None = None,
        prototypes: Tensor | None = None,
        groups: int = 5,
        temperature: float = 0.01,
        grouping: str = "official",
        corpus: Any = None,
        num_negatives: int = 2000,
        seed: int | None = 0,
        permutation: Sequence[int] | Tensor | None = None,
        cache: str | os.PathLike | None = None,
        test_time: bool = True,
        beta: float = 0.35,
        bank_size: int = 2000,
        steps: int = 10,
        lr: float = 2e-2,
        weight_decay: float = 0.01,
        init_std: float = 0.02,
        templates: Sequence[str] | None = None,
        final_template: str | None = "a photo of a {}.",
        inversion_seed: int = 0,
        backend: str = "auto",
        progress: bool = True,
        device: str | torch.device | None = None,
        batch_size: int = 256,
        amp: bool | None = None,
        threshold: float | None = None,
    ) -> None:
        from fastood.ops._dispatch import check_temperature

        super().__init__(clip, model=model, tokenizer=tokenizer, preprocess=preprocess, device=device,
                         batch_size=batch_size, amp=amp, threshold=threshold)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be an int >= 1, got {groups!r}")
        if isinstance(num_negatives, bool) or not isinstance(num_negatives, int) or num_negatives < 1:
            raise ValueError(f"num_negatives must be an int >= 1, got {num_negatives!r}")
        if isinstance(bank_size, bool) or not isinstance(bank_size, int) or bank_size < 0:
            raise ValueError(f"bank_size must be an int >= 0, got {bank_size!r}")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (0.0 <= beta <= 1.0):
            raise ValueError(f"beta must be a score threshold in [0, 1], got {beta!r}")
        if isinstance(inversion_seed, bool) or not isinstance(inversion_seed, int):
            raise ValueError(f"inversion_seed must be an int, got {inversion_seed!r}")
        if grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
        self.temperature = check_temperature("temperature", temperature)
        self.groups = groups
        self.grouping = grouping
        self.backend = backend
        self.progress = bool(progress)
        self.test_time = bool(test_time)
        self.beta = float(beta)
        self.bank_size = bank_size
        self.inversion_seed = inversion_seed
        self._build_args = dict(corpus=corpus, num_negatives=num_negatives, seed=seed, permutation=permutation,
                                cache=cache)
        self.inverter = None
        if self.test_time:
            if self.clip is None or self.clip.tokenizer is None:
                raise ValueError("InterNeg with test_time=True inverts images through the text tower: pass the model "
                                 "and its tokenizer (clip= or model= + tokenizer=), or test_time=False")
            from fastood.detectors._textual_inversion import TextInverter

            self.inverter = TextInverter(self.clip.model, self.clip.tokenizer, templates,
                                         final_template=final_template, steps=steps, lr=lr,
                                         weight_decay=weight_decay, init_std=init_std, amp=amp)
        # the static bank: given now, or built at fit time from the prototypes
        self.bank: TextBank | None = None
        self.bank_embeddings: Tensor | None = None
        self.static: Tensor | None = None  # (M_s, D) static negatives in the order the grouping needs
        if bank is not None:
            tb = resolve_bank(bank, self.clip, classes, who="InterNeg", build=None)  # type: ignore[arg-type]
            self._install_bank(tb)
            self._names = list(tb.id_labels)
        else:
            from fastood.labels import load_classnames

            self._names = load_classnames("imagenet1k" if classes is None else classes)
        self.prototypes: Tensor | None = None
        if prototypes is not None:
            self._set_prototypes(prototypes)
        self.dynamic = torch.empty(0, 0)
        self.dynamic_deviation = torch.empty(0)
        self.stats: dict[str, int] = {}
        self.reset()
        self.fitted = self.bank is not None and (self.prototypes is not None or not self.test_time)

    # ---------------------------------------------------------------- properties
    @property
    def classes(self) -> list[str]:
        return list(self._names)

    @property
    def num_id(self) -> int:
        return len(self._names)

    @property
    def feature_dim(self) -> int | None:
        if self.bank is not None:
            return self.bank.dim
        return None if self.prototypes is None else self.prototypes.shape[1]

    def _fit_dim(self) -> int | None:
        if self.bank is not None:
            return self.bank.dim
        return None if self.clip is None else _model_embed_dim(self.clip.model)

    @property
    def num_dynamic(self) -> int:
        """Current size of the test-time bank."""
        return int(self.dynamic.shape[0])

    # -------------------------------------------------------------------- state
    def _install_bank(self, tb: TextBank) -> None:
        if tb.num_neg < self.groups:
            raise ValueError(f"the bank has {tb.num_neg} negatives, fewer than groups={self.groups}")
        # official: mining order (the scorer regroups everything); fixed: the bank's own (grouped) order
        static = (mined_order(tb, self._build_args["permutation"]) if self.grouping == "official"
                  else tb.embeddings[tb.num_id :])
        self._set_bank(tb, self.temperature, self.groups)
        self.static = static.to(self.device)
        self._layout_cache = None

    def _set_prototypes(self, prototypes: Any) -> None:
        p = check_features(prototypes, "prototypes", self.feature_dim, "the bank")
        if p.shape[0] != self.num_id:
            raise ValueError(f"prototypes has {p.shape[0]} rows but there are {self.num_id} ID classes")
        self.prototypes = torch.nn.functional.normalize(p.detach().float(), dim=1).to(self.device)

    def reset(self) -> None:
        """Clear the test-time bank and counters and reseed the inversion generator."""
        d = self.feature_dim or 0
        self.dynamic = torch.empty(0, d, device=self.device)
        self.dynamic_deviation = torch.empty(0, device=self.device)
        self.generator = torch.Generator().manual_seed(self.inversion_seed)
        self.stats = {"batches": 0, "inverted": 0, "accepted": 0, "rejected": 0, "evicted": 0}
        self.last_inversion: dict[str, Tensor] | None = None
        self._layout_cache = None

    def calibrate(self, id_images_or_scores: Any, tpr: float = 0.95, **kw: Any) -> float:
        """As :meth:`Detector.calibrate`; scoring ID images for it leaves the streaming state as it was."""
        saved = (self.dynamic, self.dynamic_deviation, self.generator.get_state(), dict(self.stats),
                 self.last_inversion)
        try:
            return super().calibrate(id_images_or_scores, tpr, **kw)
        finally:
            self.dynamic, self.dynamic_deviation, state, self.stats, self.last_inversion = saved
            self.generator.set_state(state)
            self._layout_cache = None

    def _to(self, device: torch.device) -> None:
        if self.static is not None:
            self.static = self.static.to(device)
        self._layout_cache = None

    # ------------------------------------------------------------------ fitting
    def _fit_features(self, features: Tensor, labels: Tensor | None) -> None:
        assert labels is not None
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= self.num_id:
            raise ValueError(f"labels must lie in [0, {self.num_id}) (the ID classes), got range [{lo}, {hi}]")
        protos = image_prototypes(features.to(self.device), labels, num_classes=self.num_id)
        if self.bank is None:
            if self.clip is None or self.clip.tokenizer is None:
                raise ValueError("InterNeg needs a text bank: pass bank=, or a model with its tokenizer to build one")
            from fastood.build_bank import bank_for
            from fastood.labels import Corpus, load_corpus

            a = self._build_args
            corp = a["corpus"]
            if isinstance(corp, str):
                corp = load_corpus(corp, remove=self._names)
            elif corp is not None and not isinstance(corp, Corpus):
                raise TypeError(f"corpus must be a preset name or a fastood.labels.Corpus, got {type(corp).__name__}")
            tb = bank_for(self.clip, self._names, method="interneg", prototypes=protos.float().cpu(),
                          cache=None if a["cache"] is None else str(a["cache"]), corpus=corp,
                          num_negatives=a["num_negatives"], seed=a["seed"],
                          # official: one group, so no static negative is dropped before the scorer regroups
                          groups=1 if self.grouping == "official" else self.groups,
                          permutation=a["permutation"], progress=self.progress)
            self._install_bank(tb)
        self._set_prototypes(protos)
        self.reset()

    # ------------------------------------------------------------------ scoring
    def _layout(self) -> tuple[Tensor, list[int]]:
        if self._layout_cache is None:
            layout = interneg_official_layout if self.grouping == "official" else interneg_layout
            order, offsets = layout(self.num_id, self.static.shape[0], self.num_dynamic, self.groups)
            rows = torch.cat([self.bank_embeddings[: self.num_id], self.static,
                              self.dynamic.to(self.bank_embeddings)])
            self._layout_cache = (rows[order.to(rows.device)].contiguous(), offsets)
        return self._layout_cache

    def head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Scores with the static + current dynamic bank (no update) and ``argmax_k c_k``."""
        if self.bank is None:
            raise NotFittedError("InterNeg is not fitted yet: call fit(id_images, labels) or "
                                 "fit_features(features, labels) first (or pass bank= and prototypes=)")
        combined, offsets = self._layout()
        lse, _, pred = segment_lse_max(features, combined, offsets, scale=1.0 / self.temperature,
                                       want_argmax=True, backend=self.backend)
        return torch.sigmoid(lse[:, :1] - lse[:, 1:]).mean(dim=1), pred

    def criterion(self, embeddings: Tensor) -> tuple[Tensor, Tensor]:
        """InterNeg's criterion for unit-norm (n, D) text embeddings: ``(keep (n,) bool, D (n,))``."""
        if self.prototypes is None:
            raise NotFittedError("InterNeg has no visual prototypes: call fit(...) / fit_features(...) or pass "
                                 "prototypes=")
        return interneg_criterion(self.bank_embeddings[: self.num_id], self.prototypes,
                                  embeddings.to(self.prototypes.device, torch.float32))

    def insert(self, embeddings: Tensor, deviation: Tensor) -> int:
        """Add criterion-passing embeddings to the dynamic bank; keep the top ``bank_size`` by D.

        Ties keep earlier entries first (stable sort). Returns how many were evicted.
        """
        if self.bank is None:
            raise NotFittedError("InterNeg is not fitted yet: there is no static bank to add negatives to")
        if embeddings.dim() != 2 or embeddings.shape[1] != self.bank.dim or deviation.shape != embeddings.shape[:1]:
            raise ValueError(f"insert needs (n, {self.bank.dim}) embeddings and (n,) deviations, got "
                             f"{tuple(embeddings.shape)} and {tuple(deviation.shape)}")
        emb = torch.cat([self.dynamic, embeddings.to(self.dynamic.device, torch.float32)])
        dev = torch.cat([self.dynamic_deviation, deviation.to(self.dynamic.device, torch.float32)])
        order = torch.sort(dev, descending=True, stable=True).indices[: self.bank_size]
        evicted = emb.shape[0] - order.numel()
        self.dynamic, self.dynamic_deviation = emb[order].contiguous(), dev[order].contiguous()
        self._layout_cache = None
        return evicted

    def update(self, features: Tensor, scores: Tensor) -> int:
        """One test-time step on a batch: invert ``scores < beta`` images, insert what passes. Returns #accepted."""
        low = scores < self.beta
        n = int(low.sum())
        self.stats["batches"] += 1
        if n == 0 or self.bank_size == 0:
            return 0
        result = self.inverter.invert(features[low], generator=self.generator)
        keep, dev = self.criterion(result.embeddings)
        self.last_inversion = {"index": torch.nonzero(low).flatten(), "embeddings": result.embeddings,
                               "accepted": keep, "deviation": dev, "losses": result.losses}
        k = int(keep.sum())
        self.stats["inverted"] += n
        self.stats["accepted"] += k
        self.stats["rejected"] += n - k
        if k:
            self.stats["evicted"] += self.insert(result.embeddings[keep], dev[keep])
        return k

    def _score_features(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.bank is None or (self.test_time and self.prototypes is None):
            raise NotFittedError("InterNeg is not fitted yet: call fit(id_images, labels) or "
                                 "fit_features(features, labels) first (or pass bank= and prototypes=)")
        if not self.test_time:
            return self.head(features)
        scores, preds = [], []
        for i in range(0, features.shape[0], self.batch_size):
            x = features[i : i + self.batch_size]
            s, p = self.head(x)
            if self.update(x, s):
                s, p = self.head(x)  # rescore with the updated bank
            scores.append(s)
            preds.append(p)
        return torch.cat(scores), torch.cat(preds)

    def _repr_extra(self) -> str:
        shape = None if self.bank is None else tuple(self.bank.embeddings.shape)
        return (f", num_id={self.num_id}, bank={shape}, dynamic={self.num_dynamic}/{self.bank_size}, "
                f"groups={self.groups}, grouping={self.grouping!r}, temperature={self.temperature:g}, beta={self.beta:g}, test_time={self.test_time}")
