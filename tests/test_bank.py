"""TextBank layout, grouping, atomic save/load, integrity checks and the cache."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from fastood.bank import BankError, TextBank, cached_bank, group_permutation
from fastood.ops import neglabel_score
from fastood import reference as R


def unit(n, d, seed=0):
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def make_bank(k=4, m=23, d=16, groups=5, **kw):
    e = unit(k + m, d)
    return TextBank.from_mined(e[:k], [f"c{i}" for i in range(k)], e[k:], [f"n{i}" for i in range(m)], groups=groups, **kw), e


def test_grouping_drops_remainder_then_permutes():
    bank, e = make_bank(m=23, groups=5)  # 23 → 20 kept, the last 3 dropped
    assert bank.num_neg == 20 and bank.meta["dropped"] == 3
    perm = group_permutation(20, seed=0)
    assert bank.neg_labels == [f"n{i}" for i in perm.tolist()]
    assert torch.equal(bank.embeddings[4:], e[4:][perm])
    assert bank.offsets == [0, 4, 8, 12, 16, 20, 24]


def test_seed_determinism_and_generator():
    a, _ = make_bank(seed=3)
    b, _ = make_bank(seed=3)
    c, _ = make_bank(seed=4)
    assert a.neg_labels == b.neg_labels and a.neg_labels != c.neg_labels
    g = torch.Generator().manual_seed(3)
    d, _ = make_bank(generator=g)
    assert d.neg_labels == a.neg_labels


def test_explicit_permutation_reproduces_other_groups():
    perm = list(reversed(range(20)))
    bank, e = make_bank(permutation=perm)
    assert bank.neg_labels == [f"n{i}" for i in perm]
    assert bank.meta["permutation"] == "explicit"
    with pytest.raises(BankError, match="permutation of range"):
        make_bank(permutation=[0] * 20)
    with pytest.raises(BankError, match="permutation of range"):
        make_bank(permutation=list(range(19)))


def test_bank_layout_scores_like_the_reference():
    bank, _ = make_bank(k=6, m=41, groups=4)
    x = torch.randn(5, 16)
    got = neglabel_score(x, bank.embeddings, bank.num_id, groups=bank.groups, backend="torch")
    truth = R.neglabel_score(x.double(), bank.embeddings.double(), bank.num_id, groups=bank.groups)
    assert torch.allclose(got.double(), truth, atol=1e-6)


def test_round_trip(tmp_path):
    bank, _ = make_bank()
    p = bank.save(tmp_path / "b.safetensors")
    back = TextBank.load(p)
    assert torch.equal(back.embeddings, bank.embeddings)
    assert (back.id_labels, back.neg_labels, back.groups, back.meta) == (bank.id_labels, bank.neg_labels, bank.groups, bank.meta)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_truncated_file_is_detected(tmp_path):
    bank, _ = make_bank()
    p = bank.save(tmp_path / "b.safetensors")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 40])
    with pytest.raises(BankError, match="corrupt"):
        TextBank.load(p)


def test_edited_embeddings_fail_the_checksum(tmp_path):
    bank, _ = make_bank()
    p = bank.save(tmp_path / "b.safetensors")
    data = bytearray(p.read_bytes())
    data[-3] ^= 0x01  # flip one bit of the last float
    p.write_bytes(bytes(data))
    with pytest.raises(BankError, match="checksum"):
        TextBank.load(p)


def _rewrite_header(path, edit):
    """Rewrite a bank file with its embeddings and ``edit(header)`` as the header (the checksum left as is)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["fastood"])
        emb = f.get_tensor("embeddings")
    header = edit(header)
    save_file({"embeddings": emb}, str(path), metadata={"fastood": header if isinstance(header, str) else json.dumps(header)})


def _swap_first_two_labels(h):
    h["id_labels"][0], h["id_labels"][1] = h["id_labels"][1], h["id_labels"][0]
    return h


HEADER_EDITS = {
    "swapped id_labels": (_swap_first_two_labels, "checksum"),
    "renamed negative": (lambda h: {**h, "neg_labels": ["zzz"] + h["neg_labels"][1:]}, "checksum"),
    "edited meta": (lambda h: {**h, "meta": {**h["meta"], "seed": 7}}, "checksum"),
    "groups missing": (lambda h: {k: v for k, v in h.items() if k != "groups"}, "'groups' is missing"),
    "meta missing": (lambda h: {k: v for k, v in h.items() if k != "meta"}, "'meta' is missing"),
    "meta a list": (lambda h: {**h, "meta": [1, 2]}, "'meta' must be a dict"),
    "groups a string": (lambda h: {**h, "groups": "5"}, "'groups' must be a int"),
    "groups a bool": (lambda h: {**h, "groups": True}, "'groups' must be a int"),
    "labels not strings": (lambda h: {**h, "id_labels": [1, 2, 3, 4]}, "must hold strings"),
    "header a list": (lambda h: [h], "not a JSON object"),
    "old version": (lambda h: {**h, "version": 1}, "version 1"),
}


@pytest.mark.parametrize("edit", list(HEADER_EDITS))
def test_edited_or_malformed_header_is_a_bank_error(tmp_path, edit):
    """The checksum covers the header: an edited label would otherwise change pred_label silently."""
    fn, message = HEADER_EDITS[edit]
    bank, _ = make_bank(k=4)
    p = bank.save(tmp_path / "b.safetensors")
    _rewrite_header(p, fn)
    with pytest.raises(BankError, match=message):
        TextBank.load(p)


@pytest.mark.parametrize("edit", ["swapped id_labels", "groups missing", "meta a list"])
def test_cache_rebuilds_an_edited_header_with_a_warning(tmp_path, edit):
    calls = []

    def build():
        calls.append(1)
        return make_bank()[0]

    req = {"model": "tiny"}
    first = cached_bank(req, build, directory=tmp_path)
    (path,) = (tmp_path / "banks").iterdir()
    _rewrite_header(path, HEADER_EDITS[edit][0])
    with pytest.raises(BankError):
        cached_bank(req, build, directory=tmp_path, on_mismatch="error")
    with pytest.warns(UserWarning, match="rebuilding"):
        again = cached_bank(req, build, directory=tmp_path)
    assert len(calls) == 2 and again.id_labels == first.id_labels
    assert TextBank.load(path).id_labels == first.id_labels  # the rebuilt file is valid again


def test_not_a_bank(tmp_path):
    from safetensors.torch import save_file

    save_file({"embeddings": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(BankError, match="not a fastood bank"):
        TextBank.load(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        TextBank.load(tmp_path / "missing.safetensors")


def test_invalid_banks_are_rejected():
    e = unit(10, 8)
    with pytest.raises(BankError, match="unit-norm"):
        TextBank(e * 2, ["a"], [str(i) for i in range(9)], groups=3)
    with pytest.raises(BankError, match="rows"):
        TextBank(e, ["a"], ["x"], groups=1)
    with pytest.raises(BankError, match="divide"):
        TextBank(e, ["a"], [str(i) for i in range(9)], groups=2)
    bad = e.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(BankError, match="non-finite"):
        TextBank(bad, ["a"], [str(i) for i in range(9)], groups=3)


def test_cache_builds_once_then_loads(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return make_bank()[0]

    req = {"model": "tiny", "weights": "abc", "groups": 5}
    a = cached_bank(req, build, directory=tmp_path)
    b = cached_bank(req, build, directory=tmp_path)
    assert len(calls) == 1 and torch.equal(a.embeddings, b.embeddings)
    assert b.meta["request"] == json.loads(json.dumps(req))
    cached_bank({**req, "weights": "other"}, build, directory=tmp_path)
    assert len(calls) == 2  # a different model hash is a different bank


def test_cache_corruption_rebuilds_or_errors(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return make_bank()[0]

    req = {"model": "tiny"}
    cached_bank(req, build, directory=tmp_path)
    (path,) = (tmp_path / "banks").iterdir()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BankError, match="checksum"):
        cached_bank(req, build, directory=tmp_path, on_mismatch="error")
    with pytest.warns(UserWarning, match="rebuilding"):
        cached_bank(req, build, directory=tmp_path)
    assert len(calls) == 2
    TextBank.load(path)  # the rebuilt file is valid


def test_cache_request_mismatch_in_file_is_detected(tmp_path):
    req = {"model": "tiny"}
    cached_bank(req, lambda: make_bank()[0], directory=tmp_path)
    (path,) = (tmp_path / "banks").iterdir()
    other = make_bank()[0]
    other.meta = {"request": {"model": "something else"}}
    other.save(path)  # a file under the right key but built for another request
    with pytest.raises(BankError, match="different request"):
        cached_bank(req, lambda: make_bank()[0], directory=tmp_path, on_mismatch="error")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_cache_dir_is_a_clear_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(BankError, match="cannot write"):
        make_bank()[0].save(ro / "b.safetensors")


def test_unwritable_target_leaves_nothing_half_written(tmp_path, monkeypatch):
    import safetensors.torch as st

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(OSError, match="No space"):
        make_bank()[0].save(tmp_path / "b.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_that_is_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(BankError, match="cannot write"):
        make_bank()[0].save(blocker / "b.safetensors")
