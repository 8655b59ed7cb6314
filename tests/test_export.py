"""ONNX export of whole detectors, the manifest, the onnxruntime runtime, the CLI.

Truth: the torch detectors (fastood.detectors.NegLabel / MCM) and the float64
reference formulas of fastood.reference evaluated on the same image features.
A tiny random open_clip ViT (32×32 input, one layer) keeps every export ~1–2 s.
TensorRT cannot be installed here: its tests are marked and skip cleanly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import fastood.export as fx  # noqa: E402
from fastood import reference as R  # noqa: E402
from fastood.bank import TextBank  # noqa: E402
from fastood.detectors import MCM, NegLabel  # noqa: E402
from fastood.export.manifest import ManifestError, file_sha256, manifest_path_for, read_manifest, write_manifest  # noqa: E402
from fastood.images import preprocess_config  # noqa: E402
from fastood.models import load_clip  # noqa: E402

K, M, G_BANK, G = 6, 35, 5, 4  # 35 negatives; the detector uses G=4 groups of 8 (3 negatives dropped)
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
CLASSES = [f"class {i}" for i in range(K)]


def _tiny_clip(seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return load_clip("ViT-B-32", pretrained="", device="cpu", **TINY)


def _random_bank(seed: int = 1) -> TextBank:
    gen = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(K + M, 32, generator=gen), dim=1)
    return TextBank(emb, CLASSES, [f"neg {i}" for i in range(M)], groups=G_BANK)


def _pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def clip():
    return _tiny_clip()


@pytest.fixture(scope="module")
def bank():
    return _random_bank()


@pytest.fixture(scope="module")
def neglabel(clip, bank):
    return NegLabel(clip, bank=bank, groups=G, device="cpu")


@pytest.fixture(scope="module")
def std_export(neglabel, tmp_path_factory):
    return fx.to_onnx(neglabel, tmp_path_factory.mktemp("std"), batch=(1, 8, 16))


@pytest.fixture(scope="module")
def fused_export(neglabel, tmp_path_factory):
    return fx.to_onnx(neglabel, tmp_path_factory.mktemp("fused") / "det.onnx", head="fused")


def _truth(det, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 NegLabel score / ID argmax of the torch detector's own image features."""
    f = det.features(x).double()
    kept = det.bank.embeddings[: K + G * (M // G)].double()
    score = R.neglabel_score(f, kept, K, groups=G, temperature=det.temperature)
    pred = (torch.nn.functional.normalize(f, dim=1) @ kept[:K].T).argmax(1)
    return score, pred


# ----------------------------------------------------------------------------- graph + numerics
@pytest.mark.parametrize("n", [1, 7, 40])
def test_onnxruntime_matches_torch_detector(neglabel, std_export, n):
    rt = fx.load(std_export, provider="cpu")
    assert rt.providers == ["CPUExecutionProvider"]
    x = _pixels(n, seed=n)
    score, pred = rt.run(x)  # 40 > the exported max batch 16: run() chunks it
    assert score.shape == (n,) and score.dtype == torch.float32 and pred.dtype == torch.int64
    truth, truth_pred = _truth(neglabel, x)
    torch_score = neglabel.score(x)
    assert (score.double() - truth).abs().max() < 2e-6
    assert (score - torch_score).abs().max() < 2e-6
    assert torch.equal(pred, truth_pred)
    assert torch.equal(rt.predict(x).labels, neglabel.predict(x).labels)


def test_graph_structure(std_export):
    onnx.checker.check_model(str(std_export), full_check=True)
    m = onnx.load(str(std_export))
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    ops = [n.op_type for n in m.graph.node]
    assert "LayerNormalization" in ops  # one node, not decomposed
    assert "ReduceLogSumExp" not in ops  # the head's LSEs subtract their max explicitly
    head = [n for n in m.graph.node if n.name.startswith("fastood_head/")]
    head_ops = {n.op_type for n in head}
    assert {"MatMul", "ReduceMax", "Exp", "ReduceSum", "Log", "Sigmoid", "ArgMax"} <= head_ops
    assert not any(n.domain not in ("", "ai.onnx") for n in m.graph.node)
    # dynamic batch on the input and both outputs
    (inp,) = m.graph.input
    assert inp.name == "pixels"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert sorted(o.name for o in m.graph.output) == ["pred", "score"]
    assert all(o.type.tensor_type.shape.dim[0].dim_param for o in m.graph.output)
    assert not list(std_export.parent.glob("*.data"))  # small model: one file
    # the bank (K + G·m kept rows) is a constant of the graph
    shapes = [tuple(i.dims) for i in m.graph.initializer]
    assert (K + G * (M // G), 32) in shapes or (32, K + G * (M // G)) in shapes


def test_fused_head_is_one_custom_node(neglabel, fused_export):
    from fastood.export.onnx_export import register_fused_schema

    m = onnx.load(str(fused_export))
    custom = [n for n in m.graph.node if n.domain == "fastood"]
    assert len(custom) == 1
    node = custom[0]
    assert node.op_type == "SegmentLSEScore"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["num_id"] == K and attrs["groups"] == G and attrs["normalize"] == 1
    assert attrs["method"] == b"neglabel" and attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b""
    assert attrs["temperature"] == pytest.approx(0.01)
    assert ("fastood", 1) in [(o.domain, o.version) for o in m.opset_import]
    # inputs: raw fp32 features and the bank as a float32 initializer; pred int32 then Cast to int64
    inits = {i.name: i for i in m.graph.initializer}
    bank_init = inits[node.input[1]]
    assert bank_init.data_type == onnx.TensorProto.FLOAT and bank_init.dims[1] == 32
    assert bank_init.dims[0] in (K + G * (M // G), K + M)
    np.testing.assert_allclose(onnx.numpy_helper.to_array(bank_init)[:K], neglabel.bank.embeddings[:K].numpy())
    cast = [n for n in m.graph.node if n.input and n.input[0] == node.output[1]]
    assert len(cast) == 1 and cast[0].op_type == "Cast" and cast[0].output[0] == "pred"
    assert next(a.i for a in cast[0].attribute if a.name == "to") == onnx.TensorProto.INT64
    assert node.output[0] == "score"
    no_head_ops = {"ReduceMax", "Sigmoid", "ArgMax", "Exp"}
    assert not no_head_ops & {n.op_type for n in m.graph.node}  # the whole head is the one node
    register_fused_schema()
    onnx.checker.check_model(m, full_check=True)
    # onnxruntime cannot run it: a clear error, not a crash
    with pytest.raises(ValueError, match="TensorRT"):
        fx.load(fused_export, provider="cpu")


def test_fused_graph_module_equals_standard(neglabel):
    from fastood.export.graph import build_graph

    kw = dict(method="neglabel", num_id=K, groups=G, temperature=0.01)
    std = build_graph(neglabel.clip.model, neglabel.bank.embeddings, head="standard", **kw)
    fused = build_graph(neglabel.clip.model, neglabel.bank.embeddings, head="fused", **kw)
    x = _pixels(9, seed=3)
    with torch.no_grad():
        (s1, p1), (s2, p2) = std(x), fused(x)
    assert (s1 - s2).abs().max() < 2e-6 and torch.equal(p1, p2)


def test_mcm_export(clip, bank, tmp_path):
    det = MCM(clip, bank=bank, device="cpu")
    path = fx.to_onnx(det, tmp_path)
    man = read_manifest(manifest_path_for(path))
    assert man["method"] == "mcm" and man["groups"] == 1 and man["temperature"] == 1.0
    rt = fx.load(tmp_path)
    for n in (1, 5):
        x = _pixels(n, seed=10 + n)
        f = det.features(x).double()
        truth = R.mcm_score(f, bank.embeddings[:K].double(), temperature=1.0)
        score, pred = rt.run(x)
        assert (score.double() - truth).abs().max() < 2e-6
        assert (score - det.score(x)).abs().max() < 2e-6
        assert torch.equal(pred, det.predict(x).labels)
    fused = onnx.load(str(fx.to_onnx(det, tmp_path / "fused", head="fused")))
    (node,) = [n for n in fused.graph.node if n.domain == "fastood"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["method"] == b"mcm" and attrs["num_id"] == K and attrs["groups"] == 1
    assert attrs["temperature"] == pytest.approx(1.0)
    assert [tuple(i.dims) for i in fused.graph.initializer if i.name == node.input[1]] == [(K, 32)]


def test_fp16_export_keeps_layernorm_and_head_fp32(neglabel, tmp_path):
    from fastood.export.graph import build_graph

    path = fx.to_onnx(neglabel, tmp_path, fp16=True)
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type for v in list(m.graph.value_info) + list(m.graph.input)
             + list(m.graph.output)}
    types.update({i.name: i.data_type for i in m.graph.initializer})
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert f16 in {i.data_type for i in m.graph.initializer}  # the encoder's weights are fp16
    lns = [n for n in m.graph.node if n.op_type == "LayerNormalization"]
    assert lns and all(types[n.input[0]] == f32 and types[n.input[1]] == f32 for n in lns)
    head = [n for n in m.graph.node if n.name.startswith("fastood_head/")]
    float_outs = [types[o] for n in head for o in n.output if types.get(o) in (f32, f16)]
    assert float_outs and all(t == f32 for t in float_outs)
    assert types["pixels"] == f32 and types["score"] == f32
    assert read_manifest(manifest_path_for(path))["precision"] == "fp16"
    # numerics: the fp16 ONNX is as close to the fp32 float64 truth as the same fp16 graph in torch
    x = _pixels(32, seed=5)
    truth, _ = _truth(neglabel, x)
    got = fx.load(path).score(x).double()
    g16 = build_graph(neglabel.clip.model, neglabel.bank.embeddings, method="neglabel", num_id=K, groups=G,
                      temperature=0.01, fp16=True)
    with torch.no_grad():
        torch16 = g16(x)[0].double()
    err_ort, err_torch = (got - truth).abs().max().item(), (torch16 - truth).abs().max().item()
    assert err_ort <= 2 * err_torch + 1e-4
    assert err_ort < 5e-3


def test_legacy_exporter_and_external_data(neglabel, tmp_path):
    x = _pixels(6, seed=7)
    ref = neglabel.score(x)
    legacy = fx.to_onnx(neglabel, tmp_path / "legacy", exporter="legacy")
    assert (fx.load(legacy).score(x) - ref).abs().max() < 2e-6
    ext = fx.to_onnx(neglabel, tmp_path / "ext", external_data=True)
    man = read_manifest(manifest_path_for(ext))
    assert sorted(man["files"]) == ["model.onnx", "model.onnx.data"]
    assert (fx.load(ext).score(x) - ref).abs().max() < 2e-6
    data = ext.parent / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ManifestError, match="does not match its manifest"):
        fx.load(ext)


# ----------------------------------------------------------------------------- manifest
def test_manifest_round_trip(neglabel, std_export, tmp_path):
    man = read_manifest(manifest_path_for(std_export))
    assert man["model_file"] == "model.onnx"
    assert man["files"]["model.onnx"]["sha256"] == file_sha256(std_export)
    assert man["method"] == "neglabel" and man["head"] == "standard" and man["precision"] == "fp32"
    assert man["classes"] == CLASSES and man["num_id"] == K and man["groups"] == G
    assert man["temperature"] == 0.01 and man["threshold"] is None
    assert man["batch"] == {"min": 1, "opt": 8, "max": 16}
    cfg = preprocess_config(neglabel.clip)
    pre = man["preprocess"]
    assert pre["image_size"] == list(cfg["size"]) and pre["interpolation"] == cfg["interpolation"]
    assert pre["mean"] == pytest.approx(list(cfg["mean"])) and pre["std"] == pytest.approx(list(cfg["std"]))
    assert {"fastood", "torch", "onnx", "opset"} <= set(man["versions"]) and man["versions"]["opset"] >= 17
    assert man["bank"]["rows"] == K + G * (M // G)
    copy = write_manifest(man, tmp_path / "m.manifest.json")
    assert read_manifest(copy) == man
    assert json.loads(copy.read_text()) == man


def test_threshold_and_image_files_agree_with_torch(clip, bank, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    for i in range(9):
        arr = rng.integers(0, 256, size=(40 + 3 * i, 48, 3), dtype=np.uint8)
        im = Image.fromarray(arr)
        im = im.convert("L") if i == 3 else im.convert("RGBA") if i == 4 else im
        im.save(img_dir / f"img{i}.png")
    (img_dir / "broken.png").write_bytes(b"not an image")
    det = NegLabel(clip, bank=bank, groups=G, device="cpu")
    skipped_t: list = []
    s = torch.sort(det.score(img_dir, on_error="skip", skipped=skipped_t)).values
    gap = int(torch.argmax(s[1:] - s[:-1]))
    det.threshold = float((s[gap] + s[gap + 1]) / 2)  # between two scores: is_ood cannot flip on rounding
    path = fx.to_onnx(det, tmp_path / "deploy")
    assert read_manifest(manifest_path_for(path))["threshold"] == det.threshold
    rt = fx.load(tmp_path / "deploy")
    assert rt.threshold == det.threshold
    skipped_r: list = []
    p_rt = rt.predict(img_dir, on_error="skip", skipped=skipped_r, batch_size=4)
    p_t = det.predict(img_dir, on_error="skip")
    assert [s[0] for s in skipped_r] == [s[0] for s in skipped_t] == [str(img_dir / "broken.png")]
    assert p_rt.names == p_t.names and len(p_rt.names) == 9
    assert (p_rt.scores - p_t.scores).abs().max() < 2e-6
    assert torch.equal(p_rt.labels, p_t.labels) and torch.equal(p_rt.is_ood, p_t.is_ood)
    assert 0 < int(p_rt.is_ood.sum()) < 9
    assert rt.calibrate(p_t.scores, tpr=0.5) == det.calibrate(p_t.scores, tpr=0.5)
    with pytest.raises(Exception, match="broken.png"):
        rt.score(img_dir)  # on_error="raise" names the file


def _copy_export(src: Path, dst: Path) -> Path:
    shutil.copytree(src.parent, dst)
    return dst / src.name


def test_corrupt_or_mismatched_files(std_export, fused_export, tmp_path):
    # missing pieces
    d = _copy_export(std_export, tmp_path / "a")
    manifest_path_for(d).unlink()
    with pytest.raises(FileNotFoundError, match="no manifest"):
        fx.load(d)
    with pytest.raises(FileNotFoundError, match="no .*manifest"):
        fx.load(d.parent)
    d = _copy_export(std_export, tmp_path / "b")
    d.unlink()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fx.load(d.parent)
    # a modified model (same size) and a truncated one
    d = _copy_export(std_export, tmp_path / "c")
    raw = bytearray(d.read_bytes())
    raw[-10] ^= 0x01
    d.write_bytes(bytes(raw))
    with pytest.raises(ManifestError, match="does not match its manifest"):
        fx.load(d)
    d.write_bytes(bytes(raw[:1000]))
    with pytest.raises(ManifestError, match="truncated"):
        fx.load(d)
    # a model from another export under this manifest
    d = _copy_export(std_export, tmp_path / "d")
    shutil.copy(fused_export, d)
    with pytest.raises(ManifestError, match="does not match its manifest"):
        fx.load(d)
    # corrupt / foreign / incomplete manifests
    d = _copy_export(std_export, tmp_path / "e")
    mp = manifest_path_for(d)
    good = json.loads(mp.read_text())
    mp.write_text("{ not json")
    with pytest.raises(ManifestError, match="corrupt"):
        fx.load(d)
    for edit, msg in [
        (lambda m: m.update(format="something.else"), "not a fastood export manifest"),
        (lambda m: m.update(version=99), "version 99"),
        (lambda m: m.pop("classes"), "'classes'"),
        (lambda m: m.update(num_id=3), "num_id"),
        (lambda m: m.update(temperature="hot"), "'temperature'"),
        (lambda m: m["batch"].update(min=64), "batch"),
    ]:
        bad = json.loads(json.dumps(good))
        edit(bad)
        mp.write_text(json.dumps(bad))
        with pytest.raises(ManifestError, match=msg):
            fx.load(d)
    # a manifest that disagrees with the graph it points to (hashes still match)
    for edit, msg in [
        (lambda m: m["preprocess"].update(image_size=[64, 64]), "input of shape"),
        (lambda m: m.update(head="fused"), "custom node"),
    ]:
        bad = json.loads(json.dumps(good))
        edit(bad)
        mp.write_text(json.dumps(bad))
        with pytest.raises(ManifestError, match=msg):
            fx.load(d)
    # a file that is not ONNX at all, with a manifest that vouches for it
    bad = json.loads(json.dumps(good))
    d.write_bytes(b"\x00garbage" * 100)
    bad["files"]["model.onnx"] = {"sha256": file_sha256(d), "bytes": d.stat().st_size}
    mp.write_text(json.dumps(bad))
    with pytest.raises(ManifestError, match="not a readable ONNX model"):
        fx.load(d)


PROTECTED_EDITS = [
    ("preprocess", lambda m: m["preprocess"].update(mean=[0.5, 0.5, 0.5])),
    ("preprocess", lambda m: m["preprocess"].update(interpolation="nearest")),
    ("classes", lambda m: m["classes"].reverse()),
    ("temperature", lambda m: m.update(temperature=0.02)),
    ("groups", lambda m: m.update(groups=2)),
    ("threshold", lambda m: m.update(threshold=0.5)),
    ("precision", lambda m: m.update(precision="fp16")),
    ("bank", lambda m: m["bank"].update(sha256="0" * 64)),
]


@pytest.mark.parametrize("field, edit", PROTECTED_EDITS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(PROTECTED_EDITS)])
def test_edited_result_fields_are_refused(std_export, tmp_path, field, edit):
    """Fields the graph fixes (or that change decisions) cannot be edited in the manifest: the graph
    carries the exported values and load() names the field that differs."""
    d = _copy_export(std_export, tmp_path / "x")
    mp = manifest_path_for(d)
    man = json.loads(mp.read_text())
    edit(man)
    mp.write_text(json.dumps(man))
    with pytest.raises(ManifestError, match=f"'{field}'.*differ"):
        fx.load(d)


def test_fields_that_do_not_change_results_may_be_edited(neglabel, std_export, tmp_path):
    d = _copy_export(std_export, tmp_path / "x")
    mp = manifest_path_for(d)
    man = json.loads(mp.read_text())
    man["batch"] = {"min": 1, "opt": 2, "max": 3}
    man["model"] = {"name": "renamed", "pretrained": None}
    mp.write_text(json.dumps(man))
    x = _pixels(5, seed=3)
    rt = fx.load(d)
    assert rt.max_batch == 3 and (rt.score(x) - neglabel.score(x)).abs().max() < 2e-6


def test_every_external_data_file_the_graph_loads_is_verified(neglabel, tmp_path):
    ext = fx.to_onnx(neglabel, tmp_path / "ext", external_data=True)
    mp = manifest_path_for(ext)
    man = json.loads(mp.read_text())
    del man["files"]["model.onnx.data"]  # the graph still loads it
    mp.write_text(json.dumps(man))
    data = ext.parent / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # unverified, it would move the scores
    data.write_bytes(bytes(raw))
    with pytest.raises(ManifestError, match="loads external data from 'model.onnx.data'.*does not list"):
        fx.load(ext)


def test_symlinks_out_of_the_export_folder_are_refused(neglabel, std_export, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    # the model file: a link to an identical copy outside the folder (its sha256 matches)
    d = _copy_export(std_export, tmp_path / "a")
    shutil.move(str(d), outside / "model.onnx")
    d.symlink_to(outside / "model.onnx")
    with pytest.raises(ManifestError, match="outside the export folder"):
        fx.load(d.parent)
    # the manifest
    d = _copy_export(std_export, tmp_path / "b")
    mp = manifest_path_for(d)
    shutil.move(str(mp), outside / mp.name)
    mp.symlink_to(outside / mp.name)
    with pytest.raises(ManifestError, match="outside the export folder"):
        fx.load(d.parent)
    # a link inside the folder is fine
    d = _copy_export(std_export, tmp_path / "c")
    shutil.move(str(d), d.parent / "real.onnx")
    d.symlink_to("real.onnx")
    x = _pixels(3, seed=5)
    assert (fx.load(d.parent).score(x) - neglabel.score(x)).abs().max() < 2e-6


def test_non_finite_input_raises_like_the_torch_detector(neglabel, std_export):
    rt = fx.load(std_export, provider="cpu")
    x = _pixels(4, seed=9)
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[2, 1, 5, 7] = bad
        with pytest.raises(ValueError, match="non-finite"):
            neglabel.score(y)
        with pytest.raises(ValueError, match="non-finite values \\(first in image 2\\)"):
            rt.run(y)
        with pytest.raises(ValueError, match="non-finite"):
            rt.score(y)
    assert torch.isfinite(rt.score(x)).all()


def test_bad_arguments(neglabel, clip, std_export, tmp_path):
    from fastood.detectors import KNN

    with pytest.raises(ValueError, match="head"):
        fx.to_onnx(neglabel, tmp_path, head="bogus")
    with pytest.raises(ValueError, match="min <= opt <= max"):
        fx.to_onnx(neglabel, tmp_path, batch="8:4:16")
    with pytest.raises(ValueError, match="MIN:OPT:MAX"):
        fx.parse_batch("1-2-3")
    with pytest.raises(ValueError, match="opset"):
        fx.to_onnx(neglabel, tmp_path, opset=16)
    with pytest.raises(ValueError, match="exporter='dynamo'"):
        fx.to_onnx(neglabel, tmp_path, head="fused", exporter="legacy")
    with pytest.raises(ValueError, match="NegLabel or MCM"):
        fx.to_onnx(KNN(clip, device="cpu"), tmp_path)
    with pytest.raises(ValueError, match="not available"):
        fx.load(std_export, provider="NoSuchExecutionProvider")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ValueError, match="onnxruntime-gpu"):
            fx.load(std_export, provider="cuda")
    rt = fx.load(std_export)
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        rt.run(torch.randn(2, 3, 64, 64))
    assert not list(tmp_path.iterdir())  # nothing half-written


# ----------------------------------------------------------------------------- CLI
def test_cli_with_bank_and_random_tiny_model(tmp_path, capsys):
    from fastood.export.__main__ import main

    bank = _random_bank(seed=2)
    bank_file = bank.save(tmp_path / "bank.safetensors")
    out = tmp_path / "deploy"
    rc = main(["--onnx", "--model", "ViT-B-32", "--pretrained", "none", "--model-kwargs", json.dumps(TINY),
               "--seed", "3", "--bank", str(bank_file), "--groups", "7", "--batch", "1:4:16", "--device", "cpu",
               "--threshold", "0.25", "--quiet", "--verify", "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "RANDOM weights" in cap.err
    assert "verify: max |score(torch) - score(onnxruntime)|" in cap.out
    man = read_manifest(out / "model.manifest.json")
    assert man["classes"] == CLASSES and man["groups"] == 7 and man["threshold"] == 0.25
    assert man["batch"] == {"min": 1, "opt": 4, "max": 16}
    # the CLI's seeded random model is reproducible: the same detector built here agrees with the export
    det = NegLabel(_tiny_clip(seed=3), bank=bank, groups=7, device="cpu", threshold=0.25)
    x = _pixels(5, seed=9)
    rt = fx.load(out)
    p_rt, p_t = rt.predict(x), det.predict(x)
    assert (p_rt.scores - p_t.scores).abs().max() < 2e-6
    assert torch.equal(p_rt.labels, p_t.labels) and torch.equal(p_rt.is_ood, p_t.is_ood)


def test_cli_errors(tmp_path, capsys):
    from fastood.export.__main__ import main

    common = ["--model", "ViT-B-32", "--pretrained", "none", "--model-kwargs", json.dumps(TINY), "--device", "cpu",
              "--quiet", "--out", str(tmp_path / "o")]
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert main(["--trt", *common]) == 2
        err = capsys.readouterr().err
        assert "TensorRT is not installed" in err and "--onnx" in err
        assert not (tmp_path / "o").exists()  # failed before doing any work
    assert main(["--onnx", "--model-kwargs", "{not json", "--out", str(tmp_path / "o")]) == 2
    assert "--model-kwargs is not valid JSON" in capsys.readouterr().err
    assert main(["--onnx", "--bank", str(tmp_path / "missing.safetensors"), *common]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--onnx", "--trt", *common])  # mutually exclusive


# ----------------------------------------------------------------------------- TensorRT
def test_tensorrt_missing_is_a_clear_error(std_export):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is installed")
    from fastood.export.runtime_trt import TensorRTUnavailable

    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        fx.to_tensorrt(std_export)
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        fx.load(std_export, provider="tensorrt")


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.parametrize("fp16", [False, True])
def test_tensorrt_engine_matches_onnxruntime(neglabel, std_export, tmp_path, fp16):
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from fastood.export.runtime_trt import trt_major

    src = std_export
    if fp16 and trt_major() >= 11:
        src = fx.to_onnx(neglabel, tmp_path / "fp16", fp16=True, batch=(1, 8, 16))
    engine = fx.to_tensorrt(src, fp16=True if fp16 and trt_major() < 11 else None)
    assert engine.is_file() and fx.to_tensorrt(src, fp16=True if fp16 and trt_major() < 11 else None) == engine
    rt = fx.load(src, provider="tensorrt", fp16=True if fp16 and trt_major() < 11 else None)
    x = _pixels(11, seed=4)
    truth, pred = _truth(neglabel, x)
    score, got_pred = rt.run(x)
    assert (score.cpu().double() - truth).abs().max() < (5e-3 if fp16 else 1e-4)
    if not fp16:
        assert torch.equal(got_pred.cpu(), pred)


# ------------------------------------------------------------ TensorRT build logic, on a stand-in module
class _FakeTRT:
    """The slice of the TensorRT 10 / 11 Python API that build_engine uses, recording calls.

    The parser turns the ONNX file's nodes into layers named like them (as TensorRT's
    ONNX parser does), so precision pinning is checked against the real exported graph.
    TensorRT 11 has no FP16 / precision-constraint flags and no per-layer precision.
    """

    float32, float16, int32, int64, bool = "f32", "f16", "i32", "i64", "bool"

    def __init__(self, version: str):
        import types

        self.__version__ = version
        self.major = int(version.split(".")[0])
        self.calls: list = []
        fake = self
        self.Logger = type("Logger", (), {"WARNING": 2, "VERBOSE": 4, "__init__": lambda s, level: None})
        self.LayerType = types.SimpleNamespace(NORMALIZATION="norm", OTHER="other")
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
        flags = {"STRONGLY_TYPED_UNUSED": "x"}
        if self.major < 11:
            flags.update(FP16="FP16", OBEY_PRECISION_CONSTRAINTS="OBEY", PREFER_PRECISION_CONSTRAINTS="PREFER")
        self.BuilderFlag = types.SimpleNamespace(**flags)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="ws")

        class Tensor:
            def __init__(self, dtype):
                self.dtype = dtype

        class Layer:
            def __init__(self, name, kind, out_dtype):
                self.name, self.type, self._outs = name, kind, [Tensor(out_dtype)]
                self.num_outputs = 1
                self.pinned = False

            def get_output(self, i):
                return self._outs[i]

            def __setattr__(self, key, value):
                if key in ("precision", "compute_precision") and fake.major >= 11:
                    raise AttributeError(f"TensorRT 11 has no ILayer.{key}")
                if key == "precision":
                    object.__setattr__(self, "pinned", True)
                object.__setattr__(self, key, value)

            def set_output_type(self, i, dt):
                assert fake.major < 11
                self._outs[i].dtype = dt

        class Network:
            def __init__(self, flags):
                self.flags, self.layers = flags, []

            @property
            def num_layers(self):
                return len(self.layers)

            def get_layer(self, i):
                return self.layers[i]

        class Parser:
            def __init__(self, network, logger):
                self.network, self.num_errors = network, 0

            def parse_from_file(self, path):
                m = onnx.load(path)
                ints = {"ArgMax", "Shape", "Cast"}
                for n in m.graph.node:
                    kind = "norm" if n.op_type == "LayerNormalization" else "other"
                    self.network.layers.append(Layer(n.name, kind, "i64" if n.op_type in ints else "f32"))
                fake.calls.append(("parse", path))
                return True

        class Config:
            def __init__(self):
                self.flags, self.profiles = set(), []

            def set_flag(self, f):
                self.flags.add(f)

            def clear_flag(self, f):
                self.flags.discard(f)

            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("workspace", size))

            def add_optimization_profile(self, p):
                self.profiles.append(p)

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.calls.append(("profile", name, lo, opt, hi))

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags=0):
                fake.network = Network(flags)
                return fake.network

            def create_builder_config(self):
                fake.config = Config()
                return fake.config

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build", network.flags, frozenset(config.flags)))
                return b"serialized-engine"

        self.Builder, self.OnnxParser = Builder, Parser


@pytest.mark.parametrize("version", ["10.8.0", "11.1.0"])
def test_tensorrt_build_logic_with_a_stand_in(neglabel, std_export, tmp_path, monkeypatch, version):
    import sys

    from fastood.export.runtime_trt import build_engine, engine_key

    fake = _FakeTRT(version)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    kw = dict(image_size=(32, 32), batch=(1, 8, 16))
    # fp32 file, fp32 engine: no precision flags, explicit (non strongly typed) network
    out = build_engine(std_export, tmp_path / "a.engine", **kw)
    assert out.read_bytes() == b"serialized-engine"
    assert ("profile", "pixels", (1, 3, 32, 32), (8, 3, 32, 32), (16, 3, 32, 32)) in fake.calls
    assert fake.calls[-1] == ("build", 0, frozenset())
    # an fp16 file: strongly typed, precision from the file (10.x sets the flag; 11.x always is)
    fp16_file = fx.to_onnx(neglabel, tmp_path / "f16", fp16=True)
    build_engine(fp16_file, tmp_path / "b.engine", onnx_precision="fp16", **kw)
    assert fake.calls[-1] == ("build", 1 if fake.major < 11 else 0, frozenset())
    # an fp32 file with fp16=True: TensorRT 10's builder flag + fp32 LayerNorm / head; an error on 11
    if fake.major >= 11:
        with pytest.raises(ValueError, match="export with fp16=True"):
            build_engine(std_export, tmp_path / "c.engine", fp16=True, **kw)
    else:
        build_engine(std_export, tmp_path / "c.engine", fp16=True, **kw)
        assert fake.calls[-1] == ("build", 0, frozenset({"FP16", "OBEY"}))
        layers = fake.network.layers
        pinned = {ly.name for ly in layers if ly.pinned}
        norms = {ly.name for ly in layers if ly.type == "norm"}
        head_float = {ly.name for ly in layers if ly.name.startswith("fastood_head/") and "ArgMax" not in ly.name
                      and "Cast" not in ly.name}
        assert norms and head_float and pinned == norms | head_float
        assert all(ly.get_output(0).dtype == "f32" for ly in layers if ly.pinned)
    with pytest.raises(ValueError, match="fp16=False"):
        build_engine(fp16_file, tmp_path / "d.engine", onnx_precision="fp16", fp16=False, **kw)
    assert not list(tmp_path.glob(".*.tmp"))
    k = engine_key(version, "90", "ab" * 32, {"fp16": True, "batch": [1, 8, 16]})
    assert k.startswith(f"trt{version}-sm90-{'ab' * 8}-") and k != engine_key(version, "80", "ab" * 32, {"fp16": True, "batch": [1, 8, 16]})


def test_standard_head_normalises_over_the_fp32_range(bank):
    """The exported head's row normalisation: features ·1e30 / ·1e-30 score as the features (float64 truth)."""
    from fastood.export.graph import StandardHead

    emb = bank.embeddings
    head = StandardHead(emb, K, G, 0.01, "neglabel")
    f = torch.randn(5, 32, generator=torch.Generator().manual_seed(4))
    kept = emb[: K + G * (M // G)].double()
    for factor in (1.0, 1e30, 1e-30):
        x = f * factor
        score, pred = head(x)
        truth = R.neglabel_score(x.double(), kept, K, groups=G, temperature=0.01)
        assert torch.isfinite(score).all() and (score.double() - truth).abs().max() < 1e-5
        assert torch.equal(pred, (x.double() @ kept[:K].T).argmax(1))
