"""How many column splits a scoring launch uses: the wave-aware rule.

A launch of ``R`` row blocks × ``s`` column splits runs ``P = R·s`` programs, ``k·SMs``
at a time (``k`` resident blocks per SM), each walking ``⌈T / s⌉`` of the ``T`` column
tiles. With the row blocks alone the GPU is underfilled when ``R < k·SMs``; the older
rule took the smallest ``s`` with ``R·s ≥ k·SMs``, which at B = 4,096 on an H100 (R = 32
row blocks of 128, k·SMs = 264) is s = 9: 288 programs, a full wave and a second wave of
24 — as long as the first (≈ 40 % of the launch wasted). Cost of a launch in rounds
(one round = every program on the GPU walks one tile), bench/sol.py's wave model::

    cost(s) = (⌈T/s⌉ + c0) · (full + partial),   (full, rest) = divmod(R·s, k·SMs)
    partial = 0 if rest = 0;  solo if rest ≤ SMs (one block per SM);  1 otherwise

``c0`` = a program's fixed cost (pipeline fill, writing its partials) in tiles; ``solo``
= a round with one block per SM relative to a full round of k: with k = 2 the Hopper
kernel's tile costs 8,512 clk alone (its serial chain) against 2 × 5,461 clk for two
blocks sharing the SM (bench/results/sol-h100.md), so ``solo = 0.78``. The rule
picks the ``s`` in ``[1, min(T, max_splits)]`` that minimises it (the fewest splits among
equals: less workspace and merge traffic). Row blocks that fill the GPU on their own
(``R ≥ k·SMs``) are not split (a split adds a merge pass over B·S·s partials).

Pure integer arithmetic, mirrored in C++ by ``sm90_choose_splits``
(csrc/cuda/segment_lse_aot.cpp) and used by ``bench/sol.py``'s model, so the launcher,
the AOT path and the prediction agree.
"""

from __future__ import annotations

__all__ = ["wave_splits", "PROGRAM_OVERHEAD_TILES", "SOLO_ROUND"]

# A program's fixed cost in tile times: filling the load pipeline (~600 clk of L2 latency)
# and writing its partials, against ≈ 5,500 clk per 128×128 tile at D = 512 (bench/sol.py).
PROGRAM_OVERHEAD_TILES = 1
# A round with one block per SM against a full round of two (Hopper TMA path: 8,512 / 10,922 clk).
SOLO_ROUND = 0.78


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def wave_splits(row_blocks: int, tiles: int, sms: int, *, blocks_per_sm: int = 2, max_splits: int | None = None,
                overhead_tiles: int = PROGRAM_OVERHEAD_TILES, solo: float = SOLO_ROUND) -> int:
    """The column split count ``s ∈ [1, min(tiles, max_splits)]`` minimising the module's
    ``cost(s)`` (the fewest splits among equals); 1 when ``row_blocks ≥ blocks_per_sm·sms``.
    ``solo`` only matters with ``blocks_per_sm > 1`` (with one block per SM every round is full).

    >>> wave_splits(32, 90, 132)    # B = 4,096 on an H100: one wave of 256 programs
    8
    >>> wave_splits(512, 90, 132)   # B = 65,536: the row blocks fill the GPU
    1
    """
    for name, v in (("row_blocks", row_blocks), ("tiles", tiles), ("sms", sms), ("blocks_per_sm", blocks_per_sm)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not 0.0 < float(solo) <= 1.0:
        raise ValueError(f"solo must be in (0, 1], got {solo!r}")
    if max_splits is not None and (isinstance(max_splits, bool) or not isinstance(max_splits, int)):
        raise ValueError(f"max_splits must be an int or None, got {max_splits!r}")
    slots = blocks_per_sm * sms
    if row_blocks >= slots:
        return 1
    hi = max(1, min(tiles, max_splits if max_splits is not None else tiles))
    best, best_cost = 1, None
    for s in range(1, hi + 1):
        full, rest = divmod(row_blocks * s, slots)
        partial = 0.0 if rest == 0 else (solo if rest <= sms and blocks_per_sm > 1 else 1.0)
        cost = (_cdiv(tiles, s) + overhead_tiles) * (full + partial)
        if best_cost is None or cost < best_cost - 1e-9:
            best, best_cost = s, cost
    return best
