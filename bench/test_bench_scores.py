"""pytest-benchmark microbenchmarks of the scoring ops.

Run: ``python -m pytest bench --benchmark-enable`` (timing) or plain
``python -m pytest bench`` (each case runs once, as a smoke test).
"""

from __future__ import annotations

import pytest
import torch

import fastood
from fastood import reference as R
from bench.scores import K, NUM_NEG, torch_best

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B = 4096 if DEVICE == "cuda" else 256
FUSED = [b for b, s in fastood.backends().items() if s and not (DEVICE == "cpu" and b in ("triton", "cuda"))]


@pytest.fixture(scope="module", params=[512])
def inputs(request):
    d = request.param
    gen = torch.Generator().manual_seed(0)
    dtype = torch.float16 if DEVICE == "cuda" else torch.float32
    bank = torch.nn.functional.normalize(torch.randn(K + NUM_NEG, d, generator=gen), dim=1).to(DEVICE, dtype)
    x = torch.randn(B, d, generator=gen).to(DEVICE, dtype)
    return x, bank


def _run(benchmark, fn):
    def call():
        out = fn()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out

    return benchmark(call)


@pytest.mark.parametrize("groups", [1, 100])
def test_official_style(benchmark, inputs, groups):
    x, bank = inputs
    benchmark.group = f"neglabel B={B} G={groups}"
    out = _run(benchmark, lambda: R.neglabel_score_official_style(x, bank, K, groups=groups))
    assert out.shape == (B,)


@pytest.mark.parametrize("groups", [1, 100])
def test_torch_best(benchmark, inputs, groups):
    x, bank = inputs
    benchmark.group = f"neglabel B={B} G={groups}"
    out = _run(benchmark, lambda: torch_best(x, bank, K, groups))
    assert out.shape == (B,)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("groups", [1, 100])
def test_fastood_neglabel(benchmark, inputs, groups, backend):
    x, bank = inputs
    benchmark.group = f"neglabel B={B} G={groups}"
    out = _run(benchmark, lambda: fastood.neglabel_score(x, bank, K, groups=groups, backend=backend))
    ref = torch_best(x.float(), bank.float(), K, groups)
    assert torch.allclose(out.float(), ref, atol=1e-3)


@pytest.mark.parametrize("backend", FUSED)
def test_fastood_mcm(benchmark, inputs, backend):
    x, bank = inputs
    benchmark.group = f"mcm B={B}"
    out = _run(benchmark, lambda: fastood.mcm_score(x, bank[:K], backend=backend))
    assert out.shape == (B,)


# ------------------------------------------------ baselines of bench/scores.py (CPU, tiny)
def _tiny(dtype: torch.dtype, B: int = 8, D: int = 16, M: int = 100):
    from tests.numerics import unit_rows

    gen = torch.Generator().manual_seed(5)
    return unit_rows(B, D, gen).to(dtype), unit_rows(K + M, D, gen).to(dtype)


def test_gemm_prealloc_is_the_gemm_into_one_reused_buffer():
    from bench.scores import candidates

    x, bank = _tiny(torch.float32)
    gemm = candidates("cpu", False, torch.float32)["gemm-prealloc"]
    out = gemm(x, bank, 10)
    truth = x.double() @ bank.double().T
    assert out.shape == (8, K + 100) and (out.double() - truth).abs().max().item() <= 1e-6
    again = gemm(x * 2, bank, 10)
    assert again.data_ptr() == out.data_ptr()  # the same buffer: no allocation per call
    assert (again.double() - 2 * truth).abs().max().item() <= 1e-6
    smaller = gemm(x[:3], bank, 10)  # a new shape gets its own buffer
    assert smaller.shape == (3, K + 100) and (smaller.double() - truth[:3]).abs().max().item() <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_official_row_scores_low_precision_features_in_fp32(dtype):
    """``official`` = what the official code does: fp16 features cast to fp32, fp32 scoring;
    ``official-style, fp16 inputs`` = the same formula on the fp16 tensors."""
    from bench.scores import candidates

    x, bank = _tiny(dtype)
    cands = candidates("cpu", False, dtype)
    label = "official-style, fp16 inputs" if dtype == torch.float16 else "official-style, bf16 inputs"
    assert set(cands) >= {"official", label, "gemm-prealloc", "mm-only", "torch-best"}
    truth = R.neglabel_score(x.double(), bank.double(), K, groups=10)  # float64 of the rounded inputs
    out = cands["official"](x, bank, 10)
    assert out.dtype == torch.float32 and (out.double() - truth).abs().max().item() <= 1e-5
    low = cands[label](x, bank, 10)
    assert low.dtype == dtype and low.shape == (8,)
    # The official row converts the bank once, not per call.
    assert cands["official"](x, bank, 10).data_ptr() != 0
    assert "official-style, fp16 inputs" not in candidates("cpu", False, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_torch_compile_row_of_the_grouped_formula(dtype):
    """``torch.compile`` of torch-best on fp32 and fp16 inputs computes the NegLabel score."""
    from bench.scores import candidates

    x, bank = _tiny(dtype, B=4, D=8, M=20)
    fn = candidates("cpu", True, dtype)["torch.compile"]
    truth = R.neglabel_score(x.double(), bank.double(), K, groups=5)
    out = fn(x, bank, 5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # fp16 logits (x100) before the fp32 reduction
    assert (out.double() - truth).abs().max().item() <= tol


def test_results_record_machine_load_commit_and_dirty_tree(tmp_path, monkeypatch):
    import json
    import subprocess
    from pathlib import Path

    from bench import common

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    meta = common.provenance("cpu")
    json_path, _ = common.write_results("probe", "cpu", meta, [{"x": 1}], "# probe\n")
    got = json.loads(json_path.read_text())["meta"]
    root = Path(common.__file__).resolve().parents[1]
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    diff = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root).returncode
    assert got["commit_sha"] == sha and got["dirty"] is (diff != 0)
    assert got["commit"] == sha + ("-dirty" if diff else "")
    import os

    for key in ("load_1min_before", "load_1min_after"):
        assert isinstance(got[key], float) and 0.0 <= got[key] <= 100.0 * os.cpu_count()


def test_official_style_encoder_runs_an_fp16_copy_and_returns_fp32_features():
    from bench.common import official_style_encoder
    from tests.tiny import tiny_clip

    model = tiny_clip().model.eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model.encode_image(pixels).double()
    enc = official_style_encoder(model, "cpu", fp16=True)
    f = enc(pixels)
    assert f.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the caller's model is untouched
    err = (f.double() - ref).abs().max().item()
    assert 0 < err <= 2e-2 * ref.abs().max().item()  # fp16 rounding: different from, and close to, fp32
    f32 = official_style_encoder(model, "cpu")(pixels)
    assert (f32.double() - ref).abs().max().item() <= 1e-5
