"""Detectors (NegLabel, MCM, KNN, Mahalanobis, RMD) against independent float64 truths.

NegLabel / MCM: fastood.reference evaluated in float64 on the same embeddings.
KNN / Mahalanobis / RMD: brute force in float64 numpy (full similarity / distance
matrices, np.linalg.inv / pinv). Calibration: sklearn's roc_curve.
A tiny random open_clip model provides the image and text towers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fastood import reference as R
from fastood.bank import TextBank
from fastood.detectors import (
    DETECTORS,
    KNN,
    MCM,
    RMD,
    Detector,
    Mahalanobis,
    NegLabel,
    NotFittedError,
    Prediction,
    create,
    threshold_at_tpr,
)
from fastood.detectors.base import pre_projection
from fastood.models import encode_texts
from tests.tiny import tiny_clip

CLASSES = ["dog", "cat", "airplane", "tree", "car"]
D = 32


@pytest.fixture(scope="module")
def clip():
    return tiny_clip(embed_dim=D)


@pytest.fixture(scope="module")
def small_corpus():
    from fastood.labels import load_corpus

    full = load_corpus("neglabel")
    keep = np.zeros(len(full), dtype=bool)
    keep[::151] = True  # ~470 words, nouns and adjectives
    return full.filter(keep)


def random_bank(k: int = 6, m: int = 53, groups: int = 5, d: int = D, seed: int = 0) -> TextBank:
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(k + (m // groups) * groups, d, generator=g), dim=1)
    return TextBank(emb, [f"class{i}" for i in range(k)], [f"neg{i}" for i in range(emb.shape[0] - k)], groups=groups)


def gaussian_classes(n_per: int = 40, c: int = 4, d: int = 12, seed: int = 0, labels: list[int] | None = None):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, (c, d))
    a = rng.normal(0, 1, (d, d)) / np.sqrt(d)
    x = np.concatenate([means[i] + rng.normal(0, 1, (n_per, d)) @ a for i in range(c)])
    vals = labels if labels is not None else list(range(c))
    y = np.repeat(np.array(vals), n_per)
    return x, y


def assert_rel_close(got: torch.Tensor, truth: torch.Tensor, rel: float = 1e-4) -> None:
    """``|got − truth| ≤ rel · truth`` elementwise (scores are positive).

    NegLabel scores of a random tower are ~1e-12, so an absolute tolerance would pass a
    detector returning zeros. The scores are sigmoids of fp32 LSE differences at
    τ = 0.01: an error δ in a logit moves ``log S`` by at most δ, and δ ≤ 100 · D · 2⁻²⁴
    ≈ 2e-4 for D = 32 (typical √D rounding: 3e-5) — so a relative bound of 1e-4 holds
    with margin for what is measured here (< 1e-5) and fails any wrong formula.
    """
    got, truth = got.double(), truth.double()
    assert got.shape == truth.shape
    err = ((got - truth).abs() / truth).max().item()
    assert err <= rel, f"max relative error {err:.3g} > {rel}"


def images_u8(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 40, 44), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ NegLabel
def test_neglabel_built_bank_scores_equal_float64_reference(clip, small_corpus, tmp_path):
    det = NegLabel(clip, classes=CLASSES, corpus=small_corpus, groups=4, cache=tmp_path, progress=False)
    assert det.classes == CLASSES and det.num_id == 5 and det.groups == 4 and det.temperature == 0.01
    assert det.bank.meta["method"] == "neglabel" and len(list((tmp_path / "banks").iterdir())) == 1
    # the ID rows are the "the nice {}" prompts (SPEC §1)
    id_emb = encode_texts(clip.model, clip.tokenizer, [f"the nice {c}" for c in CLASSES], progress=False)
    assert torch.allclose(det.bank.id_embeddings, id_emb, atol=1e-6)
    x = images_u8(6)
    with torch.no_grad():
        from fastood.images import iter_image_batches

        [b] = list(iter_image_batches(x, clip.preprocess))
        feats = clip.model.encode_image(b.pixels)
    pred = det.predict(x)
    truth = R.neglabel_score(feats.double(), det.bank.embeddings.double(), 5, groups=4, temperature=0.01)
    assert_rel_close(pred.scores, truth)
    # features built so that the scores spread over (0, 1): each ID label embedding moved
    # step by step towards the mean of the negatives' group means (ID → OOD)
    emb = det.bank.embeddings
    negs = emb[5:]
    m = negs.shape[0] // 4
    away = F.normalize(negs[: 4 * m].view(4, m, -1).mean(1).sum(0), dim=0)
    a = torch.linspace(0, 1, 13)[:, None]
    spread = torch.cat([(1 - a) * emb[k] + a * away for k in range(3)])
    want = R.neglabel_score(spread.double(), emb.double(), 5, groups=4, temperature=0.01)
    assert want.min() < 0.01 and want.max() > 0.99 and ((want > 0.1) & (want < 0.9)).sum() >= 3  # ID and OOD
    assert_rel_close(det.score_features(spread), want)
    assert torch.equal(pred.labels, (F.normalize(feats, dim=1) @ id_emb.T).argmax(1))
    assert pred.is_ood is None and pred.names == [f"<input {i}>" for i in range(6)]
    s, p = det.head(feats)
    assert torch.allclose(s, pred.scores) and torch.equal(p, pred.labels)
    assert torch.equal(det.outlier_score(x), -det.score(x))
    # a second detector hits the cache (same bank, no re-encoding needed)
    again = NegLabel(clip, classes=CLASSES, corpus=small_corpus, groups=4, cache=tmp_path, progress=False)
    assert torch.equal(again.bank.embeddings, det.bank.embeddings)
    assert len(list((tmp_path / "banks").iterdir())) == 1


@pytest.mark.parametrize("groups", [None, 1, 3])
def test_neglabel_given_bank_features_only(groups, tmp_path):
    bank = random_bank()
    det = NegLabel(bank=bank, groups=groups, temperature=0.02)
    g = det.groups
    assert g == (bank.groups if groups is None else groups)
    x = torch.randn(17, D, generator=torch.Generator().manual_seed(1)) * 3
    truth = R.neglabel_score(x.double(), bank.embeddings.double(), bank.num_id, groups=g, temperature=0.02)
    assert_rel_close(det.score_features(x), truth)
    # loaded from a bank file; created by name
    path = bank.save(tmp_path / "b.safetensors")
    det2 = create("neglabel", bank=str(path), groups=groups, temperature=0.02)
    assert torch.equal(det2.score_features(x), det.score_features(x))


def test_neglabel_errors(clip):
    bank = random_bank()
    with pytest.raises(ValueError, match="width"):  # bank width vs model
        NegLabel(clip, bank=random_bank(d=16))
    with pytest.raises(ValueError, match="do not match"):
        NegLabel(bank=bank, classes=["a", "b"])
    with pytest.raises(ValueError, match="no negative"):
        NegLabel(bank=TextBank(bank.id_embeddings, bank.id_labels, [], groups=1))
    with pytest.raises(ValueError, match="needs a text bank"):
        NegLabel()
    with pytest.raises(ValueError, match="groups"):
        NegLabel(bank=bank, groups=bank.num_neg + 1)
    with pytest.raises(ValueError, match="groups"):
        NegLabel(bank=bank, groups=0)
    with pytest.raises(ValueError, match="temperature"):
        NegLabel(bank=bank, temperature=0.0)
    with pytest.raises(TypeError, match="bank"):
        NegLabel(bank=torch.zeros(3, D))
    det = NegLabel(bank=bank)
    with pytest.raises(ValueError, match="width D=16"):
        det.score_features(torch.randn(3, 16))
    with pytest.raises(ValueError, match="empty"):
        det.score_features(torch.randn(0, D))
    with pytest.raises(ValueError, match="non-finite"):
        det.score_features(torch.tensor([[1.0] * D, [float("nan")] * D]))
    with pytest.raises(TypeError, match="floating"):
        det.score_features(torch.ones(2, D, dtype=torch.int64))
    with pytest.raises(ValueError, match="without a model"):
        det.score(images_u8(1))
    assert det.fit(images_u8(2)) is det  # zero-shot: fit is a no-op and encodes nothing (there is no model)


# ------------------------------------------------------------------ MCM
def test_mcm_scores_equal_float64_reference(clip):
    det = MCM(clip, classes=CLASSES, progress=False)
    emb = encode_texts(clip.model, clip.tokenizer, [f"a photo of a {c}" for c in CLASSES], progress=False)
    assert torch.allclose(det.bank.embeddings, emb, atol=1e-6) and det.groups == 1 and det.temperature == 1.0
    x = torch.randn(11, D, generator=torch.Generator().manual_seed(2))
    p = det.predict_features(x)
    assert (p.scores.double() - R.mcm_score(x.double(), emb.double(), temperature=1.0)).abs().max() < 1e-6
    assert torch.equal(p.labels, (F.normalize(x, dim=1) @ emb.T).argmax(1))
    # another temperature and a given bank (negatives ignored)
    bank = random_bank()
    m = MCM(bank=bank, temperature=0.05)
    truth = R.mcm_score(x.double(), bank.id_embeddings.double(), temperature=0.05)
    assert (m.score_features(x).double() - truth).abs().max() < 1e-6 and m.bank.num_neg == 0
    with pytest.raises(ValueError, match="template"):
        MCM(clip, classes=CLASSES, template="a photo")


# ------------------------------------------------------------------ KNN
def knn_truth(train: np.ndarray, query: np.ndarray, standardize: bool, k: int = 1):
    if standardize:
        mu, sd = train.mean(0), train.std(0)
        sd[sd == 0] = 1
        train, query = (train - mu) / sd, (query - mu) / sd
    t = train / np.linalg.norm(train, axis=1, keepdims=True)
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    sims = q @ t.T
    order = np.argsort(-sims, axis=1, kind="stable")
    return np.take_along_axis(sims, order[:, k - 1 : k], 1)[:, 0], order[:, 0]


@pytest.mark.parametrize("standardize", [True, False])
@pytest.mark.parametrize("k", [1, 3])
def test_knn_equals_brute_force(standardize, k):
    rng = np.random.default_rng(3)
    train = rng.normal(1.0, [0.5 + i % 4 for i in range(24)], (700, 24))
    labels = rng.integers(0, 9, 700)
    query = rng.normal(1.0, 2.0, (37, 24))
    want, nn = knn_truth(train, query, standardize, k)
    for block in (64 << 20, 4 * 5 * 7):  # one block, and many tiny blocks (not dividing the sizes)
        det = KNN(standardize=standardize, k=k, block_bytes=block).fit_features(torch.tensor(train, dtype=torch.float32),
                                                                               torch.tensor(labels))
        p = det.predict_features(torch.tensor(query, dtype=torch.float32))
        assert np.abs(p.scores.numpy() - want).max() < 1e-5
        if k == 1:
            assert np.array_equal(p.labels.numpy(), labels[nn])
    # exact neighbours: a training row scores cosine 1 with itself
    det = KNN(standardize=standardize).fit_features(torch.tensor(train, dtype=torch.float32))
    assert torch.allclose(det.score_features(torch.tensor(train[:5], dtype=torch.float32)), torch.ones(5), atol=1e-5)
    assert det.predict_features(torch.tensor(query[:2], dtype=torch.float32)).labels is None


def test_knn_storage_options():
    rng = np.random.default_rng(4)
    train = torch.tensor(rng.normal(0, 1, (300, 16)), dtype=torch.float32)
    query = torch.tensor(rng.normal(0, 1, (9, 16)), dtype=torch.float32)
    want, _ = knn_truth(train.double().numpy(), query.double().numpy(), True)
    half = KNN(bank_dtype=torch.bfloat16).fit_features(train)
    assert half.train_features.dtype == torch.bfloat16
    assert np.abs(half.score_features(query).numpy() - want).max() < 2e-2
    inplace_src = train.clone()
    det = KNN(copy=False).fit_features(inplace_src)
    assert det.train_features.data_ptr() == inplace_src.data_ptr()  # no copy of the training set
    assert np.abs(det.score_features(query).numpy() - want).max() < 1e-5


def test_knn_pre_projection_features_from_images(clip):
    x = images_u8(5, seed=3)
    pre = KNN(clip, feature_space="pre_projection")
    proj = KNN(clip, feature_space="projection")
    fp, fj = pre.features(x), proj.features(x)
    assert fp.shape == (5, 64) and fj.shape == (5, D)
    # pre-projection @ proj == encode_image, and the model is left intact
    assert torch.allclose(fp @ clip.model.visual.proj.detach(), fj, atol=1e-5)
    assert isinstance(clip.model.visual.proj, torch.nn.Parameter) and "proj" in dict(clip.model.visual.named_parameters())
    # fit on a DataLoader of preprocessed tensors, score images, equal to brute force
    train = images_u8(12, seed=4)
    pre.fit(train)
    want, _ = knn_truth(pre.features(train).double().numpy(), fp.double().numpy(), True)
    assert np.abs(pre.score(x).numpy() - want).max() < 1e-5
    # a failing forward restores the projection too
    with pytest.raises(Exception):
        pre_projection(clip.model, torch.zeros(1, 3, 7, 7))
    assert isinstance(clip.model.visual.proj, torch.nn.Parameter)
    with pytest.raises(ValueError, match="feature_space"):
        KNN(clip, feature_space="tokens")


# ------------------------------------------------------------------ Mahalanobis / RMD
def maha_truth(x: np.ndarray, y: np.ndarray, q: np.ndarray, inv=np.linalg.inv):
    cls = np.unique(y)
    mus = np.stack([x[y == c].mean(0) for c in cls])
    shared = np.mean([np.cov(x[y == c].T, ddof=1) for c in cls], axis=0)
    prec = inv(shared)
    md = np.stack([np.einsum("bd,de,be->b", q - m, prec, q - m) for m in mus], 1)
    mu0 = x.mean(0)
    prec0 = inv(np.cov(x.T, ddof=1))
    md0 = np.einsum("bd,de,be->b", q - mu0, prec0, q - mu0)
    return -md.min(1), -(md - md0[:, None]).min(1), cls[md.argmin(1)]


def test_mahalanobis_and_rmd_equal_float64_brute_force():
    x, y = gaussian_classes(labels=[10, 3, 7, 42])  # arbitrary label values
    q = np.concatenate([x[::17], np.random.default_rng(9).normal(0, 6, (8, x.shape[1]))])
    maha_s, rmd_s, pred = maha_truth(x, y, q)
    xt, yt, qt = torch.tensor(x, dtype=torch.float32), torch.tensor(y), torch.tensor(q, dtype=torch.float32)
    # the float64 truth on the float32-rounded inputs
    maha_s, rmd_s, pred = maha_truth(xt.double().numpy(), y, qt.double().numpy())
    for block in (64 << 20, 8 * 4 * 3):  # one block, and 3-row blocks
        m = Mahalanobis(block_bytes=block).fit_features(xt, yt)
        r = RMD(block_bytes=block).fit_features(xt, yt)
        pm, pr = m.predict_features(qt), r.predict_features(qt)
        assert np.allclose(pm.scores.numpy(), maha_s, rtol=1e-6, atol=1e-5)
        assert np.allclose(pr.scores.numpy(), rmd_s, rtol=1e-6, atol=1e-5)
        assert np.array_equal(pm.labels.numpy(), pred) and np.array_equal(pr.labels.numpy(), pred)
    assert m.classes_.tolist() == [3, 7, 10, 42] and m.covariance.dtype == torch.float64
    # a (x, y) DataLoader of features is not an image input; fit_features with numpy labels works
    m2 = Mahalanobis().fit_features(xt, y)
    assert torch.equal(m2.score_features(qt), pm.scores)


def test_mahalanobis_normalize_ridge_and_singular():
    x, y = gaussian_classes(n_per=30, c=3, d=8, seed=5)
    q = np.random.default_rng(6).normal(0, 3, (7, 8))
    xt, yt, qt = torch.tensor(x), torch.tensor(y), torch.tensor(q, dtype=torch.float32)
    # normalize=True: the truth on L2-normalised features
    n = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    want = maha_truth(n(x), y, n(qt.double().numpy()))[0]
    assert np.allclose(Mahalanobis(normalize=True).fit_features(xt, yt).score_features(qt).numpy(), want, rtol=1e-5)
    # ridge: Σ + ρ·mean(diag Σ)·I
    rho = 0.1
    ridge_inv = lambda s: np.linalg.inv(s + rho * np.trace(s) / len(s) * np.eye(len(s)))  # noqa: E731
    want = maha_truth(x, y, qt.double().numpy(), inv=ridge_inv)[0]
    assert np.allclose(Mahalanobis(ridge=rho).fit_features(xt, yt).score_features(qt).numpy(), want, rtol=1e-5)
    # singular covariance (fewer samples per class than dimensions): pinv with a warning, or a clear error
    xs, ys = gaussian_classes(n_per=3, c=2, d=8, seed=7)
    with pytest.warns(RuntimeWarning, match="pseudo-inverse"):
        det = Mahalanobis().fit_features(torch.tensor(xs), torch.tensor(ys))
    pinv = lambda s: np.linalg.pinv(s, hermitian=True)  # noqa: E731
    want = maha_truth(xs, ys, qt.double().numpy(), inv=pinv)[0]
    assert np.allclose(det.score_features(qt).numpy(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="singular"):
        Mahalanobis(pinv_fallback=False).fit_features(torch.tensor(xs), torch.tensor(ys))
    with pytest.raises(ValueError, match="at least 2"):
        Mahalanobis().fit_features(torch.randn(5, 4), torch.tensor([0, 0, 1, 1, 2]))
    with pytest.raises(ValueError, match="ridge"):
        Mahalanobis(ridge=-1.0)


# ------------------------------------------------------------------ calibration
def test_calibrate_matches_sklearn_roc_threshold():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(0)
    det = NegLabel(bank=random_bank())
    for n, tpr in [(100, 0.95), (37, 0.95), (20, 0.5), (8, 1.0), (1000, 0.9)]:
        scores = np.round(rng.normal(0, 1, n), 1).astype(np.float32)  # with ties
        theta = det.calibrate(torch.tensor(scores), tpr=tpr)
        # sklearn: ID positives vs one far-away negative; the highest threshold reaching the target TPR
        y = np.r_[np.ones(n), 0]
        fpr_, tpr_, thr = roc_curve(y, np.r_[scores, -1e9], drop_intermediate=False)
        want = thr[np.argmax(tpr_ >= tpr - 1e-12)]
        assert theta == pytest.approx(float(want))
        assert (scores >= theta).mean() >= tpr
        assert ((scores > theta).mean() < tpr) or theta == scores.max()
    assert det.calibrate([0.1, 0.2, 0.3, 0.4], tpr=0.75) == pytest.approx(0.2)
    assert det.calibrate(np.array([0.5, 0.1, 0.9]), tpr=1.0) == pytest.approx(0.1)
    det.threshold = 0.3
    p = det.predict_features(torch.randn(5, D))
    assert torch.equal(p.is_ood, p.scores < 0.3)
    for bad in (0.0, 1.5, True):
        with pytest.raises(ValueError, match="tpr"):
            det.calibrate(torch.rand(5), tpr=bad)
    with pytest.raises(ValueError, match="non-finite"):
        threshold_at_tpr(torch.tensor([0.1, float("nan")]))
    with pytest.raises(ValueError, match="threshold"):
        NegLabel(bank=random_bank(), threshold=float("inf"))


def test_calibrate_from_images_and_predict(clip):
    det = MCM(clip, classes=CLASSES, progress=False)
    x = images_u8(10, seed=8)
    theta = det.calibrate(x, tpr=0.8)
    s = det.score(x)
    assert (s >= theta).float().mean() >= 0.8 and theta == pytest.approx(float(torch.sort(s, descending=True).values[7]))
    p = det.predict(x)
    assert isinstance(p, Prediction) and torch.equal(p.is_ood, p.scores < theta) and p.is_ood.sum() == 2


# ------------------------------------------------------------------ fitting from images / errors
def test_fit_from_loader_with_labels_and_directory_scoring(clip, tmp_path):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(24, 3, 32, 32, generator=g)
    y = torch.arange(24) % 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)
    det = RMD(clip, feature_space="projection", ridge=1e-3).fit(loader)
    feats = det.features(x)
    ref = RMD(feature_space="projection", ridge=1e-3).fit_features(feats, y)
    assert torch.allclose(det.score_features(feats), ref.score_features(feats), rtol=1e-6, atol=1e-6)
    # explicit labels win over the loader's; a wrong count is an error
    with pytest.raises(ValueError, match="labels has 3 entries"):
        RMD(clip).fit(loader, labels=[0, 1, 2])
    # images on disk with a corrupt file: skipped and reported
    for i in range(3):
        Image.fromarray(np.full((36, 36, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    skipped: list = []
    p = det.predict(tmp_path, on_error="skip", skipped=skipped)
    assert len(p) == 3 and len(skipped) == 1 and skipped[0][0].endswith("bad.jpg")
    assert [n.rsplit("/", 1)[-1] for n in p.names] == ["0.png", "1.png", "2.png"]


def test_bad_input_and_not_fitted():
    for cls in (KNN, Mahalanobis, RMD):
        with pytest.raises(NotFittedError, match="not fitted"):
            cls().score_features(torch.randn(2, 4))
        with pytest.raises(NotFittedError):
            cls().predict_features(torch.randn(2, 4))
    with pytest.raises(ValueError, match="needs class labels"):
        Mahalanobis().fit_features(torch.randn(10, 4))
    with pytest.raises(ValueError, match="labels has 9 entries but features has 10"):
        KNN().fit_features(torch.randn(10, 4), torch.arange(9))
    with pytest.raises(TypeError, match="labels must be integers"):
        RMD().fit_features(torch.randn(10, 4), torch.rand(10))
    with pytest.raises(ValueError, match="empty"):
        KNN().fit_features(torch.randn(0, 4))
    with pytest.raises(ValueError, match="non-finite"):
        KNN().fit_features(torch.tensor([[1.0, float("inf")]]))
    knn = KNN().fit_features(torch.randn(10, 4))
    with pytest.raises(ValueError, match="width D=5 but KNN expects D=4"):
        knn.score_features(torch.randn(2, 5))
    with pytest.raises(ValueError, match="k=3 needs at least 3"):
        KNN(k=3).fit_features(torch.randn(2, 4))
    with pytest.raises(ValueError, match="zero"):
        KNN(standardize=False).fit_features(torch.randn(5, 4)).score_features(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="without a model"):
        KNN().fit(images_u8(2))
    with pytest.raises(TypeError, match="ClipBundle"):
        KNN(object())
    with pytest.raises(ValueError, match="batch_size"):
        KNN(batch_size=0)


def test_registry_create_and_subclasses():
    assert {"neglabel", "mcm", "knn", "mahalanobis", "rmd"} <= set(DETECTORS)
    assert DETECTORS["rmd"] is RMD and DETECTORS["knn"].needs_fit and not DETECTORS["neglabel"].needs_fit
    assert isinstance(create("KNN", k=2), KNN)
    with pytest.raises(ValueError, match="unknown detector 'bogus'; known: .*knn.*neglabel"):
        create("bogus")

    class Energy(Detector):
        name = "test-energy"

        def _score_features(self, f):
            return f.logsumexp(1), None

    assert DETECTORS["test-energy"] is Energy
    e = create("test-energy")
    f = torch.randn(4, 3)
    assert torch.allclose(e.score_features(f), f.logsumexp(1)) and torch.equal(e.outlier_score_features(f),
                                                                               -e.score_features(f))
    assert e.fit_features(f) is e and e.reset() is None
    del DETECTORS["test-energy"]


def test_to_and_openood_adapter():
    det = KNN().fit_features(torch.randn(20, 6), torch.arange(20))
    assert det.to("cpu") is det and det.train_features.device.type == "cpu"
    try:
        import openood  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs OpenOOD, which is not installed"):
            det.as_openood_postprocessor()
    else:  # pragma: no cover - only where OpenOOD is installed
        pp = det.as_openood_postprocessor()
        assert hasattr(pp, "postprocess")


@pytest.mark.gpu
def test_detectors_on_cuda_match_cpu():
    bank = random_bank()
    x = torch.randn(33, D)
    cpu = NegLabel(bank=bank).score_features(x)
    gpu = NegLabel(bank=bank, device="cuda").score_features(x.cuda())
    assert gpu.device.type == "cuda" and (gpu.cpu() - cpu).abs().max() < 1e-4
    train = torch.randn(500, 16)
    y = torch.arange(500) % 5
    for cls in (KNN, Mahalanobis, RMD):
        a = cls().fit_features(train, y).score_features(train[:9])
        b = cls().fit_features(train, y).to("cuda").score_features(train[:9].cuda())
        assert torch.allclose(a, b.cpu(), rtol=1e-4, atol=1e-4)
