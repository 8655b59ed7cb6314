r"""OOD-detection metrics: AUROC, AUPR-In/Out and FPR at a fixed TPR, three ways.

Every function takes ``id_scores`` and ``ood_scores`` where **higher = more
in-distribution** (ID).  Scores are converted to float64 numpy first (numpy
arrays, torch tensors on any device/dtype, lists; 1-D or squeezable to 1-D).
Everything is computed by sorting, O(n log n); 100k scores per side is instant.

Notation: ``s`` a score, ``n_id``/``n_ood`` the side sizes; for a threshold
``t``, ``TPR_id(t) = #{id ≥ t} / n_id`` and ``FPR_id(t) = #{ood ≥ t} / n_ood``
(the ROC curve with ID positive).

AUROC and AUPR
--------------
* :func:`auroc` — ``P(s_id > s_ood) + ½ P(s_id = s_ood)`` (Mann–Whitney U with
  average ranks), which equals ``sklearn.metrics.roc_auc_score`` with ID = 1.
* :func:`aupr_in` — ID positive on ``s``; :func:`aupr_out` — OOD positive on
  ``−s``.  ``method="ap"``: average precision, the step integral
  ``Σ_k (R_k − R_{k−1}) P_k`` of ``sklearn.metrics.average_precision_score``
  (NegLabel, MCM).  ``method="trapezoid"``: trapezoidal area under the
  (recall, precision) curve of ``precision_recall_curve`` including its final
  ``(recall 0, precision 1)`` point, i.e. ``auc(recall, precision)`` (OpenOOD).

FPR at 95 % TPR — three conventions (``convention=``)
------------------------------------------------------
Papers report "FPR95" under three different definitions; fastood names them and
never mixes them silently.

``"neglabel"`` (NegLabel, MCM; the ``fpr_and_fdr_at_recall`` code they share)
    ID positive.  Candidate thresholds are the distinct scores, in descending
    order, from the highest score down to the first one reaching full ID recall
    (``min(id_scores)``).  Pick the threshold whose ID recall ``r = k / n_id`` is
    nearest ``tpr`` — distance ``|r − tpr|`` evaluated in float64, no
    interpolation — and return ``#{ood ≥ t} / n_ood``.
    *Tie-break* (equal float64 distance): the **lowest** such threshold wins,
    i.e. the larger recall, and among thresholds with the same recall the one
    with the largest FPR (the reference takes ``np.argmin`` over the candidates
    listed from full recall upwards).  Note 0.95 is not exactly representable:
    with ``n_id = 10`` recall 0.9 (distance 0.04999999999999993) beats 1.0
    (0.05000000000000004).

``"interp"`` (CMA, PLP)
    ``np.interp(tpr, tpr_curve, fpr_curve)`` on the ROC curve with ID positive,
    built exactly as ``sklearn.metrics.roc_curve`` does: one point per distinct
    threshold, ``drop_intermediate=True`` (a point is dropped when both its
    neighbouring (fps, tps) increments are equal), then a leading (0, 0).  Where
    ``tpr`` equals a ``tpr_curve`` value shared by several points, ``np.interp``
    returns the fpr of the last one (the largest).

``"openood"`` (OpenOOD v1.5, InterNeg, AdaNeg)
    OOD positive on ``−s``: sklearn's ``roc_curve(is_ood, −s)`` (again with
    ``drop_intermediate=True`` and the leading (0, 0)); return the fpr of the
    first point whose tpr ≥ ``tpr``.  Here tpr is the fraction of **OOD**
    caught (``s ≤ t``) and the result is the fraction of **ID** flagged as OOD
    (``s ≤ t``) — a different quantity from the other two.  Because sklearn
    drops intermediate points, on runs of equal steps (e.g. many thresholds
    each holding one ID and one OOD score) the first point with tpr ≥ ``tpr``
    may lie past the exact crossing.

Why they differ on ties
-----------------------
NegLabel's score is a mean of sigmoids computed in fp32; for confident ID
images (and some OOD ones) it saturates at exactly 1.0, so a large block of ID
*and* OOD scores share one threshold.  The ROC curve then jumps across 0.95 in
one diagonal step: ``"neglabel"`` snaps to the nearest end of the jump,
``"interp"`` interpolates along it, and ``"openood"`` (counting from the other
end, OOD positive) must flag the whole tied block — all the saturated ID
images — to catch the OOD images inside it.  Several FPR points of difference
are common, so always report which convention a number uses.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping

import numpy as np

__all__ = [
    "CONVENTIONS",
    "AUPR_METHODS",
    "auroc",
    "fpr_at_tpr",
    "aupr_in",
    "aupr_out",
    "evaluate",
    "evaluate_many",
]

CONVENTIONS = ("neglabel", "interp", "openood")
AUPR_METHODS = ("ap", "trapezoid")


# --------------------------------------------------------------------------- input checks


def _as_scores(x: Any, name: str) -> np.ndarray:
    """``x`` as a finite, non-empty, 1-D float64 numpy array (or ValueError naming ``name``)."""
    torch = sys.modules.get("torch")  # a tensor can only exist if torch was imported
    if torch is not None and isinstance(x, torch.Tensor):
        if x.dtype == torch.bool or x.is_complex():
            raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
        x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged nested lists and the like
        raise ValueError(f"{name} must be a 1-D array of real numbers ({exc})") from None
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        if arr.ndim == 0 or sum(d != 1 for d in arr.shape) > 1:
            raise ValueError(f"{name} must be 1-D (or squeezable to 1-D), got shape {tuple(arr.shape)}")
        arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite values (NaN or ±inf)")
    return arr


def _check_tpr(tpr: Any) -> float:
    if isinstance(tpr, (bool, np.bool_)) or not isinstance(tpr, (int, float, np.integer, np.floating)):
        raise ValueError(f"tpr must be a real number in (0, 1], got {tpr!r}")
    tpr = float(tpr)
    if not 0.0 < tpr <= 1.0:  # also rejects NaN
        raise ValueError(f"tpr must be in (0, 1], got {tpr!r}")
    return tpr


def _check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")
    return value


# --------------------------------------------------------------------------- curve primitives


def _counts(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds ``t`` (descending) and int64 ``tps = #{pos ≥ t}``, ``fps = #{neg ≥ t}``.

    The last threshold is the overall minimum, so ``tps[-1] = len(pos)`` and
    ``fps[-1] = len(neg)`` (sklearn's ``_binary_clf_curve``).
    """
    thr = np.unique(np.concatenate([pos, neg]))[::-1]
    tps = pos.size - np.searchsorted(np.sort(pos), thr, side="left")
    fps = neg.size - np.searchsorted(np.sort(neg), thr, side="left")
    return thr, tps, fps


def _roc(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` exactly as ``sklearn.metrics.roc_curve(drop_intermediate=True)``.

    Points whose second differences of both ``fps`` and ``tps`` vanish (equal
    steps on both sides) are dropped, then ``(0, 0)`` is prepended.
    """
    _, tps, fps = _counts(pos, neg)
    if tps.size > 2:
        keep = np.concatenate([[True], (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), [True]])
        tps, fps = tps[keep], fps[keep]
    tps = np.concatenate([[0], tps])
    fps = np.concatenate([[0], fps])
    return fps / neg.size, tps / pos.size


def _pr(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(precision, recall)`` as ``sklearn.metrics.precision_recall_curve``.

    One point per distinct threshold, ``P = tps / (tps + fps)``, ``R = tps / n_pos``,
    in increasing-threshold order (recall decreasing), then the final point
    ``(R = 0, P = 1)``.
    """
    _, tps, fps = _counts(pos, neg)
    precision = tps / (tps + fps)  # tps + fps ≥ 1: every threshold is an observed score
    recall = tps / pos.size
    return np.concatenate([precision[::-1], [1.0]]), np.concatenate([recall[::-1], [0.0]])


def _auroc(id_s: np.ndarray, ood_s: np.ndarray) -> float:
    allv = np.concatenate([id_s, ood_s])
    _, inv, cnt = np.unique(allv, return_inverse=True, return_counts=True)
    below = np.cumsum(cnt) - cnt  # scores strictly below each distinct value
    rank2 = 2 * below + cnt + 1  # twice the average 1-based rank of each tie group (integer)
    r2_id = int(rank2[inv[: id_s.size]].sum())
    u2 = r2_id - id_s.size * (id_s.size + 1)  # 2·U_id
    return float(u2 / (2.0 * id_s.size * ood_s.size))


def _fpr_neglabel(id_s: np.ndarray, ood_s: np.ndarray, tpr: float) -> float:
    _, tps, fps = _counts(id_s, ood_s)
    last = int(np.searchsorted(tps, id_s.size, side="left"))  # first threshold with full recall
    dist = np.abs(tps[: last + 1] / id_s.size - tpr)
    i = last - int(np.argmin(dist[::-1]))  # first minimum from the low-threshold end
    return float(fps[i] / ood_s.size)


def _fpr_interp(id_s: np.ndarray, ood_s: np.ndarray, tpr: float) -> float:
    fpr_c, tpr_c = _roc(id_s, ood_s)
    return float(np.interp(tpr, tpr_c, fpr_c))


def _fpr_openood(id_s: np.ndarray, ood_s: np.ndarray, tpr: float) -> float:
    fpr_c, tpr_c = _roc(-ood_s, -id_s)  # OOD positive on −s
    return float(fpr_c[int(np.argmax(tpr_c >= tpr))])


_FPR = {"neglabel": _fpr_neglabel, "interp": _fpr_interp, "openood": _fpr_openood}


def _aupr(pos: np.ndarray, neg: np.ndarray, method: str) -> float:
    precision, recall = _pr(pos, neg)
    if method == "ap":
        return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))
    # recall is non-increasing, so auc(recall, precision) = −trapezoid(precision, recall)
    return float(-np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2.0))


# --------------------------------------------------------------------------- public API


def auroc(id_scores: Any, ood_scores: Any) -> float:
    r"""Area under the ROC curve with ID positive, ties counted as ½.

    .. math::
        \mathrm{AUROC} = \frac{U}{n_{id} n_{ood}},\quad
        U = R_{id} - \frac{n_{id}(n_{id}+1)}{2}

    where ``R_id`` is the sum of the (tie-averaged, 1-based) ranks of the ID
    scores in the pooled sample; equivalently ``P(s_id > s_ood) + ½ P(s_id = s_ood)``.
    Ranks are kept as exact integers (doubled); one float64 division at the end.
    Equals ``sklearn.metrics.roc_auc_score(labels_id_is_1, scores)``.
    """
    return _auroc(_as_scores(id_scores, "id_scores"), _as_scores(ood_scores, "ood_scores"))


def fpr_at_tpr(id_scores: Any, ood_scores: Any, tpr: float = 0.95, convention: str = "neglabel") -> float:
    r"""False-positive rate at true-positive rate ``tpr`` (FPR95 for ``tpr=0.95``).

    ``convention`` (see the module docstring for the full definitions):

    * ``"neglabel"`` — ID positive; thresholds ``t`` = distinct scores ≥ min(ID),
      descending; ``t* = argmin_t |#{id ≥ t}/n_id − tpr|`` (float64; equal
      distances → the lowest ``t``); returns ``#{ood ≥ t*}/n_ood``.
    * ``"interp"`` — ``np.interp(tpr, TPR, FPR)`` on sklearn's ``roc_curve``
      (ID positive, ``drop_intermediate=True``, leading (0, 0)).
    * ``"openood"`` — OOD positive on ``−s``: ``FPR[argmax(TPR ≥ tpr)]`` on
      sklearn's ``roc_curve(is_ood, −s)``; the fraction of ID scores flagged
      OOD when a fraction ``tpr`` of the OOD scores is caught.

    Returns a fraction in [0, 1].
    """
    id_s = _as_scores(id_scores, "id_scores")
    ood_s = _as_scores(ood_scores, "ood_scores")
    tpr = _check_tpr(tpr)
    convention = _check_choice(convention, "convention", CONVENTIONS)
    return _FPR[convention](id_s, ood_s, tpr)


def aupr_in(id_scores: Any, ood_scores: Any, method: str = "ap") -> float:
    r"""Area under the precision–recall curve with ID positive on ``s``.

    Thresholds at the distinct scores; ``P_k = tps_k/(tps_k+fps_k)``,
    ``R_k = tps_k/n_id`` (``k`` by decreasing threshold, ``R_0 = 0``).

    * ``method="ap"``: ``Σ_k (R_k − R_{k−1}) P_k`` =
      ``sklearn.metrics.average_precision_score`` (NegLabel, MCM).
    * ``method="trapezoid"``: ``Σ_k (R_k − R_{k−1}) (P_k + P_{k−1}) / 2`` with
      ``P_0 = 1`` = ``auc(recall, precision)`` on ``precision_recall_curve`` (OpenOOD).
    """
    id_s = _as_scores(id_scores, "id_scores")
    ood_s = _as_scores(ood_scores, "ood_scores")
    method = _check_choice(method, "method", AUPR_METHODS)
    return _aupr(id_s, ood_s, method)


def aupr_out(id_scores: Any, ood_scores: Any, method: str = "ap") -> float:
    r"""Area under the precision–recall curve with OOD positive on ``−s``.

    Same formulas as :func:`aupr_in` with the roles swapped: positives are the
    OOD samples, ranked by ``−s`` (lower score = more OOD).
    """
    id_s = _as_scores(id_scores, "id_scores")
    ood_s = _as_scores(ood_scores, "ood_scores")
    method = _check_choice(method, "method", AUPR_METHODS)
    return _aupr(-ood_s, -id_s, method)


def _evaluate(id_s: np.ndarray, ood_s: np.ndarray, convention: str, tpr: float, aupr_method: str) -> dict:
    return {
        "fpr95": _FPR[convention](id_s, ood_s, tpr),
        "auroc": _auroc(id_s, ood_s),
        "aupr_in": _aupr(id_s, ood_s, aupr_method),
        "aupr_out": _aupr(-ood_s, -id_s, aupr_method),
        "convention": convention,
        "aupr_method": aupr_method,
        "tpr": tpr,
        "num_id": int(id_s.size),
        "num_ood": int(ood_s.size),
    }


def evaluate(
    id_scores: Any,
    ood_scores: Any,
    *,
    convention: str = "neglabel",
    tpr: float = 0.95,
    aupr_method: str = "ap",
) -> dict:
    """All four metrics for one ID/OOD pair.

    Returns ``{"fpr95", "auroc", "aupr_in", "aupr_out"}`` as fractions in [0, 1]
    (not percent) plus ``"convention"``, ``"aupr_method"``, ``"tpr"`` (the TPR
    level the ``"fpr95"`` entry was taken at), ``"num_id"`` and ``"num_ood"``.
    """
    id_s = _as_scores(id_scores, "id_scores")
    ood_s = _as_scores(ood_scores, "ood_scores")
    tpr = _check_tpr(tpr)
    convention = _check_choice(convention, "convention", CONVENTIONS)
    aupr_method = _check_choice(aupr_method, "aupr_method", AUPR_METHODS)
    return _evaluate(id_s, ood_s, convention, tpr, aupr_method)


_METRIC_KEYS = ("fpr95", "auroc", "aupr_in", "aupr_out")


def evaluate_many(
    id_scores: Any,
    ood_sets: Mapping[str, Any],
    *,
    convention: str = "neglabel",
    tpr: float = 0.95,
    aupr_method: str = "ap",
) -> dict:
    """:func:`evaluate` for one ID set against several OOD sets, plus their average.

    Returns ``{"per_set": {name: evaluate(...)}, "average": {...}}``; per-set
    entries keep the order of ``ood_sets``.  ``"average"`` holds the plain
    (unweighted) mean over sets of ``fpr95``, ``auroc``, ``aupr_in`` and
    ``aupr_out`` — the papers' "Average" column — together with
    ``"convention"``, ``"aupr_method"``, ``"tpr"``, ``"num_id"``,
    ``"num_ood"`` (the total over sets) and ``"num_sets"``.
    """
    if not isinstance(ood_sets, Mapping):
        raise ValueError(f"ood_sets must be a mapping from set name to scores, got {type(ood_sets).__name__}")
    if len(ood_sets) == 0:
        raise ValueError("ood_sets is empty")
    id_s = _as_scores(id_scores, "id_scores")
    tpr = _check_tpr(tpr)
    convention = _check_choice(convention, "convention", CONVENTIONS)
    aupr_method = _check_choice(aupr_method, "aupr_method", AUPR_METHODS)
    per_set = {
        name: _evaluate(id_s, _as_scores(scores, f"ood_sets[{name!r}]"), convention, tpr, aupr_method)
        for name, scores in ood_sets.items()
    }
    average: dict = {k: float(np.mean([r[k] for r in per_set.values()])) for k in _METRIC_KEYS}
    average.update(
        convention=convention,
        aupr_method=aupr_method,
        tpr=tpr,
        num_id=int(id_s.size),
        num_ood=int(sum(r["num_ood"] for r in per_set.values())),
        num_sets=len(per_set),
    )
    return {"per_set": per_set, "average": average}
