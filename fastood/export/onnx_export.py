"""ONNX export of a :class:`fastood.export.graph.DetectorGraph`.

Exporter choice. ``torch.onnx.export(..., dynamo=True)`` (the torch.export-based
exporter, the default since torch 2.9) is used by default: with torch 2.14 it
gives a clean graph (a one-layer ViT + head is ~90 nodes against ~300 from the
TorchScript exporter, no Shape/Gather chains), it keeps ``LayerNormalization``
one node at opset ≥ 17, and it maps fastood's ``torch.library`` custom ops to
the ``fastood`` ONNX domain through ``custom_translation_table``. The legacy
TorchScript exporter (``exporter="legacy"``) also produces a correct graph for
the standard head (checked against torch to ~1e-7) and is kept as a fallback
for architectures ``torch.export`` cannot trace; it is deprecated upstream and
does not support the fused head.

The fused head node (the contract shared with the TensorRT plugin,
``fastood/export/README``-section "custom node"):

    fastood::SegmentLSEScore(features (B,D) f32, bank (N,D) f32)
        attrs num_id:int, groups:int, temperature:float, method:str, normalize:int,
              plugin_version:str = "1", plugin_namespace:str = ""
        -> score (B,) f32, pred (B,) int32            (pred then Cast to int64)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CUSTOM_DOMAIN",
    "CUSTOM_OP",
    "DEFAULT_OPSET",
    "EXPORTERS",
    "fused_head_call",
    "register_fused_schema",
    "export_graph",
]

CUSTOM_DOMAIN = "fastood"
CUSTOM_OP = "SegmentLSEScore"
CUSTOM_OP_VERSION = 1
PLUGIN_VERSION = "1"
DEFAULT_OPSET = 18
MIN_OPSET = 17
EXPORTERS = ("dynamo", "legacy")
INPUT_NAME = "pixels"
OUTPUT_NAMES = ("score", "pred")
HEAD_PREFIX = "fastood_head/"
EXTERNAL_DATA_THRESHOLD = 1_900_000_000  # bytes; protobuf's hard limit is 2 GiB


# ----------------------------------------------------------------------------- fused head
def fused_head_call(
    features: Tensor, bank: Tensor, method: str, num_id: int, groups: int, temperature: float
) -> tuple[Tensor, Tensor]:
    """The fused head as one fastood custom op call (fp32 features); eager runs the kernels."""
    import fastood.ops  # noqa: F401  (registers torch.ops.fastood.*)

    f = features.float()
    if method == "mcm":
        return torch.ops.fastood.mcm_score(f, bank[:num_id], float(temperature), True, True, "auto")
    return torch.ops.fastood.neglabel_score(f, bank, int(num_id), int(groups), float(temperature), True, True, "auto")


def _fused_schema():
    from onnx import defs

    fp = defs.OpSchema.FormalParameter
    attr = defs.OpSchema.Attribute
    at = defs.OpSchema.AttrType
    return defs.OpSchema(
        CUSTOM_OP,
        CUSTOM_DOMAIN,
        CUSTOM_OP_VERSION,
        doc=(
            "fastood fused OOD head: segmented log-sum-exp of (1/temperature)·x̂·bankᵀ. "
            "neglabel: score = mean_g sigmoid(LSE_id − LSE_g); mcm: score = exp(max_k L_k − LSE_id); "
            "pred = argmax over the num_id ID rows (first index). Implemented by the TensorRT plugin "
            "'SegmentLSEScore' (libfastood_trt_plugin.so)."
        ),
        inputs=[fp("features", "T", "(B, D) raw image features"), fp("bank", "T", "(N, D) unit-norm label embeddings")],
        outputs=[fp("score", "tensor(float)", "(B,) score, higher = more ID"), fp("pred", "tensor(int32)", "(B,) ID prediction")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "feature / bank dtype")],
        attributes=[
            attr("num_id", at.INT, "K, ID rows at the top of the bank"),
            attr("groups", at.INT, "G, negative groups (1 for mcm)"),
            attr("temperature", at.FLOAT, "tau; logits = cos / tau"),
            attr("method", at.STRING, "'neglabel' or 'mcm'"),
            attr("normalize", at.INT, "1 = L2-normalise the feature rows"),
            attr("plugin_version", at.STRING, "TensorRT plugin version", required=False),
            attr("plugin_namespace", at.STRING, "TensorRT plugin namespace", required=False),
        ],
    )


def register_fused_schema():
    """Register the ``fastood::SegmentLSEScore`` schema with onnx (idempotent); returns it.

    Registration lets ``onnx.checker`` validate the node's inputs and attributes
    and lets onnxscript emit it.
    """
    from onnx import defs

    if not defs.has(CUSTOM_OP, CUSTOM_OP_VERSION, CUSTOM_DOMAIN):
        defs.register_schema(_fused_schema())
    return defs.get_schema(CUSTOM_OP, CUSTOM_OP_VERSION, CUSTOM_DOMAIN)


def _translation_table() -> dict[Any, Any]:
    """onnxscript translations of the fused ops into the custom node (+ Cast of pred to int64)."""
    import onnxscript
    from onnxscript import ir
    from onnxscript import opset18 as op

    schema = register_fused_schema()
    seg = onnxscript.values.Op(onnxscript.values.Opset(CUSTOM_DOMAIN, CUSTOM_OP_VERSION), CUSTOM_OP, schema)

    def emit(x, bank, method, num_id, groups, temperature, normalize):
        score, pred = seg(
            x, bank, num_id=int(num_id), groups=int(groups), temperature=float(temperature), method=method,
            normalize=int(bool(normalize)), plugin_version=PLUGIN_VERSION, plugin_namespace="", _outputs=2,
        )
        return score, op.Cast(pred, to=ir.DataType.INT64)

    def neglabel(x, bank, num_id: int, groups: int, temperature: float, normalize: bool, want_pred: bool, backend: str):
        return emit(x, bank, "neglabel", num_id, groups, temperature, normalize)

    def mcm(x, id_bank, temperature: float, normalize: bool, want_pred: bool, backend: str):
        return emit(x, id_bank, "mcm", id_bank.shape[0], 1, temperature, normalize)

    return {torch.ops.fastood.neglabel_score.default: neglabel, torch.ops.fastood.mcm_score.default: mcm}


# ----------------------------------------------------------------------------- export
def _param_bytes(module: torch.nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _tidy_ir(model: Any, metadata: dict[str, str]) -> None:
    """Name the head's nodes ``fastood_head/...`` (TensorRT keeps per-layer precision by
    name), drop the exporter's per-node debug metadata (stack traces with local paths)
    and attach ``metadata`` as model properties."""
    counter = 0
    for node in model.graph.all_nodes():
        scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes", "")
        if "'head'" in scopes:
            node.name = f"{HEAD_PREFIX}{node.op_type}_{counter}"
            counter += 1
        node.metadata_props.clear()
    for value in list(model.graph.inputs) + list(model.graph.outputs) + list(model.graph.initializers.values()):
        value.metadata_props.clear()
    model.metadata_props.clear()
    model.metadata_props.update(metadata)
    model.producer_name = "fastood"


def _tidy_proto(path: Path, metadata: dict[str, str]) -> None:
    """The legacy exporter's counterpart of :func:`_tidy_ir` (its node names are module-scoped)."""
    import onnx

    m = onnx.load(str(path))
    for node in m.graph.node:
        if node.name.startswith("/head/"):
            node.name = HEAD_PREFIX + node.name[len("/head/"):]
    del m.metadata_props[:]
    for k, v in metadata.items():
        m.metadata_props.add(key=k, value=v)
    m.producer_name = "fastood"
    onnx.save(m, str(path))


def export_graph(
    graph: torch.nn.Module,
    path: str | os.PathLike,
    *,
    image_size: tuple[int, int],
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    external_data: bool | None = None,
    metadata: dict[str, str] | None = None,
) -> list[Path]:
    """Export ``graph`` (``pixels (B,3,H,W) f32 → score, pred``) to ``path`` with a dynamic batch.

    Files are written into a temporary directory next to ``path`` and moved into
    place (``os.replace``), so a crash never leaves a half-written model. A graph
    whose weights exceed ~1.9 GB (or ``external_data=True``) stores them in
    ``<path>.data`` beside the model. Returns the written files (model first).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an int >= {MIN_OPSET} (LayerNormalization is one node from 17), got {opset!r}")
    from fastood.export.graph import FusedHead

    fused = isinstance(getattr(graph, "head", None), FusedHead)
    if fused and exporter != "dynamo":
        raise ValueError("head='fused' needs exporter='dynamo' (the legacy exporter has no mapping for the custom node)")
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = _param_bytes(graph) > EXTERNAL_DATA_THRESHOLD
    device = next(iter(graph.parameters()), torch.empty(0)).device
    h, w = image_size
    example = torch.randn(2, 3, h, w, device=device)
    metadata = dict(metadata or {})
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    mha_fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.MultiheadAttention's inference fast path (_native_multi_head_attention) has no
    # ONNX mapping in the TorchScript exporter; the standard path exports everywhere
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        tmp = tmpdir / path.name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*training mode.*")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            if exporter == "dynamo":
                prog = torch.onnx.export(
                    graph, (example,), None, dynamo=True, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                    dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1)}},
                    custom_translation_table=_translation_table() if fused else None,
                    optimize=True, verbose=False,
                )
                _tidy_ir(prog.model, metadata)
                prog.save(str(tmp), external_data=external_data)
            else:
                torch.onnx.export(
                    graph, (example,), str(tmp), dynamo=False, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                    dynamic_axes={INPUT_NAME: {0: "batch"}, "score": {0: "batch"}, "pred": {0: "batch"}},
                    do_constant_folding=True,
                )
                _tidy_proto(tmp, metadata)
                if external_data:
                    import onnx

                    m = onnx.load(str(tmp))
                    onnx.save(m, str(tmp), save_as_external_data=True, location=path.name + ".data")
        produced = sorted(tmpdir.iterdir(), key=lambda p: p.name != path.name)  # model first
        written = []
        for p in reversed(produced):  # data files before the model that references them
            dest = path.parent / p.name
            os.replace(p, dest)
            written.append(dest)
        return list(reversed(written))
    finally:
        torch.backends.mha.set_fastpath_enabled(mha_fastpath)
        shutil.rmtree(tmpdir, ignore_errors=True)
