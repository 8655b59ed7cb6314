"""Static (compile-time) tables of every Triton kernel configuration: ``python -m bench static``.

Compiles every configuration the dispatcher can launch (``aot_specs`` of the kernel
modules, ``fastood.ops._aot``) for sm_90 and sm_80, fp16 / bf16 / fp32, without a GPU,
and writes ``bench/results/static-sm90.md`` and ``static-sm80.md``: registers, spill
bytes (stores + loads per thread), shared memory per block, resident blocks per SM,
occupancy and its limiter, the tensor-core path found in the SASS, and whether the
configuration passes the CI rules of ``tests/test_static_compile.py`` (fp32 is IEEE FMA
and exempt from the zero-spill rule, which holds for fp16/bf16). ``--quick``: fp16 only.
These are compiler facts, not timings: they do not depend on the machine's load.
"""

from __future__ import annotations

import datetime as _dt
import os
import time

from bench.common import RESULTS_DIR, git_commit


def table(arch: int, dtypes: list[str], jobs: int) -> tuple[str, list]:
    import triton

    from fastood.ops import _aot

    t0 = time.perf_counter()
    reps = _aot.compile_specs(arch, dtypes, full=True, jobs=jobs)
    wall = time.perf_counter() - t0
    lim = _aot.SM_LIMITS[arch]
    lines = [
        f"# Static compile report: Triton kernels for sm_{arch}", "",
        f"commit {git_commit()}, {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}, Triton {triton.__version__} "
        f"(its bundled ptxas), target GPUTarget(\"cuda\", {arch}, 32), compiled without a GPU by "
        f"`python -m bench static` ({len(reps)} configurations, {wall:.0f} s wall). Per-SM limits used: "
        f"{lim['regs']} registers, {lim['smem_sm'] // 1024} KB shared memory ({lim['smem_block'] // 1024} KB per block), "
        f"{lim['threads']} threads.", "",
        "Spill = bytes of spill stores + loads per thread (ptxas -v); smem = static + Triton's dynamic shared memory "
        "per block; MMA = tensor-core family in the SASS (wgmma = HGMMA, mma = HMMA, none = FMA).", "",
        "| config | dtype | regs | spill B | smem B | blocks/SM | occupancy | limiter | MMA | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reps:
        v = r.violations()
        if r.dtype == "float32":
            v = [x for x in v if not x.startswith("spills")] + (["fp32 spill (exempt)"] if r.spill_bytes else [])
        status = "ok" if not v else "; ".join(v)
        if r.error:
            lines.append(f"| {r.name} | {r.dtype} | — | — | — | — | — | — | — | {status} |")
            continue
        lines.append(f"| {r.name} | {r.dtype} | {r.registers} | {r.spill_bytes} | {r.smem} | {r.blocks_per_sm} | "
                     f"{100 * r.occupancy:.1f} % | {r.limiter} | {r.mma} | {status} |")
    return "\n".join(lines) + "\n", reps


def main(args) -> None:
    dtypes = ["float16"] if getattr(args, "quick", False) else ["float16", "bfloat16", "float32"]
    jobs = int(os.environ.get("FASTOOD_AOT_JOBS", "2"))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    for arch in (90, 80):
        text, reps = table(arch, dtypes, jobs)
        path = RESULTS_DIR / f"static-sm{arch}.md"
        path.write_text(text)
        bad = [r for r in reps if r.violations() and not (r.dtype == "float32" and all(
            x.startswith("spills") for x in r.violations()))]
        print(f"sm_{arch}: {len(reps)} configurations, {len(bad)} breaking the CI rules; wrote {path}")
        for r in bad:
            print(f"  {r.name} {r.dtype}: {r.violations()}")
