"""Cut text-tower forward (fastood.models.TextTower / encode_tokens_cut / encode_texts) against
open_clip's own ``encode_text`` on the full 77-token context, on tiny random open_clip models:
pooling types, projection kinds, custom text towers, fallbacks, low precision, order restoration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastood.models import TextTower, encode_texts, encode_tokens_cut, load_clip, text_tower
from fastood.models import _is_causal

VISION = {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32}

# varied lengths: empty, one word, typical prompts, punctuation / unicode, a long sentence,
# and one longer than the context (the tokenizer truncates it and puts EOT at position 76)
PROMPTS = [
    "the nice dog",
    "",
    "This is a rusty photo",
    "the nice hippopotamus",
    "a",
    "a close-up photo of the nice violin.",
    "ünïcödé café, naïve!",
    "This is a very very long photo of a small cat sitting on a red mat in the afternoon sun",
    " ".join(f"word{i}" for i in range(120)),
    "the nice cat",
    "The nice airplane.",
    "tree",
]


def _text_cfg(**kw):
    return {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2, **kw}


def _clip(seed: int = 0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("text_cfg", _text_cfg())
    return load_clip("ViT-B-32", pretrained="", device="cpu", embed_dim=32, vision_cfg=VISION, **kw)


def _reference(clip, texts) -> torch.Tensor:
    """open_clip's encode_text on the full context, unit-normalised."""
    with torch.no_grad():
        return F.normalize(clip.model.encode_text(clip.tokenizer(list(texts))).float(), dim=1)


@pytest.fixture(scope="module")
def clip():
    return _clip()


def test_tokens_really_cover_the_cases(clip):
    ids = clip.tokenizer(PROMPTS)
    eot = ids.argmax(1)
    assert ids.shape[1] == 77
    assert int(eot.max()) == 76  # the truncated prompt
    assert int(eot.min()) == 1  # the empty prompt: SOT, EOT
    assert len(set(eot.tolist())) >= 7


def test_encode_texts_equals_full_context_encode_text(clip, monkeypatch):
    seen = []
    forward = TextTower.forward

    def spy(self, embeds, positions):
        seen.append(embeds.shape[1])
        return forward(self, embeds, positions)

    monkeypatch.setattr(TextTower, "forward", spy)
    got = encode_texts(clip.model, clip.tokenizer, PROMPTS, batch_size=3, progress=False)
    ref = _reference(clip, PROMPTS)
    assert got.shape == (len(PROMPTS), 32) and got.dtype == torch.float32
    assert (got - ref).abs().max() <= 1e-5
    # batches are sorted by length and cut: only the batch with the truncated prompt runs 77 tokens
    assert seen == sorted(seen) and len(seen) == 4
    assert seen[-1] == 77 and seen[0] <= 5 and seen[-2] < 20


def test_order_is_restored(clip):
    g = torch.Generator().manual_seed(3)
    perm = torch.randperm(len(PROMPTS), generator=g).tolist()
    shuffled = [PROMPTS[i] for i in perm]
    a = encode_texts(clip.model, clip.tokenizer, PROMPTS, batch_size=2, progress=False)
    b = encode_texts(clip.model, clip.tokenizer, shuffled, batch_size=5, progress=False)
    assert (b - a[perm]).abs().max() <= 1e-5
    # the prompts' embeddings differ by far more than the tolerance: a mix-up could not pass
    off = (a[:, None] - a[None]).abs().amax(-1) + torch.eye(len(PROMPTS))
    assert off.min() > 1e-2
    # duplicates and a single prompt
    c = encode_texts(clip.model, clip.tokenizer, ["tree", "the nice dog", "tree"], progress=False)
    assert (c[0] - c[2]).abs().max() <= 1e-6
    assert (c - a[[11, 0, 11]]).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "kwargs, pool, cut",
    [
        (dict(text_cfg=_text_cfg(pool_type="eos", eos_id=49407)), "eos", True),  # MetaCLIP-2 style 'eos' pooling
        (dict(text_cfg=_text_cfg(pool_type="first")), "first", True),
        (dict(text_cfg=_text_cfg(pool_type="last")), "last", False),  # last position sees the padding
        (dict(text_cfg=_text_cfg(pool_type="last", no_causal_mask=True)), "last", False),  # CLIPA style
        (dict(text_cfg=_text_cfg(proj_bias=True)), "argmax", True),  # Linear text projection
        (dict(text_cfg=_text_cfg(proj_type="none")), "argmax", True),  # no projection (width 32 = embed_dim)
        (dict(force_custom_text=True), "argmax", True),  # CustomTextCLIP + TextTransformer
    ],
    ids=["eos", "first", "last", "bidirectional", "linear-proj", "no-proj", "custom-text"],
)
def test_other_text_towers(kwargs, pool, cut):
    clip = _clip(1, **kwargs)
    tower = text_tower(clip.model)
    assert tower is not None and tower.pool_type == pool and tower.can_cut is cut
    got = encode_texts(clip.model, clip.tokenizer, PROMPTS, batch_size=4, progress=False)
    ref = _reference(clip, PROMPTS)
    assert (got - ref).abs().max() <= 1e-5
    tokens = clip.tokenizer(PROMPTS[:4])  # no long prompt: a real cut where one is possible
    with torch.no_grad():
        full = clip.model.encode_text(tokens)
        mine = encode_tokens_cut(clip.model, tokens)
    assert (mine - full).abs().max() <= 1e-5 * full.abs().max()


def test_class_token_tower_falls_back(monkeypatch):
    clip = _clip(2, force_custom_text=True, text_cfg=_text_cfg(embed_cls=True))
    assert text_tower(clip.model) is None

    def boom(*a, **k):
        raise AssertionError("the cut forward must not run for an unsupported tower")

    monkeypatch.setattr(TextTower, "forward", boom)
    got = encode_texts(clip.model, clip.tokenizer, PROMPTS, batch_size=5, progress=False)
    assert (got - _reference(clip, PROMPTS)).abs().max() <= 1e-6


def test_non_open_clip_model_uses_its_encode_text():
    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.EmbeddingBag(100, 8, mode="sum")

        def encode_text(self, ids):
            return self.emb(ids)

    def tok(texts):
        return torch.tensor([[len(t) % 100, 3, 0] for t in texts])

    m = Bag()
    assert text_tower(m) is None
    texts = ["a", "bb", "ccc", "a"]
    got = encode_texts(m, tok, texts, batch_size=3, progress=False)
    with torch.no_grad():
        assert torch.allclose(got, F.normalize(m.encode_text(tok(texts)), dim=1))
        assert torch.equal(encode_tokens_cut(m, tok(texts)), m.encode_text(tok(texts)))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_low_precision_cast_dtype(precision):
    """Cut vs full context in a half-precision tower: no worse than the full context against fp32."""
    texts = PROMPTS[:6] + PROMPTS[9:]
    ref = _reference(_clip(4), texts).double()
    lp = _clip(4, precision=precision)
    assert text_tower(lp.model).cast_dtype() == getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}[precision])
    full = _reference(lp, texts).double()
    got = encode_texts(lp.model, lp.tokenizer, texts, batch_size=3, progress=False).double()
    err_full = (full - ref).abs().max()
    assert err_full > 1e-5  # really a low-precision run
    assert (got - ref).abs().max() <= 2 * err_full + 1e-4


def test_tower_pieces_and_gradients(clip):
    tower = text_tower(clip.model)
    ids = clip.tokenizer(PROMPTS[:3])
    pos = tower.pool_positions(ids)
    assert torch.equal(pos, ids.argmax(1))
    assert tower.cut_length(pos, 77) == int(pos.max()) + 1 < 77
    emb = tower.embed(ids[:, : tower.cut_length(pos, 77)]).detach().requires_grad_(True)
    out = tower.forward(emb, pos)
    (g,) = torch.autograd.grad(out.sum(), [emb])
    # causal: nothing after a row's EOT influences its output
    for b, p in enumerate(pos.tolist()):
        assert g[b, : p + 1].abs().sum() > 0
        assert g[b, p + 1 :].abs().sum() == 0


def test_is_causal():
    L = 5
    additive = torch.full((L, L), float("-inf")).triu_(1)
    assert _is_causal(additive)
    assert _is_causal(torch.ones(L, L, dtype=torch.bool).triu_(1))
    assert not _is_causal(torch.zeros(L, L))  # bidirectional
    assert not _is_causal(torch.ones(L, L, dtype=torch.bool).triu_(2))  # sees one token ahead
    assert not _is_causal(None)
    assert not _is_causal(torch.zeros(2, L, L))


def test_bad_input(clip):
    with pytest.raises(ValueError, match="texts"):
        encode_texts(clip.model, clip.tokenizer, [], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        encode_texts(clip.model, clip.tokenizer, ["a"], batch_size=0, progress=False)
    with pytest.raises(TypeError, match="tokenizer"):
        encode_texts(clip.model, lambda t: [[1, 2]] * len(t), ["a"], progress=False)
    with pytest.raises(TypeError, match="tokens"):
        encode_tokens_cut(clip.model, torch.tensor([1, 2, 3]))


@pytest.mark.gpu
def test_cuda_amp_matches_encode_text_under_autocast():
    clip = _clip(5, device="cuda")
    got = encode_texts(clip.model, clip.tokenizer, PROMPTS, batch_size=4, progress=False)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        full = F.normalize(clip.model.encode_text(clip.tokenizer(PROMPTS).cuda()).float(), dim=1).cpu()
    ref = _reference(_clip(5), PROMPTS)
    assert (got - ref).abs().max() <= 2 * (full - ref).abs().max() + 1e-4


# ----------------------------------------------------------------- checkpoint files that are refused
class _Payload:
    """A pickle that would create a directory when unpickled (the marker tells whether code ran)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def test_malicious_pt_is_refused_without_running_it(tmp_path):
    from fastood.labels.permutation import load_permutation
    from fastood.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from tests.tiny import TINY_KWARGS

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"visual.proj": _Payload(str(marker))}, evil)
    with pytest.raises(ValueError) as info:  # fastood.models.UnsafeCheckpointError
        load_clip("ViT-B-32", evil, device="cpu", **TINY_KWARGS)
    msg = str(info.value)
    assert "refused" in msg and "mkdir" in msg  # names what the pickle wanted to import
    assert "weights_only=False" not in msg and "False" not in msg and "\n" not in msg
    assert type(info.value).__name__ == "UnsafeCheckpointError" and not marker.exists()
    # the trainer's checkpoint state and permutation files say the same
    run = tmp_path / "run"
    ck = save_checkpoint(run, 1, {"w": torch.zeros(2)}, {"step": 1})
    torch.save({"step": 1, "x": _Payload(str(marker))}, ck / "state.pt")
    import hashlib
    import json

    man = json.loads((ck / "manifest.json").read_text())
    raw = (ck / "state.pt").read_bytes()
    man["files"]["state.pt"] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    (ck / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(CheckpointError, match="not a plain tensor checkpoint") as info:
        load_checkpoint(ck)
    assert "False" not in str(info.value) and not marker.exists()
    with pytest.raises(ValueError, match="not a plain tensor checkpoint") as info:
        load_permutation(evil, 3)
    assert "False" not in str(info.value) and not marker.exists()


def test_wrong_shaped_safetensors_names_the_first_mismatched_tensor(tmp_path):
    from safetensors.torch import save_file

    from tests.tiny import TINY_KWARGS, tiny_clip

    sd = {k: v.detach().clone().contiguous() for k, v in tiny_clip().model.state_dict().items()}
    sd["visual.proj"] = torch.zeros(10, 10)
    save_file(sd, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError) as info:
        load_clip("ViT-B-32", tmp_path / "bad.safetensors", device="cpu", **TINY_KWARGS)
    msg = str(info.value)
    assert "\n" not in msg
    assert "tensor 'visual.proj' has shape (10, 10) in the checkpoint but (64, 32) in the model" in msg
    sd["text_projection"] = torch.zeros(3, 3)
    save_file(sd, tmp_path / "bad2.safetensors")
    with pytest.raises(ValueError, match="and 1 more mismatched tensor\\)") as info:
        load_clip("ViT-B-32", tmp_path / "bad2.safetensors", device="cpu", **TINY_KWARGS)
    assert "\n" not in str(info.value)
