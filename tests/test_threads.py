"""Detectors sharing one model score correctly from several threads at once.

The truth is the single-threaded result of the same detectors on the same
inputs; the threads interleave NegLabel (projection features) and KNN
(pre-projection features) calls on one shared tiny open_clip model. Before the
fix, pre-projection features were taken by setting ``visual.proj = None`` on the
shared model for the duration of a forward, so a projection-space call in
another thread could get the wrong features (a width error here, silently wrong
scores when the widths agree).
"""

from __future__ import annotations

import sys
import threading

import pytest
import torch

from fastood.bank import TextBank
from fastood.detectors import KNN, NegLabel
from fastood.detectors.base import pre_projection
from tests.tiny import TINY_KWARGS, tiny_clip

N_THREADS = 4
ROUNDS = 12


@pytest.fixture(scope="module")
def setup():
    clip = tiny_clip(seed=3)
    g = torch.Generator().manual_seed(0)
    d = TINY_KWARGS["embed_dim"]
    emb = torch.nn.functional.normalize(torch.randn(3 + 8, d, generator=g), dim=1)
    bank = TextBank(emb, ["a", "b", "c"], [f"n{i}" for i in range(8)], groups=2)
    neglabel = NegLabel(clip, bank=bank, progress=False)
    train = torch.randn(10, 3, 32, 32, generator=g)
    knn = KNN(clip, k=1).fit(train)
    test = torch.randn(6, 3, 32, 32, generator=g)
    return clip, neglabel, knn, test


def test_pre_projection_is_the_forward_without_proj(setup):
    """Independent truth: the projected output equals pre-projection features @ proj (the model is left as is)."""
    clip, _, _, test = setup
    visual = clip.model.visual
    proj_before = visual.proj
    with torch.no_grad():
        pre = pre_projection(clip.model, test)
        full = visual(test)
    assert visual.proj is proj_before
    assert pre.shape == (test.shape[0], visual.proj.shape[0])
    torch.testing.assert_close(pre @ visual.proj, full, rtol=1e-5, atol=1e-6)


def test_concurrent_scores_match_single_threaded(setup):
    _, neglabel, knn, test = setup
    want = {"neglabel": neglabel.score(test), "knn": knn.score(test)}
    dets = {"neglabel": neglabel, "knn": knn}
    errors: list[BaseException] = []
    wrong: list[str] = []
    start = threading.Barrier(N_THREADS)

    def work(i: int) -> None:
        try:
            start.wait()
            for r in range(ROUNDS):
                name = ("neglabel", "knn")[(i + r) % 2]  # both detectors run at every moment
                got = dets[name].score(test)
                if not torch.allclose(got, want[name], rtol=1e-5, atol=1e-6):
                    wrong.append(f"thread {i} round {r} {name}: {got.tolist()} != {want[name].tolist()}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: interleavings the scheduler might otherwise skip
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(N_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, f"{len(errors)} thread(s) raised, first: {errors[0]!r}"
    assert not wrong, f"{len(wrong)} of {N_THREADS * ROUNDS} concurrent calls differ; first: {wrong[0]}"
