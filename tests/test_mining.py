"""fastood.labels.mining against plain brute-force implementations.

Two kinds of synthetic unit-norm embeddings:
* "dyadic": 16 entries of +-1/4 in 64 dims, so every cosine is a multiple of 1/16
  and exact in any summation order -- this is where exact ties are tested;
* Gaussian: generic values, ties improbable.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastood.labels.mining as mining
from fastood.labels import (
    csp_exclude,
    image_prototypes,
    interneg_criterion,
    mine_interneg,
    mine_neglabel,
    quantile_similarity,
)


def dyadic(n: int, rng: np.random.Generator, d: int = 64, nnz: int = 16) -> np.ndarray:
    x = np.zeros((n, d))
    for i in range(n):
        idx = rng.choice(d, size=nnz, replace=False)
        x[i, idx] = rng.choice([-0.25, 0.25], size=nnz)
    return x


def gaussian(n: int, rng: np.random.Generator, d: int = 32) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def t32(x):
    return torch.tensor(x, dtype=torch.float32)


# ----------------------------------------------------------------------------
# brute force, written plainly

def brute_neglabel(id_emb, cand, pos, percentile, ratio, exclude=None):
    id_emb = np.asarray(id_emb, dtype=np.float64)
    cand = np.asarray(cand, dtype=np.float64)
    q = []
    for i in range(len(cand)):
        sims = [float(np.dot(cand[i], id_emb[k])) for k in range(len(id_emb))]
        qi = float(np.quantile(sims, percentile))
        if exclude is not None and exclude[i]:
            qi = float("inf")
        q.append(qi)
    out = []
    for tag in ("n", "a"):
        members = [i for i in range(len(cand)) if pos[i] == tag]
        members = sorted(members, key=lambda i: q[i])  # Python's sort is stable
        out += members[: int(len(members) * ratio)]
    return out


def brute_interneg(id_emb, protos, cand):
    id_emb, protos, cand = (np.asarray(a, dtype=np.float64) for a in (id_emb, protos, cand))
    b = [float(np.dot(id_emb[k], protos[k])) for k in range(len(protos))]
    keep, dev = [], []
    for i in range(len(cand)):
        sims = [float(np.dot(cand[i], protos[k])) for k in range(len(protos))]
        keep.append(all(s < bk for s, bk in zip(sims, b)))
        dev.append(sum(bk - s for s, bk in zip(sims, b)) / len(b))
    return keep, dev


def brute_mine_interneg(id_emb, protos, cand, pos, m):
    keep, dev = brute_interneg(id_emb, protos, cand)
    adj = [i for i in range(len(cand)) if keep[i] and pos[i] == "a"]
    noun = [i for i in range(len(cand)) if keep[i] and pos[i] == "n"]
    if m >= len(adj) + len(noun):
        n_adj, n_noun = len(adj), len(noun)
    else:
        n_adj = int(m * (len(adj) / (len(adj) + len(noun))))
        n_noun = m - n_adj
    adj = sorted(adj, key=lambda i: -dev[i])
    noun = sorted(noun, key=lambda i: -dev[i])
    return adj[:n_adj] + noun[:n_noun]


# ----------------------------------------------------------------------------
# NegMining

@pytest.mark.parametrize("percentile,k", [(0.95, 21), (0.5, 21), (1.0, 8), (0.0, 5)])
def test_neglabel_matches_brute_force_with_ties(percentile, k):
    rng = np.random.default_rng(1)
    id_emb = dyadic(k, rng)
    base = dyadic(60, rng)
    cand = base[rng.integers(0, 60, size=240)]  # many exact duplicates -> exact ties in q
    pos = rng.choice(["n", "a"], size=len(cand), p=[0.7, 0.3])
    got = mine_neglabel(t32(id_emb), t32(cand), pos, percentile=percentile, ratio=0.15)
    assert got.dtype == torch.long
    assert got.tolist() == brute_neglabel(id_emb, cand, pos, percentile, 0.15)
    q = quantile_similarity(t32(id_emb), t32(cand), percentile=percentile)
    assert len(set(q.tolist())) < len(cand)  # ties really happen


@pytest.mark.parametrize("ratio", [0.15, 0.5, 1.0, 0.01])
def test_neglabel_matches_brute_force_gaussian(ratio):
    rng = np.random.default_rng(2)
    id_emb, cand = gaussian(37, rng), gaussian(300, rng)
    pos = rng.choice(["n", "a"], size=300)
    got = mine_neglabel(t32(id_emb), t32(cand), list(pos), percentile=0.95, ratio=ratio)
    assert got.tolist() == brute_neglabel(id_emb, cand, pos, 0.95, ratio)
    # float64 inputs stay float64
    got64 = mine_neglabel(torch.tensor(id_emb), torch.tensor(cand), pos, ratio=ratio)
    assert got64.tolist() == got.tolist()


def test_neglabel_order_nouns_then_adjectives_and_exclude():
    rng = np.random.default_rng(3)
    id_emb, cand = gaussian(10, rng), gaussian(80, rng)
    pos = np.array(["a", "n"] * 40)
    got = mine_neglabel(t32(id_emb), t32(cand), pos, ratio=0.5).tolist()
    assert [pos[i] for i in got] == ["n"] * 20 + ["a"] * 20
    q = quantile_similarity(t32(id_emb), t32(cand)).tolist()
    assert [q[i] for i in got[:20]] == sorted(q[i] for i in got[:20])
    exclude = np.zeros(80, dtype=bool)
    exclude[got[:5]] = True
    got_ex = mine_neglabel(t32(id_emb), t32(cand), pos, ratio=0.5, exclude=torch.from_numpy(exclude))
    assert got_ex.tolist() == brute_neglabel(id_emb, cand, pos, 0.95, 0.5, exclude)
    assert not set(got[:5]) & set(got_ex.tolist())
    # boolean cand_pos (True = adjective) and 's' satellites
    assert mine_neglabel(t32(id_emb), t32(cand), pos == "a", ratio=0.5).tolist() == got
    assert mine_neglabel(t32(id_emb), t32(cand), np.where(pos == "a", "s", "n"), ratio=0.5).tolist() == got


def official_fp32_neglabel(id_emb, cand, pos, percentile, ratio, batch=1000):
    """The NegLabel reference's ranking on the CPU, written from its description: the candidate
    list [nouns | adjectives], fp32 `rows @ id.T` over `batch`-row chunks, fp32 torch.quantile,
    then an ascending sort per POS (stable: a tie keeps list order) and the lowest int(count·ratio)."""
    nouns = [i for i in range(len(pos)) if pos[i] == "n"]
    adjs = [i for i in range(len(pos)) if pos[i] == "a"]
    listed = torch.cat([cand[nouns], cand[adjs]]).float()
    t = id_emb.float()
    q = torch.cat([torch.quantile(listed[s:s + batch] @ t.T, q=percentile, dim=-1)
                   for s in range(0, listed.shape[0], batch)])
    q_noun, q_adj = q[: len(nouns)], q[len(nouns):]
    keep_noun = torch.argsort(q_noun, stable=True)[: int(len(nouns) * ratio)]
    keep_adj = torch.argsort(q_adj, stable=True)[: int(len(adjs) * ratio)]
    return [nouns[i] for i in keep_noun.tolist()] + [adjs[i] for i in keep_adj.tolist()]


def near_tie_candidates(rng, n_pairs=1200, d=32):
    """Pairs of candidates one float32 ulp apart in every coordinate: their q differ by ~1e-8,
    below float32's GEMM / quantile rounding, so float32 and float64 rank such pairs differently."""
    base = gaussian(n_pairs, rng, d).astype(np.float32)
    twin = np.nextafter(base, np.where(rng.random(base.shape) < 0.5, np.inf, -np.inf).astype(np.float32))
    cand = np.empty((2 * n_pairs, d), dtype=np.float32)
    cand[0::2], cand[1::2] = base, twin
    return cand


def test_neglabel_float32_precision_ranks_as_the_reference_and_float64_as_float64():
    rng = np.random.default_rng(12)
    ids = t32(gaussian(21, rng))
    cand = torch.from_numpy(near_tie_candidates(rng))
    pos = np.where(rng.random(cand.shape[0]) < 0.3, "a", "n")  # nouns and adjectives interleaved
    r64 = mine_neglabel(ids, cand, pos, percentile=0.95, ratio=0.5).tolist()
    r32 = mine_neglabel(ids, cand, pos, percentile=0.95, ratio=0.5, precision="float32").tolist()
    # the default: float64 dot products rounded once to float32 (the working precision), float64 quantile
    sims = (cand.double().numpy() @ ids.double().numpy().T).astype(np.float32).astype(np.float64)
    q = np.quantile(sims, 0.95, axis=1)
    truth64 = []
    for tag in ("n", "a"):
        members = np.nonzero(pos == tag)[0]
        truth64 += members[np.argsort(q[members], kind="stable")][: int(len(members) * 0.5)].tolist()
    assert r64 == truth64
    assert r32 == official_fp32_neglabel(ids, cand, list(pos), 0.95, 0.5)
    assert r32 != r64, "the near-tie pairs should order differently in float32 and float64"
    q32 = quantile_similarity(ids, cand, percentile=0.95, precision="float32")
    assert q32.dtype == torch.float32
    q64 = quantile_similarity(ids, cand, percentile=0.95)
    assert (q32.double() - q64).abs().max() < 1e-6  # same values up to float32 rounding
    with pytest.raises(ValueError, match="precision"):
        mine_neglabel(ids, cand, pos, precision="float16")


@pytest.mark.parametrize("n_noun,n_adj,ratio", [
    (0, 5, 0.15), (1, 1, 0.15), (7, 13, 0.15), (100, 3, 0.15), (20, 20, 1.0), (33, 67, 0.3),
    (57187, 12807, 0.15), (57193, 12813, 0.15), (58514, 12280, 0.15),
])
def test_counts_per_pos(n_noun, n_adj, ratio):
    g = torch.Generator().manual_seed(0)
    id_emb = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=1)
    cand = torch.nn.functional.normalize(torch.randn(n_noun + n_adj, 4, generator=g), dim=1)
    pos = np.array(["n"] * n_noun + ["a"] * n_adj)
    got = mine_neglabel(id_emb, cand, pos, ratio=ratio)
    nouns = int((got < n_noun).sum())
    assert nouns == int(n_noun * ratio) and len(got) - nouns == int(n_adj * ratio)
    assert len(set(got.tolist())) == len(got)
    if (n_noun, n_adj) in ((57187, 12807), (57193, 12813)):  # NegLabel's ImageNet numbers
        assert (nouns, len(got) - nouns) == (8578, 1921)
    if (n_noun, n_adj) == (58514, 12280):  # fastood's "neglabel" corpus
        assert (nouns, len(got) - nouns) == (8777, 1842)


def test_chunking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(4)
    id_emb, cand = t32(gaussian(23, rng)), t32(gaussian(157, rng))
    pos = rng.choice(["n", "a"], size=157)
    ref = mine_neglabel(id_emb, cand, pos)
    q_ref = quantile_similarity(id_emb, cand)
    protos = t32(gaussian(23, rng))
    keep_ref, dev_ref = interneg_criterion(id_emb, protos, cand)
    csp_ref = csp_exclude(id_emb, cand, max_cos=0.3)
    for cs in (1, 2, 5, 64, 10_000):
        assert torch.equal(mine_neglabel(id_emb, cand, pos, chunk_size=cs), ref)
        assert torch.equal(quantile_similarity(id_emb, cand, chunk_size=cs), q_ref)
        keep, dev = interneg_criterion(id_emb, protos, cand, chunk_size=cs)
        assert torch.equal(keep, keep_ref) and torch.equal(dev, dev_ref)
        assert torch.equal(csp_exclude(id_emb, cand, max_cos=0.3, chunk_size=cs), csp_ref)
    # the per-chunk cap that keeps torch.quantile under its element limit
    monkeypatch.setattr(mining, "_QUANTILE_MAX_NUMEL", 50)
    assert mining._chunk_rows(23, 4096) == 2
    assert torch.equal(quantile_similarity(id_emb, cand), q_ref)
    assert torch.equal(mine_neglabel(id_emb, cand, pos), ref)


def test_half_precision_inputs():
    rng = np.random.default_rng(5)
    id_emb, cand = gaussian(11, rng), gaussian(40, rng)
    pos = rng.choice(["n", "a"], size=40)
    for dt in (torch.float16, torch.bfloat16):
        i, c = torch.tensor(id_emb, dtype=dt), torch.tensor(cand, dtype=dt)
        got = mine_neglabel(i, c, pos, ratio=0.5)
        assert got.tolist() == brute_neglabel(i.double().numpy(), c.double().numpy(), pos, 0.95, 0.5)
        assert quantile_similarity(i, c).dtype == torch.float64


# ----------------------------------------------------------------------------
# InterNeg

def _interneg_data(rng, k=12, n=200, kind="dyadic"):
    if kind == "dyadic":
        protos = dyadic(k, rng)
        id_emb = protos.copy()
        for row in id_emb:  # flip 2 of the 16 signs: cos(t_k, c_k) = 0.75
            nz = np.flatnonzero(row)
            row[rng.choice(nz, size=2, replace=False)] *= -1
        base = dyadic(50, rng)
        cand = np.concatenate([base[rng.integers(0, 50, size=n - 20)],
                               protos[rng.integers(0, k, size=20)]])  # the last 20 fail
    else:
        protos = gaussian(k, rng, d=48)
        id_emb = protos + 0.6 * gaussian(k, rng, d=48)
        id_emb /= np.linalg.norm(id_emb, axis=1, keepdims=True)
        cand = np.concatenate([gaussian(n - 20, rng, d=48),
                               protos[rng.integers(0, k, size=20)] + 0.05 * gaussian(20, rng, d=48)])
        cand /= np.linalg.norm(cand, axis=1, keepdims=True)
    perm = rng.permutation(n)
    return id_emb, protos, cand[perm]


@pytest.mark.parametrize("kind", ["dyadic", "gaussian"])
def test_interneg_criterion_matches_brute_force(kind):
    rng = np.random.default_rng(6)
    id_emb, protos, cand = _interneg_data(rng, kind=kind)
    dt = torch.float32 if kind == "dyadic" else torch.float64
    keep, dev = interneg_criterion(torch.tensor(id_emb, dtype=dt), torch.tensor(protos, dtype=dt),
                                   torch.tensor(cand, dtype=dt))
    bkeep, bdev = brute_interneg(id_emb, protos, cand)
    assert keep.tolist() == bkeep
    assert 0 < sum(bkeep) < len(bkeep)
    np.testing.assert_allclose(dev.numpy(), bdev, rtol=0, atol=1e-6 if dt == torch.float32 else 1e-12)


@pytest.mark.parametrize("kind", ["dyadic", "gaussian"])
@pytest.mark.parametrize("m", [0, 1, 17, 100, 179, 10_000])
def test_mine_interneg_matches_brute_force(kind, m):
    rng = np.random.default_rng(7)
    id_emb, protos, cand = _interneg_data(rng, kind=kind)
    pos = rng.choice(["n", "a"], size=len(cand), p=[0.6, 0.4])
    dt = torch.float32 if kind == "dyadic" else torch.float64
    got = mine_interneg(torch.tensor(id_emb, dtype=dt), torch.tensor(protos, dtype=dt),
                        torch.tensor(cand, dtype=dt), pos, m=m)
    want = brute_mine_interneg(id_emb, protos, cand, pos, m)
    assert got.tolist() == want
    if kind == "dyadic" and m == 100:
        _, dev = brute_interneg(id_emb, protos, cand)
        assert len({dev[i] for i in want}) < len(want)  # exact ties in D were exercised


def test_mine_interneg_split_rounding():
    # 30 surviving adjectives, 70 nouns, m = 15 -> adjectives int(15 * 0.3) = 4, nouns 11
    k, d = 4, 8
    protos = torch.eye(d)[:k].double()
    id_emb = protos.clone()
    cand = torch.nn.functional.normalize(-torch.ones(100, d).double() + torch.rand(100, d).double() * 0.1, dim=1)
    pos = np.array(["a"] * 30 + ["n"] * 70)
    got = mine_interneg(id_emb, protos, cand, pos, m=15).tolist()
    assert sum(i < 30 for i in got) == 4 and len(got) == 15
    assert all(i < 30 for i in got[:4])  # adjectives first


# ----------------------------------------------------------------------------
# prototypes and CSP

def test_image_prototypes():
    rng = np.random.default_rng(8)
    feats = rng.standard_normal((50, 6)) * rng.uniform(0.5, 3, size=(50, 1))
    labels = np.arange(50) % 4
    got = image_prototypes(torch.tensor(feats, dtype=torch.float32), torch.tensor(labels))
    assert got.shape == (4, 6) and got.dtype == torch.float32
    for k in range(4):
        rows = [feats[i] / np.linalg.norm(feats[i]) for i in range(50) if labels[i] == k]
        mean = np.mean(rows, axis=0)
        np.testing.assert_allclose(got[k].numpy(), mean / np.linalg.norm(mean), atol=1e-6)
    got64 = image_prototypes(torch.tensor(feats), labels.tolist(), num_classes=4)
    assert got64.dtype == torch.float64
    np.testing.assert_allclose(got64.numpy(), got.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="no samples: 4"):
        image_prototypes(torch.tensor(feats), torch.tensor(labels), num_classes=5)
    with pytest.raises(ValueError, match="no samples: 1"):
        image_prototypes(torch.tensor(feats[:3]), torch.tensor([0, 2, 2]))
    with pytest.raises(ValueError):
        image_prototypes(torch.tensor(feats), torch.tensor(labels), num_classes=3)
    with pytest.raises(ValueError):
        image_prototypes(torch.tensor(feats), torch.tensor(labels[:10]))
    with pytest.raises(ValueError):
        image_prototypes(torch.tensor(feats), torch.tensor(labels, dtype=torch.float32))


def test_csp_exclude():
    rng = np.random.default_rng(9)
    id_emb = gaussian(10, rng)
    near = id_emb[:3] + 0.01 * gaussian(3, rng)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    cand = np.concatenate([gaussian(40, rng), id_emb[5:7], near])
    got = csp_exclude(t32(id_emb), t32(cand))
    want = [max(float(np.dot(c, t)) for t in id_emb) <= 0.95 for c in cand]
    assert got.tolist() == want and want.count(False) == 5
    got_lo = csp_exclude(t32(id_emb), t32(cand), max_cos=0.2)
    assert got_lo.tolist() == [max(float(np.dot(c, t)) for t in id_emb) <= 0.2 for c in cand]
    # exactly at the threshold is kept (the reference drops only max > 0.95)
    e = torch.eye(4)
    assert csp_exclude(e, e, max_cos=1.0).all() and not csp_exclude(e, e, max_cos=0.999).any()


# ----------------------------------------------------------------------------
# error paths

def test_errors():
    e = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    c = torch.nn.functional.normalize(torch.randn(9, 4), dim=1)
    pos = ["n"] * 5 + ["a"] * 4
    for ratio in (0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="ratio"):
            mine_neglabel(e, c, pos, ratio=ratio)
    for p in (-0.01, 1.01):
        with pytest.raises(ValueError, match="percentile"):
            mine_neglabel(e, c, pos, percentile=p)
    with pytest.raises(ValueError, match="cand_emb"):
        mine_neglabel(e, c * 1.01, pos)
    with pytest.raises(ValueError, match="id_emb"):
        mine_neglabel(e * 0.9, c, pos)
    with pytest.raises(ValueError, match="2-D"):
        mine_neglabel(e[0], c, pos)
    with pytest.raises(ValueError, match="width"):
        mine_neglabel(e, torch.nn.functional.normalize(torch.randn(9, 3), dim=1), pos)
    with pytest.raises(ValueError, match="cand_pos"):
        mine_neglabel(e, c, pos[:-1])
    with pytest.raises(ValueError, match="cand_pos"):
        mine_neglabel(e, c, ["n"] * 8 + ["v"])
    with pytest.raises(ValueError, match="cand_pos"):
        mine_neglabel(e, c, np.arange(9))
    with pytest.raises(ValueError, match="floating"):
        mine_neglabel(e, torch.ones(9, 4, dtype=torch.long), pos)
    with pytest.raises(TypeError):
        mine_neglabel(e.numpy(), c, pos)
    with pytest.raises(ValueError, match="exclude"):
        mine_neglabel(e, c, pos, exclude=torch.zeros(8, dtype=torch.bool))
    with pytest.raises(ValueError, match="chunk_size"):
        mine_neglabel(e, c, pos, chunk_size=0)
    with pytest.raises(ValueError, match="id_emb"):
        mine_neglabel(e[:0], c, pos)
    with pytest.raises(ValueError, match="non-finite"):
        mine_neglabel(e, torch.full((9, 4), float("nan")), pos)

    with pytest.raises(ValueError, match="same shape"):
        interneg_criterion(e, e[:4], c)
    with pytest.raises(ValueError, match="prototypes"):
        interneg_criterion(e, e * 2, c)
    with pytest.raises(ValueError, match="m must"):
        mine_interneg(e, e, c, pos, m=-1)
    with pytest.raises(ValueError, match="cand_pos"):
        mine_interneg(e, e, c, pos[:3])
    with pytest.raises(ValueError, match="cand_emb"):
        csp_exclude(e, c * 3)
    with pytest.raises(ValueError, match="max_cos"):
        csp_exclude(e, c, max_cos=float("nan"))


def test_empty_pos_groups_and_candidates():
    e = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    assert mine_neglabel(e, e[:0], []).numel() == 0
    assert mine_interneg(e, e, e[:0], [], m=10).numel() == 0
    assert csp_exclude(e, e[:0]).numel() == 0


@pytest.mark.gpu
def test_cuda_matches_cpu():
    rng = np.random.default_rng(10)
    id_emb, protos, cand = _interneg_data(rng, kind="gaussian", n=500)
    pos = rng.choice(["n", "a"], size=len(cand))
    i, p, c = t32(id_emb), t32(protos), t32(cand)
    ic, pc, cc = i.cuda(), p.cuda(), c.cuda()
    assert torch.equal(mine_neglabel(ic, cc, pos).cpu(), mine_neglabel(i, c, pos))
    assert torch.equal(mine_interneg(ic, pc, cc, pos, m=50).cpu(), mine_interneg(i, p, c, pos, m=50))
    assert torch.equal(csp_exclude(ic, cc, max_cos=0.5).cpu(), csp_exclude(i, c, max_cos=0.5))
    labels = torch.arange(60) % 6
    feats = torch.randn(60, 48)
    torch.testing.assert_close(image_prototypes(feats.cuda(), labels.cuda()).cpu(), image_prototypes(feats, labels))
