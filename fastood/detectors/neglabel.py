"""NegLabel (Jiang et al., ICLR 2024; shared/SPEC.md §1) — zero-shot, post hoc.

With ``u = f(x)/||f(x)||``, ID label embeddings ``t_k`` (K of them, prompt
``"the nice {}"``) and G groups of mined negative-label embeddings ``n_j``:

    c_k = u·t_k,  c_j = u·n_j,   L_id = LSE_k(c_k/τ),  L_g = LSE_{j∈g}(c_j/τ)
    S(x) = (1/G) Σ_g Σ_k e^{c_k/τ} / (Σ_k e^{c_k/τ} + Σ_{j∈g} e^{c_j/τ}) = mean_g sigmoid(L_id − L_g)

τ = 0.01, G = 100 by default; the ID prediction is ``argmax_k c_k``. Scoring is one
call of the fused op :func:`fastood.ops.neglabel_score` (the B×N logits are never
written). The bank — ``[ID | negatives in G groups]`` — is a
:class:`fastood.bank.TextBank`: given, loaded from a ``.safetensors`` path, or built
with :func:`fastood.build_bank.bank_for` (WordNet corpus → NegMining → grouping,
cached on disk keyed by the model's text weights and every mining parameter).
"""

from __future__ import annotations

import os
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from fastood.bank import TextBank
from fastood.detectors.base import ZeroShotDetector
from fastood.models import ClipBundle
from fastood.ops import neglabel_score

__all__ = ["NegLabel", "resolve_bank"]


def resolve_bank(
    bank: TextBank | str | os.PathLike | None,
    clip: ClipBundle | None,
    classes: str | Sequence[str] | os.PathLike | None,
    *,
    who: str,
    build: Callable[[ClipBundle, list[str]], TextBank],
) -> TextBank:
    """A given / loaded bank (checked against ``classes`` when both are given), or ``build(clip, names)``."""
    from fastood.labels import load_classnames

    if isinstance(bank, (str, os.PathLike)):
        bank = TextBank.load(bank)
    if bank is not None:
        if not isinstance(bank, TextBank):
            raise TypeError(f"bank must be a fastood.bank.TextBank or a path to a bank file, got {type(bank).__name__}")
        if classes is not None:
            names = load_classnames(classes)
            if names != list(bank.id_labels):
                raise ValueError(f"classes ({len(names)} names) do not match the bank's {bank.num_id} ID labels: "
                                 "pass one of them, or a bank built for these classes")
        return bank
    if clip is None or clip.tokenizer is None:
        raise ValueError(f"{who} needs a text bank: pass bank= (a TextBank or bank file), or a model with its "
                         "tokenizer (clip= or model= + tokenizer=) to build one")
    return build(clip, load_classnames("imagenet1k" if classes is None else classes))


class NegLabel(ZeroShotDetector):
    """NegLabel detector (see the module docstring for the math).

    Args:
        clip / model / tokenizer / preprocess / device / batch_size / amp / threshold:
            see :class:`fastood.detectors.Detector`.
        classes: the ID classes — ``"imagenet1k"`` (default when building), a list of
            names, or a file with one name per line. With ``bank=`` they must match it.
        bank: a :class:`~fastood.bank.TextBank`, a bank file path, or ``None`` to build
            one with :func:`fastood.build_bank.bank_for` (needs the model's tokenizer).
        groups: G (default: the bank's G, 100 for a built bank). Any G ≤ the number of
            negatives is valid on any bank (contiguous groups; ``groups=1`` is the
            ungrouped score).
        temperature: τ.
        corpus: candidate corpus for building: a preset name (``"neglabel"``, ``"csp"``)
            or a :class:`fastood.labels.Corpus` (default: the method's preset).
        percentile, ratio: NegMining's quantile (0.95) and kept fraction per POS (0.15).
        mining_precision: NegMining's ranking, ``"float64"`` (default) or ``"float32"`` (the
            reference's CPU ranking: fp32 GEMM + fp32 ``torch.quantile``; see
            :func:`fastood.labels.mine_neglabel`).
        seed, permutation: the grouping permutation (see :meth:`TextBank.from_mined`). The
            default (``seed=0``) is ``torch.randperm(n_kept)`` on a seed-0 *CPU* generator; the
            NegLabel reference draws it on CUDA (``torch.randperm(..., device="cuda")``), which
            gives another permutation: for its exact groups pass that permutation
            (``permutation=``, or ``--permutation FILE`` on the command line; see
            :func:`fastood.labels.load_permutation`).
        cache: bank cache directory (default ``$FASTOOD_CACHE`` or ``~/.cache/fastood``).
        bank_method: ``"neglabel"`` or ``"csp"`` (CSP's conjugated-adjective corpus and
            prompt ensembles, then NegMining) for a built bank.
        backend: the fused op's backend (``"auto"``, ``"triton"``, ``"cpu"``, ``"torch"``, ``"cuda"``).
        progress: progress bars while building the bank.
    """

    name: ClassVar[str] = "neglabel"

    def __init__(
        self,
        clip: ClipBundle | None = None,
        *,
        model: nn.Module | None = None,
        tokenizer: Callable[[Sequence[str]], Tensor] | None = None,
        preprocess: Callable[[Any], Tensor] | None = None,
        classes: str | Sequence[str] | os.PathLike | None = None,
        bank: TextBank | str | os.PathLike | None = None,
        groups: int | None = None,
        temperature: float = 0.01,
        corpus: Any = None,
        percentile: float = 0.95,
        ratio: float = 0.15,
        mining_precision: str = "float64",
        seed: int | None = 0,
        permutation: Sequence[int] | Tensor | None = None,
        cache: str | os.PathLike | None = None,
        bank_method: str = "neglabel",
        backend: str = "auto",
        progress: bool = True,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        amp: bool | None = None,
        threshold: float | None = None,
    ) -> None:
        super().__init__(clip, model=model, tokenizer=tokenizer, preprocess=preprocess, device=device,
                         batch_size=batch_size, amp=amp, threshold=threshold)
        from fastood.labels.mining import MINING_PRECISIONS

        if mining_precision not in MINING_PRECISIONS:
            raise ValueError(f"mining_precision must be one of {MINING_PRECISIONS}, got {mining_precision!r}")
        if bank_method not in ("neglabel", "csp"):
            raise ValueError(f"bank_method must be 'neglabel' or 'csp', got {bank_method!r}")
        if groups is not None and (isinstance(groups, bool) or not isinstance(groups, int) or groups < 1):
            raise ValueError(f"groups must be an int >= 1, got {groups!r}")
        self.backend = backend

        def build(clip: ClipBundle, names: list[str]) -> TextBank:
            from fastood.build_bank import bank_for
            from fastood.labels import Corpus, load_corpus

            corp = corpus
            if isinstance(corp, str):
                corp = load_corpus(corp)
            elif corp is not None and not isinstance(corp, Corpus):
                raise TypeError(f"corpus must be a preset name or a fastood.labels.Corpus, got {type(corp).__name__}")
            # mining_precision only joins the cache key when it is not the default (old caches stay valid)
            extra = {} if mining_precision == "float64" else {"mining_precision": mining_precision}
            return bank_for(clip, names, method=bank_method, cache=None if cache is None else str(cache),
                            corpus=corp, percentile=percentile, ratio=ratio, groups=100 if groups is None else groups,
                            seed=seed, permutation=permutation, progress=progress, **extra)

        tb = resolve_bank(bank, self.clip, classes, who="NegLabel", build=build)
        if tb.num_neg == 0:
            raise ValueError("the bank has no negative labels: NegLabel needs [ID | negatives] (use MCM for ID only)")
        g = tb.groups if groups is None else groups
        if g > tb.num_neg:
            raise ValueError(f"groups={g} exceeds the bank's {tb.num_neg} negatives")
        self._set_bank(tb, temperature, g)

    def head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``S = mean_g sigmoid(L_id − L_g)`` and ``argmax_k c_k`` via :func:`fastood.ops.neglabel_score`."""
        return neglabel_score(features, self.bank_embeddings, self.num_id, groups=self.groups,
                              temperature=self.temperature, return_pred=True, backend=self.backend)

    def _repr_extra(self) -> str:
        return super()._repr_extra() + f", groups={self.groups}"
