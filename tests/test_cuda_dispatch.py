"""Which kernels ``segment_lse()`` runs on Hopper, and the workspace every caller reserves for it.

``csrc/cuda/cuda_path.h`` holds the rule (sm90 AOT sequence → portable AOT kernel → CUDA C++
kernel, ``FASTOOD_CUDA_PATH`` to force one); ``segment_lse.cu`` applies it; ``head.cu`` (the
TensorRT plugin's computation) and the Python backend size the workspace for the path that
will run. Checked without a GPU:

* the rule alone (a g++ probe of cuda_path.h) against a table written from the README's order;
* the real dispatcher, head and sizing code built on the CPU emulator with
  ``FASTOOD_WITH_TRITON_AOT`` and stand-in kernel sets (``csrc/cuda/testing/fake_aot/``) whose
  launches run models of the sm90 Triton kernels (``csrc/cuda/testing/aot_sm90_model.cpp``):
  the path taken for compute capability 8.0 / 9.0, dtypes, aligned / unaligned operands and
  batch sizes; a workspace one byte short is an error, not another path; the head's
  workspace holds the sm90 sequence's layout (computed here from its documented formula) over
  a grid of (B, N, S) with the launcher's stream-K grids and segment-0 splits; the stream-K
  schedule end to end (forced grids whose pieces cut segments, more programs than units, a
  piece marked inside its row block) equals float64, through the launcher's own buffers; and
  the head run through the whole sm90 sequence equals the float64 NegLabel / MCM scores;
* the C++ stream-K arithmetic (split_plan.h) against the Python launcher's.

What stays unverified here: the real cubins on a GPU (tests/test_triton_aot_tma.py, gpu marker).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import cuda_emulator

pytestmark = pytest.mark.skipif(not cuda_emulator.available(), reason="needs g++ and the CUDA headers")

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
FAKE = CUDA_DIR / "testing" / "fake_aot"
MIN_ROWS = 1024  # kSm90MinRows = the Python launcher's SM90_MIN_ROWS


# ------------------------------------------------------------------------------ the rule alone
_PROBE = r"""
#include <iostream>
#include <sstream>
#include <string>
#include "cuda/cuda_path.h"
int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    std::stringstream ss(line);
    std::string cc, half, rows, s90, aot, forced;
    std::getline(ss, cc, '|'); std::getline(ss, half, '|'); std::getline(ss, rows, '|');
    std::getline(ss, s90, '|'); std::getline(ss, aot, '|'); std::getline(ss, forced, '|');
    const auto c = fastood::cuda::choose_cuda_path(std::stoi(cc), half == "1", std::stoll(rows), s90, aot,
                                                   forced == "-" ? nullptr : forced.c_str());
    std::cout << fastood::cuda::cuda_path_name(c.path) << "|" << c.error << "|" << c.why << "\n";
  }
}
"""


@pytest.fixture(scope="module")
def rule(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    d = tmp_path_factory.mktemp("rule")
    (d / "probe.cpp").write_text(_PROBE)
    proc = subprocess.run(["g++", "-std=c++17", "-Wall", "-Werror", "-I", str(ROOT / "csrc"), str(d / "probe.cpp"),
                           "-o", str(d / "probe")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    def decide(cases):
        text = "".join("|".join(str(v) for v in c) + "\n" for c in cases)
        out = subprocess.run([str(d / "probe")], input=text, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [tuple(line.split("|")) for line in out.stdout.splitlines()]

    return decide


# (cc_major, half dtype, rows, sm90 unfit, aot unfit, FASTOOD_CUDA_PATH) → path, error wanted?
RULE_CASES = [
    ((9, 1, 4096, "", "", "-"), "sm90", False),
    ((9, 1, MIN_ROWS, "", "", "-"), "sm90", False),
    ((9, 1, MIN_ROWS - 1, "", "", "-"), "aot", False),       # small batch: the portable kernel
    ((8, 1, 4096, "", "", "-"), "aot", False),               # sm_80: never the Hopper sequence
    ((9, 0, 4096, "", "", "-"), "aot", False),               # fp32: no sm90 images
    ((9, 1, 4096, "operands not 16-aligned", "operands not 16-aligned", "-"), "cuda", False),
    ((9, 1, 4096, "no embedded sm90 kernel", "", "auto"), "aot", False),
    ((8, 1, 4096, "", "no embedded kernel for sm_80", "-"), "cuda", False),
    ((9, 1, 100, "", "", "sm90"), "sm90", False),            # forcing skips the speed threshold
    ((8, 1, 4096, "", "", "sm90"), "sm90", True),            # ... never the capability
    ((9, 1, 4096, "x", "", "sm90"), "sm90", True),
    ((9, 1, 4096, "", "no kernel", "aot"), "aot", True),
    ((9, 1, 4096, "", "", "cuda"), "cuda", False),
    ((9, 1, 4096, "", "", "fast"), "cuda", True),            # unknown value: an error, not a default
]


def test_choose_cuda_path_rule(rule):
    got = rule([c for c, _, _ in RULE_CASES])
    for (case, path, error), (g_path, g_error, g_why) in zip(RULE_CASES, got):
        assert (g_path, bool(g_error)) == (path, error), (case, g_path, g_error)
    # The reasons name what was missing, for the path report.
    assert "fewer than 1024 rows" in got[2][2]
    assert "compute capability 8.x" in got[3][2]
    assert "sm90: operands not 16-aligned; aot: operands not 16-aligned" in got[5][2]
    assert "FASTOOD_CUDA_PATH=sm90" in got[9][1] and "8.x" in got[9][1]


# ------------------------------------------------------------- the real code on the emulator
@pytest.fixture(scope="module")
def exe(tmp_path_factory):
    """emu_driver with segment_lse.cu / head.cu built as FASTOOD_TRITON_AOT=ON builds them,
    the real AOT launcher and registry, the stand-in kernel sets and the sm90 models."""
    out = tmp_path_factory.mktemp("dispatch")
    sources = cuda_emulator._kernel_sources(out / "kernels")
    exe = out / "emu_driver_aot"
    cuda_emulator._compile(["-DFASTOOD_WITH_TRITON_AOT=1", "-I", str(FAKE),
                            str(cuda_emulator.EMU_DIR / "emu_driver.cpp"), *map(str, sources),
                            str(CUDA_DIR / "segment_lse_aot.cpp"), str(CUDA_DIR / "segment_lse_aot_registry.cpp"),
                            str(cuda_emulator.EMU_DIR / "aot_sm90_model.cpp"), "-o", str(exe)],
                           "plain", "the emulator with the AOT dispatch")
    return exe


def _env(cc: int, path: str | None = None, log: Path | None = None) -> dict:
    env = {"FASTOOD_EMU_CC": str(cc), "FASTOOD_CUDA_PATH": path or "auto"}
    if log is not None:
        env["FASTOOD_MODEL_LOG"] = str(log)
    return env


@contextlib.contextmanager
def _environ(env: dict):
    """``env`` set in os.environ for the block (the emulator reads it), then restored."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run(exe: Path, mode: str, work: Path, env: dict) -> None:
    with _environ(env):
        cuda_emulator._run([exe, mode], work)


def _segment_lse(exe, work: Path, x, bank, offsets, env: dict, extra: dict | None = None, scale: float = 100.0):
    """segment_lse on the emulator: (lse, max0, argmax0, row_scale, path); row_scale = scale / ||x||."""
    work.mkdir(parents=True, exist_ok=True)
    (xb, x_lead, ldx), (bb, b_lead, ldb) = cuda_emulator._operand_bytes(x), cuda_emulator._operand_bytes(bank)
    (work / "x.bin").write_bytes(xb)
    (work / "bank.bin").write_bytes(bb)
    off = torch.as_tensor(offsets, dtype=torch.int64)
    (work / "offsets.bin").write_bytes(off.numpy().tobytes())
    B, D = x.shape
    rs = torch.full((B,), scale) / x.float().norm(dim=1)
    (work / "row_scale.bin").write_bytes(rs.numpy().tobytes())
    S = off.numel() - 1
    args = dict(dtype=cuda_emulator._DTYPE_NAMES[x.dtype], B=B, N=bank.shape[0], D=D, S=S, ldx=ldx, ldb=ldb,
                x_offset=x_lead, bank_offset=b_lead, argmax=1, splits=0, sm_count=132, **(extra or {}))
    (work / "args.txt").write_text("".join(f"{k} {v}\n" for k, v in args.items()))
    _run(exe, "segment_lse", work, env)
    lse = torch.from_numpy(np.fromfile(work / "lse.bin", dtype=np.float32).reshape(B, S).copy())
    max0 = torch.from_numpy(np.fromfile(work / "max0.bin", dtype=np.float32).copy())
    arg = torch.from_numpy(np.fromfile(work / "argmax0.bin", dtype=np.int64).copy())
    return lse, max0, arg, rs, (work / "path.txt").read_text().strip()


def _problem(B, N, D, dtype, seed=3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=gen).to(dtype)
    bank = torch.nn.functional.normalize(torch.randn(N, D, generator=gen), dim=1).to(dtype)
    return x, bank


def _reference(x, bank, offsets, rs):
    L = rs.double()[:, None] * (x.double() @ bank.double().T)
    lse = torch.stack([torch.logsumexp(L[:, a:b], 1) if b > a else torch.full((L.shape[0],), float("-inf"),
                                                                               dtype=torch.float64)
                       for a, b in zip(offsets[:-1], offsets[1:])], 1)
    return L, lse, L[:, : offsets[1]].max(1).values


OFFSETS = [0, 100, 130, 130, 300]  # segment 0 spans a tile edge; an empty segment


@pytest.mark.parametrize("cc,dtype,B,D,want", [
    (90, torch.float16, 1030, 64, "sm90 tma"),
    (90, torch.bfloat16, 1030, 64, "sm90 tma"),
    (90, torch.float16, 200, 64, "aot (sm90: fewer than 1024 rows)"),
    (90, torch.float16, 1030, 40, "cuda (sm90: operands not 16-aligned"),   # D not a multiple of 16
    (90, torch.float32, 1030, 64, "cuda (sm90: the sm90 kernels take fp16/bf16 only; aot: no embedded kernel"),
    (80, torch.float16, 1030, 64, "cuda (sm90: compute capability 8.x is not 9.x; aot: no embedded kernel for sm_80"),
])
def test_dispatch_path(exe, tmp_path, cc, dtype, B, D, want):
    """The path segment_lse takes (and reports) on the emulated device; where the sm90
    sequence runs, its results (the models' float64 arithmetic through the real sequence)
    equal float64."""
    x, bank = _problem(B, OFFSETS[-1], D, dtype)
    lse, max0, arg, rs, path = _segment_lse(exe, tmp_path, x, bank, OFFSETS, _env(cc))
    assert path.startswith(want), path
    if path.startswith("sm90") or path.startswith("cuda"):
        L, ref, ref_max = _reference(x, bank, OFFSETS, rs)
        fin = torch.isfinite(ref)
        assert torch.equal(torch.isfinite(lse), fin)
        bound = 2e-3 if path.startswith("cuda") and dtype != torch.float32 else 1e-3
        assert (lse.double() - ref)[fin].abs().max().item() <= bound
        assert (max0.double() - ref_max).abs().max().item() <= bound
        assert (L.gather(1, arg[:, None])[:, 0] - ref_max).abs().max().item() <= bound


def test_dispatch_unaligned_base_leaves_sm90(exe, tmp_path):
    """A bank whose base is 8 bytes off 16 (a row-offset view): neither AOT image takes it."""
    x, full = _problem(1030, OFFSETS[-1] + 1, 64, torch.float16)
    bank = full.view(-1)[4 : 4 + OFFSETS[-1] * 64].view(OFFSETS[-1], 64)
    *_, path = _segment_lse(exe, tmp_path, x, bank, OFFSETS, _env(90))
    assert path.startswith("cuda (sm90: operands not 16-aligned"), path


def test_forced_paths(exe, tmp_path):
    x, bank = _problem(200, OFFSETS[-1], 64, torch.float16)
    *_, path = _segment_lse(exe, tmp_path / "a", x, bank, OFFSETS, _env(90, "sm90"))
    assert path.startswith("sm90 tma (forced by FASTOOD_CUDA_PATH=sm90)"), path
    *_, path = _segment_lse(exe, tmp_path / "b", x, bank, OFFSETS, _env(90, "cuda"))
    assert path == "cuda (forced by FASTOOD_CUDA_PATH=cuda)"
    with pytest.raises(cuda_emulator.EmulatorError, match="FASTOOD_CUDA_PATH=sm90 but the sm90 kernels cannot run"):
        _segment_lse(exe, tmp_path / "c", x, bank, OFFSETS, _env(80, "sm90"))


def test_too_small_workspace_is_an_error_not_another_path(exe, tmp_path):
    x, bank = _problem(1030, OFFSETS[-1], 64, torch.float16)
    *_, path = _segment_lse(exe, tmp_path / "a", x, bank, OFFSETS, _env(90), extra={"ws_sm90_minus": 0})
    assert path == "sm90 tma"  # exactly the request's bytes: enough
    with pytest.raises(cuda_emulator.EmulatorError, match="too small for the sm90 kernels"):
        _segment_lse(exe, tmp_path / "b", x, bank, OFFSETS, _env(90), extra={"ws_sm90_minus": 1})


# ----------------------------------------------------------------- the stream-K schedule
_SK_PROBE = r"""
#include <iostream>
#include "cuda/split_plan.h"
int main() {
  long long a, b, c;
  char kind;
  while (std::cin >> kind >> a >> b >> c)
    std::cout << (kind == 'p' ? fastood::cuda::stream_k_programs(a, b, c) : fastood::cuda::stream_k_owner(a, b, c))
              << "\n";
}
"""


def test_stream_k_arithmetic_is_the_python_launchers(tmp_path):
    """split_plan.h's stream_k_programs / stream_k_owner against the Python launcher's on a grid
    (row blocks × tiles × slots, and every unit of several (U, P)); the owner is also checked
    against its definition: the program q with ⌊qU/P⌋ <= u < ⌊(q+1)U/P⌋."""
    pytest.importorskip("triton")
    from fastood.ops._triton_segment_lse_sm90 import stream_k_owner, stream_k_programs

    (tmp_path / "p.cpp").write_text(_SK_PROBE)
    proc = subprocess.run(["g++", "-std=c++17", "-Wall", "-Werror", "-I", str(ROOT / "csrc"), str(tmp_path / "p.cpp"),
                           "-o", str(tmp_path / "p")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cases = [("p", nb, t, slots) for nb in (1, 3, 9, 512) for t in (0, 1, 7, 90) for slots in (0, 1, 132, 264, 10**6)]
    for U, P in [(24, 5), (24, 7), (24, 24), (24, 40), (46_080, 264), (7, 1)]:
        cases += [("o", u, U, P) for u in range(U)] if U < 100 else [("o", u, U, P) for u in range(0, U, 97)]
    out = subprocess.run([str(tmp_path / "p")], input="".join(f"{k} {a} {b} {c}\n" for k, a, b, c in cases),
                         capture_output=True, text=True, timeout=60).stdout.split()
    assert len(out) == len(cases)
    for (k, a, b, c), got in zip(cases, map(int, out)):
        if k == "p":
            assert got == stream_k_programs(a, b, c), (a, b, c)
        else:
            assert got == stream_k_owner(a, b, c) and got * b // c <= a < (got + 1) * b // c, (a, b, c)


# Segment 0 = [0, 100): T = ⌈900/128⌉ = 8 hot tiles per row block, 3 row blocks (260 rows), U = 24.
SK_OFFSETS = [0, 100, 600, 600, 700, 1000]           # long segments (cut by pieces), one empty
SK_DENSE = [0, 100, 600, 601, 602, 603, 604, 605, 606, 607, 608, 609, 700, 1000]  # a tile with 11 segments


@pytest.mark.parametrize("offsets,programs,expect", [
    (SK_OFFSETS, 5, "merge"),     # pieces of 4–5 units: boundaries inside row blocks cut segments
    (SK_OFFSETS, 7, "merge"),
    (SK_OFFSETS, 1, None),        # one program walks every row block: no boundary inside one
    (SK_OFFSETS, 40, "merge"),    # P > U: 16 empty programs among one-unit ones
    (SK_DENSE, 5, "mark bflag"),  # the 11-segment tile marks pieces, some starting inside a row block
])
def test_stream_k_schedule_end_to_end_matches_float64(exe, tmp_path, offsets, programs, expect):
    """segment_lse on the sm90 path with the hot kernel's grid forced to P programs: the
    launcher's buffers (flag, bflag, part_seg, part_v in its workspace, which starts as all-ones
    bytes: NaN / −1) carry the pieces' partials and marks from the hot model to the exact
    model, whose merges / recomputations give every lse, max0 and argmax0 of float64 (−inf for
    the empty segment). Fails if the sequence drops or mis-sizes a buffer or argument of the
    protocol (the stand-in images take exactly the Triton signatures' parameters), passes
    another P to the exact kernel than the hot kernel's grid, or still launches a split merge."""
    B, N, D = 260, offsets[-1], 64
    x, bank = _problem(B, N, D, torch.float16, seed=17)
    log = tmp_path / "launches.txt"
    # scale 10: every row's logits spread < 96 (log2) per tile, so only the dense tile marks.
    lse, max0, arg, rs, path = _segment_lse(exe, tmp_path / "run", x, bank, offsets, _env(90, "sm90", log=log),
                                            extra={"programs": programs}, scale=10.0)
    assert path.startswith("sm90 tma"), path
    launches = log.read_text()
    assert f"launch hot tma {programs} 1 1" in launches, launches
    assert "launch merge" not in launches
    lines = launches.splitlines()
    if expect is not None:
        assert any(line.startswith(expect) for line in lines), launches
    # The exact kernel's work per row block, from the Python launcher's owner rule: a row block
    # with a boundary inside it is merged, recomputed when marked (only the dense tile marks).
    from fastood.ops._triton_segment_lse_sm90 import stream_k_owner

    T, nb = -(-(N - offsets[1]) // 128), -(-B // 128)
    inner = {rb: (stream_k_owner(rb * T, nb * T, programs) + 1, stream_k_owner(rb * T + T - 1, nb * T, programs))
             for rb in range(nb)}
    marked = set(range(nb)) if offsets is SK_DENSE else set()
    assert {int(line.split()[1]) for line in lines if line.startswith("recompute")} == marked
    want = {f"merge {rb} {lo} {hi}" for rb, (lo, hi) in inner.items() if hi >= lo and rb not in marked}
    assert {line for line in lines if line.startswith("merge")} == want
    L, ref, ref_max = _reference(x, bank, offsets, rs)
    fin = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(lse), fin), "an lse entry unwritten (NaN) or wrongly infinite"
    assert (lse.double() - ref)[fin].abs().max().item() <= 1e-4
    assert (max0.double() - ref_max).abs().max().item() <= 1e-4
    assert torch.equal(arg, L[:, : offsets[1]].argmax(1))


def test_stream_k_workspace_too_small_for_the_forced_grid_is_an_error(exe, tmp_path):
    """The boundary slots grow with P: a workspace sized for the request but one byte short of
    the forced grid's layout is refused, not run out of bounds."""
    x, bank = _problem(260, SK_OFFSETS[-1], 64, torch.float16)
    with pytest.raises(cuda_emulator.EmulatorError, match="too small for the sm90 kernels"):
        _segment_lse(exe, tmp_path, x, bank, SK_OFFSETS, _env(90, "sm90"), extra={"programs": 40, "ws_sm90_minus": 1})


# ------------------------------------------------------------------------------ workspace
def _align(v: int) -> int:
    return -(-v // 256) * 256


def sm90_layout_total(programs: int, splits0: int, B: int, N: int, block_b: int = 128) -> int:
    """The sm90 sequence's workspace as segment_lse_aot.h documents it: colseg (N int32), the
    row-block flags (⌈B/block_b⌉ int32), the hot kernel's boundary slots for P + 1 boundaries —
    bflag (P + 1 int32), part_seg (2(P + 1) int32), part_v (2(P + 1) × block_b fp32) —; with
    splits0 > 1 segment 0's m, l (splits0, B) fp32 and argmax (splits0, B) int32."""
    total = _align(4 * N) + _align(4 * -(-B // block_b))
    total += _align(4 * (programs + 1)) + _align(8 * (programs + 1)) + _align(8 * (programs + 1) * block_b)
    if splits0 > 1:
        total += 3 * _align(4 * splits0 * B)
    return total


def launcher_plan(B: int, cols: int, sms: int, bb: int = 128, bn: int = 128) -> tuple[int, int]:
    """The Python launcher's (stream-K programs, segment-0 splits) on its TMA path (two
    resident blocks per SM) with end0 on the device (fastood/ops/_triton_segment_lse_sm90.py:
    stream_k_programs over ⌈N/bn⌉ tiles, _segment0_splits → sol_splits with S = 1 on N)."""
    pytest.importorskip("triton")
    from fastood.ops._triton_segment_lse_sm90 import sol_splits, stream_k_programs

    return stream_k_programs(-(-B // bb), -(-cols // bn), 2 * sms), sol_splits(B, cols, 1, sms, bb, bn, 2)


def head_fixed(B: int, S: int) -> int:
    """head.cu's fixed part: offsets, row scale, lse, max0, argmax0 (256-byte aligned each)."""
    return _align((S + 1) * 8) + _align(B * 4) + _align(B * S * 4) + _align(B * 4) + _align(B * 8)


@pytest.mark.parametrize("method,K,G,N", [("mcm", 50, 1, 50), ("mcm", 1000, 1, 1000), ("neglabel", 40, 4, 300),
                                          ("neglabel", 1000, 100, 11400), ("neglabel", 10, 1, 64)])
def test_head_workspace_holds_the_sm90_layout(exe, tmp_path, method, K, G, N):
    """For every batch of the grid (the launcher's stream-K grids and segment-0 splits on 132
    SMs): the head's reservation minus its fixed part holds the sm90 layout of the plan the
    head runs; that plan is the launcher's whenever it fits (else fewer programs / splits); the
    reservation does not shrink as B grows (TensorRT sizes for the largest batch)."""
    Bs = [1, 100, 1030, 4096, 16384, 65536]
    S = 1 if method == "mcm" else 1 + G
    used = K if method == "mcm" else K + G * ((N - K) // G)
    args = dict(dtype="float16", method=method, num_id=K, groups=G, N=N, sm_count=132, B_list=",".join(map(str, Bs)),
                **{f"fixed_{B}": head_fixed(B, S) for B in Bs})
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "args.txt").write_text("".join(f"{k} {v}\n" for k, v in args.items()))
    _run(exe, "sizes", tmp_path, _env(90))
    rows = [line.split() for line in (tmp_path / "sizes.txt").read_text().splitlines()]
    heads = []
    split_seen = False
    for B, (b, head, bound, *req) in zip(Bs, rows):
        head, bound = int(head), int(bound)
        heads.append(head)
        budget = head - head_fixed(B, S)
        programs, splits0, nbytes = map(int, req)
        assert nbytes == sm90_layout_total(programs, splits0, B, used) <= budget, (B, req, budget)
        assert sm90_layout_total(1, 1, B, used) <= bound <= budget
        want = launcher_plan(B, used, 132)
        if sm90_layout_total(*want, B, used) <= budget:
            assert (programs, splits0) == want, (B, req, want)
        else:
            assert programs <= want[0] and splits0 <= want[1]
        split_seen |= splits0 > 1
    assert heads == sorted(heads)
    if used > 128:
        assert split_seen  # the grid reaches split plans


# ------------------------------------------------------------------ the head through sm90
def _head(exe, work: Path, x, bank, K, method, G, env):
    work.mkdir(parents=True, exist_ok=True)
    (work / "x.bin").write_bytes(cuda_emulator._raw_bytes(x))
    (work / "bank.bin").write_bytes(cuda_emulator._raw_bytes(bank))
    args = dict(dtype=cuda_emulator._DTYPE_NAMES[x.dtype], B=x.shape[0], N=bank.shape[0], D=x.shape[1], method=method,
                num_id=K, groups=G, temperature=repr(0.01), normalize=1, sm_count=0, max_batch=x.shape[0])
    (work / "args.txt").write_text("".join(f"{k} {v}\n" for k, v in args.items()))
    _run(exe, "head", work, env)
    score = torch.from_numpy(np.fromfile(work / "score.bin", dtype=np.float32).copy())
    pred = torch.from_numpy(np.fromfile(work / "pred.bin", dtype=np.int32).copy())
    return score, pred, (work / "path.txt").read_text().strip()


def _head_reference(x, bank, K, method, G):
    u = x.double() / x.double().norm(dim=1, keepdim=True)
    L = 100.0 * u @ bank.double().T
    lid = torch.logsumexp(L[:, :K], 1)
    if method == "mcm":
        return torch.exp(L[:, :K].max(1).values - lid), L
    m = (bank.shape[0] - K) // G
    lg = torch.stack([torch.logsumexp(L[:, K + g * m : K + (g + 1) * m], 1) for g in range(G)], 1)
    return torch.sigmoid(lid[:, None] - lg).mean(1), L


@pytest.mark.parametrize("method,dtype,G", [("neglabel", torch.float16, 4), ("mcm", torch.float16, 1),
                                            ("neglabel", torch.bfloat16, 3)])
def test_head_runs_the_sm90_sequence_and_matches_float64(exe, tmp_path, method, dtype, G):
    """The fused head (what the TensorRT plugin enqueues) on an emulated sm_90 with B ≥ 1,024:
    it takes the sm90 path inside head_workspace_bytes (an exact-size buffer), the hot kernel
    runs one stream-K program per tile (9 row blocks × ⌈N/128⌉ tiles < 264 slots), segment 0 is
    split (132 SMs, 9 row blocks), and the scores and predictions equal float64."""
    B, N, D, K = 1030, 302, 64, 140
    x, bank = _problem(B, N, D, dtype, seed=5)
    log = tmp_path / "launches.txt"
    score, pred, path = _head(exe, tmp_path, x, bank, K, method, G, _env(90, log=log))
    assert path == "sm90 tma", path
    launches = log.read_text()
    used = K if method == "mcm" else K + G * ((N - K) // G)
    P = 9 * -(-used // 128)  # one program per hot tile: fewer than 264 slots
    assert f"launch hot tma {P} 1 1" in launches and "launch seg0_merge argmax" in launches, launches
    assert "launch merge" not in launches  # no split merge for the stream-K hot kernel
    ref, L = _head_reference(x, bank, K, method, G)
    assert (score.double() - ref).abs().max().item() <= 1e-4
    # pred: the first ID argmax, or one that ties it within fp32 rounding of the logits.
    assert (L[:, :K].gather(1, pred.long()[:, None])[:, 0] - L[:, :K].max(1).values).abs().max().item() <= 1e-3
    # The same head forced onto the CUDA C++ kernel agrees (two independent kernels).
    score_c, _, path_c = _head(exe, tmp_path / "cuda", x, bank, K, method, G, _env(90, "cuda"))
    assert path_c.startswith("cuda")
    assert (score_c.double() - ref).abs().max().item() <= 1e-3


# ----------------------------------------------------------------- the TensorRT plugin
@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The TensorRT plugin (against csrc/trt/testing's stand-in API) linked with the kernels
    built as FASTOOD_TRITON_AOT=ON builds them, the stand-in sets and the sm90 models."""
    out = tmp_path_factory.mktemp("plugin_aot")
    testing = ROOT / "csrc" / "trt" / "testing"
    lib = out / "lib"
    lib.mkdir()
    stand_in = ["-I", str(testing)]
    cuda_emulator._compile([*stand_in, "-shared", "-fPIC", str(testing / "registry_stub.cpp"), "-o",
                            str(lib / "libnvinfer.so")], "plain", "the stand-in libnvinfer")
    so = out / "libfastood_trt_plugin.so"
    kernels = cuda_emulator._kernel_sources(out / "kernels")
    cuda_emulator._compile([*stand_in, "-DFASTOOD_WITH_TRITON_AOT=1", "-I", str(FAKE), "-shared", "-fPIC",
                            str(ROOT / "csrc" / "trt" / "segment_lse_score_plugin.cpp"), *map(str, kernels),
                            str(CUDA_DIR / "segment_lse_aot.cpp"), str(CUDA_DIR / "segment_lse_aot_registry.cpp"),
                            str(cuda_emulator.EMU_DIR / "aot_sm90_model.cpp"), "-o", str(so), "-L", str(lib),
                            "-lnvinfer", "-Wl,--no-undefined"], "plain", "the plugin with the AOT dispatch")
    harness = out / "plugin_harness"
    cuda_emulator._compile([*stand_in, str(testing / "plugin_harness.cpp"), "-o", str(harness), "-L", str(lib),
                            "-lnvinfer", "-ldl", f"-Wl,-rpath,{lib}"], "plain", "the plugin harness")
    return harness, so


def test_plugin_runs_the_sm90_sequence_in_its_reserved_workspace(plugin, tmp_path):
    """The plugin's getWorkspaceSize (for a profile up to 4,096 rows) and enqueue (1,030 rows)
    on an emulated sm_90: the sm90 sequence runs (its launches are logged) inside the
    workspace TensorRT reserved, and the NegLabel scores equal float64."""
    harness, so = plugin
    B, N, D, K, G = 1030, 302, 64, 140, 4
    x, bank = _problem(B, N, D, torch.float16, seed=13)
    log = tmp_path / "launches.txt"
    with _environ(_env(90, log=log)):
        score, pred = cuda_emulator.head_score(harness, tmp_path / "run", x, bank, K, groups=G, plugin=so,
                                               max_batch=4096)
    launches = log.read_text()
    assert "launch hot tma 27 1 1" in launches and "launch exact argmax" in launches, launches
    ref, _ = _head_reference(x, bank, K, "neglabel", G)
    assert (score.double() - ref).abs().max().item() <= 1e-4


# ------------------------------------------------------------------ the Python backend
def test_bindings_for_the_sm90_workspace():
    """fastood._C's sm90 sizing bindings: arguments checked; in a build without sm90 images
    (or without a device) no sm90 workspace is asked for."""
    from fastood._backends import load_extension

    mod, why = load_extension()
    if mod is None or not mod.cuda_available():
        pytest.skip(f"fastood._C without CUDA kernels: {why}")
    with pytest.raises(ValueError, match="B, N and S must be >= 1"):
        mod.cuda_sm90_request("float16", 0, 10, 1, 132, 0, 1 << 20)
    with pytest.raises(ValueError, match="dtype"):
        mod.cuda_sm90_request("int8", 1, 10, 1, 132, 0, 1 << 20)
    if not torch.cuda.is_available():
        assert mod.cuda_sm90_request("float16", 4096, 11400, 101, 132) is None
    bound = mod.cuda_sm90_workspace_bound(4096, 11400, 101, 16 << 20)
    assert bound == 0 or bound >= sm90_layout_total(1, 1, 4096, 11400)


def test_python_backend_reserves_the_larger_workspace(monkeypatch):
    """workspace_bytes = max(the portable plan's bytes, the sm90 request's) — the request's
    arguments are the problem's (dtype name, B, N, S, the device's SMs, num_splits)."""
    import contextlib

    from fastood.ops import _cuda_segment_lse as m

    seen = []

    class Ext:
        def cuda_plan_splits(self, B, N, S, sms, per_sm, n, cap):
            return (2, 128, 1_000)

        def cuda_sm90_request(self, dtype, B, N, S, sms, n, cap):
            seen.append((dtype, B, N, S, sms, n))
            return answer

    monkeypatch.setattr(m, "_ext", lambda: Ext())
    monkeypatch.setattr(m, "_sm_count", lambda index: 132)
    monkeypatch.setattr(m, "_blocks_per_sm", lambda index, dtype, vec: 3)
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    dev = torch.device("cuda", 0)
    answer = (3, 2, 5_000)
    assert m.workspace_bytes(1030, 300, 5, dev, dtype=torch.bfloat16) == 5_000
    assert seen[-1] == ("bfloat16", 1030, 300, 5, 132, 0)
    assert m.sm90_request(1030, 300, 5, dev, 4) == (3, 2, 5_000) and seen[-1][-1] == 4
    answer = None
    assert m.workspace_bytes(1030, 300, 5, dev) == 1_000


@pytest.mark.gpu
def test_gpu_python_backend_takes_the_sm90_path():
    """On an sm_90 GPU with a FASTOOD_TRITON_AOT=ON build: fp16, 2,048 rows → the sm90 path
    (TMA), within 2e-3 of float64; FASTOOD_CUDA_PATH=cuda gives the C++ kernel, close to it."""
    from fastood._backends import load_extension
    from fastood.ops import _cuda_segment_lse as m

    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("needs an sm_90 GPU")
    mod, _ = load_extension()
    if mod is None or not mod.cuda_available() or mod.cuda_sm90_workspace_bound(1, 1, 1, 0) == 0:
        pytest.skip("fastood._C built without FASTOOD_TRITON_AOT (no sm90 images)")
    x, bank = _problem(2048, 1000, 512, torch.float16, seed=21)
    off = [0, 100, 400, 400, 1000]
    rs = torch.full((2048,), 100.0) / x.float().norm(dim=1)
    lse, max0, arg = m.segment_lse_cuda(x.cuda(), bank.cuda(), torch.tensor(off).cuda(), rs.cuda(), True)
    assert m.last_path() == "sm90 tma", m.last_path()
    _, ref, ref_max = _reference(x, bank, off, rs)
    fin = torch.isfinite(ref)
    assert ((lse.cpu().double() - ref)[fin]).abs().max().item() <= 2e-3
    assert (max0.cpu().double() - ref_max).abs().max().item() <= 2e-3
    os.environ["FASTOOD_CUDA_PATH"] = "cuda"
    try:
        lse_c, _, _ = m.segment_lse_cuda(x.cuda(), bank.cuda(), torch.tensor(off).cuda(), rs.cuda(), True)
        assert m.last_path().startswith("cuda"), m.last_path()
    finally:
        os.environ.pop("FASTOOD_CUDA_PATH")
    assert ((lse_c - lse).cpu()[fin]).abs().max().item() <= 2e-3
