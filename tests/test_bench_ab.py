"""``python -m bench ab``: the interleaved A/B of the CPU scoring path against an earlier commit.

Structure only (no timing assertions: speed is a benchmark claim): the baseline worker
really imports the other tree, both trees' scores are measured on the same inputs, the
temporary worktree is removed, and a bad revision is a clear error.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytest.importorskip("fastood._C")
from bench import ab  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _worktrees() -> set[str]:
    out = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    return {line.split(" ", 1)[1] for line in out.stdout.splitlines() if line.startswith("worktree ")}


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_ab_against_head_runs_both_trees_and_cleans_up():
    before = _worktrees()
    r = ab.run_ab("HEAD", B=8, D=16, K=3, M=12, G=2, rounds=2, reps=1)
    assert _worktrees() == before                      # the temporary worktree is gone
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert r["against"] == head.stdout.strip()
    for lab in ("A", "B"):
        assert len(r["samples_ms"][lab]["fastood"]) == 2 and all(v > 0 for v in r["samples_ms"][lab]["fastood"])
    assert r["ratio_a_over_b"] == pytest.approx(r["median_ms"]["A"]["fastood"] / r["median_ms"]["B"]["fastood"])
    assert r["csrc_cpu_differs"] is False             # HEAD against itself


def test_worker_baseline_imports_the_other_tree(tmp_path):
    # A tree whose fastood is not importable: the isolated worker must fail, not fall back
    # to the installed package (which would compare this tree with itself).
    (tmp_path / "fastood").mkdir()
    (tmp_path / "fastood" / "__init__.py").write_text("raise ImportError('baseline tree marker')\n")
    with pytest.raises(RuntimeError, match="baseline tree marker"):
        ab._worker(tmp_path, (4, 8, 2, 4, 1), 1, isolate=True)


def test_bad_revision_is_a_clear_error():
    with pytest.raises(ValueError, match="--against"):
        ab.run_ab("no-such-revision-xyz", B=4)
