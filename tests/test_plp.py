"""MSP linear probe / pseudo-label probing (SPEC §5) against float64 brute force:
standardisation, the trained head's MSP, an independent Adam + warmup-cosine
re-implementation of the training run, zero-shot pseudo-labels and the confidence filter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastood.detectors import NotFittedError, create
from fastood.detectors.mahalanobis import RMD
from fastood.detectors.plp import MSP, PLP, lr_at, zero_shot_probs
from fastood.labels import PLP_TEMPLATES
from fastood.models import encode_texts
from tests.tiny import tiny_clip

CLASSES = ["dog", "cat", "car", "tree"]


def blobs(n=120, d=10, c=4, seed=0, spread=0.6):
    g = torch.Generator().manual_seed(seed)
    centers = 3 * torch.randn(c, d, generator=g)
    y = torch.arange(n) % c
    x = centers[y] + spread * torch.randn(n, d, generator=g)
    x = x * torch.linspace(0.5, 5, d) + torch.linspace(-3, 3, d)  # uneven scales / offsets
    return x, y


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


def test_standardisation_and_msp_match_float64():
    x, y = blobs()
    x[:, 3] = 7.0  # a constant dimension: σ = 0 → 1
    det = MSP(epochs=5, train_batch_size=32).fit_features(x, y)
    x64 = x.double().numpy()
    mean, std = x64.mean(0), x64.std(0)  # population std (ddof = 0)
    std[std == 0] = 1
    assert np.allclose(det.mean.numpy(), mean, rtol=1e-12, atol=1e-12)
    assert np.allclose(det.std.numpy(), std, rtol=1e-12, atol=1e-12)
    xq = torch.randn(17, 10, generator=torch.Generator().manual_seed(1)) * 4
    z = ((xq.double() - torch.from_numpy(mean)) / torch.from_numpy(std)) @ det.weight.double().T + det.bias.double()
    truth = torch.softmax(z, dim=1).max(dim=1).values
    pred = det.predict_features(xq)
    assert pred.scores.dtype == torch.float32
    assert (pred.scores.double() - truth).abs().max() < 1e-6
    assert torch.equal(pred.labels, z.argmax(1))


def test_training_matches_independent_adam_with_warmup_cosine():
    """A float64 re-implementation of the documented run (zero init, Adam, lr schedule, seeded batches)."""
    x, y = blobs(n=50, d=6, c=3)
    epochs, bs, lr = 3, 16, 0.05
    det = MSP(epochs=epochs, train_batch_size=bs, lr=lr).fit_features(x, y)
    xs = (x.double() - x.double().mean(0)) / x.double().std(0, unbiased=False)
    W = torch.zeros(3, 6, dtype=torch.float64)
    b = torch.zeros(3, dtype=torch.float64)
    mW, vW, mb, vb = (torch.zeros_like(W), torch.zeros_like(W), torch.zeros_like(b), torch.zeros_like(b))
    total = epochs * math.ceil(50 / bs)
    warm = round(0.1 * total)
    gen = torch.Generator().manual_seed(0)
    t = 0
    for _ in range(epochs):
        perm = torch.randperm(50, generator=gen)
        for s in range(0, 50, bs):
            idx = perm[s:s + bs]
            xb, yb = xs[idx], y[idx]
            p = torch.softmax(xb @ W.T + b, dim=1)
            p[torch.arange(len(idx)), yb] -= 1
            gW, gb = p.T @ xb / len(idx), p.mean(0)
            rate = lr * (t + 1) / warm if t < warm else lr * 0.5 * (1 + math.cos(math.pi * (t - warm) / (total - warm)))
            t += 1
            for P, G, M, V in ((W, gW, mW, vW), (b, gb, mb, vb)):
                M.mul_(0.9).add_(0.1 * G)
                V.mul_(0.999).add_(0.001 * G * G)
                P.sub_(rate * (M / (1 - 0.9 ** t)) / ((V / (1 - 0.999 ** t)).sqrt() + 1e-8))
    assert (det.weight.double() - W).abs().max() < 1e-4
    assert (det.bias.double() - b).abs().max() < 1e-4
    # the schedule: warmup to lr, cosine down to ~0
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1) and lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0) and lr_at(99, 100, 10, 1.0) < 1e-3


def test_training_learns_and_is_deterministic():
    x, y = blobs(n=200, seed=2)
    a = MSP(epochs=30, train_batch_size=64, lr=1e-2).fit_features(x, y)
    b = MSP(epochs=30, train_batch_size=64, lr=1e-2).fit_features(x, y)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert a.history[-1] < a.history[0]
    assert (a.predict_features(x).labels == y).float().mean() > 0.95
    # far-away points are less confident than training points
    assert a.score_features(x).mean() > a.score_features(torch.zeros(5, 10) + x.mean(0)).mean()


def test_pseudo_label_filter_counts_against_brute_force():
    x, _ = blobs(n=150, d=12, c=4, seed=3)
    emb = torch.randn(4, 12, generator=torch.Generator().manual_seed(4))
    u = F.normalize(x.double(), dim=1)
    probs = torch.softmax(u @ F.normalize(emb.double(), dim=1).T / 0.1, dim=1)  # T_zs = 0.1: spread-out confidences
    conf, lab = probs.max(1)
    counts = []
    for thr in (0.0, 0.5, 0.7, 0.9):
        det = PLP(classes=CLASSES, class_embeddings=emb, feature_space="projection", min_confidence=thr,
                  zero_shot_temperature=0.1, epochs=3, train_batch_size=64)
        det.fit_features(x)
        keep = conf >= thr
        assert det.label_source == "pseudo"
        assert int(det.kept.sum()) == int(keep.sum())
        assert torch.equal(det.kept, keep)
        assert torch.equal(det.pseudo_labels, lab)
        assert (det.pseudo_confidence.double() - conf).abs().max() < 1e-5
        # the head was trained on exactly the kept images with their pseudo-labels
        ref = MSP(feature_space="projection", epochs=3, train_batch_size=64, num_classes=4).fit_features(x[keep], lab[keep])
        assert torch.equal(det.weight, ref.weight) and torch.equal(det.mean, ref.mean)
        counts.append(int(keep.sum()))
    assert counts[0] == 150 and 150 > counts[1] > counts[2] > counts[3] > 0  # 0 keeps all (the released code)
    same = emb[:1].expand(4, -1)  # identical class embeddings: every probability is 1/4
    with pytest.raises(ValueError, match="min_confidence"):
        PLP(classes=CLASSES, class_embeddings=same, feature_space="projection", min_confidence=0.3).fit_features(x)


def test_given_labels_replace_pseudo_labels():
    x, y = blobs(n=80, c=4)
    emb = torch.randn(4, 10, generator=torch.Generator().manual_seed(5))
    det = PLP(classes=CLASSES, class_embeddings=emb, feature_space="projection", epochs=3).fit_features(x, y)
    ref = MSP(feature_space="projection", epochs=3, num_classes=4).fit_features(x, y)
    assert det.label_source == "labels" and det.pseudo_labels is None
    assert torch.equal(det.weight, ref.weight)


def test_rmd_scores_reuse_the_rmd_detector():
    x, y = blobs(n=160, d=8, c=4, seed=6)
    xq = torch.randn(9, 8, generator=torch.Generator().manual_seed(7)) * 3
    det = MSP(score="rmd", epochs=2).fit_features(x, y)
    xs = ((x.double() - det.mean) / det.std).float()
    rmd = RMD().fit_features(xs, y)
    ref = rmd.score_features(((xq.double() - det.mean) / det.std).float())
    assert torch.allclose(det.score_features(xq), ref, rtol=1e-5, atol=1e-4)
    on_logits = MSP(score="rmd_logits", epochs=2, ridge=1e-6).fit_features(x, y)
    z = on_logits.logits(x)
    ref2 = RMD(ridge=1e-6).fit_features(z, y).score_features(on_logits.logits(xq))
    assert torch.allclose(on_logits.score_features(xq), ref2, rtol=1e-5, atol=1e-4)


def test_plp_end_to_end_on_a_tiny_clip(clip):
    imgs = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fake_labels = torch.zeros(24, dtype=torch.long)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(imgs, fake_labels), batch_size=10)
    det = PLP(clip, classes=CLASSES, epochs=2)
    det.fit(loader)  # the loader's labels are ignored: pseudo-labels
    assert det.label_source == "pseudo"
    # class embeddings: normalised mean of the normalised 5-template embeddings
    acc = sum(encode_texts(clip.model, clip.tokenizer, [t.format(c) for c in CLASSES], progress=False)
              for t in PLP_TEMPLATES)
    assert torch.allclose(det.class_embeddings, F.normalize(acc, dim=1), atol=1e-6)
    # pre-projection features (the head's input) project onto encode_image
    with torch.no_grad():
        post = clip.model.encode_image(imgs)
    pre = det.features(imgs)
    assert pre.shape == (24, 64)
    assert torch.allclose(det.project(pre), post, atol=1e-5)
    truth = zero_shot_probs(post.double(), det.class_embeddings.double(), 0.01).argmax(1)
    assert torch.equal(det.pseudo_labels, truth)
    assert det.weight.shape == (4, 64)
    p = det.predict(imgs[:3])
    assert p.scores.shape == (3,) and len(p.names) == 3
    assert isinstance(create("plp", clip=clip, classes=CLASSES), PLP)
    assert isinstance(create("msp"), MSP)


def test_bad_input():
    x, y = blobs()
    with pytest.raises(NotFittedError):
        MSP().score_features(x)
    with pytest.raises(ValueError, match="labels"):
        MSP().fit_features(x)
    det = MSP(epochs=1).fit_features(x, y)
    with pytest.raises(ValueError, match="width"):
        det.score_features(torch.randn(3, 11))
    with pytest.raises(ValueError, match="num_classes"):
        MSP(num_classes=2, epochs=1).fit_features(x, y)
    with pytest.raises(ValueError, match="score"):
        MSP(score="energy")
    with pytest.raises(ValueError, match="epochs"):
        MSP(epochs=0)
    with pytest.raises(ValueError, match="warmup"):
        MSP(warmup=1.0)
    with pytest.raises(ValueError, match="min_confidence"):
        PLP(classes=CLASSES, min_confidence=1.5)
    with pytest.raises(ValueError, match="tokenizer"):
        PLP(classes=CLASSES, feature_space="projection").fit_features(x)  # no model, no class_embeddings
    with pytest.raises(ValueError, match="class_embeddings"):
        PLP(classes=CLASSES, class_embeddings=torch.randn(3, 10))
