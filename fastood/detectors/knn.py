"""KNN — nearest-neighbour cosine to the ID training features (shared/SPEC.md §5).

Features (SPEC default for CLIP-kNN, Adaloglou et al.): the visual tower's
*pre-projection* output, standardised per dimension with the training mean and
standard deviation, then L2-normalised:

    z(x) = (x − μ) / σ,   ẑ = z / ||z||,   S(x) = max_j ẑ(x)·ẑ(x_j)     (1-NN cosine)

``μ`` and ``σ`` are the per-dimension mean and population standard deviation
(``ddof = 0``, as ``sklearn.preprocessing.StandardScaler``; a zero σ is replaced by 1)
over the training features. ``standardize=False`` skips the standardisation;
``feature_space="projection"`` uses ``encode_image`` instead.

**k > 1: two published conventions** (``rule``), with ``c_(1) ≥ … ≥ c_(k)`` the k
largest cosines of ``ẑ(x)`` to the training bank:

    rule="kth"      S(x) = c_(k)                                  (OpenOOD's KNN; fastood's default)
    rule="mean_exp" S(x) = (1/k) Σ_{i≤k} exp(c_(i) / T),  T = 0.02  (the CLIP-kNN / PLP code)

OpenOOD scores ``−(2 − 2 c_(k))`` (the negated squared distance of unit vectors), a
strictly increasing map of ``c_(k)``, so its ranking — every metric — is that of
``"kth"``. ``"mean_exp"`` is computed in float64 as ``exp(LSE_i(c_(i)/T) − log k)`` and
returned in float64 (``exp(1/0.02) = e^50`` is fine in float32, but a smaller
``temperature`` would overflow it). With ``k = 1`` both rules rank identically (the
score is ``c_(1)`` or ``exp(c_(1)/T)``). The CLIP-kNN code standardises with the
unbiased std; a uniform scale of ``z`` cancels in ``ẑ``, so this does not matter.

**Bounded memory, exact result.** The (B × N) similarity matrix is never formed:
queries are split into row blocks and the training bank into column blocks so that
one live similarity block holds at most ``block_bytes`` (64 MiB by default); each
block is one GEMM into a reused buffer followed by a row max (or top-k) merged into
a running best. The result is the exact maximum of the fp32 dot products (no
approximate search). Training features are stored once, standardised and
normalised, in ``bank_dtype`` (float32; float16 / bfloat16 halve the memory and
are upcast block by block on the CPU).
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from fastood.detectors.base import Detector
from fastood.models import ClipBundle

__all__ = ["KNN", "KNN_RULES", "standardize_stats", "max_cosine"]

KNN_RULES = ("kth", "mean_exp")

ROWS_PER_PASS = 65536  # rows per chunk when computing statistics / building the bank


def standardize_stats(features: Tensor, *, chunk: int = ROWS_PER_PASS) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and population std (float64, two chunked passes); zero std → 1."""
    n, d = features.shape
    total = torch.zeros(d, dtype=torch.float64, device=features.device)
    for i in range(0, n, chunk):
        total += features[i : i + chunk].double().sum(0)
    mean = total / n
    sq = torch.zeros(d, dtype=torch.float64, device=features.device)
    for i in range(0, n, chunk):
        sq += (features[i : i + chunk].double() - mean).square().sum(0)
    std = (sq / n).sqrt()
    std[std == 0] = 1.0
    return mean, std


def max_cosine(
    queries: Tensor,
    bank: Tensor,
    *,
    k: int = 1,
    block_bytes: int = 64 << 20,
) -> tuple[Tensor, Tensor]:
    """Exact top-``k`` of ``queries @ bankᵀ`` per row, in bounded memory.

    Args:
        queries: (B, D) float32 (unit rows for cosines).
        bank: (N, D) unit rows, float32 / float16 / bfloat16, same device.
        k: how many neighbours (≤ N).
        block_bytes: cap on the live (rows × columns) float32 similarity block.

    Returns:
        ``(values, indices)``, each (B, k), values float32 sorted descending.
    """
    B, D = queries.shape
    N = bank.shape[0]
    elems = max(1, block_bytes // 4)
    bq = min(B, max(1, elems // min(N, 4096)))  # row block: leave room for >= min(N, 4096) columns
    bn = max(k, min(N, elems // bq))
    compute = torch.float32
    upcast = bank.dtype != compute and (bank.device.type == "cpu")
    if not upcast and bank.dtype != compute:
        compute = bank.dtype  # CUDA half GEMM, fp32 accumulation
    buf = torch.empty(bq * bn, dtype=compute, device=queries.device)
    vals = torch.empty(B, k, dtype=torch.float32, device=queries.device)
    idx = torch.empty(B, k, dtype=torch.int64, device=queries.device)
    for r in range(0, B, bq):
        q = queries[r : r + bq].to(compute)
        nb = q.shape[0]
        best_v = torch.full((nb, k), float("-inf"), dtype=torch.float32, device=queries.device)
        best_i = torch.zeros((nb, k), dtype=torch.int64, device=queries.device)
        for c in range(0, N, bn):
            blk = bank[c : c + bn]
            if upcast:
                blk = blk.float()
            n = blk.shape[0]
            sims = buf[: nb * n].view(nb, n)
            torch.mm(q, blk.T, out=sims)
            if k == 1:
                v, i = sims.max(dim=1, keepdim=True)
                v = v.float()
                better = v > best_v  # strict: the first maximiser wins on ties
                best_v = torch.where(better, v, best_v)
                best_i = torch.where(better, i + c, best_i)
            else:
                v, i = sims.topk(min(k, n), dim=1)
                cat_v = torch.cat([best_v, v.float()], dim=1)
                cat_i = torch.cat([best_i, i + c], dim=1)
                top_v, pos = cat_v.topk(k, dim=1)
                best_v, best_i = top_v, cat_i.gather(1, pos)
        vals[r : r + nb] = best_v
        idx[r : r + nb] = best_i
    return vals, idx


class KNN(Detector):
    """k-nearest-neighbour cosine detector (see the module docstring for the math).

    Args:
        clip / model / tokenizer / preprocess / device / batch_size / amp / threshold:
            see :class:`fastood.detectors.Detector`.
        feature_space: ``"pre_projection"`` (SPEC default) or ``"projection"``;
            only affects features computed from images.
        standardize: standardise per dimension with the training mean / std (SPEC default).
        k: neighbours (1 = 1-NN).
        rule: ``"kth"`` (cosine to the k-th nearest, OpenOOD) or ``"mean_exp"`` (mean of the
            top-k ``exp(cos/temperature)``, the CLIP-kNN / PLP code); see the module docstring.
        temperature: T of ``"mean_exp"`` (0.02, the CLIP-kNN code's value).
        block_bytes: cap on the live similarity block while scoring (default 64 MiB).
        bank_dtype: storage dtype of the training bank (float32 default).
        copy: ``False`` lets ``fit_features`` overwrite a float32 input tensor with its
            standardised, normalised version instead of allocating a copy (for very
            large training sets); the input is then the stored bank.
    """

    name: ClassVar[str] = "knn"
    needs_fit: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = False

    def __init__(
        self,
        clip: ClipBundle | None = None,
        *,
        model: nn.Module | None = None,
        tokenizer: Callable[[Sequence[str]], Tensor] | None = None,
        preprocess: Callable[[Any], Tensor] | None = None,
        feature_space: str = "pre_projection",
        standardize: bool = True,
        k: int = 1,
        rule: str = "kth",
        temperature: float = 0.02,
        block_bytes: int = 64 << 20,
        bank_dtype: torch.dtype = torch.float32,
        copy: bool = True,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        amp: bool | None = None,
        threshold: float | None = None,
    ) -> None:
        super().__init__(clip, model=model, tokenizer=tokenizer, preprocess=preprocess, device=device,
                         batch_size=batch_size, amp=amp, threshold=threshold)
        self.feature_space = feature_space  # validated by Detector.feature_space
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        if isinstance(block_bytes, bool) or not isinstance(block_bytes, int) or block_bytes < 4:
            raise ValueError(f"block_bytes must be an int >= 4, got {block_bytes!r}")
        if bank_dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"bank_dtype must be float32, float16 or bfloat16, got {bank_dtype}")
        if rule not in KNN_RULES:
            raise ValueError(f"rule must be one of {KNN_RULES}, got {rule!r}")
        if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                or not (0 < temperature < float("inf"))):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.standardize = bool(standardize)
        self.k = k
        self.rule = rule
        self.temperature = float(temperature)
        self.block_bytes = block_bytes
        self.bank_dtype = bank_dtype
        self.copy = bool(copy)
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self.train_features: Tensor | None = None
        self.train_labels: Tensor | None = None

    @property
    def feature_dim(self) -> int | None:
        return None if self.train_features is None else self.train_features.shape[1]

    def _transform(self, x: Tensor, what: str) -> Tensor:
        """``(x − μ)/σ`` (when standardising), then unit rows; float32. Zero rows are an error."""
        if self.standardize:
            x = (x.float() - self.mean.float()) / self.std.float()
        else:
            x = x.float()
        mx = torch.amax(x.abs(), dim=1)
        if not bool(torch.isfinite(mx).all()):
            i = int(torch.nonzero(~torch.isfinite(mx))[0, 0])
            raise ValueError(f"{what} row {i} has non-finite values")
        if bool((mx == 0).any()):
            i = int(torch.nonzero(mx == 0)[0, 0])
            raise ValueError(f"{what} row {i} is zero after standardisation: its cosine is undefined")
        # ||x||² over/underflows fp32 for max-abs outside ~[1e-19, 1e18]: bring such rows to
        # max-abs in [1, 2) by an exact power of two first (in-range rows keep exact results).
        need = (mx < 2.0**-32) | (mx > 2.0**32)
        if bool(need.any()):
            _, e = torch.frexp(mx[need])
            x = x.clone()
            x[need] = (x[need].double() * torch.pow(2.0, (1 - e).double())[:, None]).float()
        norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        return x / norms

    def _fit_features(self, features: Tensor, labels: Tensor | None) -> None:
        n = features.shape[0]
        if n < self.k:
            raise ValueError(f"k={self.k} needs at least {self.k} training features, got {n}")
        src = features if features.device == self.device else features.to(self.device)
        if self.standardize:
            self.mean, self.std = standardize_stats(src)
        else:
            self.mean = self.std = None
        in_place = (not self.copy and src.dtype == self.bank_dtype and src.is_contiguous()
                    and src.data_ptr() == features.data_ptr())
        bank = src if in_place else torch.empty(n, src.shape[1], dtype=self.bank_dtype, device=self.device)
        for i in range(0, n, ROWS_PER_PASS):
            bank[i : i + ROWS_PER_PASS] = self._transform(src[i : i + ROWS_PER_PASS], f"training features (chunk at {i})")
        self.train_features = bank
        self.train_labels = labels

    def _score_features(self, features: Tensor) -> tuple[Tensor, Tensor | None]:
        q = self._transform(features, "features")
        vals, idx = max_cosine(q, self.train_features, k=self.k, block_bytes=self.block_bytes)
        labels = None if self.train_labels is None else self.train_labels[idx[:, 0]]
        return self._rule(vals), labels

    def _rule(self, vals: Tensor) -> Tensor:
        """(B, k) top-k cosines (descending) → (B,) score per ``rule``."""
        if self.rule == "mean_exp":
            # mean_i exp(c_i/T) = exp(LSE_i(c_i/T) − log k), float64 so a small T cannot overflow
            lse = torch.logsumexp(vals.double() / self.temperature, dim=1)
            return torch.exp(lse - math.log(self.k))
        return vals[:, -1].contiguous()

    def _score_for_grad(self, features: Tensor) -> Tensor:
        """The same score with an autograd graph to ``features`` (attacks): the top-k neighbours are found
        without grad (``max_cosine`` writes into buffers), then their cosines ``q·x_j`` are recomputed
        differentiably; the top-k set is piecewise constant in ``q``, so this is the score's gradient."""
        q = self._transform(features, "features")
        with torch.no_grad():
            _, idx = max_cosine(q.detach(), self.train_features, k=self.k, block_bytes=self.block_bytes)
        vals = (q.unsqueeze(1) * self.train_features[idx].float()).sum(dim=2)  # (B, k)
        return self._rule(vals).float()

    def _repr_extra(self) -> str:
        n = None if self.train_features is None else tuple(self.train_features.shape)
        extra = f", temperature={self.temperature:g}" if self.rule == "mean_exp" else ""
        return f", k={self.k}, rule={self.rule!r}{extra}, feature_space={self.feature_space!r}, standardize={self.standardize}, bank={n}"
