"""The fused backward of segment_lse / neglabel_score / mcm_score (d/dx) on every backend.

Truth: autograd through ``fastood.reference`` (full logits) in float64 on the same
(rounded) inputs. float64 inputs run the forward in chunked float64 torch and the backward
on the backend under test (triton: the interpreter runs float64 ``tl.dot``), so the
backward math is held to 1e-10. fp32 / fp16 / bf16 (fp32 accumulation) are held to
``max(2 × torch's fp32 autograd error, 4·u32·scale·max|grad|)`` plus the rounding of the
returned gradient to ``x.dtype`` (autograd returns it in ``x``'s dtype): see
``_budget_check`` for why the logit scale enters.
"""

from __future__ import annotations

import json

import pytest
import torch

import fastood.ops as F
from fastood import reference as R
from fastood._backends import backends
from fastood.ops._segment_lse_backward import segment_lse_grad_u_torch

BACKENDS = [b for b in ("torch", "cpu", "triton") if backends()[b]]


def _bank(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).to(dtype)


def _x(b: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, d, generator=g, dtype=torch.float64) * 3).to(dtype)


#: the device each backend runs on: Triton on the GPU when there is one (else the interpreter)
_DEVICE = {"triton": "cuda" if torch.cuda.is_available() else "cpu"}


def _call(fn, backend, x, bank, *args, **kw):
    """``fn(x, bank, *args, backend=backend)`` on the backend's device, results back on the CPU
    (the copies are differentiable, so gradients reach the CPU leaf)."""
    dev = _DEVICE.get(backend, "cpu")
    out = fn(x.to(dev), bank.to(dev), *args, backend=backend, **kw)
    return tuple(o.cpu() for o in out) if isinstance(out, tuple) else out.cpu()


def _ref_lse_max(x, bank, off, scale):
    """float64 reference (lse, max0 at the first maximiser of segment 0) with autograd."""
    lse = R.segment_lse(x, bank, off, scale=scale)
    logits = R.cosine_logits(x, bank, scale)[:, off[0]: off[1]]
    idx = torch.argmax(logits.detach(), dim=1)  # first maximiser: the documented subgradient
    return lse, logits.gather(1, idx[:, None])[:, 0]


def _loss(lse, max0, g, h):
    return (torch.where(torch.isinf(lse), 0.0, lse) * g).sum() + (max0 * h).sum()


# --------------------------------------------------------------------------- float64
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    """torch.autograd.gradcheck (finite differences) of lse and max0 w.r.t. x, empty segment included."""
    bank = _bank(11, 5, 1)
    off = [0, 3, 3, 7, 11]

    def f(x):
        lse, max0, _ = _call(F.segment_lse_max, backend, x, bank, off, scale=4.0, want_argmax=False)
        return lse[:, [0, 2, 3]], max0  # the empty segment is -inf: no finite difference

    x = _x(3, 5, 2).requires_grad_()
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["segments", "tau001", "G1", "noncontig", "nonorm"])
def test_segment_lse_grad_matches_float64_reference(backend, case):
    """Autograd through the fused ops equals autograd through the full-logit reference to 1e-10."""
    B, D, N = 19, 20, 37  # B, D, N not multiples of any block (16 in the interpreter)
    off = [0, 4, 4, 20, 20, 37]  # two empty segments
    scale, normalize = 7.0, True
    if case == "tau001":
        scale = 100.0
    if case == "G1":
        off = [0, 4, 37]
    bank = _bank(N, D, 3)
    x0 = _x(B, D, 4)
    if case == "noncontig":
        x0 = _x(D, 2 * B, 4).T[::2]  # (B, D) with strides (2, 2B)
        assert not x0.is_contiguous()
    if case == "nonorm":
        normalize, x0 = False, x0 / 10
    x = x0.clone().requires_grad_() if case != "noncontig" else x0.requires_grad_()
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(B, len(off) - 1, generator=gen, dtype=torch.float64)
    g[:, 1] = 0.0
    h = torch.randn(B, generator=gen, dtype=torch.float64)

    lse, max0, _ = _call(F.segment_lse_max, backend, x, bank, off, scale=scale, normalize=normalize, want_argmax=False)
    got, = torch.autograd.grad(_loss(lse, max0, g, h), x)
    xr = x0.detach().clone().requires_grad_()
    if normalize:
        rl, rm = _ref_lse_max(xr, bank, off, scale)
    else:
        rl = R.segment_lse(xr, bank, off, scale=scale, normalize=False)
        lg = R.cosine_logits(xr, bank, scale, normalize=False)[:, : off[1]]
        rm = lg.gather(1, lg.detach().argmax(1)[:, None])[:, 0]
    want, = torch.autograd.grad(_loss(rl, rm, g, h), xr)
    assert got.dtype == torch.float64 and got.shape == x.shape
    scale_g = want.abs().max().item()
    assert scale_g > 1e-3  # a real gradient, not a vacuous comparison
    assert (got - want).abs().max().item() <= 1e-10 * max(1.0, scale_g)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("groups", [1, 3])
def test_neglabel_and_mcm_grad_float64(backend, groups):
    """d score / dx for NegLabel (G = 1 and 3, τ = 0.01, M mod G dropped) and MCM vs autograd of the reference."""
    B, D, K, N = 6, 12, 5, 23
    bank = _bank(N, D, 6)
    # each x halfway between an ID row and a negative row: scores off saturation at τ = 0.01
    x = (bank[torch.arange(B) % K] + bank[K + torch.arange(B) * 3] + 0.02 * _x(B, D, 7)).requires_grad_()
    got, = torch.autograd.grad(_call(F.neglabel_score, backend, x, bank, K, groups=groups, temperature=0.01).sum(), x)
    want, = torch.autograd.grad(R.neglabel_score(x, bank, K, groups=groups, temperature=0.01).sum(), x)
    assert want.abs().max().item() > 1e-6
    assert (got - want).abs().max().item() <= 1e-10 * max(1.0, want.abs().max().item())
    w = torch.linspace(-1, 1, B, dtype=torch.float64)
    got, = torch.autograd.grad((_call(F.mcm_score, backend, x, bank[:K], temperature=0.05) * w).sum(), x)
    want, = torch.autograd.grad((R.mcm_score(x, bank[:K], temperature=0.05) * w).sum(), x)
    assert want.abs().max().item() > 1e-3
    assert (got - want).abs().max().item() <= 1e-10 * max(1.0, want.abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_tied_max_takes_first_maximiser(backend):
    """Tied logits in segment 0 (duplicated bank rows): the max0 gradient is the one-hot at the first
    maximiser, computed by hand: d(scale·x̂·t)/dx = scale (t − x̂ (x̂·t)) / ||x||."""
    D = 6
    base = _bank(4, D, 8)
    bank = base[[0, 1, 1, 2, 3, 1]]  # rows 1, 2, 5 identical; segment 0 = rows 0..2, segment 1 = rows 3..5
    x = (base[1] * 2.0 + 0.01 * base[0]).reshape(1, D).clone().requires_grad_()  # closest to row 1
    _, max0, arg = _call(F.segment_lse_max, backend, x, bank, [0, 3, 6], scale=10.0)
    assert int(arg[0]) == 1  # ties at columns 1 and 2: first one
    got, = torch.autograd.grad(max0.sum(), x)
    xd = x.detach()[0]
    xh = xd / xd.norm()
    t = bank[1]
    want = 10.0 * (t - xh * (xh @ t)) / xd.norm()
    assert (got[0] - want).abs().max().item() <= 1e-12
    # the segment softmax weights split evenly over the tie: lse gradient also by hand
    lse = _call(F.segment_lse, backend, x, bank, [0, 3, 6], scale=10.0)
    got, = torch.autograd.grad(lse[0, 1], x)
    L = 10.0 * (xh @ bank[3:].T)
    w = torch.softmax(L, 0)
    v = (w[:, None] * bank[3:]).sum(0)
    want = 10.0 * (v - xh * (xh @ v)) / xd.norm()
    assert (got[0] - want).abs().max().item() <= 1e-12


# ----------------------------------------------------------------- fp32 / fp16 / bf16
def _budget_check(got, x_rounded, fn_ref, dtype, scale):
    """``err ≤ max(2·err_torch32, 4·u32·scale·max|g|) + (u(dtype) + 1e-6)·max|g|``.

    Why ``u32·scale``: the logits ``L = scale·cos`` are fp32 numbers of magnitude up to
    ``scale``, so any fp32 evaluation order carries an absolute logit error of about one
    ulp there (``≈ u32·scale``; 7.6e-6 at τ = 0.01); ``w = exp(L − lse)`` turns an absolute
    logit (or lse) error δ into a relative weight error δ, and the gradient is a
    w-weighted sum, so its error relative to its scale is ≈ δ. ``4`` covers the fp32 dot
    over D, the row scale, the saved lse and exp. Measured here: the fused kernels ≈ 1.1,
    torch's own autograd ≈ 0.25 (the 2× torch criterion alone is an order-dependent
    luck of torch's rounding). A wrong backward is off by O(1); fp16-rounded weights by
    ≈ 2^-11 ≫ 4·u32·100 = 2.4e-5; TF32 logits by ≈ 100·2^-11.
    """
    x64 = x_rounded.double().requires_grad_()
    truth, = torch.autograd.grad(fn_ref(x64, torch.float64), x64)
    x32 = x_rounded.float().requires_grad_()
    base, = torch.autograd.grad(fn_ref(x32, torch.float32), x32)
    amax = truth.abs().max().item()
    assert amax > 1e-6
    err = (got.double() - truth).abs().max().item()
    base_err = (base.double() - truth).abs().max().item()
    u = torch.finfo(dtype).eps / 2
    u32 = torch.finfo(torch.float32).eps / 2
    bound = max(2 * base_err, 4 * u32 * scale * amax) + (u + 1e-6) * amax
    assert err <= bound, f"{err:.3e} > {bound:.3e} (torch fp32 {base_err:.3e}, grad scale {amax:.3e})"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_grad_low_precision_within_fp32_budget(backend, dtype):
    """fp32/fp16/bf16 operands (fp32 accumulation) at τ = 0.01 against the float64 truth of the rounded inputs."""
    B, D, K, N, G = 17, 24, 5, 40, 3
    bank = _bank(N, D, 9, dtype)
    b64 = bank.double()
    x = (b64[torch.arange(B) % K] + b64[K + torch.arange(B) * 2] + 0.02 * _x(B, D, 10)).to(dtype).requires_grad_()
    got, = torch.autograd.grad(_call(F.neglabel_score, backend, x, bank, K, groups=G, temperature=0.01).sum(), x)
    assert got.dtype == dtype

    def ref(xx, dt):
        return R.neglabel_score(xx, bank.to(dt), K, groups=G, temperature=0.01).sum()

    _budget_check(got, x.detach(), ref, dtype, 100.0)

    off = [0, 7, 7, 40]
    gw = torch.linspace(-1, 2, 3)
    lse = _call(F.segment_lse, backend, x, bank, off, scale=100.0)
    got, = torch.autograd.grad((torch.where(torch.isinf(lse), 0.0, lse) * gw).sum(), x)

    def ref2(xx, dt):
        r = R.segment_lse(xx, bank.to(dt), off, scale=100.0)
        return (torch.where(torch.isinf(r), 0.0, r) * gw.to(dt)).sum()

    _budget_check(got, x.detach(), ref2, dtype, 100.0)


# ------------------------------------------------------------------- plumbing
def test_torch_backward_chunks_agree():
    """The torch backward's row chunks (1 row at a time) give the unchunked result."""
    x, bank = _x(9, 8, 11), _bank(15, 8, 12)
    off = torch.tensor([0, 5, 15])
    rs = torch.full((9,), 3.0, dtype=torch.float64)
    lse = R.segment_lse(x * 3.0, bank, [0, 5, 15], scale=1.0, normalize=False)
    g = torch.randn(9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    full = segment_lse_grad_u_torch(x, bank, off, rs, lse, g, None, None)
    tiny = segment_lse_grad_u_torch(x, bank, off, rs, lse, g, None, None, max_chunk_bytes=1)
    w = torch.exp(3.0 * x @ bank.T - lse[:, [0] * 5 + [1] * 10]) * g[:, [0] * 5 + [1] * 10]
    assert (full - w @ bank).abs().max().item() <= 1e-12
    assert (tiny - full).abs().max().item() <= 1e-12


def test_bank_requiring_grad_is_refused():
    x = _x(2, 4, 13).requires_grad_()
    bank = _bank(5, 4, 14).requires_grad_()
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="bank requires grad"):
            _call(F.segment_lse, backend, x, bank, [0, 2, 5])
        with pytest.raises(ValueError, match="bank requires grad"):
            _call(F.neglabel_score, backend, x, bank, 2, groups=3)
        with pytest.raises(ValueError, match="bank requires grad"):
            _call(F.mcm_score, backend, x, bank)


def test_compile_sees_one_forward_and_one_backward_op():
    """torch.compile (fullgraph) traces the forward op and the backward op, and the gradient is right."""
    bank = _bank(10, 6, 15, torch.float32)
    x = _x(4, 6, 16, torch.float32)

    off = torch.tensor([0, 3, 10])

    def f(xx):
        lse, max0, _ = torch.ops.fastood.segment_lse(xx, bank, off, 5.0, True, True, "torch")
        return (lse * torch.tensor([1.0, -2.0])).sum() + max0.sum()

    def f2(xx):
        return F.neglabel_score(xx, bank, 3, groups=2, backend="torch").sum()

    for fn in (f, f2):
        xc = x.clone().requires_grad_()
        torch.compile(fn, backend="aot_eager", fullgraph=True)(xc).backward()
        xe = x.clone().requires_grad_()
        fn(xe).backward()
        assert torch.allclose(xc.grad, xe.grad, rtol=0, atol=0)
        assert xe.grad.abs().max() > 0
    torch.library.opcheck(torch.ops.fastood.segment_lse.default, (x.clone().requires_grad_(), bank, off, 5.0, True,
                                                                  True, "torch"),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fx = torch.empty(4, 6)
        out = torch.ops.fastood.segment_lse_backward(fx, torch.empty(10, 6), torch.tensor([0, 3, 10]), 5.0, True,
                                                     torch.empty(4, 2), torch.empty(0, dtype=torch.int64),
                                                     torch.empty(4, 2), None, "torch")
        assert out.shape == (4, 6) and out.dtype == torch.float32


@pytest.mark.skipif(not backends()["cpu"], reason="the C++ extension is not built")
def test_cpu_weights_binding_checks_arguments():
    from fastood._backends import load_extension

    ext = load_extension()[0]
    buf = torch.zeros(2, 5).numpy()
    off = torch.tensor([0, 2, 5]).numpy()
    with pytest.raises(ValueError, match="lse and g must have shape"):
        ext.segment_lse_bwd_weights(buf, off, torch.zeros(2, 3).numpy(), torch.zeros(2, 2).numpy())
    with pytest.raises(ValueError, match="arg0 has an index outside"):
        ext.segment_lse_bwd_weights(buf, off, torch.zeros(2, 2).numpy(), torch.zeros(2, 2).numpy(),
                                    torch.tensor([0, 7]).numpy(), torch.zeros(2).numpy())


def test_bench_grad_runs_on_a_tiny_shape(tmp_path):
    from bench.grad import run

    rows = run(batch=8, n_bank=40, groups=3, dim=16, repeats=1, budget_s=0.01, backends=("torch",),
               out=tmp_path / "grad.json")
    assert [r["method"] for r in rows] == ["fused[torch]", "autograd_full_logits"]
    for r in rows:
        assert r["seconds"] > 0 and (r["peak_bytes"] is None or r["peak_bytes"] >= 0)
    # the bench's own correctness column: the fused gradient is the autograd one (fp32)
    assert rows[0]["grad_scale"] > 1e-3
    assert rows[0]["max_abs_grad_diff_vs_autograd"] <= 1e-4 * rows[0]["grad_scale"]
    assert json.loads((tmp_path / "grad.json").read_text())[0]["method"] == "fused[torch]"


@pytest.mark.parametrize("backend", [b for b in ("torch", "cpu") if backends()[b]])
@pytest.mark.parametrize("kind", ["neglabel", "mcm"])
def test_forward_fused_gradient_blocks_and_scores(backend, kind):
    """cpu / torch compute v = Σ_j ∂S/∂L_ij t_j in the forward, per row block: 1-row blocks give the
    one-block result, the score and prediction are the non-differentiable op's, v is the autograd truth."""
    from fastood.ops._segment_lse_backward import run_score_with_grad

    B, D, K, N, G = 7, 12, 4, 28, 3
    bank = _bank(N, D, 17, torch.float32)
    # halfway between two competing rows (an ID and a negative; two ID rows for MCM): off saturation
    other = K + torch.arange(B) * 3 if kind == "neglabel" else (torch.arange(B) + 1) % K
    x = (bank[torch.arange(B) % K] + bank[other] + 0.002 * _x(B, D, 18, torch.float32))
    off = F.neglabel_offsets(K, N, G) if kind == "neglabel" else [0, K]
    kept = bank[: off[-1]]
    offt = torch.tensor(off)
    s1, p1, v1 = run_score_with_grad(x, kept, offt, 100.0, True, True, backend, kind)
    s2, p2, v2 = run_score_with_grad(x, kept, offt, 100.0, True, True, backend, kind, max_block_bytes=1)
    # BLAS may round a 1-row GEMM differently: logits move by ~1 ulp at 100 (≈ u32·scale), scores by that × S
    tol = 4 * torch.finfo(torch.float32).eps * 100
    assert torch.equal(p1, p2) and (s1 - s2).abs().max() <= tol and (v1 - v2).abs().max() <= tol * v1.abs().max()
    if kind == "neglabel":
        ref_s, ref_p = _call(F.neglabel_score, backend, x, bank, K, groups=G, temperature=0.01, return_pred=True)
    else:
        ref_s, ref_p = _call(F.mcm_score, backend, x, kept, temperature=0.01, return_pred=True)
    assert torch.equal(p1, ref_p) and (s1 - ref_s).abs().max() <= tol
    # v_i is ∂S_i/∂x̂_i / scale: check against float64 autograd through the reference in x̂
    xh = torch.nn.functional.normalize(x.double(), dim=1).requires_grad_()
    ref = (R.neglabel_score(xh, bank.double(), K, groups=G, temperature=0.01, normalize=False) if kind == "neglabel"
           else R.mcm_score(xh, kept.double(), temperature=0.01, normalize=False))
    want, = torch.autograd.grad(ref.sum(), xh)
    _budget = 4 * torch.finfo(torch.float32).eps * 100 * want.abs().max().item()
    assert (100.0 * v1.double() - want).abs().max().item() <= _budget
    with pytest.raises(ValueError, match="kind must be one of"):
        run_score_with_grad(x, kept, offt, 100.0, True, True, backend, "msp")


@pytest.mark.skipif(not backends()["triton"] or torch.cuda.is_available(), reason="the interpreter case")
@pytest.mark.parametrize("split_tf32", [False, True])
def test_triton_backward_kernel_variants_in_interpreter(split_tf32):
    """Both ``G @ t`` variants of the Triton kernel (IEEE: sm_80; tf32x3: sm_90 — the interpreter
    computes both in fp32) with the argmax term, rows and columns not multiples of the tile,
    against the float64 formula ``u = Σ_j (g w_ij + h [j = arg]) t_j``."""
    from fastood.ops._triton_segment_lse_bwd import segment_lse_grad_u_triton

    x, bank = _x(21, 19, 19, torch.float32), _bank(35, 19, 20, torch.float32)
    off = [0, 6, 6, 35]
    rs = (8.0 / x.double().norm(dim=1)).float()
    L = rs.double()[:, None] * (x.double() @ bank.double().T)
    lse = torch.stack([torch.logsumexp(L[:, :6], 1), torch.full((21,), float("-inf"), dtype=torch.float64),
                       torch.logsumexp(L[:, 6:], 1)], 1)
    g = torch.randn(21, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    arg = L[:, :6].argmax(1)
    h = torch.linspace(-1, 1, 21, dtype=torch.float64)
    seg = torch.tensor([0] * 6 + [2] * 29)
    G = g[:, seg] * torch.exp(L - lse[:, seg])
    G[torch.arange(21), arg] += h
    want = G @ bank.double()
    got = segment_lse_grad_u_triton(x, bank, torch.tensor(off), rs, lse.float(), g.float(), arg, h.float(),
                                    split_tf32=split_tf32)
    assert (got.double() - want).abs().max().item() <= 1e-5 * want.abs().max().item()
