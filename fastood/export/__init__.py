"""Ship a detector as one artifact: ONNX / TensorRT export and the runtimes that load it.

    import fastood.export as fx
    path = fx.to_onnx(detector, "deploy/")                       # deploy/model.onnx + model.manifest.json
    engine = fx.to_tensorrt(path, fp16=True)                     # cached engine (needs TensorRT + GPU)
    det = fx.load("deploy/", provider="auto")                    # onnxruntime (or provider="tensorrt")
    det.score("photos/"); det.predict(images)                    # the detectors' contract, no model code

The graph (:mod:`fastood.export.graph`) is the whole detector — pixels (B,3,H,W)
f32 → image encoder → row normalisation → similarity with the bank (a constant)
→ segmented log-sum-exp → ``score`` (B,) f32 and ``pred`` (B,) int64 — with a
dynamic batch, at opset ≥ 17. ``head="standard"`` writes the head with standard
ONNX ops (runs anywhere); ``head="fused"`` writes one ``fastood::SegmentLSEScore``
node that the TensorRT plugin implements. The manifest
(:mod:`fastood.export.manifest`) carries everything else a runtime needs.
Command line: ``python -m fastood.export --help``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from fastood.export.manifest import ManifestError, manifest_path_for

__all__ = ["to_onnx", "to_tensorrt", "load", "detector_spec", "parse_batch", "ManifestError", "EXPORTABLE_METHODS"]

EXPORTABLE_METHODS = ("neglabel", "mcm")


def parse_batch(batch: Any) -> tuple[int, int, int]:
    """``(min, opt, max)`` from a 3-sequence or a ``"MIN:OPT:MAX"`` string; 1 ≤ min ≤ opt ≤ max."""
    if isinstance(batch, str):
        parts = batch.split(":")
        try:
            batch = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"batch must look like MIN:OPT:MAX (e.g. 1:32:256), got {batch!r}") from None
    if not (isinstance(batch, (tuple, list)) and len(batch) == 3):
        raise ValueError(f"batch must be (min, opt, max), got {batch!r}")
    if any(isinstance(b, bool) or not isinstance(b, int) for b in batch):
        raise TypeError(f"batch entries must be ints, got {batch!r}")
    bmin, bopt, bmax = batch
    if not 1 <= bmin <= bopt <= bmax:
        raise ValueError(f"batch must satisfy 1 <= min <= opt <= max, got {tuple(batch)}")
    return int(bmin), int(bopt), int(bmax)


def _sha256_tensor(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().float().numpy().tobytes()).hexdigest()


def detector_spec(detector: Any) -> dict[str, Any]:
    """What an export needs from a NegLabel / MCM detector (the contract's attributes).

    Returns ``model`` (the open_clip model), ``bank`` (N, D) f32 (the ID rows only for
    MCM), ``method``, ``num_id``, ``groups``, ``temperature``, ``classes``,
    ``threshold``, ``preprocess`` (:func:`fastood.images.preprocess_config` dict) and
    provenance. Other detectors raise ``ValueError``: their scores are not the
    segmented LSE over a fixed text bank (kNN / Mahalanobis need the fitted features,
    InterNeg's bank changes at test time).
    """
    from fastood.images import preprocess_config

    method = getattr(detector, "name", None)
    if method not in EXPORTABLE_METHODS:
        raise ValueError(
            f"detector must be a NegLabel or MCM detector (name in {EXPORTABLE_METHODS}), got "
            f"{type(detector).__name__} with name={method!r}: only fixed-bank text detectors export to one graph"
        )
    space = getattr(detector, "feature_space", "projection")
    if space != "projection":
        raise ValueError(f"detector.feature_space must be 'projection' to export (the bank lives there), got {space!r}")
    clip = getattr(detector, "clip", None)
    model = getattr(clip, "model", None)
    if model is None:
        raise ValueError("detector has no model (detector.clip.model): build it with a ClipBundle or model=")
    bank = getattr(detector, "bank", None)
    emb = getattr(bank, "embeddings", None)
    if not isinstance(emb, torch.Tensor) or emb.dim() != 2:
        raise ValueError("detector.bank must be a fastood.bank.TextBank with an (N, D) embeddings tensor")
    num_id = int(detector.num_id)
    classes = list(detector.classes)
    if len(classes) != num_id:
        raise ValueError(f"detector has {len(classes)} class names but num_id={num_id}")
    if method == "mcm":
        emb, groups = emb[:num_id], 1
    else:
        groups = int(detector.groups)
        num_neg = emb.shape[0] - num_id
        if not 1 <= groups <= num_neg:
            raise ValueError(f"detector.groups={groups} must be in [1, {num_neg}] (the bank's negatives)")
        emb = emb[: num_id + groups * (num_neg // groups)]
    cfg = preprocess_config(clip if getattr(clip, "preprocess", None) is not None else model)
    threshold = getattr(detector, "threshold", None)
    return {
        "model": model,
        "bank": emb.detach().float().cpu(),
        "method": method,
        "num_id": num_id,
        "groups": groups,
        "temperature": float(detector.temperature),
        "classes": classes,
        "threshold": None if threshold is None else float(threshold),
        "preprocess": cfg,
        "model_info": {"name": getattr(clip, "name", None), "pretrained": getattr(clip, "pretrained", None)},
        "bank_meta": dict(getattr(bank, "meta", {}) or {}),
    }


def _model_path(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if p.suffix.lower() == ".onnx":
        return p
    if p.exists() and not p.is_dir():
        raise ValueError(f"path must be a directory or a .onnx file, got the existing file {str(p)!r}")
    return p / "model.onnx"


def to_onnx(
    detector: Any,
    path: str | os.PathLike,
    *,
    head: str = "standard",
    fp16: bool = False,
    batch: Sequence[int] | str = (1, 32, 256),
    opset: int | None = None,
    exporter: str = "dynamo",
    external_data: bool | None = None,
) -> Path:
    """Export a NegLabel / MCM detector to ONNX plus its manifest; returns the model path.

    Args:
        detector: a :class:`fastood.detectors.NegLabel` or ``MCM`` (with its model).
        path: a directory (→ ``<dir>/model.onnx``) or a ``.onnx`` file; the manifest
            is written beside it as ``<stem>.manifest.json``.
        head: ``"standard"`` (standard ONNX ops, any runtime) or ``"fused"`` (one
            ``fastood::SegmentLSEScore`` node for the TensorRT plugin).
        fp16: encoder in half precision (LayerNorm and the head stay fp32; the
            graph's input and outputs keep their dtypes).
        batch: ``(min, opt, max)`` batch sizes — the batch axis is dynamic; these
            are recorded for the TensorRT optimization profile and the runtimes.
        opset: ONNX opset (≥ 17; default 18).
        exporter: ``"dynamo"`` (default) or ``"legacy"`` (TorchScript; standard head only).
        external_data: store weights in ``<model>.data`` (default: only above ~1.9 GB).
    """
    from fastood.export import manifest as mf
    from fastood.export.graph import HEADS, build_graph
    from fastood.export.onnx_export import DEFAULT_OPSET, export_graph

    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if not isinstance(fp16, bool):
        raise TypeError(f"fp16 must be a bool, got {type(fp16).__name__}")
    bmin, bopt, bmax = parse_batch(batch)
    opset = DEFAULT_OPSET if opset is None else opset
    spec = detector_spec(detector)
    h, w = spec["preprocess"]["size"]
    visual = getattr(spec["model"], "visual", None)
    vsize = getattr(visual, "image_size", None)
    if vsize is not None:
        vsize = tuple(vsize) if isinstance(vsize, (tuple, list)) else (vsize, vsize)
        if tuple(vsize) != (h, w):
            raise ValueError(f"the preprocess crops to {(h, w)} but the image encoder expects {tuple(vsize)}")
    path = _model_path(path)
    graph = build_graph(spec["model"], spec["bank"], method=spec["method"], num_id=spec["num_id"],
                        groups=spec["groups"], temperature=spec["temperature"], head=head, fp16=fp16)
    pre = spec["preprocess"]
    bank_meta = spec["bank_meta"]
    manifest = {
        "format": mf.FORMAT,
        "version": mf.FORMAT_VERSION,
        "model_file": path.name,
        "files": {},  # filled in once the files exist
        "method": spec["method"],
        "head": head,
        "precision": "fp16" if fp16 else "fp32",
        "input": {"name": "pixels", "shape": ["batch", 3, h, w], "dtype": "float32"},
        "outputs": {"score": {"shape": ["batch"], "dtype": "float32"}, "pred": {"shape": ["batch"], "dtype": "int64"}},
        "preprocess": {"image_size": [h, w], "mean": list(pre["mean"]), "std": list(pre["std"]),
                       "interpolation": pre["interpolation"], "resize_mode": pre["resize_mode"]},
        "classes": spec["classes"],
        "num_id": spec["num_id"],
        "groups": spec["groups"],
        "temperature": spec["temperature"],
        "threshold": spec["threshold"],
        "batch": {"min": bmin, "opt": bopt, "max": bmax},
        "bank": {"rows": int(spec["bank"].shape[0]), "dim": int(spec["bank"].shape[1]),
                 "sha256": _sha256_tensor(spec["bank"]),
                 "text_weights_sha256": bank_meta.get("text_weights_sha256")},
        "model": spec["model_info"],
        "custom_ops": ([{"domain": "fastood", "op_type": "SegmentLSEScore", "version": 1}] if head == "fused" else []),
        "versions": mf.versions(opset, exporter),
        "created": mf.now_utc(),
    }
    # the graph carries the result-changing fields, so a later edit of the manifest is detected
    meta = {"fastood.method": spec["method"], "fastood.head": head, "fastood.manifest": manifest_path_for(path).name,
            mf.PROTECTED_META_KEY: mf.protected_fields(manifest)}
    files = export_graph(graph, path, image_size=(h, w), opset=opset, exporter=exporter,
                         external_data=external_data, metadata=meta)
    manifest["files"] = {f.name: mf.file_entry(f) for f in files}
    mf.write_manifest(manifest, manifest_path_for(path))
    return path


def to_tensorrt(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike | None = None,
    *,
    fp16: bool | None = None,
    batch: Sequence[int] | str | None = None,
    workspace_gb: float | None = None,
    plugin: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Build (or reuse from the cache) a TensorRT engine for an exported model; returns its path.

    ``engine_path`` defaults to the cache entry ``<export dir>/engines/<key>.engine``
    (key: TensorRT version, GPU compute capability, model sha256, options).
    ``fp16=None`` keeps the ONNX file's precision; ``fp16=True`` on an fp32 file
    needs TensorRT 10 (see :func:`fastood.export.runtime_trt.build_engine`).
    ``batch`` overrides the manifest's (min, opt, max). Needs ``tensorrt`` and a GPU.
    """
    from fastood.export import manifest as mf
    from fastood.export.runtime_trt import _compute_capability, build_engine, cached_engine_path, import_tensorrt

    import_tensorrt()
    mpath, model = mf.resolve(onnx_path)
    manifest = mf.read_manifest(mpath)
    mf.verify_files(manifest, model.parent)
    _check_graph(manifest, model)
    prof = parse_batch(batch) if batch is not None else (manifest["batch"]["min"], manifest["batch"]["opt"], manifest["batch"]["max"])
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
    if device is None:
        _compute_capability(torch.device("cpu"))  # raises the clear "needs a CUDA GPU" error
    default_location = engine_path is None
    if default_location:
        engine_path = cached_engine_path(manifest, model.parent, fp16=fp16, batch=prof, device=device)
    engine_path = Path(engine_path)
    if not engine_path.is_file() or force:
        h, w = manifest["preprocess"]["image_size"]
        build_engine(model, engine_path, input_name=manifest["input"]["name"], image_size=(h, w), batch=prof,
                     onnx_precision=manifest["precision"], fp16=fp16, fused=manifest["head"] == "fused",
                     workspace_gb=workspace_gb, plugin=plugin)
    if default_location:  # load(provider="tensorrt") then finds this engine without repeating the options
        manifest["tensorrt"] = {"fp16": bool(fp16), "batch": list(prof)}
        mf.write_manifest(manifest, mpath)
    return engine_path


def load(path: str | os.PathLike, provider: str = "auto", **options: Any):
    """Load an exported detector: an object with ``score(images)`` / ``predict(images)``.

    Args:
        path: the export directory, the ``.onnx`` file or its manifest.
        provider: ``"auto"`` (onnxruntime with CUDA when it has it, else CPU; TensorRT
            for a fused-head model), ``"cpu"``, ``"cuda"``, an onnxruntime provider
            name, or ``"tensorrt"`` (a cached engine, built on first use).
        options: for onnxruntime ``threads``, ``batch_size``; for TensorRT
            ``engine_path``, ``fp16``, ``batch``, ``cache_dir``, ``device``,
            ``batch_size``, ``plugin``, ``workspace_gb``.

    The manifest and every model file are verified first (sha256): a missing,
    corrupt or mismatched file raises ``FileNotFoundError`` / :class:`ManifestError`;
    so does a manifest whose result-changing fields differ from those the graph was
    exported with, a graph that loads an external-data file the manifest does not
    list, and a file that is a symlink out of the export folder
    (:mod:`fastood.export.manifest`). Needs ``onnx`` to read the graph.
    """
    from fastood.export import manifest as mf

    if not isinstance(provider, str):
        raise TypeError(f"provider must be a string, got {type(provider).__name__}")
    mpath, model = mf.resolve(path)
    manifest = mf.read_manifest(mpath)
    mf.verify_files(manifest, model.parent)
    _check_graph(manifest, model)
    if provider in ("tensorrt", "trt") or (provider == "auto" and manifest["head"] == "fused"):
        from fastood.export.runtime_trt import TrtDetector

        return TrtDetector(manifest, model, **options)
    from fastood.export.runtime_ort import OrtDetector

    return OrtDetector(manifest, model, provider=provider, **options)


def _check_graph(manifest: dict[str, Any], model: Path) -> None:
    """The ONNX graph agrees with the manifest: interface (input size, outputs, custom node), the
    protected fields it was exported with, and every external-data file it loads is listed (so verified)."""
    from fastood.export import manifest as mf

    try:
        import onnx
    except ImportError as exc:
        raise ImportError("loading an exported model needs onnx to check the graph against its manifest: "
                          "pip install 'fastood[onnx]'") from exc
    try:
        m = onnx.load(str(model), load_external_data=False)
    except Exception as exc:  # DecodeError and friends
        raise ManifestError(f"{str(model)!r} is not a readable ONNX model: {exc}") from exc
    inputs = [i for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
    want = manifest["input"]
    if len(inputs) != 1 or inputs[0].name != want["name"]:
        raise ManifestError(f"{str(model)!r} has inputs {[i.name for i in inputs]}, its manifest expects [{want['name']!r}]")
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in inputs[0].type.tensor_type.shape.dim]
    h, w = manifest["preprocess"]["image_size"]
    if len(dims) != 4 or dims[1:] != [3, h, w]:
        raise ManifestError(f"{str(model)!r} takes input of shape {dims} but its manifest says (batch, 3, {h}, {w})")
    outs = sorted(o.name for o in m.graph.output)
    if outs != sorted(manifest["outputs"]):
        raise ManifestError(f"{str(model)!r} has outputs {outs}, its manifest expects {sorted(manifest['outputs'])}")
    custom = [n for n in m.graph.node if n.domain == "fastood"]
    if (manifest["head"] == "fused") != bool(custom):
        raise ManifestError(
            f"{str(model)!r} {'has' if custom else 'has no'} fastood custom node but its manifest says head={manifest['head']!r}"
        )
    props = {p.key: p.value for p in m.metadata_props}
    mf.check_protected(manifest, props.get(mf.PROTECTED_META_KEY), repr(str(model)))
    for loc in mf.external_data_files(m):
        if loc not in manifest["files"]:
            raise ManifestError(
                f"{str(model)!r} loads external data from {loc!r}, which its manifest does not list: the file cannot "
                "be verified (an export lists every file its graph loads)"
            )
