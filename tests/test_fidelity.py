"""Named conventions where the papers' code disagree (issue 12 §2), each against an
independent truth: numpy float64 for kNN's two k > 1 rules, sklearn's
``EmpiricalCovariance`` / numpy float64 for Mahalanobis and RMD's two covariance
conventions, a float64 / float32 rendering of NegMining's ranking, and the
permutation-file loader used by ``--permutation``."""

from __future__ import annotations

import json

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


# ------------------------------------------------------- group permutation from a file (CLI + API)
def _mine(tmp_path, out, *extra):
    from fastood.cli import main
    from tests.tiny import TINY_KWARGS

    torch.manual_seed(0)  # the random tower: the same weights for every run
    return main(["mine", "--model", "ViT-B-32", "--pretrained", "none", "--model-kwargs", json.dumps(TINY_KWARGS),
                 "--classes", str(tmp_path / "classes.txt"), "--corpus", str(tmp_path / "words.tsv"), "--ratio", "0.5",
                 "--groups", "3", "--device", "cpu", "--quiet", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    from fastood.bank import TextBank

    root = tmp_path_factory.mktemp("perm")
    (root / "classes.txt").write_text("dog\ncat\nbird\n")
    words = ["rock", "river", "cloud", "thunder", "glass", "table", "forest", "engine", "ladder", "smooth", "rusty",
             "wooden", "bright", "quiet", "sharp"]
    pos = ["n"] * 9 + ["a"] * 6
    (root / "words.tsv").write_text("".join(f"{w}\t{p}\n" for w, p in zip(words, pos)))
    assert _mine(root, root / "seeded.safetensors") == 0
    bank = TextBank.load(root / "seeded.safetensors")
    assert bank.meta["permutation"] == "seeded" and bank.num_neg == 6  # int(9·0.5) + int(6·0.5) = 7, 6 kept
    # the mining order, recovered from the seed-0 CPU draw the default grouping used
    perm0 = torch.randperm(bank.num_neg, generator=torch.Generator().manual_seed(0))
    order = [None] * bank.num_neg
    for i, p in enumerate(perm0.tolist()):
        order[p] = bank.neg_labels[i]
    return root, bank, order


@pytest.mark.parametrize("suffix", [".pt", ".npy", ".txt"])
def test_cli_mine_takes_a_permutation_file(mined, suffix):
    from fastood.bank import TextBank

    root, seeded, order = mined
    perm = torch.randperm(seeded.num_neg, generator=torch.Generator().manual_seed(7))
    path = root / f"perm{suffix}"
    if suffix == ".pt":
        torch.save(perm, path)
    elif suffix == ".npy":
        np.save(path, perm.numpy())
    else:
        path.write_text("\n".join(map(str, perm.tolist())) + "\n")
    out = root / f"explicit{suffix}.safetensors"
    assert _mine(root, out, "--permutation", str(path)) == 0
    bank = TextBank.load(out)
    assert bank.meta["permutation"] == "explicit"
    assert bank.neg_labels == [order[i] for i in perm.tolist()]  # group layout = mined[perm]
    by_word = dict(zip(seeded.neg_labels, seeded.embeddings[seeded.num_id:]))
    assert torch.equal(bank.embeddings[bank.num_id:], torch.stack([by_word[w] for w in bank.neg_labels]))


def test_cli_rejects_bad_permutation_files(mined, capsys):
    root, seeded, _ = mined
    n = seeded.num_neg
    (root / "short.txt").write_text(" ".join(map(str, range(n - 1))))
    with pytest.raises(SystemExit, match=rf"permutation of range\({n}\)"):
        _mine(root, root / "x.safetensors", "--permutation", str(root / "short.txt"))
    (root / "dup.txt").write_text(" ".join(["0"] * n))
    with pytest.raises(SystemExit, match="repeated"):
        _mine(root, root / "x.safetensors", "--permutation", str(root / "dup.txt"))
    from PIL import Image

    from fastood.cli import main

    (root / "imgs").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(root / "imgs" / "a.png")
    with pytest.raises(SystemExit, match="neglabel and interneg"):
        main(["score", str(root / "imgs"), "--out", str(root / "s.csv"), "--method", "mcm", "--pretrained", "none",
              "--permutation", str(root / "dup.txt"), "--quiet"])
    # score / eval: the file reaches the detector's bank build (here one entry short of n_kept)
    from tests.tiny import TINY_KWARGS

    with pytest.raises(SystemExit, match=rf"cannot build the 'neglabel' detector: .*range\({n}\)"):
        main(["score", str(root / "imgs"), "--out", str(root / "s.csv"), "--model", "ViT-B-32", "--pretrained",
              "none", "--model-kwargs", json.dumps(TINY_KWARGS), "--classes", str(root / "classes.txt"),
              "--corpus", str(root / "words.tsv"), "-o", "ratio=0.5", "-o", "groups=3", "--cache",
              str(root / "cache"), "--device", "cpu", "--permutation", str(root / "short.txt"), "--quiet"])
    assert not (root / "x.safetensors").exists()


class _NotATensor:
    pass


def test_load_permutation_validates_files(tmp_path):
    from fastood.labels import check_permutation, load_permutation

    good = [2, 0, 3, 1]
    torch.save({"permutation": torch.tensor(good)}, tmp_path / "d.pt")
    assert load_permutation(tmp_path / "d.pt").tolist() == good
    assert load_permutation(tmp_path / "d.pt", 4).tolist() == good
    with pytest.raises(ValueError, match=r"range\(5\)"):
        load_permutation(tmp_path / "d.pt", 5)
    torch.save(_NotATensor(), tmp_path / "obj.pt")  # weights_only=True refuses arbitrary pickles
    with pytest.raises(ValueError, match="cannot be read"):
        load_permutation(tmp_path / "obj.pt")
    np.save(tmp_path / "f.npy", np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="integers"):
        load_permutation(tmp_path / "f.npy")
    np.save(tmp_path / "m.npy", np.array([[0, 1], [1, 0]]))
    with pytest.raises(ValueError, match="1-D"):
        load_permutation(tmp_path / "m.npy")
    (tmp_path / "w.txt").write_text("0 1 two")
    with pytest.raises(ValueError, match="integers"):
        load_permutation(tmp_path / "w.txt")
    (tmp_path / "p.json").write_text("[0, 1]")
    with pytest.raises(ValueError, match=r"\.pt/\.pth"):
        load_permutation(tmp_path / "p.json")
    with pytest.raises(FileNotFoundError):
        load_permutation(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="out-of-range"):
        check_permutation([0, 1, 3])


def test_neglabel_api_permutation_and_mining_precision(tmp_path):
    from fastood.build_bank import build_bank
    from fastood.detectors import NegLabel
    from fastood.labels import load_corpus
    from tests.tiny import tiny_clip

    clip = tiny_clip()
    full = load_corpus("neglabel")
    keep = np.zeros(len(full), dtype=bool)
    keep[::500] = True
    corpus = full.filter(keep)
    classes = ["dog", "cat", "bird"]
    ref = build_bank(clip, classes, corpus=corpus, groups=1, permutation=None, progress=False)
    kept = ref.num_neg - ref.num_neg % 4
    perm = torch.randperm(kept, generator=torch.Generator().manual_seed(3))
    det = NegLabel(clip, classes=classes, corpus=corpus, groups=4, permutation=perm, cache=tmp_path, progress=False)
    mined = torch.empty_like(ref.embeddings[3:])  # ref = mined[randperm(M, seed 0)]: undo it
    mined[torch.randperm(ref.num_neg, generator=torch.Generator().manual_seed(0))] = ref.embeddings[3:]
    assert torch.equal(det.bank.embeddings[3:], mined[:kept][perm])
    d32 = NegLabel(clip, classes=classes, corpus=corpus, groups=4, mining_precision="float32", cache=tmp_path,
                   progress=False)
    assert d32.bank.meta["mining"]["precision"] == "float32"
    with pytest.raises(ValueError, match="mining_precision"):
        NegLabel(clip, classes=classes, mining_precision="half")
