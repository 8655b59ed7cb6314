"""Ahead-of-time compile checks of every Triton kernel configuration (no GPU needed).

Each configuration the dispatcher can launch (``aot_specs`` of the kernel modules) is
compiled by the real Triton → PTX → ptxas pipeline for ``GPUTarget("cuda", 90, 32)`` and
``("cuda", 80, 32)`` (``fastood.ops._aot``), and ptxas' report and the SASS are checked:

* it compiles;
* fp16 / bf16 configurations spill 0 bytes (fp32 is IEEE FMA, not held to it);
* shared memory (static + Triton's dynamic) <= the target's per-block limit;
* the fp16/bf16 main loops use the intended tensor-core path: ``wgmma`` (SASS ``HGMMA``)
  on sm_90, ``mma`` (``HMMA``) on sm_80.

CI runs every configuration the dispatcher can pick on sm_90 for fp16 and bf16 and on
sm_80 for fp16, and a sample for sm_80 bf16 and fp32; the full matrix is ``-m slow`` and ``python -m bench static``.
Negative controls (toy kernels defined here, compiled by the same harness) prove the
checks fail on a spill and on a missing tensor-core path.
"""

from __future__ import annotations

import os
from collections import defaultdict

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from fastood.ops import _aot  # noqa: E402
from fastood.ops._aot_spec import AotSpec, ptr  # noqa: E402

HERE = "tests.test_static_compile"


# ----------------------------------------------------------------- toy kernels (controls)
@triton.jit
def _toy_spill_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    """Keeps 2 × BLOCK/32 fp32 values per thread live across a loop: far above 255 registers."""
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    acc = x
    for _ in range(n):
        acc = acc * x + 1.0
    tl.store(y_ptr + offs, acc)


@triton.jit
def _toy_dot_kernel(a_ptr, b_ptr, c_ptr, K, IEEE: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """C = A @ B for one (BM, BN) tile over K, row-major contiguous operands."""
    rm = tl.arange(0, BM)
    rn = tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros([BM, BN], tl.float32)
    for k0 in range(0, K, BK):
        a = tl.load(a_ptr + rm[:, None] * K + (k0 + rk)[None, :])
        b = tl.load(b_ptr + (k0 + rk)[:, None] * BN + rn[None, :])
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rm[:, None] * BN + rn[None, :], acc)


def _route_specs() -> list[AotSpec]:
    """The scoring kernel's 128×128×64 fp16 spec as a launch with D = 40 would specialise it,
    with the launcher's alignment route (``routed``) and without it (``unrouted``), from
    Triton's own specialisation of the actual tensors and ints."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    from fastood.ops import _triton_segment_lse as K

    base = next(s for s in K.aot_specs(90, torch.float16, full=False) if s.name == "segment_lse_fwd[128x128x64 w8 s3]")
    x, bank = torch.zeros(7, 40, dtype=torch.float16), torch.zeros(90, 40, dtype=torch.float16)
    out = []
    for tag, (xx, bb) in (("routed", K._aligned_operands(x, bank)), ("unrouted", (x, bank))):
        vals = {"x_ptr": xx, "bank_ptr": bb, "D": xx.shape[1], "stride_xb": xx.stride(0), "stride_bn": bb.stride(0),
                "stride_xd": xx.stride(1), "stride_bd": bb.stride(1)}
        spec = {k: native_specialize_impl(BaseBackend, v, False, True, True) for k, v in vals.items()}
        aligned = tuple(k for k in base.aligned if k not in vals or spec[k][1] == "D")
        sig, constexprs = dict(base.signature), dict(base.constexprs)
        for k in ("stride_xd", "stride_bd"):
            if spec[k][0] != "constexpr":
                constexprs.pop(k)
                sig[k] = spec[k][0]
        out.append(AotSpec(name=f"route_{tag}[D40 128x128x64 w8 s3]", fn=base.fn, signature=sig,
                           constexprs=constexprs, num_warps=base.num_warps, num_stages=base.num_stages,
                           aligned=aligned, intended_mma=base.intended_mma))
    return out


def aot_specs(arch: int, dtype: torch.dtype, *, full: bool) -> list[AotSpec]:
    """The controls: a spilling kernel, an fp16 dot (tensor cores) and an IEEE fp32 dot
    (FMA: no tensor cores) that wrongly declares the tensor-core path of ``arch``; on sm_90
    fp16 also the scoring kernel launched with D = 40, routed and not."""
    mma = "wgmma" if arch >= 90 else "mma"
    routes = _route_specs() if (arch, dtype) == (90, torch.float16) else []
    sig_dot = {"a_ptr": ptr(dtype), "b_ptr": ptr(dtype), "c_ptr": "*fp32", "K": "i32"}
    tiles = {"BM": 64, "BN": 64, "BK": 32}
    return [
        AotSpec(name="toy_spill[8192 w1]", fn=_toy_spill_kernel,
                signature={"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32"}, constexprs={"BLOCK": 8192},
                num_warps=1, num_stages=1, aligned=("x_ptr", "y_ptr")),
        AotSpec(name="toy_dot[64x64x32 w4]", fn=_toy_dot_kernel, signature=sig_dot,
                constexprs={"IEEE": dtype == torch.float32, **tiles}, num_warps=4, num_stages=3,
                aligned=("a_ptr", "b_ptr", "c_ptr", "K"), intended_mma=mma),
        *routes,
    ]


# ------------------------------------------------------------------------------ selection
def _first_per_kernel(specs: list[tuple[str, AotSpec]], k: int) -> set[str]:
    """The first ``k`` specs of every kernel function (a sample that covers every kernel)."""
    seen: dict[str, int] = defaultdict(int)
    keep = set()
    for _, s in specs:
        key = s.fn.__name__ if hasattr(s.fn, "__name__") else s.name.split("[")[0]
        if seen[key] < k:
            keep.add(s.name)
        seen[key] += 1
    return keep


def ci_matrix() -> list[tuple[int, str, str, str]]:
    """``(arch, dtype, module, spec name)`` that CI compiles.

    sm_90 fp16/bf16 and sm_80 fp16: every configuration (what the dispatcher can pick);
    sm_90 fp32: the modules' own fp32 sample; sm_80 bf16: the first two configurations of
    every kernel; sm_80 fp32: the first of every kernel.
    """
    out = []
    for arch, dtype, k in ((90, "float16", None), (90, "bfloat16", None), (90, "float32", None),
                           (80, "float16", None), (80, "bfloat16", 2), (80, "float32", 1)):
        specs = _aot.collect(arch, dtype, full=False)
        keep = {s.name for _, s in specs} if k is None else _first_per_kernel(specs, k)
        out += [(arch, dtype, m, s.name) for m, s in specs if s.name in keep]
    return out


def full_matrix() -> list[tuple[int, str, str, str]]:
    return [(arch, dt, m, s.name) for arch in (90, 80) for dt in ("float16", "bfloat16", "float32")
            for m, s in _aot.collect(arch, dt, full=True)]


def _compile(matrix: list[tuple[int, str, str, str]]) -> dict[tuple[int, str, str], _aot.StaticReport]:
    jobs = int(os.environ.get("FASTOOD_AOT_JOBS", "2"))
    out = {}
    for arch in sorted({a for a, *_ in matrix}):
        for dt in sorted({d for a, d, *_ in matrix if a == arch}):
            want = {(m, n) for a, d, m, n in matrix if a == arch and d == dt}
            full = any(n not in {s.name for _, s in _aot.collect(arch, dt, full=False)} for _, n in want)
            reps = _aot.compile_specs(arch, [dt], full=full, jobs=jobs,
                                      select=lambda m, s, want=want: (m, s.name) in want)
            out.update({(arch, dt, r.name): r for r in reps})
    return out


CI = ci_matrix()


@pytest.fixture(scope="module")
def ci_reports():
    return _compile(CI)


@pytest.mark.parametrize("arch,dtype,module,name", CI, ids=[f"sm{a}-{d}-{n}" for a, d, _, n in CI])
def test_config_compiles_without_violations(ci_reports, arch, dtype, module, name):
    rep = ci_reports[(arch, dtype, name)]
    assert rep.error is None, rep.error
    assert rep.registers > 0  # ptxas' report was read
    assert rep.violations() == [], f"{name} on sm_{arch} {dtype}: {rep.violations()}"
    if rep.main_loop and dtype != "float32":
        assert rep.mma == ("wgmma" if arch == 90 else "mma")


def test_ci_covers_every_config_the_dispatcher_can_pick_on_sm90():
    """Every fp16/bf16 sm_90 and fp16 sm_80 configuration of every kernel module is in CI."""
    for dt in ("float16", "bfloat16"):
        every = {s.name for _, s in _aot.collect(90, dt, full=True)}
        assert every == {n for a, d, _, n in CI if a == 90 and d == dt}
    every80 = {s.name for _, s in _aot.collect(80, "float16", full=True)}
    assert every80 == {n for a, d, _, n in CI if a == 80 and d == "float16"}
    kernels = {n.split("[")[0] for *_, n in CI}
    assert {"segment_lse_fwd", "segment_lse_merge", "cma_fwd", "cma_bwd", "cma_lse_merge"} <= kernels


@pytest.mark.slow
def test_full_matrix(request):
    """Every configuration, both targets, all dtypes (≈ 350 compiles): only when asked for,
    with ``-m slow`` or FASTOOD_AOT_FULL=1 (``python -m bench static`` writes the same as tables)."""
    if "slow" not in (request.config.option.markexpr or "") and os.environ.get("FASTOOD_AOT_FULL") != "1":
        pytest.skip("the full compile matrix runs with -m slow or FASTOOD_AOT_FULL=1")
    reps = _compile(full_matrix())
    bad = {k: r.violations() for k, r in reps.items() if r.violations() and not (
        r.dtype == "float32" and all(v.startswith("spills") for v in r.violations()))}
    assert not bad, bad


# ------------------------------------------------------------------- negative controls
@pytest.fixture(scope="module")
def toy_reports():
    out = {}
    for arch in (90, 80):
        for dt in ("float16", "float32"):
            for r in _aot.compile_specs(arch, [dt], full=False, modules=[HERE], jobs=1):
                out[(arch, dt, r.name.split("[")[0])] = r
    return out


def test_register_hungry_kernel_is_reported_as_spilling(toy_reports):
    rep = toy_reports[(90, "float16", "toy_spill")]
    assert rep.error is None
    assert 0 < rep.registers <= 255 and rep.spill_loads > 0
    # 2 × 8192/32 = 512 live fp32 values per thread against at most 255 registers: ≥ 1 KB spilled.
    assert rep.spill_stores >= 4 * (512 - 255)
    assert rep.opcodes.get("STL", 0) > 0 and rep.opcodes.get("LDL", 0) > 0  # the SASS shows the local traffic
    assert any(v.startswith("spills") for v in rep.violations())


@pytest.mark.parametrize("arch,family", [(90, "wgmma"), (80, "mma")])
def test_tensor_core_path_is_detected(toy_reports, arch, family):
    half = toy_reports[(arch, "float16", "toy_dot")]
    assert half.mma == family and half.violations() == []
    assert half.opcodes.get("HGMMA" if family == "wgmma" else "HMMA", 0) > 0
    # IEEE fp32 products run on FMA: the declared tensor-core path is missing and reported.
    fp32 = toy_reports[(arch, "float32", "toy_dot")]
    assert fp32.mma == "none" and fp32.opcodes.get("FFMA", 0) > 0
    assert any("tensor-core path" in v for v in fp32.violations())


def test_misaligned_launch_is_routed_to_a_config_that_does_not_spill(toy_reports):
    """§4: D = 40 without the route compiles the unhinted variant (no 16-byte vector loads /
    cp.async pipeline: less shared memory, spills); the launcher's route gives the aligned
    variant, which compiles like the AOT-checked spec: no spill, wgmma, the full pipeline."""
    routed = toy_reports[(90, "float16", "route_routed")]
    unrouted = toy_reports[(90, "float16", "route_unrouted")]
    assert routed.error is None and unrouted.error is None
    assert routed.violations() == [] and routed.spill_bytes == 0 and routed.mma == "wgmma"
    assert routed.smem == 128 * 64 * 2 * 2 * 3  # 3 stages of the 128×64 x and bank tiles: the pipeline
    # The hazard the route avoids (Triton 3.8: 732 B spill stores + 732 B loads, 32 KB shared memory).
    assert unrouted.spill_bytes > 0 and unrouted.smem < routed.smem


# ----------------------------------------------------------------- the arithmetic, by hand
def test_occupancy_by_hand():
    # 243 regs → 31 × 256 per warp = 7936; 65536 // 7936 = 8 warps → one 8-warp block, 8/64 warps.
    assert _aot.occupancy(90, 243, 98304, 8) == (1, 0.125, "registers")
    # 128 regs, 4 warps: 16 warps by registers = 4 blocks; smem 96 KB + 1 KB: 233472 // 99328 = 2.
    assert _aot.occupancy(90, 128, 98304, 4) == (2, 0.125, "smem")
    # sm_80: 164 KB / (64 KB + 1 KB) = 2 blocks; 64 regs × 4 warps allows 8.
    assert _aot.occupancy(80, 64, 65536, 4) == (2, 0.125, "smem")
    # Over the per-block limit: nothing fits.
    assert _aot.occupancy(80, 64, 164 * 1024, 4)[0] == 0


def test_parse_ptxas_and_rules_by_hand():
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
           "ptxas info    : Function properties for k\n"
           "    16 bytes stack frame, 748 bytes spill stores, 748 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 32 bytes smem\n")
    assert _aot.parse_ptxas(log, "k") == dict(registers=255, spill_stores=748, spill_loads=748, stack=16,
                                              smem_static=32)
    rep = _aot.StaticReport(name="k", module="m", arch=90, dtype="bfloat16", num_warps=8, num_stages=3,
                            intended_mma="wgmma", main_loop=True, registers=255, spill_stores=748, spill_loads=748,
                            smem_dynamic=240 * 1024, mma="mma", blocks_per_sm=0)
    v = rep.violations()
    assert any(x.startswith("spills") for x in v) and any("shared memory" in x for x in v)
    assert any("tensor-core path" in x for x in v) and any("no block" in x for x in v)
    assert _aot.mma_family({"HGMMA": 4, "HMMA": 1}) == "wgmma" and _aot.mma_family({"FFMA": 9}) == "none"


def test_bad_arguments():
    with pytest.raises(ValueError, match="arch"):
        _aot.collect(75, "float16", full=False)
    with pytest.raises(ValueError, match="dtype"):
        _aot.collect(90, "float64", full=False)
    with pytest.raises(TypeError, match="dtype"):
        ptr(torch.complex64)
