"""InterNeg (SPEC §4) on a tiny random open_clip model: textual inversion through the
text tower, the grouped static + dynamic score against a float64 formula, the
criterion gate of the test-time bank, its cap, streaming determinism and reset()."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastood import reference as R
from fastood.build_bank import build_bank
from fastood.detectors import NotFittedError, create
from fastood.detectors._textual_inversion import TextInverter
from fastood.bank import TextBank
from fastood.detectors.interneg import InterNeg, interneg_layout, official_permutation
from fastood.labels import clip_imagenet_templates, image_prototypes, load_corpus
from fastood.models import encode_texts
from tests.tiny import tiny_clip

CLASSES = ["dog", "cat", "airplane", "tree", "car", "violin"]
K = len(CLASSES)


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


@pytest.fixture(scope="module")
def corpus():
    full = load_corpus("interneg", remove=CLASSES)
    keep = np.zeros(len(full), dtype=bool)
    keep[::97] = True  # ~730 words
    return full.filter(keep)


@pytest.fixture(scope="module")
def id_emb(clip):
    return encode_texts(clip.model, clip.tokenizer, [f"The nice {c}." for c in CLASSES], progress=False)


@pytest.fixture(scope="module")
def fewshot(id_emb):
    """Few-shot ID 'image' features: the class text embedding plus noise (b_k ≈ 0.3–0.75)."""
    labels = torch.arange(30) % K
    feats = id_emb[labels] + 0.5 * torch.randn(30, 32, generator=torch.Generator().manual_seed(0))
    return feats, labels


@pytest.fixture(scope="module")
def static(clip, corpus, fewshot):
    feats, labels = fewshot
    protos = image_prototypes(feats, labels)
    bank = build_bank(clip, CLASSES, method="interneg", prototypes=protos, corpus=corpus, num_negatives=40,
                      progress=False)
    return bank, protos


@pytest.fixture(scope="module")
def stream(static):
    """Test features: 6 near the prototypes (inversions mostly fail the criterion) + 14 random."""
    _, protos = static
    g = torch.Generator().manual_seed(3)
    return torch.cat([protos + 0.05 * torch.randn(K, 32, generator=g), torch.randn(14, 32, generator=g)])


def make(clip, static, **kw):
    bank, protos = static
    kw.setdefault("progress", False)
    return InterNeg(clip, bank=bank, prototypes=protos, **kw)


def truth_score(x, id_rows, static_neg, dynamic, groups, tau=0.01):
    """float64 NegLabel formula over G groups, group g = static block g ∪ dynamic[g::G]."""
    x = F.normalize(x.double(), dim=1)
    m = static_neg.shape[0] // groups
    lid = torch.logsumexp(x @ id_rows.double().T / tau, dim=1)
    terms = []
    for g in range(groups):
        neg = torch.cat([static_neg[g * m:(g + 1) * m], dynamic[g::groups]]).double()
        terms.append(torch.sigmoid(lid - torch.logsumexp(x @ neg.T / tau, dim=1)))
    return torch.stack(terms, 1).mean(1)


def official_truth(x, id_rows, static_mined, dynamic, groups, tau=0.01):
    """float64 rendering of the published InterNeg grouping, written from its description (SPEC §4):
    negatives = [static (mining order) | dynamic[:2000] (D descending)], the last (n mod G) dropped,
    the rest permuted by `torch.manual_seed(0); torch.randperm(n_kept)` and cut into G contiguous groups."""
    negs = torch.cat([static_mined.double(), dynamic[:2000].double()])
    n_kept = negs.shape[0] - negs.shape[0] % groups
    negs = negs[:n_kept]
    with torch.random.fork_rng():  # the official seeding, without leaking it into the other tests
        torch.manual_seed(0)
        perm = torch.randperm(n_kept)
    grouped = negs[perm].reshape(groups, n_kept // groups, -1)
    x = F.normalize(x.double(), dim=1)
    lid = torch.logsumexp(x @ id_rows.double().T / tau, dim=1)
    lg = torch.stack([torch.logsumexp(x @ grp.T / tau, dim=1) for grp in grouped], 1)
    return torch.sigmoid(lid[:, None] - lg).mean(1)


def static_in_mining_order(bank):
    """The bank stores mined[perm] with perm = randperm(M) from a seed-0 CPU generator: undo it."""
    perm = torch.randperm(bank.num_neg, generator=torch.Generator().manual_seed(bank.meta["seed"]))
    mined = torch.empty_like(bank.embeddings[K:])
    mined[perm] = bank.embeddings[K:]
    return mined


def criterion64(id_rows, protos, cand):
    """Independent float64 inter-modal criterion: keep iff cos(n, c_k) < b_k ∀k; D = mean_k(b_k − cos)."""
    t, c, n = id_rows.double(), protos.double(), cand.double()
    b = (t * c).sum(1)
    cos = n @ c.T
    return (cos < b).all(1), (b - cos).mean(1)


# ------------------------------------------------------------------ textual inversion
def test_injected_pseudo_token_equals_encode_text(clip):
    """A real token's embedding placed in the slot reproduces open_clip's encode_text on all 80 templates."""
    templates = clip_imagenet_templates()
    assert len(templates) == 80
    inv = TextInverter(clip.model, clip.tokenizer)
    full = TextInverter(clip.model, clip.tokenizer, truncate=False)
    assert inv.ids.shape[1] < full.ids.shape[1] == 77  # truncated after the longest EOT
    tok = int(clip.tokenizer(["violin"])[0, 1])
    p = clip.model.token_embedding.weight[tok].detach().expand(80, -1).clone()
    with torch.no_grad():
        ref = clip.model.encode_text(clip.tokenizer([t.format("violin") for t in templates]))
        mine = inv.encode(p, torch.arange(80))
        mine_full = full.encode(p, torch.arange(80))
    assert (mine - ref).abs().max() < 1e-5
    assert (mine_full - ref).abs().max() < 1e-5


def test_inversion_reduces_loss_and_leaves_the_model_alone(clip):
    inv = TextInverter(clip.model, clip.tokenizer, steps=10)
    v = F.normalize(torch.randn(8, 32, generator=torch.Generator().manual_seed(1)), dim=1)
    before = {k: t.clone() for k, t in clip.model.state_dict().items()}
    init = torch.randn(8, inv.width, generator=torch.Generator().manual_seed(5)) * 0.02  # invert's first draw
    res = inv.invert(v, generator=torch.Generator().manual_seed(5))
    assert res.pseudo_tokens.shape == (8, inv.width) and res.losses.shape == (10,)
    # the final-template loss of the initial pseudo-tokens vs the learned ones
    with torch.no_grad():
        loss0 = 1 - (F.normalize(inv.encode(init, final=True), dim=1) * v).sum(1)
    assert res.final_loss.mean() < loss0.mean() - 0.1
    assert res.losses[-1] < res.losses[0]
    assert torch.allclose(res.embeddings.norm(dim=1), torch.ones(8), atol=1e-5)
    assert torch.allclose(res.final_loss, 1 - (res.embeddings * v).sum(1), atol=1e-6)
    for k, t in clip.model.state_dict().items():
        assert torch.equal(t, before[k]), k
    assert all(p.grad is None for p in clip.model.parameters())


def test_batched_inversion_equals_one_at_a_time(clip):
    inv = TextInverter(clip.model, clip.tokenizer, steps=4)
    g = torch.Generator().manual_seed(2)
    v = torch.randn(3, 32, generator=g)
    init = 0.02 * torch.randn(3, inv.width, generator=g)
    picks = torch.randint(80, (4, 3), generator=g)
    init_before = init.clone()
    batched = inv.invert(v, init=init, template_idx=picks)
    assert torch.equal(init, init_before)  # the caller's tensor is not optimised in place
    for i in range(3):
        one = inv.invert(v[i:i + 1], init=init[i:i + 1], template_idx=picks[:, i:i + 1])
        assert (one.embeddings - batched.embeddings[i]).abs().max() < 1e-5
    # seeded: same generator state → same result
    a = inv.invert(v, seed=7)
    b = inv.invert(v, seed=7)
    assert torch.equal(a.embeddings, b.embeddings)
    with pytest.raises(ValueError, match="template_idx"):
        inv.invert(v, template_idx=torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="slot"):
        TextInverter(clip.model, clip.tokenizer, ["no slot here"])


# ------------------------------------------------------------------------- scoring
def test_layout_round_robin():
    order, offsets = interneg_layout(2, 6, 5, 3)
    # ID 0,1 | static 2,3 + dyn 8,11 | static 4,5 + dyn 9,12 | static 6,7 + dyn 10
    assert order.tolist() == [0, 1, 2, 3, 8, 11, 4, 5, 9, 12, 6, 7, 10]
    assert offsets == [0, 2, 6, 10, 13]


def test_score_matches_float64_formula(clip, static, stream):
    bank, _ = static
    det = make(clip, static, test_time=False, grouping="fixed")
    x = stream
    s, pred = det.head(x)
    truth = truth_score(x, bank.id_embeddings, bank.embeddings[K:], torch.empty(0, 32), 5)
    assert (s.double() - truth).abs().max() < 1e-5
    # with no dynamic negatives it is exactly NegLabel with G = 5
    ref = R.neglabel_score(x.double(), bank.embeddings.double(), K, groups=5)
    assert (s.double() - ref).abs().max() < 1e-5
    assert torch.equal(pred, (F.normalize(x, dim=1) @ bank.id_embeddings.T).argmax(1))
    # with a dynamic bank: round-robin into the groups
    dyn = F.normalize(torch.randn(7, 32, generator=torch.Generator().manual_seed(4)), dim=1)
    det.insert(dyn, torch.arange(7, 0, -1).float())  # already sorted by D
    s2, _ = det.head(x)
    truth2 = truth_score(x, bank.id_embeddings, bank.embeddings[K:], dyn, 5)
    assert (s2.double() - truth2).abs().max() < 1e-5
    assert not torch.allclose(s2, s)
    assert torch.equal(det.score_features(x), s2)  # test_time=False: no update


def test_official_permutation_is_the_global_seed_0_draw_without_touching_the_rng():
    for n in (0, 1, 37, 2040, 2043):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            want = torch.randperm(n)
        state = torch.get_rng_state()
        assert torch.equal(official_permutation(n), want)
        assert torch.equal(torch.get_rng_state(), state)  # the caller's global RNG is left alone


@pytest.mark.parametrize("num_dynamic", [0, 1, 37, 2000, 2003])
def test_official_grouping_matches_the_published_rule(clip, static, stream, num_dynamic):
    bank, _ = static
    assert bank.num_neg == 40  # M_static a multiple of G = 5: a 1-entry test-time bank is dropped entirely
    g = torch.Generator().manual_seed(100 + num_dynamic)
    emb = F.normalize(torch.randn(num_dynamic, 32, generator=g), dim=1)
    dev = torch.rand(num_dynamic, generator=g)
    det = make(clip, static, test_time=False)  # grouping="official" is the default
    fixed = make(clip, static, test_time=False, grouping="fixed")
    if num_dynamic:
        det.insert(emb, dev)
        fixed.insert(emb, dev)
    assert det.num_dynamic == min(num_dynamic, 2000)
    order = np.argsort(-dev.numpy(), kind="stable")  # the bank, D descending (stable), independent of insert()
    truth = official_truth(stream, bank.id_embeddings, static_in_mining_order(bank), emb[order], 5)
    assert float(truth.max()) > 0.5 and float(truth.min()) < 1e-3  # ID-like and OOD-like queries
    s, pred = det.head(stream)
    rel = ((s.double() - truth).abs() / truth).max()  # relative: most scores are far below 1
    assert rel < 1e-4, rel
    assert torch.equal(pred, (F.normalize(stream, dim=1) @ bank.id_embeddings.T).argmax(1))
    s_fixed, _ = fixed.head(stream)
    no_bank = official_truth(stream, bank.id_embeddings, static_in_mining_order(bank), emb[:0], 5)
    if num_dynamic <= 1:
        # nothing from the bank survives the drop: the score is the static score, in both groupings
        assert ((s.double() - no_bank).abs() / no_bank).max() < 1e-4
        if num_dynamic == 0:
            assert ((s_fixed.double() - no_bank).abs() / no_bank).max() < 1e-4
    else:
        assert ((s.double() - no_bank).abs() / no_bank).max() > 0.1
    if num_dynamic:
        # the two groupings really differ once there is a bank (far beyond the 1e-4 bound above)
        assert ((s_fixed.double() - truth).abs() / truth).max() > 0.1


def test_official_grouping_needs_the_mining_order(clip, static):
    bank, protos = static
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(5))
    mined = static_in_mining_order(bank)
    explicit = TextBank.from_mined(bank.id_embeddings, CLASSES, mined, [str(i) for i in range(40)], groups=5,
                                   permutation=perm, meta=dict(bank.meta))
    with pytest.raises(ValueError, match="permutation"):
        InterNeg(clip, bank=explicit, prototypes=protos, progress=False)
    with pytest.raises(ValueError, match="permutation"):
        InterNeg(clip, bank=explicit, prototypes=protos, permutation=torch.arange(40), progress=False)
    det = InterNeg(clip, bank=explicit, prototypes=protos, permutation=perm, progress=False)
    assert torch.equal(det.static, mined)
    dropped = TextBank.from_mined(bank.id_embeddings, CLASSES, mined[:38], [str(i) for i in range(38)], groups=5,
                                  meta=dict(bank.meta))
    with pytest.raises(ValueError, match="dropped 3"):
        InterNeg(clip, bank=dropped, prototypes=protos, progress=False)
    fixed = InterNeg(clip, bank=dropped, prototypes=protos, grouping="fixed", progress=False)
    assert torch.equal(fixed.static, dropped.embeddings[K:])
    with pytest.raises(ValueError, match="grouping"):
        make(clip, static, grouping="round_robin")


def test_bank_grows_only_with_criterion_passing_embeddings(clip, static, stream):
    bank, protos = static
    det = make(clip, static, beta=1.0, batch_size=64)  # one batch; every non-saturated image inverted
    s0, _ = det.head(stream)
    scores = det.score_features(stream)
    inv = det.last_inversion
    low = torch.nonzero(s0 < 1.0).flatten()
    assert torch.equal(inv["index"], low)
    keep, dev = criterion64(bank.id_embeddings, protos, inv["embeddings"])
    assert torch.equal(inv["accepted"], keep)
    assert 0 < int(keep.sum()) < keep.numel(), "the setup should produce both accepted and rejected inversions"
    assert torch.allclose(inv["deviation"].double(), dev, atol=1e-6)
    # the bank is exactly the accepted embeddings, sorted by D descending
    order = torch.sort(dev[keep], descending=True, stable=True).indices
    assert det.num_dynamic == int(keep.sum())
    assert torch.equal(det.dynamic, inv["embeddings"][keep][order])
    assert torch.all(det.dynamic_deviation[:-1] >= det.dynamic_deviation[1:])
    k2, _ = criterion64(bank.id_embeddings, protos, det.dynamic)
    assert bool(k2.all())
    assert det.stats["accepted"] == int(keep.sum()) and det.stats["rejected"] == int((~keep).sum())
    # the batch was rescored with the updated bank
    assert torch.equal(scores, det.head(stream)[0])
    truth = official_truth(stream, bank.id_embeddings, static_in_mining_order(bank), det.dynamic, 5)
    assert (scores.double() - truth).abs().max() < 1e-5


def test_cap_keeps_top_deviation_and_reset(clip, static, stream):
    bank, protos = static
    det = make(clip, static, beta=1.0, batch_size=5, bank_size=3)
    accepted, devs = [], []
    scores = []
    for i in range(0, stream.shape[0], 5):  # feed the stream batch by batch, recording every inversion
        det.last_inversion = None
        scores.append(det.score_features(stream[i:i + 5]))
        inv = det.last_inversion
        if inv is not None:
            accepted.append(inv["embeddings"][inv["accepted"]])
            devs.append(inv["deviation"][inv["accepted"]])
    accepted, devs = torch.cat(accepted), torch.cat(devs)
    assert accepted.shape[0] > 3
    top = torch.sort(devs, descending=True, stable=True).indices[:3]
    assert det.num_dynamic == 3
    assert torch.equal(det.dynamic, accepted[top])
    assert det.stats["evicted"] == accepted.shape[0] - 3
    # one call over the whole stream = the same batches in order
    det.reset()
    assert det.num_dynamic == 0 and det.stats["accepted"] == 0
    assert torch.equal(det.head(stream)[0], make(clip, static, test_time=False).head(stream)[0])
    replay = det.score_features(stream)
    assert torch.equal(replay, torch.cat(scores))
    assert torch.equal(det.dynamic, accepted[top])


def test_calibrate_leaves_the_stream_alone(clip, static, stream):
    det = make(clip, static, beta=1.0, batch_size=8)
    det.score_features(stream[:8])
    before = det.dynamic.clone(), dict(det.stats), det.generator.get_state()
    imgs = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    thr = det.calibrate(imgs)  # scoring ID images runs the stream ...
    assert torch.equal(det.dynamic, before[0]) and det.stats == before[1]  # ... and restores it
    assert torch.equal(det.generator.get_state(), before[2])
    assert det.threshold == thr
    rest = det.score_features(stream[8:])
    fresh = make(clip, static, beta=1.0, batch_size=8)
    fresh.score_features(stream[:8])
    assert torch.equal(rest, fresh.score_features(stream[8:]))


def test_insert_is_stable_on_ties(clip, static):
    det = make(clip, static, bank_size=2)
    e = F.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(9)), dim=1)
    det.insert(e[:1], torch.tensor([0.5]))
    det.insert(e[1:], torch.tensor([0.5, 0.7]))
    assert torch.equal(det.dynamic, e[[2, 0]])  # 0.7 first, then the earlier of the two 0.5s
    assert det.dynamic_deviation.tolist() == pytest.approx([0.7, 0.5])


def test_fit_builds_the_static_bank_and_scores_images(clip, corpus, fewshot, static, tmp_path):
    feats, labels = fewshot
    det = InterNeg(clip, classes=CLASSES, corpus=corpus, num_negatives=40, cache=tmp_path, progress=False)
    with pytest.raises(NotFittedError):
        det.score_features(feats)
    det.fit_features(feats, labels)
    bank, protos = static
    assert torch.allclose(det.bank.embeddings, bank.embeddings, atol=1e-6)
    assert torch.allclose(det.prototypes, protos, atol=1e-6)
    assert det.fitted and det.num_dynamic == 0
    assert det.bank.groups == 1 and det.bank.meta["dropped"] == 0  # official grouping: no static negative dropped
    # images through the tiny image tower (features of width 32) and the registry
    imgs = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pred = det.predict(imgs)
    assert pred.scores.shape == (4,) and pred.labels.shape == (4,)
    assert isinstance(create("interneg", clip=clip, bank=bank, prototypes=protos, progress=False), InterNeg)


def test_bad_input(clip, static, fewshot):
    bank, protos = static
    feats, labels = fewshot
    det = make(clip, static)
    with pytest.raises(ValueError, match="width"):
        det.score_features(torch.randn(3, 31))
    with pytest.raises(ValueError, match="prototypes"):
        make(clip, (bank, protos[:3]))
    with pytest.raises(ValueError, match="tokenizer"):
        InterNeg(model=clip.model, bank=bank, prototypes=protos)
    static_only = InterNeg(model=clip.model, bank=bank, test_time=False)  # no tokenizer needed, no fit needed
    assert static_only.fitted
    with pytest.raises(NotFittedError):
        InterNeg(clip, bank=bank, progress=False).score_features(feats)
    with pytest.raises(ValueError, match="labels"):
        InterNeg(clip, bank=bank, progress=False).fit_features(feats)
    with pytest.raises(ValueError, match="range"):
        InterNeg(clip, bank=bank, progress=False).fit_features(feats, labels + 1)
    with pytest.raises(ValueError, match="beta"):
        make(clip, static, beta=1.5)
    with pytest.raises(ValueError, match="bank_size"):
        make(clip, static, bank_size=-1)
    with pytest.raises(ValueError, match="groups"):
        make(clip, static, groups=0)
    with pytest.raises(ValueError, match="classes"):
        InterNeg(clip, bank=bank, classes=["a", "b"], progress=False)
