"""fastood.metrics against scikit-learn (the independent truth) and hand-computed cases.

sklearn is used only here, never in the library.  The "neglabel" FPR convention has
no sklearn counterpart; it is checked against a brute-force O(n²) transcription of
SHARED SPEC §7 (``_neglabel_oracle``) and against hand-computed cases.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from fastood import metrics as M
from fastood.metrics import aupr_in, aupr_out, auroc, evaluate, evaluate_many, fpr_at_tpr

# --------------------------------------------------------------------------- oracles


def _labels(id_s, ood_s):
    id_s, ood_s = np.asarray(id_s, np.float64), np.asarray(ood_s, np.float64)
    return np.r_[np.ones(id_s.size), np.zeros(ood_s.size)], np.r_[id_s, ood_s]


def _sk_interp(id_s, ood_s, tpr=0.95):
    y, s = _labels(id_s, ood_s)
    return float(np.interp(tpr, *roc_curve(y, s)[1::-1]))


def _sk_openood(id_s, ood_s, tpr=0.95):
    y, s = _labels(id_s, ood_s)
    fpr, tpr_c, _ = roc_curve(1 - y, -s)
    return float(fpr[np.argmax(tpr_c >= tpr)])


def _sk_aupr(id_s, ood_s, method, out=False):
    y, s = _labels(id_s, ood_s)
    if out:
        y, s = 1 - y, -s
    if method == "ap":
        return average_precision_score(y, s)
    precision, recall, _ = precision_recall_curve(y, s)
    return auc(recall, precision)


def _neglabel_oracle(id_s, ood_s, tpr=0.95):
    """SPEC §7 "neglabel", literally: walk the distinct scores from the top down to
    the first one with full ID recall; keep the nearest recall, later (lower)
    thresholds winning equal distances; FPR = fraction of OOD ≥ threshold."""
    id_s, ood_s = np.asarray(id_s, np.float64), np.asarray(ood_s, np.float64)
    best_d, best_t = None, None
    for t in sorted(set(id_s.tolist()) | set(ood_s.tolist()), reverse=True):
        if t < id_s.min():
            break
        d = abs(np.count_nonzero(id_s >= t) / id_s.size - tpr)
        if best_d is None or d <= best_d:
            best_d, best_t = d, t
    return np.count_nonzero(ood_s >= best_t) / ood_s.size


def _check_all(id_s, ood_s, tpr=0.95):
    y, s = _labels(id_s, ood_s)
    assert auroc(id_s, ood_s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert fpr_at_tpr(id_s, ood_s, tpr, "interp") == pytest.approx(_sk_interp(id_s, ood_s, tpr), abs=1e-12)
    assert fpr_at_tpr(id_s, ood_s, tpr, "openood") == _sk_openood(id_s, ood_s, tpr)
    assert fpr_at_tpr(id_s, ood_s, tpr, "neglabel") == _neglabel_oracle(id_s, ood_s, tpr)
    for method in M.AUPR_METHODS:
        assert aupr_in(id_s, ood_s, method) == pytest.approx(_sk_aupr(id_s, ood_s, method), abs=1e-12)
        assert aupr_out(id_s, ood_s, method) == pytest.approx(_sk_aupr(id_s, ood_s, method, out=True), abs=1e-12)


# --------------------------------------------------------------------------- random data vs sklearn


def _random_pair(rng, n_id, n_ood, kind):
    id_s = rng.normal(1.0, 1.0, n_id)
    ood_s = rng.normal(0.0, 1.0, n_ood)
    if kind == "rounded":  # heavy ties
        id_s, ood_s = np.round(id_s, 1), np.round(ood_s, 1)
    elif kind == "saturated":  # NegLabel-like: many exactly 1.0 on both sides, rest fp32
        id_s = np.where(rng.random(n_id) < 0.6, 1.0, rng.random(n_id)).astype(np.float32)
        ood_s = np.where(rng.random(n_ood) < 0.08, 1.0, rng.random(n_ood) ** 3).astype(np.float32)
    return id_s, ood_s


@pytest.mark.parametrize("kind", ["continuous", "rounded", "saturated"])
@pytest.mark.parametrize("seed", range(3))
def test_random_vs_sklearn(kind, seed):
    rng = np.random.default_rng(seed)
    id_s, ood_s = _random_pair(rng, 3000 + 17 * seed, 2000 - 13 * seed, kind)
    for tpr in (0.95, 0.9, 0.5, 1.0):
        _check_all(id_s, ood_s, tpr)


@pytest.mark.parametrize("kind", ["continuous", "rounded", "saturated"])
def test_roc_curve_matches_sklearn_exactly(kind):
    """The internal curve reproduces roc_curve(drop_intermediate=True) point for point."""
    id_s, ood_s = _random_pair(np.random.default_rng(7), 800, 600, kind)
    y, s = _labels(id_s, ood_s)
    for pos, neg, yy, ss in [(id_s, ood_s, y, s), (-ood_s, -id_s, 1 - y, -s)]:
        fpr, tpr = M._roc(np.asarray(pos, np.float64), np.asarray(neg, np.float64))
        sk_fpr, sk_tpr, _ = roc_curve(yy, ss)
        np.testing.assert_array_equal(fpr, sk_fpr)
        np.testing.assert_array_equal(tpr, sk_tpr)


_small = st.lists(st.integers(0, 6), min_size=1, max_size=25).map(lambda v: np.array(v, np.float64) / 4)
_small_f = st.lists(
    st.floats(-3, 3, allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=25
).map(lambda v: np.array(v, np.float64))


@settings(max_examples=150, deadline=None)
@given(id_s=_small, ood_s=_small, tpr=st.sampled_from([0.95, 0.9, 0.5, 0.375, 1.0, 0.01]))
def test_property_tied_small(id_s, ood_s, tpr):
    _check_all(id_s, ood_s, tpr)


@settings(max_examples=60, deadline=None)
@given(id_s=_small_f, ood_s=_small_f, tpr=st.floats(0.01, 1.0))
def test_property_float_small(id_s, ood_s, tpr):
    _check_all(id_s, ood_s, tpr)


@settings(max_examples=60, deadline=None)
@given(id_s=_small, ood_s=_small)
def test_property_invariants(id_s, ood_s):
    r = evaluate(id_s, ood_s)
    for k in ("fpr95", "auroc", "aupr_in", "aupr_out"):
        assert 0.0 <= r[k] <= 1.0
    # swapping the roles and negating the scores mirrors AUROC and swaps AUPR-In/Out
    assert auroc(-ood_s, -id_s) == pytest.approx(r["auroc"], abs=1e-12)
    assert aupr_in(-ood_s, -id_s) == pytest.approx(r["aupr_out"], abs=1e-12)
    # a strictly increasing transform changes nothing
    for c in M.CONVENTIONS:
        assert fpr_at_tpr(np.exp(id_s), np.exp(ood_s), convention=c) == fpr_at_tpr(id_s, ood_s, convention=c)


# --------------------------------------------------------------------------- hand-computed cases


def test_hand_conventions_differ_on_saturated_ties():
    # ID: 18 × 1.0, 2 × 0.5 (n_id = 20); OOD: 1.0, 0.5, 0.1, 0.1 (n_ood = 4).
    # ID positive, distinct thresholds descending:
    #   t=1.0: 18 ID ≥ t (recall 0.90), 1 OOD ≥ t (FPR 0.25)
    #   t=0.5: 20 ID (recall 1.00),      2 OOD      (FPR 0.50)
    # neglabel: |0.90−0.95| = 0.04999999999999993 < |1.00−0.95| = 0.05000000000000004
    #           (0.95 is slightly below 19/20 in binary) → t=1.0 → FPR = 1/4 = 0.25
    # interp:   ROC (0,0),(0.25,0.9),(0.5,1),(1,1); at TPR .95 halfway along the
    #           (0.25,0.9)→(0.5,1.0) segment → 0.25 + 0.5·0.25 = 0.375
    # openood:  OOD positive on −s, thresholds ascending: s≤0.1: 2/4 OOD, 0/20 ID;
    #           s≤0.5: 3/4 OOD, 2/20 ID; s≤1.0: 4/4 OOD, 20/20 ID → first TPR≥.95 → 1.0
    id_s, ood_s = [1.0] * 18 + [0.5] * 2, [1.0, 0.5, 0.1, 0.1]
    assert fpr_at_tpr(id_s, ood_s, convention="neglabel") == 0.25
    assert fpr_at_tpr(id_s, ood_s, convention="interp") == pytest.approx(0.375, abs=1e-15)
    assert fpr_at_tpr(id_s, ood_s, convention="openood") == 1.0
    # at TPR 0.9 neglabel hits recall 0.9 exactly; interp lands on the (0.25, 0.9) vertex
    assert fpr_at_tpr(id_s, ood_s, 0.9, "neglabel") == 0.25
    assert fpr_at_tpr(id_s, ood_s, 0.9, "interp") == 0.25
    assert fpr_at_tpr(id_s, ood_s, 0.9, "openood") == 1.0


def test_hand_equal_recall_tie_break_and_openood_direction():
    # ID: 19 × 1.0, one 0.0 (n_id = 20); OOD: 0.9, 0.8, 0.7, 0.6.
    # ID positive: t=1.0,0.9,0.8,0.7,0.6 all have recall 19/20 = 0.95 (distance 0),
    #   FPR 0, 1/4, 2/4, 3/4, 4/4; t=0.0 has recall 1.
    # neglabel: equal distances → the LOWEST threshold, t=0.6 → FPR = 4/4 = 1.0
    # interp:   ROC (0,0),(0,.95),(1,.95),(1,1) [points at t=.9,.8,.7 dropped];
    #           np.interp at an x shared by two points returns the last → 1.0
    # openood:  OOD positive: s≤0.0: 0/4 OOD, 1/20 ID; s≤0.9: 4/4 OOD, 1/20 ID → 0.05
    id_s, ood_s = [1.0] * 19 + [0.0], [0.9, 0.8, 0.7, 0.6]
    assert fpr_at_tpr(id_s, ood_s, convention="neglabel") == 1.0
    assert fpr_at_tpr(id_s, ood_s, convention="interp") == 1.0
    assert fpr_at_tpr(id_s, ood_s, convention="openood") == 0.05


def test_hand_equal_distance_prefers_larger_recall():
    # ID 4,3,2,1; OOD 3.5,2.5,1.5,0.5; tpr = 0.375 (exact in binary).
    # Thresholds desc with (recall, FPR): 4 (.25,0) 3.5 (.25,.25) 3 (.5,.25) 2.5 (.5,.5)
    #   2 (.75,.5) 1.5 (.75,.75) 1 (1,.75).  |.25−.375| = |.5−.375| = .125 exactly.
    # neglabel: the lowest of the four tied thresholds, t=2.5 → FPR = 2/4 = 0.5
    # interp:   last ROC point with TPR ≤ .375 is (FPR .25, TPR .25), next (.25, .5) → 0.25
    # openood:  OOD positive, ascending: s≤0.5 (TPR .25, FPR 0), s≤1 (.25,.25),
    #           s≤1.5 (.5,.25) → first TPR ≥ .375 → 0.25
    id_s, ood_s = [4, 3, 2, 1], [3.5, 2.5, 1.5, 0.5]
    assert fpr_at_tpr(id_s, ood_s, 0.375, "neglabel") == 0.5
    assert fpr_at_tpr(id_s, ood_s, 0.375, "interp") == 0.25
    assert fpr_at_tpr(id_s, ood_s, 0.375, "openood") == 0.25


def test_hand_openood_drop_intermediate():
    # ID = OOD = 0..19: every threshold holds one ID and one OOD score.
    # openood: OOD-positive ROC points (k/20, k/20), k=1..20, all with equal steps;
    #   sklearn's drop_intermediate keeps only k=1 and k=20 → curve (0,0),(.05,.05),(1,1);
    #   the first TPR ≥ .95 is (1,1) → 1.0 (not 0.95).
    # neglabel: recall 19/20 at t=1, where 19/20 OOD are ≥ t → 0.95
    # interp:   on the diagonal (0,0),(.05,.05),(1,1) → 0.95
    s = list(range(20))
    assert fpr_at_tpr(s, s, convention="openood") == 1.0
    assert fpr_at_tpr(s, s, convention="neglabel") == 0.95
    assert fpr_at_tpr(s, s, convention="interp") == pytest.approx(0.95, abs=1e-15)
    assert auroc(s, s) == 0.5


def test_hand_auroc_and_aupr():
    # ID 3, 2, 2; OOD 2, 1.  Pairs: (3,2)=1 (3,1)=1 (2,2)=½ (2,1)=1 (2,2)=½ (2,1)=1 → 5/6
    assert auroc([3, 2, 2], [2, 1]) == pytest.approx(5 / 6, abs=1e-15)
    # AUPR-In, thresholds 3: (P 1, R 1/3); 2: (P 3/4, R 1); 1: (P 3/5, R 1)
    #   ap        = 1/3·1 + 2/3·3/4                       = 5/6
    #   trapezoid = 1/3·(1+1)/2 + 2/3·(1+3/4)/2 + 0       = 1/3 + 7/12 = 11/12
    assert aupr_in([3, 2, 2], [2, 1]) == pytest.approx(5 / 6, abs=1e-15)
    assert aupr_in([3, 2, 2], [2, 1], "trapezoid") == pytest.approx(11 / 12, abs=1e-15)
    # AUPR-Out (OOD positive on −s: ID −3,−2,−2; OOD −2,−1), thresholds
    #   −1: 1 OOD, 0 ID (P 1, R 1/2); −2: 2 OOD, 2 ID (P 1/2, R 1); −3: 2 OOD, 3 ID (P 2/5, R 1)
    #   ap = 1/2·1 + 1/2·1/2 = 0.75; trapezoid = 1/2·(1+1)/2 + 1/2·(1+1/2)/2 + 0 = 0.875
    assert aupr_out([3, 2, 2], [2, 1]) == pytest.approx(0.75, abs=1e-15)
    assert aupr_out([3, 2, 2], [2, 1], "trapezoid") == pytest.approx(0.875, abs=1e-15)


def test_perfect_and_inverted_separation():
    assert evaluate([2, 3], [0, 1])["auroc"] == 1.0
    for c in M.CONVENTIONS:
        assert fpr_at_tpr([2, 3], [0, 1], convention=c) == 0.0
        assert fpr_at_tpr([0, 1], [2, 3], convention=c) == 1.0
    assert auroc([0, 1], [2, 3]) == 0.0


# --------------------------------------------------------------------------- evaluate / evaluate_many


def test_evaluate_keys_and_consistency():
    id_s, ood_s = _random_pair(np.random.default_rng(3), 500, 400, "saturated")
    for conv in M.CONVENTIONS:
        for meth in M.AUPR_METHODS:
            r = evaluate(id_s, ood_s, convention=conv, tpr=0.9, aupr_method=meth)
            assert set(r) == {"fpr95", "auroc", "aupr_in", "aupr_out", "convention", "aupr_method", "tpr",
                              "num_id", "num_ood"}
            assert r["fpr95"] == fpr_at_tpr(id_s, ood_s, 0.9, conv)
            assert r["auroc"] == auroc(id_s, ood_s)
            assert r["aupr_in"] == aupr_in(id_s, ood_s, meth)
            assert r["aupr_out"] == aupr_out(id_s, ood_s, meth)
            assert (r["convention"], r["aupr_method"], r["tpr"], r["num_id"], r["num_ood"]) == (
                conv, meth, 0.9, 500, 400)
            assert all(type(r[k]) is float for k in ("fpr95", "auroc", "aupr_in", "aupr_out"))


def test_evaluate_many_average_is_plain_mean():
    rng = np.random.default_rng(4)
    id_s = rng.normal(1, 1, 300)
    sets = {"b": rng.normal(0, 1, 100), "a": np.round(rng.normal(0.5, 1, 50), 1), "c": rng.normal(-1, 1, 10)}
    res = evaluate_many(id_s, sets, convention="openood", aupr_method="trapezoid")
    assert list(res["per_set"]) == ["b", "a", "c"]
    for name, scores in sets.items():
        assert res["per_set"][name] == evaluate(id_s, scores, convention="openood", aupr_method="trapezoid")
    avg = res["average"]
    for k in ("fpr95", "auroc", "aupr_in", "aupr_out"):
        assert avg[k] == pytest.approx(np.mean([res["per_set"][n][k] for n in sets]), abs=1e-15)
    assert (avg["num_sets"], avg["num_id"], avg["num_ood"], avg["convention"]) == (3, 300, 160, "openood")


# --------------------------------------------------------------------------- input types


def test_input_types_agree():
    rng = np.random.default_rng(5)
    id16 = torch.from_numpy(rng.random(200)).half()
    ood16 = torch.from_numpy(rng.random(150) ** 2).half()  # fp16: plenty of ties
    ref = evaluate(id16.double().numpy(), ood16.double().numpy())
    variants = [
        (id16, ood16),
        (id16.float(), ood16.float()),
        (id16.float().requires_grad_(), ood16[:, None]),  # autograd leaf, (n, 1) column
        (id16.numpy(), ood16.numpy().astype(np.float32)),
        (id16.double().tolist(), ood16.double().numpy()[None, :]),  # list; (1, n) row
    ]
    if torch.cuda.is_available():
        variants.append((id16.cuda(), ood16.float().cuda()))
    for id_v, ood_v in variants:
        assert evaluate(id_v, ood_v) == ref


def test_integer_and_bfloat16_inputs():
    assert auroc(np.array([3, 2, 2], np.int64), torch.tensor([2, 1], dtype=torch.int32)) == pytest.approx(5 / 6)
    x = torch.tensor([1.0, 0.5, 0.25], dtype=torch.bfloat16)
    assert auroc(x, [0.1]) == 1.0
    assert auroc([[1.0]], [0.0]) == 1.0  # (1, 1) squeezes to one score


def test_large_inputs_are_fast():
    rng = np.random.default_rng(6)
    id_s = np.where(rng.random(100_000) < 0.5, 1.0, rng.random(100_000)).astype(np.float32)
    ood_s = rng.random(100_000).astype(np.float32)
    t0 = time.perf_counter()
    for conv in M.CONVENTIONS:
        evaluate(id_s, ood_s, convention=conv)
    assert time.perf_counter() - t0 < 5.0


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "id_s, ood_s, match",
    [
        ([], [1.0], "id_scores is empty"),
        ([1.0], np.zeros((0,)), "ood_scores is empty"),
        ([1.0, np.nan], [0.0], "id_scores contains non-finite"),
        ([1.0], [0.0, np.inf], "ood_scores contains non-finite"),
        (torch.tensor([1.0, -float("inf")]), [0.0], "id_scores contains non-finite"),
        (np.ones((2, 3)), [0.0], r"id_scores must be 1-D .*\(2, 3\)"),
        ([1.0], np.float64(0.5), r"ood_scores must be 1-D .*\(\)"),
        (np.array([True, False]), [0.0], "id_scores must hold real numbers, got dtype bool"),
        (torch.tensor([True]), [0.0], "id_scores must hold real numbers, got dtype torch.bool"),
        ([1.0], np.array([1 + 2j]), "ood_scores must hold real numbers, got dtype complex"),
        ([1.0], torch.tensor([1 + 2j]), "ood_scores must hold real numbers"),
        (["a", "b"], [0.0], "id_scores must hold real numbers, got dtype <U1"),
        ([1.0], [[1.0], [2.0, 3.0]], "ood_scores must"),
        ([1.0], [None, 1.0], "ood_scores must hold real numbers, got dtype object"),
    ],
)
def test_bad_scores(id_s, ood_s, match):
    for fn in (auroc, fpr_at_tpr, aupr_in, aupr_out, evaluate):
        with pytest.raises(ValueError, match=match):
            fn(id_s, ood_s)


@pytest.mark.parametrize("tpr", [0.0, -0.1, 1.0000001, float("nan"), float("inf"), True, "0.95", None])
def test_bad_tpr(tpr):
    with pytest.raises(ValueError, match="tpr must"):
        fpr_at_tpr([1.0], [0.0], tpr)
    with pytest.raises(ValueError, match="tpr must"):
        evaluate([1.0], [0.0], tpr=tpr)
    with pytest.raises(ValueError, match="tpr must"):
        evaluate_many([1.0], {"a": [0.0]}, tpr=tpr)


def test_tpr_edges_accepted():
    assert fpr_at_tpr([1.0, 2.0], [0.0], 1) == 0.0
    assert fpr_at_tpr([1.0, 2.0], [0.0], np.float32(0.5)) == 0.0


def test_bad_choices():
    with pytest.raises(ValueError, match="unknown convention 'sklearn'"):
        fpr_at_tpr([1.0], [0.0], convention="sklearn")
    with pytest.raises(ValueError, match="unknown convention"):
        evaluate([1.0], [0.0], convention="NegLabel")
    with pytest.raises(ValueError, match="unknown method 'auc'"):
        aupr_in([1.0], [0.0], method="auc")
    with pytest.raises(ValueError, match="unknown method"):
        aupr_out([1.0], [0.0], method=None)
    with pytest.raises(ValueError, match="unknown aupr_method"):
        evaluate([1.0], [0.0], aupr_method="trapz")
    with pytest.raises(ValueError, match="unknown convention"):
        evaluate_many([1.0], {"a": [0.0]}, convention="x")


def test_evaluate_many_errors():
    with pytest.raises(ValueError, match="ood_sets is empty"):
        evaluate_many([1.0], {})
    with pytest.raises(ValueError, match="ood_sets must be a mapping"):
        evaluate_many([1.0], [[0.0]])
    with pytest.raises(ValueError, match=r"ood_sets\['sun'\] contains non-finite"):
        evaluate_many([1.0], {"inat": [0.0], "sun": [np.nan]})
    with pytest.raises(ValueError, match="id_scores is empty"):
        evaluate_many([], {"a": [0.0]})
