"""Named conventions where the papers' code disagree (issue 12 §2), each against an
independent truth: numpy float64 for kNN's two k > 1 rules, sklearn's
``EmpiricalCovariance`` / numpy float64 for Mahalanobis and RMD's two covariance
conventions, a float64 / float32 rendering of NegMining's ranking, and the
permutation-file loader used by ``--permutation``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastood.detectors import KNN, MSP, RMD, Mahalanobis

sklearn_cov = pytest.importorskip("sklearn.covariance")


def _features(n: int, d: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class clusters with unequal spreads (so the covariance conventions really differ)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = 2.0 * torch.randn(classes, d, generator=g)
    scale = 0.5 + torch.rand(classes, 1, generator=g) * 2.0
    mix = torch.randn(d, d, generator=g) / d**0.5 + torch.eye(d)
    x = centres[labels] + scale[labels] * (torch.randn(n, d, generator=g) @ mix)
    return x.float(), labels


# --------------------------------------------------------------------------- kNN
def _knn_truth(train: np.ndarray, test: np.ndarray, k: int, rule: str, temperature: float) -> np.ndarray:
    """numpy float64: standardise with the train mean / population std, L2-normalise, top-k cosines."""
    mu, sd = train.mean(0), train.std(0)
    a = (train - mu) / sd
    b = (test - mu) / sd
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    top = -np.sort(-(b @ a.T), axis=1)[:, :k]
    if rule == "kth":
        return top[:, -1]
    return np.exp(top / temperature).mean(1)


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("temperature", [0.02, 0.1])
def test_knn_mean_exp_and_kth_against_numpy(k, temperature):
    train, _ = _features(120, 8, 4, seed=0)
    test, _ = _features(30, 8, 4, seed=1)
    tr, te = train.double().numpy(), test.double().numpy()
    # block_bytes small enough that the training bank is cut into several column blocks
    kth = KNN(k=k, block_bytes=4 * 8 * 16).fit_features(train).score_features(test)
    mexp = KNN(k=k, rule="mean_exp", temperature=temperature, block_bytes=4 * 8 * 16)
    mexp = mexp.fit_features(train).score_features(test)
    t_kth = _knn_truth(tr, te, k, "kth", temperature)
    t_exp = _knn_truth(tr, te, k, "mean_exp", temperature)
    np.testing.assert_allclose(kth.double().numpy(), t_kth, rtol=0, atol=1e-6)
    # a cosine error δ moves exp(c/T) by a factor e^(δ/T): fp32 cosines (δ ≲ 1e-6) give ≤ 5e-5 relative
    np.testing.assert_allclose(mexp.numpy(), t_exp, rtol=5e-5)
    assert mexp.dtype == torch.float64
    if k == 1:  # both rules rank identically for 1-NN
        assert np.array_equal(np.argsort(t_kth, kind="stable"), np.argsort(kth.numpy(), kind="stable"))
    else:  # the two conventions really rank differently with k > 1
        assert not np.array_equal(np.argsort(t_kth), np.argsort(t_exp))


def test_knn_mean_exp_does_not_overflow_and_bad_options():
    train, _ = _features(40, 4, 2, seed=2)
    s = KNN(k=3, rule="mean_exp", temperature=0.005).fit_features(train).score_features(train[:5])
    assert torch.isfinite(s).all() and float(s.max()) > 1e40  # e^(1/0.005) = e^200 is beyond float32
    with pytest.raises(ValueError, match="rule"):
        KNN(rule="mean")
    with pytest.raises(ValueError, match="temperature"):
        KNN(rule="mean_exp", temperature=0.0)
    assert "rule='mean_exp'" in repr(KNN(k=2, rule="mean_exp"))


# ------------------------------------------------------------------ Mahalanobis / RMD
def _md(x: np.ndarray, mu: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = x - mu
    return np.einsum("ij,jk,ik->i", d, precision, d)


def _maha_truth(train, labels, test, covariance):
    """float64 truth: class means, then the two covariance conventions, scores −min_c MD_c and RMD."""
    classes = np.unique(labels)
    means = np.stack([train[labels == c].mean(0) for c in classes])
    if covariance == "pooled":  # OpenOOD: EmpiricalCovariance of the class-centred features / of all
        centred = np.concatenate([train[labels == c] - means[i] for i, c in enumerate(classes)])
        prec = sklearn_cov.EmpiricalCovariance(assume_centered=False).fit(centred).precision_
        prec0 = sklearn_cov.EmpiricalCovariance(assume_centered=False).fit(train).precision_
    else:  # the PLP code: mean of per-class unbiased covariances, unbiased global
        prec = np.linalg.inv(np.mean([np.cov(train[labels == c], rowvar=False, ddof=1) for c in classes], 0))
        prec0 = np.linalg.inv(np.cov(train, rowvar=False, ddof=1))
    md = np.stack([_md(test, means[i], prec) for i in range(len(classes))], 1)
    md0 = _md(test, train.mean(0), prec0)
    return -md.min(1), md0 - md.min(1)


@pytest.mark.parametrize("covariance", ["class_mean", "pooled"])
def test_mahalanobis_and_rmd_covariance_conventions(covariance):
    train, labels = _features(90, 6, 3, seed=3)
    test, _ = _features(25, 6, 3, seed=4)
    maha_t, rmd_t = _maha_truth(train.double().numpy(), labels.numpy(), test.double().numpy(), covariance)
    maha = Mahalanobis(covariance=covariance).fit_features(train, labels).score_features(test)
    rmd = RMD(covariance=covariance).fit_features(train, labels).score_features(test)
    # fastood fits and scores in float64 and returns float32: float32 rounding of the result
    np.testing.assert_allclose(maha.double().numpy(), maha_t, rtol=2e-7)
    np.testing.assert_allclose(rmd.double().numpy(), rmd_t, rtol=2e-7, atol=1e-6 * np.abs(rmd_t).max())


def test_pooled_maha_is_class_mean_times_n_over_n_minus_c_and_rmd_reranks():
    n, c = 90, 3  # equal class sizes: Σ_pooled = Σ_class_mean · (N − C)/N
    train, labels = _features(n, 6, c, seed=5)
    test, _ = _features(40, 6, c, seed=6)
    a = Mahalanobis().fit_features(train, labels).score_features(test).double()
    b = Mahalanobis(covariance="pooled").fit_features(train, labels).score_features(test).double()
    torch.testing.assert_close(b, a * n / (n - c), rtol=1e-6, atol=0)
    r1 = RMD().fit_features(train, labels).score_features(test)
    r2 = RMD(covariance="pooled").fit_features(train, labels).score_features(test)
    assert (r1 - r2).abs().max() > 1e-3  # RMD mixes two normalisers: the conventions differ


def test_covariance_option_validation_and_plp_plumbing():
    train, labels = _features(30, 4, 3, seed=7)
    with pytest.raises(ValueError, match="covariance"):
        Mahalanobis(covariance="tied")
    with pytest.raises(ValueError, match="covariance"):
        MSP(covariance="tied")
    with pytest.raises(ValueError, match="more training samples than classes"):
        RMD(covariance="pooled").fit_features(train[:3], labels[:3])
    one = torch.tensor([0, 0, 1, 2, 2, 2])
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    RMD(covariance="pooled").fit_features(x, one)  # a single-sample class is fine when pooling
    with pytest.raises(ValueError, match="at least 2"):
        RMD().fit_features(x, one)
    msp = MSP(score="rmd", covariance="pooled", epochs=1).fit_features(train, labels)
    assert msp.rmd.covariance_type == "pooled"
