"""The wave-aware column-split rule (fastood/ops/_split_plan.py) against hand counts and the
speed-of-light model's wave arithmetic (bench/sol.py's predict_time)."""

from __future__ import annotations

import math

import pytest

from fastood.ops._split_plan import wave_splits

SMS = 132            # H100 (2 resident blocks per SM: the Hopper scoring kernel's TMA path)
SLOTS = 2 * SMS
TILES = 90           # ⌈11,400 / 128⌉ column tiles


@pytest.mark.parametrize("B, expected", [
    (256, 90),    # 2 row blocks: one tile per program, 180 programs in one wave
    (4096, 8),    # 32 row blocks: 256 programs (one wave) of 12 tiles; 9 splits would need a second wave
    (8192, 4),    # 64 × 4 = 256 programs of 23 tiles
    (16384, 2),   # 128 × 2 = 256 programs of 45 tiles
    (65536, 1),   # 512 row blocks fill the GPU on their own
])
def test_hand_counted_shapes(B, expected):
    assert wave_splits(math.ceil(B / 128), TILES, SMS) == expected


def _old_rule(R: int, T: int, slots: int) -> int:
    return 1 if R >= slots else min(math.ceil(slots / R), T)


def test_never_slower_than_the_old_rule_on_the_wave_model():
    pytest.importorskip("triton")
    from bench import sol

    gpu = sol.GPUS["h100"]
    for R in range(1, 300):
        for T in (1, 7, 8, 90, 200):
            def t(s):  # the Hopper tile: 8,512 clk alone on an SM, 5,461 per SM-tile with two blocks
                return sol.predict_time(lambda k: {1: 8512.0, 2: 5461.0}[k], gpu, programs=R * s,
                                        tiles_per_program=math.ceil(T / s) + 1, blocks_per_sm=2)
            new, old = wave_splits(R, T, SMS, solo=8512 / 10922), _old_rule(R, T, SLOTS)
            assert 1 <= new <= T
            assert t(new) <= t(old) + 1e-12, (R, T, new, old)
            if R < SLOTS:  # optimal on the model (at R >= slots it does not split: the merge pass is not in it)
                assert t(new) <= min(t(s) for s in range(1, T + 1)) + 1e-12, (R, T, new)


def test_cap_and_bad_arguments():
    assert wave_splits(2, 90, 132, max_splits=5) <= 5
    assert wave_splits(1, 1, 132) == 1
    for bad in (dict(row_blocks=0, tiles=1, sms=1), dict(row_blocks=1, tiles=True, sms=1),
                dict(row_blocks=1, tiles=1, sms=-3), dict(row_blocks=1, tiles=2, sms=4, max_splits=1.5),
                dict(row_blocks=1, tiles=2, sms=4, blocks_per_sm=0), dict(row_blocks=1, tiles=2, sms=4, solo=0.0)):
        with pytest.raises(ValueError):
            wave_splits(**bad)
