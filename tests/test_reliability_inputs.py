"""Input contracts of the scoring ops and of model / tensor inputs (issue 11, part B).

- normalisation over the whole fp32 range, in every backend (torch, cpu, triton under
  the interpreter, cuda on a GPU): ``x·1e30`` / ``x·1e-30`` / subnormal rows score as
  ``x`` (truth: float64 reference on the rounded inputs; exact equality for powers of
  two, which leave the cosines bit-for-bit unchanged); only a true zero row is "zero
  norm", only inf / NaN are "non-finite";
- temperatures whose reciprocal is not finite in fp32 are rejected everywhere, and the
  smallest accepted one still gives finite scores.
"""

from __future__ import annotations

import pytest
import torch

import fastood.reference as R
from fastood._backends import backends
from fastood.ops import mcm_score, neglabel_score, segment_lse

BACKENDS = ["torch", "cpu", "triton", "cuda"]
#: the smallest temperature the ops accept: 1/τ <= FLT_MAX/2 (base-2 fp32 logits stay finite)
MIN_TEMPERATURE = 2.0 / float(torch.finfo(torch.float32).max)
K, G, M, D = 3, 2, 6, 8


def _need(backend: str) -> str:
    if not backends()[backend]:
        pytest.skip(f"backend {backend!r} unavailable: {backends()[backend].reason}")
    return backend


def _device(backend: str) -> str:
    return "cuda" if backend == "cuda" else "cpu"


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(5, D, generator=g)
    bank = torch.nn.functional.normalize(torch.randn(K + M, D, generator=g, dtype=torch.float64), dim=1).float()
    return x, bank


def _truth(x: torch.Tensor, bank: torch.Tensor, temperature: float) -> torch.Tensor:
    """float64 NegLabel score of the (already rounded) fp32 inputs: normalisation in float64 has no range problem."""
    return R.neglabel_score(x.double().cpu(), bank.double().cpu(), K, groups=G, temperature=temperature)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("factor", [1e30, 1e37, 1e-30, 1e-38, 1e-41])
def test_scaled_rows_score_as_the_original(data, backend, factor):
    _need(backend)
    dev = _device(backend)
    x, bank = (t.to(dev) for t in data)
    tau = 0.1
    xs = x * factor  # rounded (subnormal for 1e-38 / 1e-41: fewer mantissa bits, the truth uses the same values)
    base_err = (neglabel_score(x, bank, K, groups=G, temperature=tau, backend=backend).double().cpu()
                - _truth(x, bank, tau)).abs().max().item()
    got, pred = neglabel_score(xs, bank, K, groups=G, temperature=tau, backend=backend, return_pred=True)
    assert torch.isfinite(got).all()
    err = (got.double().cpu() - _truth(xs, bank, tau)).abs().max().item()
    assert err <= 2 * base_err + 1e-6, (err, base_err)
    cos = xs.double().cpu() @ bank.double().cpu()[:K].T
    assert torch.equal(pred.cpu(), cos.argmax(dim=1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_power_of_two_rows_give_identical_results(data, backend):
    """x·2^k has exactly the cosines of x: the scores must be bit-for-bit those of x (rows scaled differently)."""
    _need(backend)
    dev = _device(backend)
    x, bank = (t.to(dev) for t in data)
    ks = torch.tensor([100.0, -100.0, 0.0, 120.0, -140.0], device=dev)  # 2^-140: subnormal rows
    xs = x * torch.pow(2.0, ks)[:, None]
    keep = ks > -126  # subnormal rows lose mantissa bits, so only the normal ones are bitwise comparable
    want = neglabel_score(x, bank, K, groups=G, temperature=0.01, backend=backend)
    got = neglabel_score(xs, bank, K, groups=G, temperature=0.01, backend=backend)
    assert torch.equal(got[keep], want[keep])
    lse_want = segment_lse(x, bank, [0, K, K + M], scale=50.0, backend=backend)
    lse_got = segment_lse(xs, bank, [0, K, K + M], scale=50.0, backend=backend)
    assert torch.equal(lse_got[keep], lse_want[keep])
    mcm_want = mcm_score(x, bank[:K], backend=backend)
    assert torch.equal(mcm_score(xs, bank[:K], backend=backend)[keep], mcm_want[keep])


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_bfloat16_rows_over_the_fp32_range(data, backend):
    """bfloat16 has fp32's exponent range: x·1e30 in bf16 must not be 'non-finite'."""
    _need(backend)
    x, bank = data
    xb = (x * 1e30).bfloat16()
    got = neglabel_score(xb, bank, K, groups=G, temperature=0.1, backend=backend)
    truth = R.neglabel_score(xb.double(), bank.double(), K, groups=G, temperature=0.1)
    base = neglabel_score(x.bfloat16(), bank, K, groups=G, temperature=0.1, backend=backend)
    base_truth = R.neglabel_score(x.bfloat16().double(), bank.double(), K, groups=G, temperature=0.1)
    assert (got.double() - truth).abs().max() <= 2 * (base.double() - base_truth).abs().max() + 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_and_non_finite_rows_give_the_true_reason(data, backend):
    _need(backend)
    dev = _device(backend)
    x, bank = (t.to(dev) for t in data)
    tiny = x.clone()
    tiny[2] = 0.0
    tiny[2, 3] = 1e-45  # the smallest subnormal: not zero
    assert torch.isfinite(neglabel_score(tiny, bank, K, groups=G, backend=backend)).all()
    z = x.clone()
    z[3] = 0.0
    with pytest.raises(ValueError, match="row 3 has zero norm"):
        neglabel_score(z, bank, K, groups=G, backend=backend)
    for bad in (float("inf"), float("nan"), -float("inf")):
        y = x.clone()
        y[1, 4] = bad
        with pytest.raises(ValueError, match="non-finite values \\(first in row 1\\)"):
            neglabel_score(y, bank, K, groups=G, backend=backend)
    huge = x.clone()
    huge[0] = 3e38  # finite: its norm overflows fp32, but it is not non-finite
    assert torch.isfinite(neglabel_score(huge, bank, K, groups=G, backend=backend)).all()


# --------------------------------------------------------------------------- temperature
@pytest.mark.parametrize("tau", [1e-39, 3e-39, 1e-45])
def test_temperature_with_non_finite_reciprocal_is_rejected(data, tau):
    x, bank = data
    with pytest.raises(ValueError, match="temperature must be >= 5.88e-39"):
        neglabel_score(x, bank, K, groups=G, temperature=tau)
    with pytest.raises(ValueError, match="temperature must be >= 5.88e-39"):
        mcm_score(x, bank[:K], temperature=tau)
    with pytest.raises(ValueError, match="scale must be at most"):
        segment_lse(x, bank, [0, K, K + M], scale=1.0 / tau)


def test_detectors_reject_such_temperatures(data):
    from fastood.bank import TextBank
    from fastood.detectors import MCM, InterNeg, NegLabel

    _, bank = data
    tb = TextBank(bank, ["a", "b", "c"], [f"n{i}" for i in range(M)], groups=G)
    for cls in (NegLabel, MCM):
        with pytest.raises(ValueError, match="temperature must be >= 5.88e-39"):
            cls(bank=tb, temperature=1e-39)
    with pytest.raises(ValueError, match="temperature must be >= 5.88e-39"):
        InterNeg(temperature=1e-39)


@pytest.mark.parametrize("backend", BACKENDS)
def test_smallest_accepted_temperature_gives_finite_scores(data, backend):
    _need(backend)
    dev = _device(backend)
    x, bank = (t.to(dev) for t in data)
    s, pred = neglabel_score(x, bank, K, groups=G, temperature=MIN_TEMPERATURE, backend=backend, return_pred=True)
    assert torch.isfinite(s).all() and ((s >= 0) & (s <= 1)).all()
    truth = _truth(x, bank, MIN_TEMPERATURE)  # saturated: every group's sigmoid is 0 or 1
    assert torch.equal(s.double().cpu(), truth)
    m = mcm_score(x, bank[:K], temperature=MIN_TEMPERATURE, backend=backend)
    assert torch.isfinite(m).all()


# --------------------------------------------------------------------- image tensor inputs
@pytest.fixture(scope="module")
def tiny_det():
    from fastood.bank import TextBank
    from fastood.detectors import NegLabel
    from tests.tiny import TINY_KWARGS, tiny_clip

    d = TINY_KWARGS["embed_dim"]
    emb = torch.nn.functional.normalize(torch.randn(K + M, d, generator=torch.Generator().manual_seed(2)), dim=1)
    return NegLabel(tiny_clip(), bank=TextBank(emb, ["a", "b", "c"], [f"n{i}" for i in range(M)], groups=G),
                    progress=False)


@pytest.mark.parametrize("shape", [(1, 3, 0, 40), (2, 3, 40, 0), (3, 0, 5)])
def test_uint8_tensor_with_a_zero_pixel_side_is_a_value_error(tiny_det, shape):
    from fastood.images import iter_image_batches

    x = torch.zeros(shape, dtype=torch.uint8)
    with pytest.raises(ValueError, match="zero-pixel side"):
        tiny_det.score(x)
    with pytest.raises(ValueError, match="zero-pixel side"):
        list(iter_image_batches([x] if x.dim() == 3 else x, tiny_det.preprocess))


def test_float_tensor_of_the_wrong_size_names_the_expected_size(tiny_det):
    with pytest.raises(ValueError, match="are 48×40 but the model takes 32×32 \\(expected \\(B, 3, 32, 32\\)\\)"):
        tiny_det.score(torch.randn(2, 3, 48, 40))
    good = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = tiny_det.score_features(tiny_det.clip.model.encode_image(good))
    torch.testing.assert_close(tiny_det.score(good), want)


def test_numpy_float_batch_error_names_its_shape(tiny_det):
    import numpy as np

    a = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    with pytest.raises(ValueError, match=r"numpy float32 array of shape \(2, 3, 32, 32\).*torch.from_numpy"):
        tiny_det.score(a)
    with pytest.raises(ValueError, match=r"float64 \(32, 32, 3\)"):  # one float image: its own shape
        tiny_det.score(np.zeros((32, 32, 3)))
    u8 = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    want = tiny_det.score(torch.from_numpy(u8).permute(0, 3, 1, 2).contiguous())
    torch.testing.assert_close(tiny_det.score(u8), want)  # a uint8 batch is still fine


@pytest.mark.parametrize("factor", [1e30, 2.0**40, 1e-30, 1e-41])
@pytest.mark.parametrize("rule", ["kth", "mean_exp"])
def test_knn_without_standardisation_handles_the_fp32_range(factor, rule):
    """KNN(standardize=False) L2-normalises raw features itself: x·1e-30 is not "zero",
    x·1e30 not "non-finite"; scores equal those of x (cosines are scale-free)."""
    from fastood.detectors import KNN

    g = torch.Generator().manual_seed(5)
    train = torch.randn(20, D, generator=g)
    x = torch.randn(4, D, generator=g)
    det = KNN(k=3, rule=rule, standardize=False, device="cpu").fit_features(train)
    ref = det.score_features(x)
    got = det.score_features(x * factor)
    # truth: cosines of the rounded inputs in float64 (normalisation has no range problem there)
    xd, td = (x * factor).double(), train.double()
    cos = (xd / xd.norm(dim=1, keepdim=True)) @ (td / td.norm(dim=1, keepdim=True)).T  # no eps clamp
    top = cos.topk(3, dim=1).values
    truth = top[:, -1] if rule == "kth" else torch.exp(top / 0.02).mean(dim=1)
    torch.testing.assert_close(got.double(), truth, rtol=2e-5, atol=1e-6)
    if factor >= 1e-30:  # not subnormal: the scaled input holds x exactly up to rounding
        torch.testing.assert_close(got.double(), ref.double(), rtol=2e-5, atol=1e-6)


def test_knn_without_standardisation_rejects_zero_and_nonfinite_rows():
    from fastood.detectors import KNN

    det = KNN(k=1, standardize=False, device="cpu").fit_features(torch.randn(5, D))
    x = torch.randn(3, D)
    x[1] = 0
    with pytest.raises(ValueError, match="row 1 is zero"):
        det.score_features(x)
    x[1] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        det.score_features(x)
