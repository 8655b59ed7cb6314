"""MCM — Maximum Concept Matching (Ming et al., NeurIPS 2022; shared/SPEC.md §2).

With ``u = f(x)/||f(x)||`` and ID label embeddings ``t_k`` (prompt ``"a photo of a {}"``):

    S(x) = max_k softmax_k(u·t_k / T) = exp(max_k c_k/T − LSE_k(c_k/T)),   T = 1

computed by the fused op :func:`fastood.ops.mcm_score` (one pass: the online LSE
state carries the running max). The ID prediction is ``argmax_k c_k``.
"""

from __future__ import annotations

import os
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from fastood.bank import TextBank
from fastood.detectors.base import ZeroShotDetector
from fastood.detectors.neglabel import resolve_bank
from fastood.models import ClipBundle, encode_texts
from fastood.ops import mcm_score

__all__ = ["MCM", "MCM_TEMPLATE"]

MCM_TEMPLATE = "a photo of a {}"


class MCM(ZeroShotDetector):
    """MCM detector (see the module docstring for the math).

    Args:
        clip / model / tokenizer / preprocess / device / batch_size / amp / threshold:
            see :class:`fastood.detectors.Detector`.
        classes: ``"imagenet1k"`` (default), a list of names, or a file of names.
        temperature: T (1 on raw cosines, as in the paper).
        template: the prompt, ``"a photo of a {}"``.
        bank: a :class:`~fastood.bank.TextBank` (or bank file) whose ID rows are used
            (negatives, if any, are ignored) instead of encoding ``template`` prompts.
        backend: the fused op's backend.
        progress: a progress bar while encoding the prompts.
    """

    name: ClassVar[str] = "mcm"

    def __init__(
        self,
        clip: ClipBundle | None = None,
        *,
        model: nn.Module | None = None,
        tokenizer: Callable[[Sequence[str]], Tensor] | None = None,
        preprocess: Callable[[Any], Tensor] | None = None,
        classes: str | Sequence[str] | os.PathLike | None = None,
        temperature: float = 1.0,
        template: str = MCM_TEMPLATE,
        bank: TextBank | str | os.PathLike | None = None,
        backend: str = "auto",
        progress: bool = True,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        amp: bool | None = None,
        threshold: float | None = None,
    ) -> None:
        super().__init__(clip, model=model, tokenizer=tokenizer, preprocess=preprocess, device=device,
                         batch_size=batch_size, amp=amp, threshold=threshold)
        if not isinstance(template, str) or "{}" not in template:
            raise ValueError(f"template must be a string with one '{{}}' slot, got {template!r}")
        self.template = template
        self.backend = backend

        def build(clip: ClipBundle, names: list[str]) -> TextBank:
            emb = encode_texts(clip.model, clip.tokenizer, [template.format(c) for c in names],
                               device=self.device, progress=progress, desc="encoding class prompts")
            return TextBank(emb, names, [], groups=1,
                            meta={"method": "mcm", "model": clip.name, "pretrained": clip.pretrained,
                                  "text_weights_sha256": clip.text_hash(), "prompts": {"id": template}})

        tb = resolve_bank(bank, self.clip, classes, who="MCM", build=build)
        if tb.num_neg:
            tb = TextBank(tb.id_embeddings, list(tb.id_labels), [], groups=1, meta=dict(tb.meta))
        self._set_bank(tb, temperature, 1)

    def head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``S = max_k softmax_k(c_k/T)`` and ``argmax_k c_k`` via :func:`fastood.ops.mcm_score`."""
        return mcm_score(features, self.bank_embeddings, temperature=self.temperature, return_pred=True,
                         backend=self.backend)
