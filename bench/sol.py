"""Speed-of-light model of the Triton scoring kernels, from their compiled SASS.

``python -m bench sol [--device cuda] [--quick]`` compiles the scoring kernel's
configurations for sm_90 (``fastood.ops._aot``, no GPU needed), counts the SASS
instructions of one main-loop tile, and predicts the time of ``segment_lse`` at the
shapes of ``bench scores`` on an H100 SXM (and A100), next to the user's alternative
(``torch.compile`` of the grouped logsumexp). On a GPU it also measures both and
prints predicted and measured side by side (``tools/gpu_check.sh`` records them, so
the model is calibrated the first time a GPU is lent). Results: ``bench/results/sol-h100.md``.

Model and assumptions (every one of them is a number to calibrate on a GPU):

1. **Clock.** H100 SXM: 132 SMs at 1.83 GHz, the clock at which NVIDIA's dense fp16
   peak holds (132 × 4096 FLOP/clk × 1.83 GHz = 989 TFLOP/s); the boost clock is
   1.98 GHz, the sustained clock under tensor load is often lower. A100 SXM: 108 SMs,
   1.41 GHz, 2048 FLOP/clk/SM (312 TFLOP/s). H200: the H100 SM at 4.8 TB/s HBM.
2. **Per-SM throughputs** (lanes per clock per SM): tensor cores 4096 dense fp16/bf16
   FLOP/clk for HGMMA (H100), 2/3 of that for ``mma.sync`` HMMA on H100 (what
   FlashAttention-3 reports for Ampere-style MMA on Hopper), 2048 on A100; MUFU
   (ex2, lg2, rcp) 16; FP32 (FADD/FMUL/FFMA/FMNMX/FSETP/FSEL) 128; INT and logic
   (IMAD/IADD3/LOP3/ISETP/SHF/SEL/…) 64; conversions (F2F/I2F/F2I/F2FP) 16;
   shared/global/shuffle instructions (MIO) 32; issue: 4 warp-instructions per clock
   (one scheduler per SM sub-partition). Uniform-datapath instructions (``U*``) only
   cost issue slots.
3. **What a tile costs.** A tile is one iteration of the kernel's outermost loop that
   contains the tensor-core instructions (the column-tile loop: BLOCK_B × BLOCK_N
   logits). Its instruction counts per warp are the loop body's own instructions plus,
   for every nested loop, its body × its trip count: the K loop (the nested loop holding
   the MMAs) runs as many times as makes the tile's MMA FLOPs equal 2·BLOCK_B·BLOCK_N·D
   (this absorbs the pipeliner's peeled iterations), a nested loop without MMA is the
   segment walk and runs ``1 + BLOCK_N·(S − 1)/N`` times (the segments a tile
   intersects, on average). Loops are natural loops (the target of the backward branch
   dominates it): cold code that ptxas places after the body (``BRA.DIV`` handlers, mbarrier
   retries) and that jumps back into a loop closes no loop. An HGMMA.MxNxK instruction is one warpgroup operation
   (2·M·N·K FLOP for the 4 warps that issue it); an HMMA.MxNxK is per warp.
   Per pipe p: ``T_p = Σ_warps count_p · 32 / rate_p`` (cycles of the SM per tile).
4. **Warp organisation** (declared by the kernel module in ``SOL_KERNELS = {kernel: {...}}``,
   keyed by the spec name before ``[``; keys ``chains`` (default 1), ``refill`` (True),
   ``a_resident`` (False: see 5), ``tile_rows`` / ``tile_cols`` (default BLOCK_B/BLOCK_N),
   ``columns`` (``all``; ``segment0`` / ``after_segment0`` / ``flagged`` for a kernel that is
   one part of an implementation: see ``column_tiles``; such parts are summed per module into
   one implementation row), ``extra_mma_flops`` (MMA FLOPs per tile and block besides the
   GEMM, e.g. one-hot segment sums: they are excluded when the K-loop trips are inferred),
   ``split_on_end0`` (a segment-0 kernel whose launcher sizes its splits on segment 0's
   columns), ``programs`` (the name of a module function ``f(B, N, S, end0, sms, block_b,
   block_n, blocks_per_sm) -> (programs, tiles_per_program)``: a persistent, stream-K grid,
   see 6); a module's ``sol_splits(B, N, S, sms, block_b, block_n, blocks_per_sm)`` is
   the split rule its launcher runs, used instead of the portable one):
   ``chains`` = independent tile pipelines per block. Today's kernels run one: all
   warps do the MMA, then the softmax, in lock step (``serial``), and the K pipeline
   refills at every tile (``refill``: one L2 latency, 600 clk, exposed per tile). A
   ping-pong / warp-specialised kernel declares 2 chains (two consumer warpgroups whose
   softmax overlaps the other's MMA) and no refill (a producer warp keeps loading).
   With ``k`` resident blocks per SM (from the compile report) and ``c`` chains:

       T_chain = refill + T_mma + T_rest          (T_rest = max of the non-tensor pipes)
       cycles/tile = max(T_mma, T_rest, T_issue, T_l2, T_chain / (k·c))

   i.e. the SM's pipes are the floor, and a dependent chain is hidden only as far as
   there are independent chains to interleave.
5. **L2 → SM traffic**: (BLOCK_B + BLOCK_N)·D·bytes per tile (both operands are
   re-read per tile; BLOCK_N·D·bytes when the kernel declares ``a_resident``), at 48 B/clk/SM on H100 (≈ 11.6 TB/s aggregate at 1.83 GHz; a
   128×128 fp16 tile needs 64 B/clk at peak, which is why such tiles top out near 75 %)
   and 47 B/clk/SM on A100 (5120 B/clk L2). HBM traffic of the fused kernel (reading
   the bank once per row block, writing B×S floats) is far below this and ignored.
6. **Waves**: programs = ceil(B / BLOCK_B) × splits (the launcher's split heuristic),
   ``k·SMs`` run at once; a partial last wave runs with fewer blocks per SM (less
   hiding). Each program walks ceil(N / splits / BLOCK_N) tiles (``column_tiles``). Launch
   overhead 5 µs per kernel, on both sides of a comparison.
   **Stream-K (persistent) schedule**, for a kernel that declares ``programs``: the work
   units are (row block r, column tile t), linearised u = r·T_r + t, U = ceil(B/BLOCK_B)·T_r
   (T_r = the tiles of one row block, e.g. ceil((N − end0)/BLOCK_N) for a kernel starting at
   segment 0's end); a 1-D grid of P = min(k·SMs, U) programs, program q taking units
   [floor(q·U/P), floor((q+1)·U/P)) — at most ceil(U/P) tiles, across row blocks. The module's
   function returns (P, ceil(U/P)) and the model runs it as above: P ≤ k·SMs, so at most one
   wave and no partial second one; every program is charged ceil(U/P) tiles (the longest
   program sets the time). Its cost beyond those tiles is taken as nothing: the partial
   segment statistics written where a program's range cuts a row block and merged by a kernel
   that runs anyway are a few hundred bytes per program (no merge launch, no flag fill; what
   the launcher does enqueue is counted by 6b). U = 0 (no tile): the launch alone.
6b. **The launcher's other work** (``launcher_work``): the Python launcher is run on CPU
   tensors at the full shape with its Triton kernels stubbed out, twice (the second call is
   counted: what it caches per layout is built once per bank); every Triton launch and
   every aten op that is not metadata/allocation (fills, the column → segment table,
   dtype copies) is recorded. Kernels without a SASS model (the split merge kernels) and
   each aten op cost one launch plus their bytes (outputs written + tensor inputs read)
   at 90 % of HBM bandwidth. An implementation's row = its modelled kernels + this.
7. **Autotuning** picks the fastest configuration: the prediction is the best
   configuration's (all are listed).
8. **torch.compile** of the grouped logsumexp: a cuBLAS GEMM at 70 % of the dense peak
   writing the fp16 B×N logits (time = max(compute, write at HBM bandwidth)), then one
   fused reduction reading them at 90 % of HBM bandwidth (3.35 TB/s H100 SXM, 4.8 TB/s
   H200, 2.04 TB/s A100 80 GB); two launches.
9. **Ideal** = 2·B·N·D / dense peak.

Counts are static SASS counts (no predication, no divergence): masked tail tiles cost as
much as full ones, which the model assumes for every tile.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GPU", "GPUS", "TileCounts", "classify", "find_loops", "tile_counts", "predict_tile", "predict_time",
           "torch_compile_time", "ideal_time", "main"]


# ----------------------------------------------------------------------------- hardware
@dataclass(frozen=True)
class GPU:
    name: str
    sms: int
    clock_hz: float
    mma_flop_clk: float                     # dense fp16/bf16 FLOP/clk/SM, warpgroup MMA (HGMMA) or HMMA on Ampere
    hmma_flop_clk: float                    # mma.sync (HMMA) FLOP/clk/SM
    rates: dict[str, float] = field(default_factory=dict)   # lanes/clk/SM per pipe
    l2_bytes_clk: float = 48.0              # L2 → SM bytes/clk/SM
    hbm_bytes_s: float = 3.35e12
    refill_clk: float = 600.0               # one L2 latency: a pipeline refill exposed per tile

    @property
    def peak_flops(self) -> float:
        return self.sms * self.mma_flop_clk * self.clock_hz


_RATES = {"fp32": 128, "int": 64, "mufu": 16, "conv": 16, "mio": 32}
GPUS: dict[str, GPU] = {
    "h100": GPU("H100 SXM", 132, 1.83e9, 4096, 4096 * 2 / 3, dict(_RATES), 48.0, 3.35e12),
    "h200": GPU("H200", 132, 1.83e9, 4096, 4096 * 2 / 3, dict(_RATES), 48.0, 4.8e12),
    "a100": GPU("A100 SXM", 108, 1.41e9, 2048, 2048, dict(_RATES), 47.0, 2.04e12),
}


# ------------------------------------------------------------------------------- SASS
_FP32 = {"FADD", "FMUL", "FFMA", "FMNMX", "FSETP", "FSEL", "FSET", "FSWZADD", "FCHK", "HADD2", "HMUL2", "HFMA2",
         "FMNMX3", "FADD2", "FMUL2", "FFMA2"}
_INT = {"IMAD", "IADD3", "IADD", "LOP3", "ISETP", "SHF", "SEL", "LEA", "IMNMX", "VIMNMX", "PRMT", "MOV", "IABS",
        "PLOP3", "P2R", "R2P", "FLO", "POPC", "BREV", "ICMP", "SGXT", "BMSK", "LOP", "IMUL", "VIADD", "IDP", "CS2R",
        "S2R", "VOTE", "IMNMX3"}
_CONV = {"F2F", "I2F", "F2I", "F2FP", "I2FP", "FRND"}
_MIO = {"LDS", "STS", "LDG", "STG", "LDGSTS", "LDSM", "STSM", "SHFL", "ATOM", "ATOMS", "RED", "LD", "ST", "LDL",
        "STL", "UBLKCP", "UTMALDG", "UTMASTG", "SYNCS", "LDC", "MATCH", "REDUX"}
_CONTROL = {"BRA", "BSYNC", "BSSY", "WARPSYNC", "NOP", "EXIT", "RET", "CALL", "BAR", "DEPBAR", "WARPGROUP", "YIELD",
            "JMP", "BPT", "MEMBAR", "ERRBAR", "CCTL", "FENCE", "ELECT", "ACQBULK", "ENDCOLLECTIVE"}


def classify(opcode: str) -> str:
    """The pipe of a SASS opcode: mma | mufu | fp32 | int | conv | mio | uniform | control."""
    if opcode in ("HGMMA", "HMMA", "IMMA", "BMMA", "DMMA", "QGMMA", "IGMMA"):
        return "mma"
    if opcode == "MUFU":
        return "mufu"
    if opcode in _FP32:
        return "fp32"
    if opcode in _CONV:
        return "conv"
    if opcode in _MIO:
        return "mio"
    if opcode in _INT:
        return "int"
    if opcode.startswith("U") or opcode.startswith("R2UR") or opcode in ("S2UR", "R2UR"):
        return "uniform"
    if opcode in _CONTROL or opcode.startswith("WARPGROUP"):
        return "control"
    return "int"  # unknown ALU-like opcodes: counted on the slowest common ALU pipe


_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Za-z0-9_]+)*)\s*([^;]*);")


def instructions(sass: str) -> list[tuple[int, str, str, str]]:
    """``(address, opcode, modifiers, operands)`` of a cuobjdump ``-sass`` listing (one kernel)."""
    return [(int(a, 16), op, mods, ops.strip()) for a, _, op, mods, ops in _LINE.findall(sass)]


def mma_flop(opcode: str, mods: str) -> float:
    """FLOPs of one MMA instruction: HGMMA.64x128x16 → 2·64·128·16 (per warpgroup), HMMA.16816 → 2·16·8·16 (per warp)."""
    if opcode in ("HGMMA", "QGMMA", "IGMMA"):
        m = re.search(r"\.(\d+)x(\d+)x(\d+)", mods)
        if m:
            a, b, c = map(int, m.groups())
            return 2.0 * a * b * c
    if opcode == "HMMA":
        m = re.search(r"\.(\d)(\d)(\d+)", mods)  # .16816 / .1688 : M=16, N=8, K=16|8
        if m:
            k = int(m.group(3)[-2:]) if len(m.group(3)) > 1 else int(m.group(3))
            return 2.0 * 16 * 8 * (16 if mods.startswith(".16816") else k)
    return 0.0


@dataclass
class Loop:
    start: int
    end: int                                # address of the back-edge branch
    children: list["Loop"] = field(default_factory=list)


def guarded_addresses(sass: str) -> set[int]:
    """Addresses of predicated instructions (``@P0 BRA``, ``@!P1 EXIT``): they may fall through."""
    return {int(a, 16) for a, pred, _, _, _ in _LINE.findall(sass) if pred}


def _branch_target(op: str, ops: str) -> int | None:
    if op != "BRA":
        return None
    m = re.search(r"0x([0-9a-f]+)", ops)
    return int(m.group(1), 16) if m else None


def _reachable(instrs, succ, start: int, avoid: int | None) -> set[int]:
    seen, todo = set(), [start]
    while todo:
        a = todo.pop()
        if a in seen or a == avoid:
            continue
        seen.add(a)
        todo.extend(succ.get(a, ()))
    return seen


def find_loops(instrs: list[tuple[int, str, str, str]], guarded: set[int] | None = None) -> list[Loop]:
    """Natural loops from backward branches (``BRA target`` with target < its address), nested by interval.

    A backward branch is a loop's back edge only if its target dominates it (every path from
    the kernel's entry to the branch passes through the target). ptxas places cold code after
    the kernel's main body — a warp-divergence handler (``BRA.DIV``), an mbarrier retry — that
    jumps back into the middle of a loop: such a branch closes no loop, and taking it for one
    would make a span that overlaps the real tile loop and hides its K loop. ``guarded`` = the
    predicated instructions' addresses (``guarded_addresses``); None treats every BRA/EXIT as
    possibly falling through (more paths: never invents a loop).
    """
    order = [i[0] for i in instrs]
    succ: dict[int, list[int]] = {}
    for k, (addr, op, mods, ops) in enumerate(instrs):
        nxt = order[k + 1] if k + 1 < len(order) else None
        tgt = _branch_target(op, ops)
        may_fall = guarded is None or addr in guarded or op not in ("BRA", "EXIT", "RET", "JMP")
        if op == "BRA" and "," in ops:  # BRA.DIV UR8, tgt / BRA.U !UP0, tgt: a condition operand
            may_fall = True
        succ[addr] = ([tgt] if tgt is not None else []) + ([nxt] if (may_fall and nxt is not None) else [])
    entry = order[0] if order else 0
    live = _reachable(instrs, succ, entry, None)
    spans = []
    for addr, op, _, ops in instrs:
        tgt = _branch_target(op, ops)
        # Self-loops are spin waits (and the trap after EXIT): not tile loops.
        if tgt is None or tgt >= addr or addr not in live:
            continue
        if addr not in _reachable(instrs, succ, entry, tgt):
            spans.append((tgt, addr))
    spans = sorted(set(spans), key=lambda s: (s[0], -s[1]))
    roots: list[Loop] = []
    stack: list[Loop] = []
    for lo, hi in spans:
        node = Loop(lo, hi)
        while stack and not (stack[-1].start <= lo and hi <= stack[-1].end):
            stack.pop()
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)
    return roots


@dataclass
class TileCounts:
    """Per-warp instruction counts of one tile, by pipe, and the tile's MMA FLOPs per block."""

    per_warp: dict[str, float]
    mma_flop_per_warp: float                # Σ FLOP of the MMA instructions one warp issues
    k_trips: float
    seg_trips: float
    mma_shapes: dict[str, int]


def _own(loop: Loop, instrs) -> list:
    inside = [i for i in instrs if loop.start <= i[0] <= loop.end]
    return [i for i in inside if not any(c.start <= i[0] <= c.end for c in loop.children)]


def _has_mma(loop: Loop, instrs) -> bool:
    return any(classify(op) == "mma" for a, op, _, _ in instrs if loop.start <= a <= loop.end)


def _loop_counts(loop: Loop, instrs) -> tuple[Counter, float, Counter]:
    c, f, shapes = Counter(), 0.0, Counter()
    for _, op, mods, _ in _own(loop, instrs):
        c[classify(op)] += 1
        c["all"] += 1
        if classify(op) == "mma":
            f += mma_flop(op, mods)
            shapes[op + mods.split(".F32")[0]] += 1
    return c, f, shapes


def tile_loop(sass: str) -> tuple[list, Loop]:
    """The instructions and the tile loop: the outermost loop that contains MMA instructions
    (or, for kernels without MMA, the outermost loop)."""
    instrs = instructions(sass)
    roots = find_loops(instrs, guarded_addresses(sass))
    if not roots:
        raise ValueError("no loop in the SASS: nothing to model per tile")
    with_mma = [r for r in roots if _has_mma(r, instrs)]
    return instrs, (with_mma or roots)[0]


def tile_counts(sass: str, *, flop_per_tile: float | None, warps: int, warps_per_mma: int,
                seg_trips: float = 1.0) -> TileCounts:
    """Per-warp counts of one tile (see the module docstring, point 3).

    ``flop_per_tile`` = 2·BLOCK_B·BLOCK_N·D fixes the K-loop trip count; None counts each
    nested loop once (hand-made toy kernels). ``warps_per_mma`` = 4 for HGMMA (a warpgroup
    instruction), 1 for HMMA.
    """
    instrs, tl_ = tile_loop(sass)
    total, f_own, shapes = _loop_counts(tl_, instrs)
    k_trips = 1.0
    for child in tl_.children:
        c, f, sh = _loop_counts(child, instrs)
        for g in child.children:  # deeper loops are counted once per child iteration
            cg, fg, shg = _loop_counts(g, instrs)
            c += cg
            f += fg
            sh += shg
        if _has_mma(child, instrs):
            trips = 1.0
            if flop_per_tile is not None and f > 0:
                # Σ over the block's issuing groups of the tile's FLOPs must equal 2·BB·BN·D.
                groups = warps / warps_per_mma
                trips = max(0.0, (flop_per_tile / groups - f_own) / f)
            k_trips = trips
        else:
            trips = seg_trips
        for k, v in c.items():
            total[k] += v * trips
        f_own += f * trips
        for k, v in sh.items():
            shapes[k] += v * trips
    return TileCounts(per_warp=dict(total), mma_flop_per_warp=f_own, k_trips=k_trips, seg_trips=seg_trips,
                      mma_shapes=dict(shapes))


# ------------------------------------------------------------------------------ model
@dataclass
class TilePrediction:
    pipes: dict[str, float]                 # SM cycles per tile per pipe (one block's tile)
    chain: float                            # the dependent chain of one tile (refill + MMA + rest)
    cycles: float                           # SM cycles per tile at the given residency
    bound: str


def predict_tile(tc: TileCounts, gpu: GPU, *, warps: int, warps_per_mma: int, mma_kind: str,
                 l2_bytes: float, blocks_per_sm: int, chains: int, refill: bool) -> TilePrediction:
    """Cycles per tile on one SM (module docstring, point 4)."""
    rate_mma = gpu.mma_flop_clk if mma_kind == "wgmma" else gpu.hmma_flop_clk
    groups = warps / warps_per_mma
    pipes = {"mma": tc.mma_flop_per_warp * groups / rate_mma}
    for p in ("mufu", "fp32", "int", "conv", "mio"):
        pipes[p] = tc.per_warp.get(p, 0.0) * warps * 32 / gpu.rates[p]
    pipes["issue"] = tc.per_warp.get("all", 0.0) * warps / 4
    pipes["l2"] = l2_bytes / gpu.l2_bytes_clk
    # The non-tensor work of one chain is bounded by its busiest pipe and by issue slots.
    rest = max(max(pipes[p] for p in ("mufu", "fp32", "int", "conv", "mio")), pipes["issue"])
    chain = (gpu.refill_clk if refill else 0.0) + pipes["mma"] + rest
    par = max(1, blocks_per_sm) * max(1, chains)
    cands = {**{k: v for k, v in pipes.items()}, "chain": chain / par}
    bound = max(cands, key=lambda k: cands[k])
    return TilePrediction(pipes=pipes, chain=chain, cycles=cands[bound], bound=bound)


def predict_time(tile_cycles_at: Any, gpu: GPU, *, programs: int, tiles_per_program: int, blocks_per_sm: int,
                 launch_s: float = 5e-6) -> float:
    """Seconds for ``programs`` programs of ``tiles_per_program`` tiles (point 6).

    ``tile_cycles_at(k)`` = SM cycles per tile with k blocks resident. A full wave of
    k·SMs programs takes tiles · k · cycles(k) (k blocks share the SM); a partial last wave
    runs with ceil(rest / SMs) blocks per SM.
    """
    k = max(1, blocks_per_sm)
    per_wave = k * gpu.sms
    full, rest = divmod(programs, per_wave)
    cyc = full * tiles_per_program * k * tile_cycles_at(k)
    if rest:
        kr = math.ceil(rest / gpu.sms)
        cyc += tiles_per_program * kr * tile_cycles_at(kr)
    return cyc / gpu.clock_hz + launch_s


def ideal_time(gpu: GPU, B: int, N: int, D: int) -> float:
    return 2.0 * B * N * D / gpu.peak_flops


LAUNCH_S = 5e-6  # per kernel launch, on both sides of every comparison (point 6)


def torch_compile_time(gpu: GPU, B: int, N: int, D: int, *, gemm_eff: float = 0.70, bw_eff: float = 0.90,
                       launch_s: float = LAUNCH_S) -> float:
    """cuBLAS GEMM at ``gemm_eff`` of peak writing fp16 logits, then one fused reduction reading them
    (point 8): two launches, counted like the fused path's."""
    logits = 2.0 * B * N
    gemm = max(2.0 * B * N * D / (gemm_eff * gpu.peak_flops), logits / gpu.hbm_bytes_s)
    return gemm + logits / (bw_eff * gpu.hbm_bytes_s) + 2 * launch_s


# ------------------------------------------------------------- the launcher's other work
# The Python launcher of each modelled implementation (module → function). Its Triton kernels
# are modelled from their SASS; what else it enqueues (fills, the column → segment table,
# merge kernels) is counted by running it (launcher_work) and costed at HBM bandwidth.
LAUNCHERS = {
    "fastood.ops._triton_segment_lse": "segment_lse_triton",
    "fastood.ops._triton_segment_lse_sm90": "segment_lse_triton_sm90",
}
# aten ops that launch no kernel (metadata, allocation without initialisation).
_NO_KERNEL = {"empty", "empty_strided", "empty_like", "view", "_unsafe_view", "as_strided", "detach", "t", "transpose",
              "select", "slice", "expand", "alias", "lift_fresh", "permute", "unsqueeze", "squeeze", "reshape",
              "_reshape_alias", "unbind", "split", "narrow", "is_same_size", "sym_size", "sym_stride", "sym_numel",
              "_local_scalar_dense", "item"}


@dataclass
class LauncherWork:
    """What one call of a launcher enqueues: Triton kernels by name (grid, tensor bytes touched)
    and the other device operations (aten op names, bytes written and read)."""
    triton: list[tuple[str, tuple, int]] = field(default_factory=list)
    other: list[tuple[str, int]] = field(default_factory=list)

    def seconds(self, gpu: GPU, modelled: set[str], *, launch_s: float = LAUNCH_S, bw_eff: float = 0.90) -> float:
        """Time of everything but the ``modelled`` Triton kernels (their time comes from the SASS):
        one launch each, plus their bytes at ``bw_eff`` of HBM bandwidth."""
        extra = [b for name, _, b in self.triton if name not in modelled] + [b for _, b in self.other]
        return sum(launch_s + b / (bw_eff * gpu.hbm_bytes_s) for b in extra)


def launcher_work(module: str, B: int, N: int, D: int, G: int, *, blocks: tuple[int, int, int],
                  splits: int | None = None, sms: int = 132, want_argmax: bool = False) -> LauncherWork:
    """Run ``module``'s launcher on CPU tensors at the full shape with every Triton kernel stubbed
    out (its launch is recorded, nothing runs) — twice, counting the second call (the steady
    state: per-layout tables a launcher caches are built once per bank) — and count the other
    device operations it enqueues (a ``TorchDispatchMode``: every aten op but metadata /
    allocation ones is one kernel on a GPU; its bytes = outputs written + tensor inputs read).
    ``blocks`` are the GPU's tiles; the launcher runs as on a GPU of ``sms`` SMs (its
    interpreter check and SM count patched), so it picks its own splits unless ``splits``
    forces them."""
    import importlib
    import os

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from triton.runtime.jit import KernelInterface

    work = LauncherWork()

    def nbytes(t) -> int:
        return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__.rstrip("_")
            outs = out if isinstance(out, (tuple, list)) else [out]
            if name not in _NO_KERNEL and any(nbytes(o) for o in outs):  # a 0-element result launches nothing
                flat = list(args) + list((kwargs or {}).values())
                read = sum(nbytes(a) for a in flat if isinstance(a, torch.Tensor) and not name.startswith(("fill", "zero")))
                work.other.append((name, sum(nbytes(o) for o in outs) + read))
            return out

    def stub(self, grid):
        name = getattr(self, "__name__", None) or getattr(getattr(self, "fn", None), "__name__", "kernel")

        def launch(*args, **kwargs):
            touched = sum(nbytes(a) for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor))
            g = grid
            if callable(g):  # a grid function of the launch's arguments (Triton passes them by name)
                names = getattr(self, "arg_names", None) or getattr(getattr(self, "fn", None), "arg_names", [])
                g = g({**dict(zip(names, args)), **kwargs})
            # Recorded as given: 1-D (persistent grids), 2-D or 3-D.
            work.triton.append((name, tuple(g) if isinstance(g, (tuple, list)) else (g,), touched))
        return launch

    mod = importlib.import_module(module)
    fn = getattr(mod, LAUNCHERS[module])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, D, generator=gen).half()
    bank = torch.randn(N, D, generator=gen).half()
    k = segment0_end(N, G)
    offs = [0, k] + [k + (N - k) * (i + 1) // G for i in range(G)] if G > 1 else [0, k, N]
    offsets = torch.tensor(offs, dtype=torch.int64)
    scale = torch.full((B,), 100.0)
    old_env, old_getitem = os.environ.get("TRITON_INTERPRET"), KernelInterface.__getitem__
    os.environ["TRITON_INTERPRET"] = "1"   # CPU tensors are accepted; nothing is compiled or run
    KernelInterface.__getitem__ = stub
    # Decide as on the GPU: not interpreting (tiles, splits, TMA), ``sms`` SMs.
    portable = importlib.import_module("fastood.ops._triton_segment_lse")
    patched = [(m, name, getattr(m, name)) for m in {mod, portable} for name in ("_interpreting", "_sm_count")
               if hasattr(m, name)]
    for m, name, _ in patched:
        setattr(m, name, (lambda x: False) if name == "_interpreting" else (lambda index: sms))
    try:
        # Steady state: a detector scores batch after batch against one bank, so what a launcher
        # builds once per layout (and caches) is not charged; the second call is the one counted.
        fn(x, bank, offsets, scale, want_argmax, num_splits=splits, blocks=blocks)
        work.triton.clear()
        with Count():
            fn(x, bank, offsets, scale, want_argmax, num_splits=splits, blocks=blocks)
    finally:
        for m, name, orig in patched:
            setattr(m, name, orig)
        KernelInterface.__getitem__ = old_getitem
        if old_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old_env
    return work


# ------------------------------------------------------------------ kernels and shapes
def _descriptor(module: str, kernel: str) -> dict:
    """The warp organisation a kernel module declares (``SOL_KERNELS``); default: serial, refill."""
    import importlib

    mod = importlib.import_module(module)
    return dict(getattr(mod, "SOL_KERNELS", {}).get(kernel, {"chains": 1, "refill": True}))


def _segments(groups: int) -> int:
    return 1 + groups  # ID segment + G negative groups (NegLabel)


def _splits(B: int, N: int, block_b: int, gpu: GPU, module: str | None = None, S: int = 1,
            block_n: int = 128, blocks_per_sm: int = 2) -> int:
    """The launcher's split heuristic: the module's own ``sol_splits(B, N, S, sms, block_b,
    block_n, blocks_per_sm)`` where it defines one (the rule its launcher runs), else the
    portable launcher's (fastood.ops._triton_segment_lse._choose_splits: 64-row blocks; a
    kernel whose launcher counts other row blocks declares ``split_rows``)."""
    if module is not None:
        import importlib

        rule = getattr(importlib.import_module(module), "sol_splits", None)
        if rule is not None:
            return int(rule(B, N, S, gpu.sms, block_b, block_n, blocks_per_sm))
    b_blocks = math.ceil(B / block_b)
    target = 2 * gpu.sms
    if b_blocks >= target:
        return 1
    return max(1, min(math.ceil(target / b_blocks), math.ceil(N / 128)))


@dataclass
class ConfigModel:
    name: str
    module: str
    kernel: str
    constexprs: dict
    warps: int
    blocks_per_sm: int
    registers: int
    mma: str
    sass: str
    desc: dict
    fn_name: str = ""                       # the Triton function's name (what launcher_work records)


def segment0_end(N: int, G: int) -> int:
    """Columns of segment 0 in the benchmark's NegLabel layout (``_measure``): 1,000 ID labels plus
    the remainder that makes the G negative groups equal."""
    return N - (N - 1000) // G * G if G > 1 else 1000


def column_tiles(columns: str, N: int, S: int, bn: int, splits: int) -> int:
    """Column tiles one program walks, by the column range the kernel declares (``columns``):
    ``all`` (every column, split into ``splits`` chunks: ceil(ceil(N/splits)/bn)), ``segment0``
    (the ceil(end0/bn) tiles of columns [0, end0), strided over the splits),
    ``after_segment0`` (from column end0 itself — the kernel's first tile starts there, not at
    the tile holding end0 — to N: ceil(ceil((N − end0)/splits)/bn)), ``flagged`` (only row
    blocks flagged by another kernel: none in the model, the launch alone). end0 = segment 0's
    end in the benchmark's layout (``segment0_end(N, S − 1)``)."""
    end0 = segment0_end(N, S - 1)
    if columns == "all":
        return math.ceil(math.ceil(N / splits) / bn)
    if columns == "segment0":  # its tiles of [0, end0), strided over the splits
        return math.ceil(math.ceil(end0 / bn) / splits)
    if columns == "after_segment0":
        return math.ceil(math.ceil((N - end0) / splits) / bn)
    if columns == "flagged":
        return 0
    raise ValueError(f"columns must be all | segment0 | after_segment0 | flagged, got {columns!r}")


def model_config(cm: ConfigModel, gpu: GPU, B: int, N: int, D: int, S: int, *, elem_bytes: int = 2) -> dict:
    """Predicted time of one configuration at one shape."""
    bb = cm.desc.get("tile_rows", cm.constexprs.get("BLOCK_B", cm.constexprs.get("BLOCK_M", 128)))
    bn = cm.desc.get("tile_cols", cm.constexprs.get("BLOCK_N", 128))
    wpm = 4 if cm.mma == "wgmma" else 1
    seg = 1.0 + bn * max(0, S - 1) / N
    # MMA work a tile does besides its GEMM (e.g. a one-hot segment-sum MMA), declared by the kernel:
    # without it the K-loop trip count would absorb it (the loop would seem to run fewer times).
    extra = float(cm.desc.get("extra_mma_flops", 0.0))
    tc = tile_counts(cm.sass, flop_per_tile=2.0 * bb * bn * D + extra, warps=cm.warps, warps_per_mma=wpm,
                     seg_trips=seg)
    # Operand A (the row block) is re-read per tile unless the kernel keeps it in shared memory.
    l2 = ((0 if cm.desc.get("a_resident") else bb) + bn) * D * elem_bytes

    def at(k: int) -> float:
        return predict_tile(tc, gpu, warps=cm.warps, warps_per_mma=wpm, mma_kind=cm.mma, l2_bytes=l2,
                            blocks_per_sm=k, chains=cm.desc.get("chains", 1), refill=cm.desc.get("refill", True)).cycles

    if cm.desc.get("programs"):
        # A persistent (stream-K) grid: the module's own rule gives (programs, tiles per program),
        # at most one wave of ceil(U/P) tiles each (point 6).
        splits = 1
        programs, tiles = stream_k_programs(cm, gpu, B, N, S)
    else:
        split_rows = cm.desc.get("split_rows", 64)
        # A segment-0 kernel whose launcher sizes its splits on segment 0's columns declares ``split_on_end0``.
        n_split = segment0_end(N, S - 1) if cm.desc.get("split_on_end0") else N
        splits = cm.desc.get("splits", None) or (_splits(B, n_split, split_rows, gpu, cm.module, S, bn,
                                                         cm.blocks_per_sm) if "split" in cm.name else 1)
        programs = math.ceil(B / bb) * splits
        tiles = column_tiles(cm.desc.get("columns", "all"), N, S, bn, splits)
        if cm.desc.get("columns") == "segment0":
            # Strided tiles of [0, end0): only the splits that get a tile work (the others exit).
            programs = math.ceil(B / bb) * min(splits, math.ceil(segment0_end(N, S - 1) / bn))
    # No work unit (U = 0): 0 programs of 0 tiles cost the launch alone (the launcher still
    # launches one program, which exits).
    t = predict_time(at, gpu, programs=programs, tiles_per_program=tiles, blocks_per_sm=cm.blocks_per_sm)
    tp = predict_tile(tc, gpu, warps=cm.warps, warps_per_mma=wpm, mma_kind=cm.mma, l2_bytes=l2,
                      blocks_per_sm=cm.blocks_per_sm, chains=cm.desc.get("chains", 1),
                      refill=cm.desc.get("refill", True))
    return dict(config=cm.name, B=B, N=N, D=D, S=S, time_s=t, pct_peak=100 * ideal_time(gpu, B, N, D) / t,
                cycles_tile=tp.cycles, bound=tp.bound, pipes=tp.pipes, chain=tp.chain, k_trips=tc.k_trips,
                seg_trips=seg, blocks_per_sm=cm.blocks_per_sm, registers=cm.registers, splits=splits,
                programs=programs, tiles_per_program=tiles, mma_shapes=tc.mma_shapes)


def stream_k_programs(cm: ConfigModel, gpu: GPU, B: int, N: int, S: int) -> tuple[int, int]:
    """``(programs, tiles_per_program)`` of a kernel with a persistent (stream-K) grid: the module
    function its ``SOL_KERNELS`` entry names under ``programs`` (the rule its launcher runs),
    called as ``f(B, N, S, end0, sms, BLOCK_B, BLOCK_N, blocks_per_sm)`` with end0 = segment 0's
    end in the benchmark's layout and the configuration's own tiles. For the Hopper hot kernel
    that is T_r = ceil((N − end0)/BLOCK_N), U = ceil(B/BLOCK_B)·T_r, P = min(blocks_per_sm·sms, U),
    tiles = ceil(U/P) ((0, 0) when U = 0)."""
    import importlib

    name = cm.desc["programs"]
    rule = getattr(importlib.import_module(cm.module), name, None) if isinstance(name, str) else None
    if not callable(rule):
        raise ValueError(f"SOL_KERNELS[{cm.kernel!r}]['programs'] must name a function of {cm.module}, got {name!r}")
    bb = int(cm.constexprs.get("BLOCK_B", cm.desc.get("tile_rows", 128)))
    bn = int(cm.constexprs.get("BLOCK_N", cm.desc.get("tile_cols", 128)))
    programs, tiles = rule(B, N, S, segment0_end(N, S - 1), gpu.sms, bb, bn, cm.blocks_per_sm)
    programs, tiles = int(programs), int(tiles)
    if programs < 0 or tiles < 0 or (programs == 0) != (tiles == 0):
        raise ValueError(f"{cm.module}.{name} must return (programs, tiles) >= 0, both 0 or neither, "
                         f"got {(programs, tiles)}")
    return programs, tiles


def compiled_configs(arch: int = 90, dtype: str = "float16", select=None) -> list[ConfigModel]:
    """Compile the scoring kernels' fwd configs (with SASS) and wrap them for the model."""
    from fastood.ops import _aot

    # The forward scoring kernels only (the fused backward, _bwd, is not what `bench scores` times).
    mods = [m for m in _aot.KERNEL_MODULES if "segment_lse" in m and not m.endswith("_bwd")]
    keep = select or (lambda m, s: s.main_loop and "argmax" not in s.name)
    reps = _aot.compile_specs(arch, [dtype], full=True, modules=mods, select=keep, want_sass=True)
    specs = {(m, s.name): s for m in mods for mm, s in _aot._collect_names(arch, dtype, True, [m])}
    out = []
    for r in reps:
        if r.error or not r.sass:
            continue
        spec = specs[(r.module, r.name)]
        kernel = r.name.split("[")[0]
        out.append(ConfigModel(r.name, r.module, kernel, dict(spec.constexprs), r.num_warps, r.blocks_per_sm,
                               r.registers, r.mma, r.sass, _descriptor(r.module, kernel),
                               getattr(spec.fn, "__name__", "")))
    return out


SHAPES = [(b, 11400, d, g) for d in (512, 768) for g in (100, 1) for b in (256, 4096, 65536)]
HEADLINE = (65536, 11400, 512, 100)


def _measure(B: int, N: int, D: int, G: int) -> dict[str, float]:  # pragma: no cover - GPU only
    """Measured seconds on the current GPU: the Triton segment_lse and the torch.compile path."""
    import torch

    from bench.common import median_time
    from fastood.ops._triton_segment_lse import segment_lse_triton

    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(B, D, generator=gen), dim=1).cuda().half()
    bank = torch.nn.functional.normalize(torch.randn(N, D, generator=gen), dim=1).cuda().half()
    k = N - (N - 1000) // G * G if G > 1 else 1000
    offs = [0, k] + [k + (N - k) * (i + 1) // G for i in range(G)]
    off = torch.tensor(offs, dtype=torch.int64, device="cuda")
    scale = torch.full((B,), 100.0, device="cuda")
    # Each implementation through its own launcher (the portable kernel with the sm90 route off).
    out = {"fastood.ops._triton_segment_lse": median_time(
        lambda: segment_lse_triton(x, bank, off, scale, False, blocks=(128, 64, 64)), "cuda")}
    from fastood.ops import _triton_segment_lse_sm90 as sm90

    if sm90.sm90_supported(x):
        out["fastood.ops._triton_segment_lse_sm90"] = median_time(
            lambda: sm90.segment_lse_triton_sm90(x, bank, off, scale, False), "cuda")

    def grouped(x, bank):
        logits = (x @ bank.T).float() * 100.0
        return [torch.logsumexp(logits[:, a:b], dim=1) for a, b in zip(offs[:-1], offs[1:])]

    try:
        f = torch.compile(grouped)
        out["torch.compile"] = median_time(lambda: f(x, bank), "cuda")
    except Exception as e:  # noqa: BLE001
        print(f"torch.compile path failed: {e}")
    return out


def implementation_time(gpu: GPU, module: str, parts: list[dict], configs: list[ConfigModel], B: int, N: int,
                        D: int, G: int) -> tuple[float, float, str]:
    """``(seconds, of which launcher overhead, a short list of it)`` of one implementation: its
    modelled kernels (``parts``: model_config results) plus ``launcher_work`` at the GPU's tiles."""
    by_name = {c.name: c for c in configs}
    cms = [by_name[p["config"]] for p in parts]
    t = sum(p["time_s"] for p in parts)
    if module not in LAUNCHERS:
        return t, 0.0, "not counted"
    main_i = next((i for i, c in enumerate(cms) if c.desc.get("columns", "all") in ("all", "after_segment0")), 0)
    hot = cms[main_i]
    blocks = tuple(int(hot.constexprs[k]) for k in ("BLOCK_B", "BLOCK_N", "BLOCK_D"))
    work = launcher_work(module, B, N, D, G, blocks=blocks, sms=gpu.sms)
    extra = work.seconds(gpu, {c.fn_name for c in cms})
    modelled = {c.fn_name for c in cms}
    names = [n for n, _, _ in work.triton if n not in modelled] + [n for n, _ in work.other]
    return t + extra, extra, f"{len(names)} launches" + (f": {', '.join(names)}" if names else "")


def main(args) -> None:
    import datetime as _dt

    import triton

    from bench.common import RESULTS_DIR, git_commit

    gpu = GPUS["h100"]
    measure = getattr(args, "device", "cpu") == "cuda"
    if measure:  # pragma: no cover - GPU only
        import torch

        name = torch.cuda.get_device_name()
        gpu = GPUS["h200"] if "H200" in name else GPUS["a100"] if "A100" in name else GPUS["h100"]
    arch = 80 if gpu.name.startswith("A100") else 90
    shapes = [HEADLINE] if getattr(args, "quick", False) else SHAPES
    configs = compiled_configs(arch)
    lines = [f"# Speed-of-light model: segment_lse (fp16) on {gpu.name}", "",
             f"commit {git_commit()}, {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}, "
             f"Triton {triton.__version__}, SASS compiled for sm_{arch} without a GPU (bench/sol.py; assumptions "
             f"in its docstring). Predictions, not measurements{' — measured column from this GPU' if measure else ''}.",
             "", "| B | N | D | G | ideal ms | best config | bound | cycles/tile | predicted ms | % peak | "
             "torch.compile ms (pred.) | torch.compile / kernel | measured ms | measured torch.compile ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    kernels = sorted({c.kernel for c in configs})
    ms = lambda v: f"{v * 1e3:.3f}" if v else "—"  # noqa: E731
    for B, N, D, G in shapes:
        S = _segments(G)
        tc = torch_compile_time(gpu, B, N, D)
        meas = _measure(B, N, D, G) if measure else {}
        impl: dict[str, list] = {}
        for kernel in kernels:  # one row per kernel: the autotuner's pick = the fastest predicted config
            preds = []
            for c in configs:
                # A kernel without split variants (e.g. a segment-0 pass) runs unsplit at every B.
                has_split = any("split" in o.name for o in configs if o.kernel == kernel)
                rows = c.desc.get("split_rows", 64)
                bn_c = c.desc.get("tile_cols", c.constexprs.get("BLOCK_N", 128))
                # A persistent (stream-K) kernel has no split variants to choose between.
                if c.kernel != kernel or not (c.desc.get("programs")
                                              or ("split" in c.name) == (_splits(B, N, rows, gpu, c.module, S, bn_c,
                                                                                 c.blocks_per_sm) > 1)
                                              or c.desc.get("splits") or not has_split):
                    continue
                try:
                    preds.append(model_config(c, gpu, B, N, D, S))
                except ValueError as e:  # e.g. no loop found in the SASS
                    print(f"  {c.name}: not modelled ({e})")
            if not preds:
                continue
            best = min(preds, key=lambda p: p["time_s"])
            module = next(c.module for c in configs if c.name == best["config"])
            cols = next(c.desc.get("columns", "all") for c in configs if c.name == best["config"])
            impl.setdefault(module, []).append(best)
            pct, ratio = f"{best['pct_peak']:.0f}", f"{tc / best['time_s']:.2f}"
            if cols != "all":  # a part of an implementation, not a whole one: no ratio to the whole problem
                best = dict(best, config=f"{best['config']} (part: {cols} columns)")
                pct = ratio = "— (part)"
            lines.append(f"| {B} | {N} | {D} | {G} | {ms(ideal_time(gpu, B, N, D))} | {best['config']} | "
                         f"{best['bound']} | {best['cycles_tile']:.0f} | {ms(best['time_s'])} | {pct} | "
                         f"{ms(tc)} | {ratio} | — | — |")
            print(lines[-1], flush=True)
        for module, parts in impl.items():
            # One launch per kernel, in sequence: the implementation's time is the sum of its kernels'
            # plus what else its launcher enqueues (fills, tables, merge kernels: launcher_work).
            t, extra, what = implementation_time(gpu, module, parts, configs, B, N, D, G)
            lines.append(f"| {B} | {N} | {D} | {G} | {ms(ideal_time(gpu, B, N, D))} | **{module.split('.')[-1]}: "
                         f"{len(parts)} modelled kernel{'s' if len(parts) > 1 else ''} + launcher ({what}: "
                         f"{extra * 1e6:.0f} µs)** | sum | — | {ms(t)} | {100 * ideal_time(gpu, B, N, D) / t:.0f} | "
                         f"{ms(tc)} | {tc / t:.2f} | {ms(meas.get(module))} | {ms(meas.get('torch.compile'))} |")
            print(lines[-1], flush=True)
    B, N, D, G = HEADLINE
    lines += ["", f"Per configuration at the headline shape B={B}, N={N}, D={D}, G={G} (SM cycles per tile by pipe):",
              "", "| config | regs | blocks/SM | K trips | MMA | MUFU | FP32 | INT | MIO | issue | L2 | chain | "
                  "cycles/tile | bound | predicted ms | % peak |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in configs:
        try:
            p = model_config(c, gpu, B, N, D, _segments(G))
        except ValueError as e:
            lines.append(f"| {c.name} | {c.registers} | {c.blocks_per_sm} | not modelled: {e} |" + " |" * 12)
            continue
        q = p["pipes"]
        pct = f"{p['pct_peak']:.0f}" if c.desc.get("columns", "all") == "all" else "— (part)"
        lines.append(f"| {c.name} | {c.registers} | {c.blocks_per_sm} | {p['k_trips']:.1f} | {q['mma']:.0f} | "
                     f"{q['mufu']:.0f} | {q['fp32']:.0f} | {q['int']:.0f} | {q['mio']:.0f} | {q['issue']:.0f} | "
                     f"{q['l2']:.0f} | {p['chain']:.0f} | {p['cycles_tile']:.0f} | {p['bound']} | "
                     f"{p['time_s'] * 1e3:.3f} | {pct} |")
    if arch == 90:  # the Hopper CMA kernels at the shapes of `bench cma` (fastood/ops/_triton_cma_sm90.py)
        from fastood.ops._triton_cma_sm90 import sol_lines
        lines += sol_lines("h200" if gpu.name == "H200" else "h100")
    text = "\n".join(lines) + "\n"
    print(text)
    slug = "h100" if gpu.name.startswith("H100") else gpu.name.split()[0].lower()
    path = RESULTS_DIR / f"sol-{slug}{'-measured' if measure else ''}.md"
    path.write_text(text)
    print(f"wrote {path}")
