"""fastood.labels corpus and prompts.

Preset sizes asserted below are what the shipped WordNet 3.0 lists give
(fastood/data, built by tools/build_wordnet.py from Debian's wordnet-base 3.0):

* "neglabel" / "interneg": 70,794 words = 58,514 nouns + 12,280 adjectives
  (24 noun files = WordNet's 26 minus noun.animal and noun.food; adj.all,
  adj.pert, adj.ppl). The paper says "about 70,000".
* "interneg" with CLIP's ImageNet-1k class names removed: 70,335 = 58,056 + 12,279.
* "csp" (default exclusions, one random suffix per adjective): 57,493 =
  47,287 nouns + 10,206 adjective phrases; ``conjugate="all"``: 190,171.
* every noun and adjective file (``exclude_lexnames=()``): 79,403.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from fastood.labels import (
    CSP_SUFFIXES,
    Corpus,
    clip_imagenet_templates,
    imagenet1k_classnames,
    load_classnames,
    load_corpus,
    prompts,
)
from fastood.labels.corpus import DATA_DIR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDNET_DIR = "/usr/share/wordnet"
SHA_NEGLABEL = "ba0f1161dda2de036a44776239c2dcd5c1a60f906a80fd99da906bfe699fc604"
HEADER = "lemma\tpos\tsatellite\tlexname\toffset\tlemma_idx\n"


# ----------------------------------------------------------------------------
# shipped data

@pytest.mark.skipif(not os.path.exists(os.path.join(WORDNET_DIR, "data.noun")),
                    reason="WordNet 3.0 database not installed (apt-get install wordnet-base)")
def test_build_script_regenerates_shipped_files_byte_for_byte(tmp_path):
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "build_wordnet.py"),
                    "--wordnet-dir", WORDNET_DIR, "--out-dir", str(tmp_path)],
                   check=True, capture_output=True)
    for name in ("wordnet_nouns.tsv.gz", "wordnet_adjs.tsv.gz", "WORDNET_LICENSE"):
        with open(tmp_path / name, "rb") as a, open(os.path.join(DATA_DIR, name), "rb") as b:
            assert a.read() == b.read(), name


def test_shipped_files_content():
    with gzip.open(os.path.join(DATA_DIR, "wordnet_nouns.tsv.gz"), "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[0] + "\n" == HEADER
    assert lines[1] == "entity\tn\t0\tnoun.Tops\t00001740\t0"
    assert len(lines) - 1 == 146347  # (synset, lemma) pairs of data.noun
    with gzip.open(os.path.join(DATA_DIR, "wordnet_adjs.tsv.gz"), "rt", encoding="utf-8") as f:
        adj = [line.split("\t") for line in f.read().splitlines()[1:]]
    assert len(adj) == 30004
    assert {r[1] for r in adj} == {"a"}
    assert {r[3] for r in adj} == {"adj.all", "adj.pert", "adj.ppl"}
    lemmas = {r[0] for r in adj}
    assert "galore" in lemmas and not any(l.endswith(("(a)", "(p)", "(ip)")) for l in lemmas)
    assert sum(r[2] == "1" for r in adj if r[5] == "0") == 10693  # satellite synsets
    with open(os.path.join(DATA_DIR, "WORDNET_LICENSE"), encoding="utf-8") as f:
        lic = f.read()
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in lic


# ----------------------------------------------------------------------------
# presets

def test_preset_sizes():
    c = load_corpus("neglabel")
    assert (len(c), c.num_nouns, c.num_adjectives) == (70794, 58514, 12280)
    assert abs(len(c) - 70000) / 70000 < 0.02
    assert set(c.lexnames[c.pos == "n"]) == {
        "noun.Tops", "noun.act", "noun.artifact", "noun.attribute", "noun.body", "noun.cognition",
        "noun.communication", "noun.event", "noun.feeling", "noun.group", "noun.location",
        "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
        "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape",
        "noun.state", "noun.substance", "noun.time"}
    assert set(c.lexnames[c.pos == "a"]) == {"adj.all", "adj.pert", "adj.ppl"}
    # nouns first, then adjectives; files in lexicographer-number order
    assert c.words[0] == "entity" and c.lexnames[0] == "noun.Tops"
    first_adj = int(np.argmax(c.pos == "a"))
    assert first_adj == 58514 and c.words[first_adj] == "able"
    assert len(set(c.words)) == len(c)
    assert all(w == w.lower() and "_" not in w for w in c.words)
    assert c.sha256() == SHA_NEGLABEL  # stable content hash (cache keys)

    i = load_corpus("interneg")
    assert i.words == c.words and i.sha256() == c.sha256()
    i1k = load_corpus("interneg", remove=imagenet1k_classnames())
    assert (len(i1k), i1k.num_nouns, i1k.num_adjectives) == (70335, 58056, 12279)
    assert "accordion" in c.words and "accordion" not in i1k.words

    s = load_corpus("csp")
    assert (len(s), s.num_nouns, s.num_adjectives) == (57493, 47287, 10206)
    assert not {"noun.person", "noun.quantity", "noun.group", "adj.pert", "noun.animal",
                "noun.food"} & set(s.lexnames)
    s_all = load_corpus("csp", conjugate="all")
    assert len(s_all) == 47287 + 10206 * len(CSP_SUFFIXES) == 190171

    everything = load_corpus("neglabel", exclude_lexnames=())
    assert len(everything) == 79403


def test_corpus_filter_and_views():
    c = load_corpus("neglabel")
    n, a = c.nouns(), c.adjectives()
    assert len(n) == 58514 and set(n.pos) == {"n"} and len(a) == 12280 and set(a.pos) == {"a"}
    assert n.words + a.words == c.words
    sub = c.filter(lambda w: " " not in w)
    assert all(" " not in w for w in sub) and 0 < len(sub) < len(c)
    mask = torch.zeros(len(c), dtype=torch.bool)
    mask[[3, 1, 70000]] = True
    picked = c.filter(mask)
    assert picked.words == [c.words[1], c.words[3], c.words[70000]]
    assert list(picked.pos) == [c.pos[1], c.pos[3], c.pos[70000]]
    assert picked.sha256() != c.sha256()
    assert c.filter(np.ones(len(c), dtype=bool)).sha256() == c.sha256()
    with pytest.raises(ValueError):
        c.filter(np.ones(3, dtype=bool))
    with pytest.raises(TypeError):
        c.filter(np.arange(len(c)))
    assert picked.prompts()[0] == f"the nice {c.words[1]}"


# ----------------------------------------------------------------------------
# hand-made mini corpus: normalisation and dedup rules

def _write(path, rows):
    text = HEADER + "".join("\t".join(map(str, r)) + "\n" for r in rows)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)


@pytest.fixture
def mini(tmp_path):
    nouns = [
        # lemma, pos, satellite, lexname, offset, lemma_idx
        ("Time_Zone", "n", 0, "noun.time", "00000010", 0),   # file order: noun.time after noun.act
        ("tz", "n", 0, "noun.time", "00000010", 1),          # not a first lemma
        ("Hammer", "n", 0, "noun.artifact", "00000020", 0),
        ("hammer", "n", 0, "noun.act", "00000030", 0),        # noun.act comes first -> wins
        ("Goldfish", "n", 0, "noun.animal", "00000040", 0),  # excluded file
        ("red", "n", 0, "noun.attribute", "00000050", 0),     # also an adjective -> stays a noun
        ("Entity", "n", 0, "noun.Tops", "00000060", 0),
    ]
    adjs = [
        ("red", "a", 0, "adj.all", "00000100", 0),
        ("Big_Bad", "a", 1, "adj.all", "00000200", 0),
        ("large", "a", 1, "adj.all", "00000200", 1),
        ("solar", "a", 0, "adj.pert", "00000300", 0),
        ("big_bad", "a", 0, "adj.ppl", "00000400", 0),       # duplicate after normalisation
        ("broken", "a", 0, "adj.ppl", "00000500", 0),
    ]
    _write(tmp_path / "wordnet_nouns.tsv.gz", nouns)
    _write(tmp_path / "wordnet_adjs.tsv.gz", adjs)
    return tmp_path


def test_mini_normalisation_and_order(mini):
    c = load_corpus("neglabel", data_dir=mini)
    assert c.words == ["entity", "hammer", "red", "time zone", "big bad", "solar", "broken"]
    assert list(c.pos) == ["n", "n", "n", "n", "a", "a", "a"]
    assert list(c.lexnames) == ["noun.Tops", "noun.act", "noun.attribute", "noun.time",
                                "adj.all", "adj.pert", "adj.ppl"]
    everything = load_corpus("neglabel", data_dir=mini, exclude_lexnames=())
    assert "goldfish" in everything.words


def test_mini_remove_and_interneg_noun_wins(mini):
    c = load_corpus("interneg", data_dir=mini, remove=["HAMMER", "Time_Zone ", "Big Bad", "unknown"])
    assert c.words == ["entity", "red", "solar", "broken"]
    assert c.pos[c.words.index("red")] == "n"
    assert load_corpus("interneg", data_dir=mini, remove="red").words == [
        "entity", "hammer", "time zone", "big bad", "solar", "broken"]


def test_mini_csp(mini):
    c = load_corpus("csp", data_dir=mini)  # drops adj.pert (and person/quantity/group)
    assert c.words[:4] == ["entity", "hammer", "red", "time zone"]
    adj = c.adjectives()
    assert adj.lemmas == ["big bad", "broken"]
    for w, lemma in zip(adj.words, adj.lemmas):
        head, suffix = w.rsplit(" ", 1)
        assert head == lemma and suffix in CSP_SUFFIXES
    assert load_corpus("csp", data_dir=mini).words == c.words  # seeded
    c_all = load_corpus("csp", data_dir=mini, conjugate="all", suffixes=("scene", "object"))
    assert c_all.adjectives().words == ["big bad scene", "big bad object", "broken scene", "broken object"]
    assert c_all.adjectives().lemmas == ["big bad", "big bad", "broken", "broken"]
    c_rm = load_corpus("csp", data_dir=mini, conjugate="all", suffixes=("scene", "object"),
                       remove=["broken", "big bad object"])
    assert c_rm.adjectives().words == ["big bad scene"]
    mine = load_corpus("csp", data_dir=mini, exclude_lexnames=("noun.time",))
    assert "time zone" not in mine.words and "solar" in mine.lemmas


def test_corpus_errors(mini, tmp_path):
    with pytest.raises(ValueError, match="neglabel"):
        load_corpus("wordnet")
    with pytest.raises(ValueError, match="noun.animals"):
        load_corpus("neglabel", exclude_lexnames=("noun.animals",))
    with pytest.raises(TypeError):
        load_corpus("neglabel", exclude_lexnames="noun.animal")
    with pytest.raises(ValueError):
        load_corpus("csp", data_dir=mini, conjugate="some")
    with pytest.raises(ValueError):
        load_corpus("csp", data_dir=mini, suffixes=())
    with pytest.raises(FileNotFoundError):
        load_corpus("neglabel", data_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError):
        Corpus(words=["a"], pos=np.array(["v"]), lexnames=np.array(["verb.body"]))
    with pytest.raises(ValueError):
        Corpus(words=["a", "b"], pos=np.array(["n"]), lexnames=np.array(["noun.act"]))


# ----------------------------------------------------------------------------
# prompts and class names

def test_templates():
    assert prompts.NEGLABEL_ID_TEMPLATE.format("cat") == "the nice cat"
    assert prompts.NEGLABEL_NOUN_TEMPLATE == "the nice {}"
    assert prompts.NEGLABEL_ADJ_TEMPLATE.format("red") == "This is a red photo"
    assert prompts.INTERNEG_ID_TEMPLATE.format("cat") == "The nice cat."
    assert prompts.INTERNEG_ADJ_TEMPLATE.format("red") == "This is a red photo."
    assert prompts.MCM_TEMPLATE.format("cat") == "a photo of a cat"
    assert prompts.CMA_TEST_TEMPLATE.format("cat") == "The nice cat"
    assert len(prompts.PLP_TEMPLATES) == 5 and prompts.PLP_TEMPLATES[0] == "a photo of a {}."
    t = clip_imagenet_templates()
    assert len(t) == 80 and t[0] == "a bad photo of a {}." and all(x.count("{}") == 1 for x in t)
    assert prompts.format_prompts("x {}", ["a", "b"]) == ["x a", "x b"]


def test_load_classnames(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = load_classnames("imagenet1k")
    assert len(names) == 1000 and names[0] == "tench" and names == imagenet1k_classnames()

    f = tmp_path / "classes.txt"
    f.write_text("# my classes\n\ncat\n  dog  \n   # indented comment\nsea lion\n\n", encoding="utf-8")
    assert load_classnames(str(f)) == ["cat", "dog", "sea lion"]
    assert load_classnames(f) == ["cat", "dog", "sea lion"]
    assert load_classnames(["a", "b"]) == ["a", "b"]

    with pytest.warns(UserWarning, match="'cat'"):
        assert load_classnames(["cat", "dog", "cat"]) == ["cat", "dog", "cat"]
    with pytest.raises(ValueError):
        load_classnames([])
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(ValueError):
        load_classnames(str(empty))
    with pytest.raises(ValueError, match="imagenet1k"):
        load_classnames("imagenet21k")
    with pytest.raises(ValueError):
        load_classnames(["cat", "  "])
    with pytest.raises(TypeError):
        load_classnames(["cat", 3])
