"""End to end with a tiny random open_clip model: corpus → encoded bank → mined
negatives → grouped layout → fastood.ops.neglabel_score equals the float64
reference formula evaluated directly on the same embeddings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fastood import reference as R
from fastood.bank import TextBank
from fastood.build_bank import bank_for, build_bank
from fastood.labels import image_prototypes, imagenet1k_classnames, load_classnames, load_corpus, mine_neglabel
from fastood.models import encode_texts
from fastood.ops import neglabel_score
from tests.tiny import TINY_KWARGS, tiny_clip

CLASSES = ["dog", "cat", "airplane", "tree", "car", "violin"]


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


@pytest.fixture(scope="module")
def small_corpus():
    full = load_corpus("neglabel")
    keep = np.zeros(len(full), dtype=bool)
    keep[::97] = True  # ~730 words, nouns and adjectives
    return full.filter(keep)


def test_neglabel_bank_end_to_end(clip, small_corpus):
    bank = build_bank(clip, CLASSES, corpus=small_corpus, groups=7, seed=1, progress=False)
    # independent recomputation of every step from the same model
    id_emb = encode_texts(clip.model, clip.tokenizer, [f"the nice {c}" for c in CLASSES], progress=False)
    prompts = [("This is a {} photo" if p == "a" else "the nice {}").format(w) for w, p in zip(small_corpus.words, small_corpus.pos)]
    cand = encode_texts(clip.model, clip.tokenizer, prompts, progress=False)
    sel = mine_neglabel(id_emb, cand, small_corpus.pos)
    n_noun = int(np.count_nonzero(small_corpus.pos == "n"))
    n_adj = len(small_corpus) - n_noun
    assert sel.numel() == int(0.15 * n_noun) + int(0.15 * n_adj)
    kept = (sel.numel() // 7) * 7
    perm = torch.randperm(kept, generator=torch.Generator().manual_seed(1))
    expected = torch.cat([id_emb, cand[sel][:kept][perm]])
    assert torch.allclose(bank.embeddings, expected, atol=1e-6)
    assert bank.neg_labels == [small_corpus.words[i] for i in sel[:kept][perm].tolist()]
    assert bank.meta["text_weights_sha256"] == clip.text_hash()

    x = torch.randn(9, 32)
    score, pred = neglabel_score(x, bank.embeddings, bank.num_id, groups=bank.groups, return_pred=True)
    truth = R.neglabel_score(x.double(), expected.double(), len(CLASSES), groups=7)
    assert (score.double() - truth).abs().max() < 1e-5
    assert torch.equal(pred, (torch.nn.functional.normalize(x, dim=1) @ id_emb.T).argmax(1))


def test_cached_build_and_model_mismatch(clip, small_corpus, tmp_path):
    a = bank_for(clip, CLASSES, corpus=small_corpus, groups=5, cache=str(tmp_path), progress=False)
    b = bank_for(clip, CLASSES, corpus=small_corpus, groups=5, cache=str(tmp_path), progress=False)
    assert torch.equal(a.embeddings, b.embeddings)
    assert len(list((tmp_path / "banks").iterdir())) == 1
    # a different text tower → a different bank file, never the stale one
    with torch.no_grad():
        clip.model.token_embedding.weight[0, 0] += 1.0
    clip._text_hash = None
    c = bank_for(clip, CLASSES, corpus=small_corpus, groups=5, cache=str(tmp_path), progress=False)
    assert len(list((tmp_path / "banks").iterdir())) == 2
    assert c.meta["text_weights_sha256"] != a.meta["text_weights_sha256"]
    with torch.no_grad():
        clip.model.token_embedding.weight[0, 0] -= 1.0
    clip._text_hash = None


def test_interneg_bank(clip, small_corpus):
    # few-shot "image" features close to their class's text embedding, as a CLIP model gives
    id_emb = encode_texts(clip.model, clip.tokenizer, [f"The nice {c}." for c in CLASSES], progress=False)
    labels = torch.arange(30) % len(CLASSES)
    feats = id_emb[labels] + 0.05 * torch.randn(30, 32, generator=torch.Generator().manual_seed(0))
    protos = image_prototypes(feats, labels)
    bank = build_bank(clip, CLASSES, method="interneg", prototypes=protos, corpus=small_corpus,
                      num_negatives=40, groups=5, progress=False)
    assert bank.groups == 5 and bank.num_neg % 5 == 0 and bank.num_neg <= 40
    assert bank.meta["mining"]["m"] == 40
    # default: one group, nothing dropped, so the published scorer (grouping="official") can regroup
    # every mined negative at test time, whatever M is (37 is not a multiple of G = 5)
    bank1 = build_bank(clip, CLASSES, method="interneg", prototypes=protos, corpus=small_corpus,
                       num_negatives=37, progress=False)
    assert bank1.groups == 1 and not int(bank1.meta.get("dropped", 0) or 0)
    from fastood.detectors import InterNeg

    det = InterNeg(clip=clip, bank=bank1, prototypes=protos, progress=False)
    assert det.grouping == "official"
    s = det.score_features(feats[:4])
    assert s.shape == (4,) and bool(torch.isfinite(s).all())
    with pytest.raises(ValueError, match="prototypes"):
        build_bank(clip, CLASSES, method="interneg", corpus=small_corpus, progress=False)


def test_csp_bank_uses_ensembles_and_exclusion(clip, tmp_path):
    corpus = load_corpus("csp")
    keep = np.zeros(len(corpus), dtype=bool)
    keep[::211] = True
    bank = build_bank(clip, CLASSES, method="csp", corpus=corpus.filter(keep), groups=3, progress=False)
    assert len(bank.meta["prompts"]["noun"]) > 1
    assert "after_exclusion" in bank.meta["mining"]
    back = TextBank.load(bank.save(tmp_path / "csp.safetensors"))
    assert back.neg_labels == bank.neg_labels


def test_unknown_method(clip):
    with pytest.raises(ValueError, match="method"):
        build_bank(clip, CLASSES, method="bogus")


def test_mine_command_writes_a_loadable_bank(tmp_path, capsys):
    import json

    from fastood.cli import main

    corpus = tmp_path / "words.tsv"
    corpus.write_text("# my candidates\nrock\tn\nriver\tn\ncloud\nsmooth\ta\nrusty\ta\nglass\tn\nthunder\tn\n" * 3)
    classes = tmp_path / "classes.txt"
    classes.write_text("dog\ncat\n# comment\nbird\n")
    kwargs = json.dumps(TINY_KWARGS)
    out = tmp_path / "bank.safetensors"
    rc = main(["mine", "--model", "ViT-B-32", "--pretrained", "none", "--model-kwargs", kwargs, "--classes", str(classes),
               "--corpus", str(corpus), "--ratio", "0.5", "--groups", "2", "--device", "cpu", "--quiet", "--out", str(out)])
    assert rc == 0
    bank = TextBank.load(out)
    assert bank.id_labels == ["dog", "cat", "bird"]
    assert bank.groups == 2 and bank.num_neg % 2 == 0 and bank.num_neg > 0
    assert set(bank.neg_labels) <= {"rock", "river", "cloud", "smooth", "rusty", "glass", "thunder"}
    assert "RANDOM weights" in capsys.readouterr().err


def _duplicate_warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [w for w in caught if "duplicate class names" in str(w.message)]


def test_imagenet_preset_is_quiet_and_user_duplicates_warn_once(clip, small_corpus, tmp_path):
    preset = imagenet1k_classnames()
    assert len(preset) - len(set(preset)) == 2  # CLIP's curated list: "missile", "sunglasses" twice
    tiny = small_corpus.filter(np.arange(len(small_corpus)) < 40)
    # the preset, by name or as the list it resolves to (how the detectors hand it on): no warning
    for spec in ("imagenet1k", preset):
        assert _duplicate_warnings(lambda: load_classnames(spec))[1] == []
        bank, caught = _duplicate_warnings(lambda: bank_for(clip, spec, corpus=tiny, groups=2, cache=str(tmp_path),
                                                           progress=False))
        assert caught == [] and bank.id_labels == preset
    assert _duplicate_warnings(lambda: build_bank(clip, "imagenet1k", corpus=tiny, groups=2, progress=False))[1] == []
    # a user list with duplicates warns, naming them, once per call (bank_for does not warn again in build_bank)
    names = ["dog", "cat", "dog", "tree"]
    _, caught = _duplicate_warnings(lambda: load_classnames(names))
    assert len(caught) == 1 and "dog" in str(caught[0].message)
    bank, caught = _duplicate_warnings(lambda: bank_for(clip, names, corpus=tiny, groups=2, cache=str(tmp_path),
                                                        progress=False))
    assert len(caught) == 1 and bank.id_labels == names
    _, caught = _duplicate_warnings(lambda: build_bank(clip, names, corpus=tiny, groups=2, progress=False))
    assert len(caught) == 1
    # the preset with one name changed is a user list: its duplicates warn
    edited = list(preset)
    edited[0] = "my fish"
    assert len(_duplicate_warnings(lambda: load_classnames(edited))[1]) == 1
