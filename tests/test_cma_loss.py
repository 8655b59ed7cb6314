"""The fused CMA loss against the float64 reference (fastood/reference_cma.py).

Loss and every gradient (image, text, logit_scale), both modes, with and without
normalisation, duplicate classes in a batch; the chunked torch path and the Triton
kernels (in the CPU interpreter without a GPU: small shapes, not multiples of the
block sizes, forced split-N); λ = 0 against open_clip's ClipLoss; determinism; the
custom-op registration; every error path.

Error criterion (shared/DESIGN.md): error vs the float64 truth on the same (rounded)
inputs ≤ 2 × the error of the plain torch reference computing in fp32 on those inputs
+ ε, plus, for gradients returned in fp16 / bf16, the unavoidable final rounding to that
dtype (u·|truth| elementwise). The kernels compute in fp32 whatever the input dtype, so a
budget taken from torch computing in bf16 (up to 47 % of the largest ∂image) would let a
bf16-accumulated kernel through.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fastood  # noqa: E402
from fastood import reference_cma as R  # noqa: E402
from fastood.losses import cma_loss  # noqa: E402
from fastood.nn import CMALoss  # noqa: E402
from fastood.ops import cma_loss as cma_mod  # noqa: E402
from tests.numerics import max_abs_err  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HAS_TRITON = bool(fastood.backends()["triton"])
BACKENDS = ["torch"] + (["triton"] if HAS_TRITON else [])
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason=fastood.backends()["triton"].reason)


# ----------------------------------------------------------------------------- helpers
def make_inputs(B: int, D: int, *, K: int | None = None, seed: int = 0):
    """Features with realistic structure: texts close to their images, unequal norms,
    duplicates (pair mode: two images share one class prompt; class mode: repeated labels).
    Returns float64 (x, t, labels-or-None)."""
    gen = torch.Generator().manual_seed(seed)
    if K is None:
        t = torch.randn(B, D, generator=gen, dtype=torch.float64)
        t[5] = t[1]  # same-class duplicate: counts as a negative of image 1 (and vice versa)
        x = t + 0.7 * torch.randn(B, D, generator=gen, dtype=torch.float64)
        labels = None
    else:
        t = torch.randn(K, D, generator=gen, dtype=torch.float64)
        labels = torch.randint(0, K, (B,), generator=gen)
        labels[:3] = torch.tensor([2, 2, 0])  # duplicates for sure
        x = t[labels] + 0.7 * torch.randn(B, D, generator=gen, dtype=torch.float64)
    x = x * (0.2 + 3 * torch.rand(B, 1, generator=gen, dtype=torch.float64))
    t = t * (0.2 + 3 * torch.rand(t.shape[0], 1, generator=gen, dtype=torch.float64))
    return x, t, labels


def loss_and_grads(fn, x, t, s, **kw):
    x, t, s = (v.detach().clone().requires_grad_() for v in (x, t, s))
    loss = fn(x, t, s, **kw)
    gx, gt, gs = torch.autograd.grad(loss, (x, t, s))
    return [loss.detach(), gx, gt, gs]


def scale_tensor(value: float, dtype=torch.float32):
    return torch.tensor(value, dtype=dtype, device=DEVICE)


#: unit roundoff of the output dtypes (round to nearest: |round(v) − v| ≤ u·|v|)
UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
#: tensor-core operand rounding allowance of the Triton backward, in units of u · max|∂|
OPERAND_ULPS = 4.0


def check_budget(outs, truths, bases, what, rel_eps=1e-6, operand_u=0.0):
    """``|o − truth| ≤ u(o.dtype)·|truth| + 2·max|base − truth| + ε`` elementwise.

    ``bases`` must be plain torch computing in fp32 (or float64 for float64 inputs) on the
    same rounded inputs: the fp32-accumulation error. ``u`` is the final rounding of an
    fp16 / bf16 gradient (0 for the fp32 loss and ∂scale); ε = rel_eps·max|truth|.

    ``operand_u`` (the input dtype's u; Triton only): its backward feeds the tensor cores
    ``∂L`` and the normalised rows rounded to the input dtype (fp32 accumulation), as
    flash-attention does, and ∂scale is reduced from those products; each product carries
    ≤ 2u relative error, so a gradient may also be off by ``OPERAND_ULPS · u · max|truth|``
    (measured: ≤ 1.1u; a GEMM accumulated in bf16 is off by tens of % of the largest one).
    """
    for name, o, tr, b in zip(("loss", "d_image", "d_text", "d_scale"), outs, truths, bases):
        assert b.dtype in (torch.float32, torch.float64), "the baseline must compute in fp32"
        tr = tr.to(o.device).double()
        base = max_abs_err(b, tr.to(b.device))
        max_abs_err(o, tr)  # same infinities, no NaN
        eps = rel_eps * (tr.abs().max().item() + 1e-12)
        u = UNIT_ROUNDOFF.get(o.dtype, 0.0)
        excess = ((o.double() - tr).abs() - u * tr.abs() * (1 + 1e-3)).max().item()
        excess -= OPERAND_ULPS * operand_u * tr.abs().max().item()
        assert excess <= 2 * base + eps, (f"{what} {name}: error beyond the output rounding {excess:.3e} > "
                                          f"2 × fp32 torch's {base:.3e} + {eps:.1e}")


# ------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["pair", "class"])
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_float64_truth(backend, dtype, mode, normalize):
    B, D, K = (23, 37, None) if mode == "pair" else (21, 37, 11)
    x64, t64, labels = make_inputs(B, D, K=K, seed=1)
    if not normalize:  # keep raw logits in a sane range: unit-ish rows
        x64 = x64 / x64.norm(dim=1, keepdim=True)
        t64 = t64 / t64.norm(dim=1, keepdim=True)
    # Inputs rounded to the dtype once; the truth is float64 math on those same values.
    x = x64.to(DEVICE, dtype)
    t = t64.to(DEVICE, dtype)
    if backend == "triton":
        x = x.T.contiguous().T  # non-contiguous (column-major) image features
    labels = None if labels is None else labels.to(DEVICE)
    s = scale_tensor(100.0)
    kw = dict(lam=0.05, labels=labels, normalize=normalize)
    truth = loss_and_grads(R.cma_loss, x.double(), t.double(), s.double(), **kw)
    base = loss_and_grads(R.cma_loss, x.float(), t.float(), s.float(), **kw)  # fp32 on the rounded inputs
    out = loss_and_grads(cma_loss, x, t, s, backend=backend, **kw)
    assert out[1].dtype == dtype and out[2].dtype == dtype and out[3].dtype == torch.float32
    check_budget(out, truth, base, f"{backend}/{dtype}/{mode}/normalize={normalize}",
                 operand_u=UNIT_ROUNDOFF.get(dtype, 0.0) if backend == "triton" else 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_saturated_softmax(backend):
    """Huge scale: softmax rows one-hot, LSE = max; no overflow, still within budget."""
    x64, t64, _ = make_inputs(17, 20, seed=2)
    x, t = x64.float().to(DEVICE), t64.float().to(DEVICE)
    s = scale_tensor(5000.0)
    truth = loss_and_grads(R.cma_loss, x.double(), t.double(), s.double())
    base = loss_and_grads(R.cma_loss, x, t, s)
    out = loss_and_grads(cma_loss, x, t, s, backend=backend)
    check_budget(out, truth, base, f"{backend} s=5000")


@pytest.mark.parametrize("mode", ["pair", "class"])
@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_float64(mode, normalize, monkeypatch):
    """Analytic gradients of the fused torch path (chunked: 2 rows of logits at a time)."""
    monkeypatch.setattr(cma_mod, "MAX_CHUNK_BYTES", 2 * 8 * 6)
    x, t, labels = make_inputs(6, 4, K=None if mode == "pair" else 3, seed=3)
    s = torch.tensor(3.0, dtype=torch.float64)
    args = tuple(v.clone().requires_grad_() for v in (x, t, s))
    fn = lambda a, b, c: cma_loss(a, b, c, lam=0.3, labels=labels, normalize=normalize, backend="torch")  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)
    # ... and they equal the reference's autograd.
    truth = loss_and_grads(R.cma_loss, x, t, s, lam=0.3, labels=labels, normalize=normalize)
    out = loss_and_grads(fn, x, t, s)
    for o, tr in zip(out, truth):
        torch.testing.assert_close(o, tr, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lambda_zero_is_clip_loss(backend):
    ClipLoss = pytest.importorskip("open_clip.loss").ClipLoss

    x64, t64, _ = make_inputs(19, 24, seed=4)
    x, t = x64.float().to(DEVICE), t64.float().to(DEVICE)
    s = scale_tensor(30.0)
    clip = lambda a, b, c: ClipLoss()(torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1), c)  # noqa: E731
    ref = loss_and_grads(clip, x, t, s)
    out = loss_and_grads(cma_loss, x, t, s, lam=0.0, backend=backend)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5)
    # The module, called the way open_clip calls its losses.
    mod = CMALoss(lam=0.0, backend=backend)
    torch.testing.assert_close(mod(x, t, s, output_dict=True)["contrastive_loss"], ref[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["pair", "class"])
def test_partial_requires_grad(backend, mode):
    """Only the inputs that require grad get one; each equals the full computation."""
    x64, t64, labels = make_inputs(18, 20, K=None if mode == "pair" else 7, seed=5)
    x, t, s = x64.float().to(DEVICE), t64.float().to(DEVICE), scale_tensor(50.0)
    labels = None if labels is None else labels.to(DEVICE)
    full = loss_and_grads(cma_loss, x, t, s, labels=labels, backend=backend)
    for which in range(3):
        ins = [x.clone(), t.clone(), s.clone()]
        ins[which].requires_grad_()
        loss = cma_loss(*ins, labels=labels, backend=backend)
        (g,) = torch.autograd.grad(loss, ins[which])
        torch.testing.assert_close(g, full[1 + which], rtol=1e-5, atol=1e-7)
    # A Python-float scale is accepted and gets no gradient.
    xr = x.clone().requires_grad_()
    loss = cma_loss(xr, t, 50.0, labels=labels, backend=backend)
    loss.backward()
    torch.testing.assert_close(xr.grad, full[1], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------- Triton kernels
@needs_triton
@pytest.mark.parametrize("mode", ["pair", "class"])
@pytest.mark.parametrize("splits", [1, 3])
def test_triton_launchers_against_float64(mode, splits):
    """Forward statistics and both backward passes, forced split-N (tiles of 16 over
    B = 24, N = 24 or 17, D = 40), vs the torch launcher in float64; bitwise repeatable."""
    from fastood.ops._triton_cma import cma_bwd_triton, cma_fwd_triton

    pair = mode == "pair"
    x64, t64, labels = make_inputs(24, 40, K=None if pair else 17, seed=6)
    rx, rt = 1 / x64.norm(dim=1), 1 / t64.norm(dim=1)
    s = torch.tensor(80.0, dtype=torch.float64)
    alpha, beta = (0.45, 0.45) if pair else (0.9, 0.0)
    st64 = cma_mod.cma_fwd_torch(x64, t64, rx, rt, s, labels)
    a64, at64 = cma_mod.cma_bwd_torch(x64, t64, rx, rt, s, *st64[0:3:2], *st64[3:6:2], labels, alpha, beta, True, True)

    x, t = x64.float().to(DEVICE), t64.float().to(DEVICE)
    f32 = lambda v: v.float().to(DEVICE)  # noqa: E731
    lab = None if labels is None else labels.to(DEVICE)

    def run():
        st = cma_fwd_triton(x, t, f32(rx), f32(rt), f32(s), lab, num_splits=splits, blocks=(16, 16, 16))
        a, at = cma_bwd_triton(x, t, f32(rx), f32(rt), f32(s), *st[0:3:2], *st[3:6:2], lab, alpha, beta, True, True,
                               num_splits=splits, blocks=(16, 16, 16, 16))
        return (*st, a, at)

    out = run()
    for name, o, r in zip(("row_lse", "row_ce", "row_comp", "col_lse", "col_ce", "col_comp"), out, st64):
        assert o.shape == r.shape, name
        if o.numel():
            assert max_abs_err(o, r) < 1e-4 * max(1.0, r.abs().max().item()), name
    assert max_abs_err(out[6], a64) < 1e-4 and max_abs_err(out[7], at64) < 1e-4
    assert all(torch.equal(u, v) for u, v in zip(out, run()))


@needs_triton
def test_triton_autotuned_launch_path(monkeypatch):
    """The CUDA launch path (autotuned kernels, grid lambdas, split heuristics), run in the
    interpreter with one small config each (an autotuner with one config does not benchmark)."""
    import triton

    from fastood.ops import _triton_cma as K

    if DEVICE == "cuda":
        pytest.skip("exercised for real on a GPU")
    monkeypatch.setattr(K, "_interpreting", lambda x: False)
    monkeypatch.setattr(K, "_target_programs", lambda device: 8)
    monkeypatch.setattr(K, "_FWD_BLOCK_M", 16)
    monkeypatch.setattr(K, "_CHUNK_ALIGN", 16)
    fwd_cfg = [triton.Config({"BLOCK_N": 16, "BLOCK_D": 16})]
    bwd_cfg = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_D": 16, "BLOCK_DO": 16})]
    monkeypatch.setattr(K, "_cma_fwd_tuned", triton.autotune(configs=fwd_cfg, key=["M", "N", "D"])(K._cma_fwd_kernel))
    monkeypatch.setattr(K, "_cma_bwd_tuned", triton.autotune(configs=bwd_cfg, key=["M", "N", "D"])(K._cma_bwd_kernel))
    for K_cls in (None, 9):
        x64, t64, labels = make_inputs(20, 24, K=K_cls, seed=11)
        x, t, s = x64.float(), t64.float(), torch.tensor(70.0)
        truth = loss_and_grads(R.cma_loss, x.double(), t.double(), s.double(), labels=labels)
        out = loss_and_grads(cma_loss, x, t, s, labels=labels, backend="triton")
        for o, tr in zip(out, truth):
            assert max_abs_err(o, tr) <= 1e-5 * max(1.0, tr.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("mode", ["pair", "class"])
def test_gpu_realistic_shapes(dtype, mode):
    """The autotuned CUDA kernels (split-N on: too few row blocks to fill the GPU) at
    CLIP widths, within the error budget and bitwise repeatable."""
    B, D, K = (1000, 512, None) if mode == "pair" else (1000, 512, 777)
    x64, t64, labels = make_inputs(B, D, K=K, seed=12)
    x, t = x64.to("cuda", dtype), t64.to("cuda", dtype)
    labels = None if labels is None else labels.cuda()
    s = torch.tensor(100.0, device="cuda")
    truth = loss_and_grads(cma_loss, x.double(), t.double(), s.double(), labels=labels, backend="torch")
    base = loss_and_grads(R.cma_loss, x.float(), t.float(), s.float(), labels=labels)
    out = loss_and_grads(cma_loss, x, t, s, labels=labels, backend="triton")
    check_budget(out, truth, base, f"cuda/{dtype}/{mode}", operand_u=UNIT_ROUNDOFF.get(dtype, 0.0))
    again = loss_and_grads(cma_loss, x, t, s, labels=labels, backend="triton")
    assert all(torch.equal(u, v) for u, v in zip(out, again))


# ---------------------------------------------------------------------------- plumbing
@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend):
    x64, t64, _ = make_inputs(22, 30, seed=7)
    x, t, s = x64.float().to(DEVICE), t64.float().to(DEVICE), scale_tensor(100.0)
    a = loss_and_grads(cma_loss, x, t, s, backend=backend)
    b = loss_and_grads(cma_loss, x, t, s, backend=backend)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_chunked_torch_path_matches_unchunked(monkeypatch):
    x64, t64, labels = make_inputs(20, 12, seed=8)
    x, t, s = x64.float(), t64.float(), torch.tensor(60.0)
    whole = loss_and_grads(cma_loss, x, t, s, backend="torch")
    monkeypatch.setattr(cma_mod, "MAX_CHUNK_BYTES", 3 * 4 * 20)  # 3 rows of logits (1 in the backward)
    chunked = loss_and_grads(cma_loss, x, t, s, backend="torch")
    for u, v in zip(whole, chunked):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)


def test_custom_op_registration():
    x = torch.randn(6, 5, requires_grad=True)
    t = torch.randn(3, 5, requires_grad=True)
    s = torch.tensor(10.0, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.library.opcheck(torch.ops.fastood.cma_loss_fwd.default, (x, t, s, labels, 0.1, True, "torch"))
    torch.library.opcheck(
        torch.ops.fastood.cma_loss_bwd.default,
        (torch.tensor(1.0), x.detach(), t.detach(), s.detach(), labels, torch.zeros(6), torch.full((6,), 0.5),
         torch.zeros(0), torch.zeros(0), torch.ones(6), torch.ones(3), 0.1, True, True, False, True, "torch"),
    )


def test_torch_compile_fullgraph():
    x64, t64, _ = make_inputs(8, 6, seed=9)
    x, t, s = x64.float(), t64.float(), torch.tensor(20.0)
    fn = torch.compile(lambda a, b, c: cma_loss(a, b, c, backend="torch"), fullgraph=True, backend="aot_eager")
    out = loss_and_grads(fn, x, t, s)
    ref = loss_and_grads(cma_loss, x, t, s, backend="torch")
    for u, v in zip(out, ref):
        torch.testing.assert_close(u, v)


def test_logit_scale_forms():
    x64, t64, _ = make_inputs(7, 5, seed=10)
    x, t = x64.float(), t64.float()
    ref = cma_loss(x, t, 20.0)
    s1 = torch.tensor([20.0], requires_grad=True)  # 1-element, like open_clip's logit_scale.exp()
    out = cma_loss(x, t, s1)
    out.backward()
    assert s1.grad.shape == (1,)
    torch.testing.assert_close(out.detach(), ref)
    torch.testing.assert_close(cma_loss(x.half(), t, 20.0), cma_loss(x.half().float(), t, 20.0))  # promotion


# ------------------------------------------------------------------------- error paths
def _base():
    x = torch.randn(4, 3)
    return dict(image_features=x, text_features=torch.randn(4, 3), logit_scale=torch.tensor(10.0))


def _set(**over):
    def make():
        kw = _base()
        kw.update({k: (v() if callable(v) else v) for k, v in over.items()})
        return kw
    return make


ERRORS = [
    (_set(text_features=lambda: torch.randn(5, 3)), ValueError, "pair mode"),
    (_set(text_features=lambda: torch.randn(4, 2)), ValueError, "width"),
    (_set(image_features=lambda: torch.randn(0, 3), text_features=lambda: torch.randn(0, 3)), ValueError, "image_features is empty"),
    (_set(image_features=lambda: torch.randn(4, 0), text_features=lambda: torch.randn(4, 0)), ValueError, "zero feature width"),
    (_set(image_features=lambda: torch.randn(4)), ValueError, "image_features must be 2-D"),
    (_set(image_features=lambda: torch.ones(4, 3, dtype=torch.int64)), TypeError, "image_features must be float"),
    (_set(text_features=lambda: [[1.0]]), TypeError, "text_features must be a torch.Tensor"),
    (_set(text_features=lambda: torch.randn(4, 3, device="meta")), ValueError, "device"),
    (_set(labels=lambda: torch.tensor([0, 1, 2, 4])), ValueError, "labels must be in"),
    (_set(labels=lambda: torch.tensor([0, 1, -1, 2])), ValueError, "labels must be in"),
    (_set(labels=lambda: torch.tensor([0.0, 1.0, 2.0, 3.0])), TypeError, "labels must be int64"),
    (_set(labels=lambda: torch.tensor([0, 1, 2])), ValueError, "labels must have shape"),
    (_set(labels=[0, 1, 2, 3]), TypeError, "labels must be a torch.Tensor"),
    (_set(logit_scale=lambda: torch.tensor(0.0)), ValueError, "logit_scale"),
    (_set(logit_scale=lambda: torch.tensor(-3.0)), ValueError, "logit_scale"),
    (_set(logit_scale=lambda: torch.tensor(float("inf"))), ValueError, "logit_scale"),
    (_set(logit_scale=lambda: torch.tensor(float("nan"))), ValueError, "logit_scale"),
    (_set(logit_scale=0.0), ValueError, "logit_scale"),
    (_set(logit_scale=float("nan")), ValueError, "logit_scale"),
    (_set(logit_scale="100"), TypeError, "logit_scale"),
    (_set(logit_scale=lambda: torch.tensor([1.0, 2.0])), ValueError, "logit_scale"),
    (_set(logit_scale=lambda: torch.tensor(10)), TypeError, "logit_scale"),
    (_set(image_features=lambda: torch.cat([torch.zeros(1, 3), torch.randn(3, 3)])), ValueError, "image_features row 0 has zero norm"),
    (_set(text_features=lambda: torch.cat([torch.randn(2, 3), torch.zeros(1, 3), torch.randn(1, 3)])), ValueError, "text_features row 2 has zero norm"),
    (_set(image_features=lambda: torch.tensor([[1.0, 2, 3]] * 3 + [[float("nan"), 0, 0]])), ValueError, "image_features has non-finite"),
    (_set(lam=1.5), ValueError, "lam"),
    (_set(lam="0.1"), TypeError, "lam"),
    (_set(normalize=1), TypeError, "normalize"),
    (_set(backend="cuda"), ValueError, "backend"),
]


@pytest.mark.parametrize("make,exc,match", ERRORS)
def test_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        cma_loss(**make())


def test_error_paths_of_the_module_and_backends():
    with pytest.raises(ValueError, match="lam"):
        CMALoss(lam=-0.1)
    with pytest.raises(ValueError, match="backend"):
        CMALoss(backend="cpu")
    x = torch.randn(4, 3, dtype=torch.float64)
    if HAS_TRITON:
        with pytest.raises(ValueError, match="float64"):
            cma_loss(x, x, 10.0, backend="triton")
    # Zero-norm rows are fine without normalisation.
    z = torch.cat([torch.zeros(1, 3), torch.randn(3, 3)])
    assert torch.isfinite(cma_loss(z, torch.randn(4, 3), 10.0, normalize=False))


# ------------------------------------------------------------- audit additions (issue #5)
MORE_ERRORS = [
    (_set(logit_scale=True), TypeError, "logit_scale"),
    (_set(logit_scale=-1), ValueError, "logit_scale"),
    (_set(text_features=lambda: torch.randn(0, 3), labels=lambda: torch.zeros(4, dtype=torch.int64)), ValueError,
     "text_features is empty"),
    (_set(text_features=lambda: torch.randn(3, 3), labels=lambda: torch.tensor([0, 1, 3, 2])), ValueError,
     r"labels must be in \[0, 3\).*labels\[2\] = 3"),
    (_set(text_features=lambda: torch.tensor([[1.0, 2, 3]] * 3 + [[0.0, float("inf"), 0]])), ValueError,
     "text_features has non-finite values \\(first in row 3\\)"),
    (_set(image_features=lambda: torch.randn(4, 3, dtype=torch.float64), text_features=lambda: torch.randn(4, 5)),
     ValueError, "width D=3.*width D=5"),
]


@pytest.mark.parametrize("make,exc,match", MORE_ERRORS)
def test_more_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        cma_loss(**make())


@pytest.mark.parametrize("mode", ["pair", "class"])
def test_module_gather_without_process_group_is_plain_loss(mode):
    """``gather=True`` outside torch.distributed does nothing: same loss and gradients."""
    x64, t64, labels = make_inputs(12, 9, K=None if mode == "pair" else 5, seed=13)
    x, t, s = x64.float(), t64.float(), torch.tensor(40.0)
    ref = loss_and_grads(cma_loss, x, t, s, lam=0.01, labels=labels)
    out = loss_and_grads(lambda a, b, c: CMALoss(lam=0.01, gather=True)(a, b, c, labels=labels), x, t, s)
    for u, v in zip(out, ref):
        assert torch.equal(u, v)


def test_lambda_one_and_class_mode_by_hand():
    """Hand-computed truth: two images, two classes, orthogonal unit features.

    L = s·I, LSE of each row = log(e^s + 1); class mode with λ: loss = −s + (1−λ)·log(e^s + 1)."""
    x = torch.eye(2, dtype=torch.float64)
    s = 2.0
    lse = torch.log(torch.exp(torch.tensor(s, dtype=torch.float64)) + 1)
    for lam in (0.0, 0.25, 1.0):
        want = -s + (1 - lam) * lse
        got_class = cma_loss(x, x, s, lam=lam, labels=torch.tensor([0, 1]))
        got_pair = cma_loss(x, x, s, lam=lam)  # symmetric: rows and columns alike
        torch.testing.assert_close(got_class, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_pair, want, rtol=1e-12, atol=1e-12)


def test_autocast_does_not_leak_into_the_op():
    """Under CPU autocast (the trainer's --precision bf16 off-GPU; CUDA autocast alike) the op
    keeps its own fp32 compute: the result equals the op on the same bf16 features outside
    autocast, bitwise, loss and gradients. (Regression: autocast stays on inside a custom
    op's implementation, and the torch backend's GEMMs used to drop to bf16 — a 2e-3
    error at s = 50, 20× the fp32 path's.)"""
    x64, t64, _ = make_inputs(16, 12, seed=14)
    x = x64.to(torch.bfloat16).requires_grad_()
    t = t64.to(torch.bfloat16)
    s = torch.tensor(50.0, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = cma_loss(x, t, s, backend="torch")
        g_inside = torch.autograd.grad(inside, (x, s))
    outside = cma_loss(x, t, s, backend="torch")
    g_outside = torch.autograd.grad(outside, (x, s))
    assert inside.dtype == torch.float32
    assert torch.equal(inside, outside)
    assert all(torch.equal(u, v) for u, v in zip(g_inside, g_outside))
    truth = R.cma_loss(x.detach().double(), t.double(), s.detach().double())
    assert abs(inside.item() - truth.item()) < 1e-5


def test_drop_in_for_open_clip_training_code():
    """open_clip's training loop calls ``loss(**model(images, texts), output_dict=True)`` on a model
    created with ``output_dict=True``; CMALoss(lam=0) takes that call and equals ClipLoss."""
    open_clip = pytest.importorskip("open_clip")
    from open_clip.loss import ClipLoss

    torch.manual_seed(0)
    model = open_clip.create_model(
        "ViT-B-32", pretrained=None, output_dict=True, embed_dim=16,
        vision_cfg={"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
    )
    images = torch.randn(6, 3, 32, 32)
    texts = open_clip.get_tokenizer("ViT-B-32")([f"a photo of a {c}" for c in "abcdef"])
    losses = []
    for loss_fn in (ClipLoss(), CMALoss(lam=0.0)):
        model.zero_grad()
        out = loss_fn(**model(images, texts), output_dict=True)
        total = sum(out.values())
        total.backward()
        losses.append((total.detach(), model.logit_scale.grad.clone(), model.visual.conv1.weight.grad.clone()))
    for a, b in zip(*losses):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
