"""``python -m bench exporters``: the two ONNX exporters side by side (graph facts, no timing).

For the tiny random test model (``ViT-B-32`` shrunk to 32×32 input, one vision and one
text layer, 32-d embeddings, as in ``tests/test_export.py``) with a NegLabel standard head
(K = 6 ID labels, 35 random negatives, G = 4), export with ``exporter="dynamo"`` (the
default) and ``exporter="legacy"`` (TorchScript) and record, per exporter: the number of
nodes in the ONNX graph (top level, and including every subgraph), the file size, and the
max |Δscore| of onnxruntime's scores against the torch detector on 32 random images.
Writes ``bench/results/exporters-<device>.{json,md}`` (the README's "Exporter choice"
numbers come from this file).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bench.common import provenance, write_results

K, M, G_BANK, G = 6, 35, 5, 4
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _count_nodes(graph) -> int:
    """Nodes of ``graph`` and of every subgraph held in a node attribute (If / Loop / Scan bodies)."""
    n = 0
    for node in graph.node:
        n += 1
        for attr in node.attribute:
            if attr.HasField("g"):
                n += _count_nodes(attr.g)
            for g in attr.graphs:
                n += _count_nodes(g)
    return n


def measure(exporters: tuple[str, ...] = ("dynamo", "legacy"), n_images: int = 32) -> list[dict]:
    import onnx

    import fastood.export as fx
    from fastood.bank import TextBank
    from fastood.detectors import NegLabel
    from fastood.models import load_clip

    torch.manual_seed(0)
    clip = load_clip("ViT-B-32", pretrained="", device="cpu", **TINY)
    gen = torch.Generator().manual_seed(1)
    emb = torch.nn.functional.normalize(torch.randn(K + M, 32, generator=gen), dim=1)
    bank = TextBank(emb, [f"class {i}" for i in range(K)], [f"neg {i}" for i in range(M)], groups=G_BANK)
    det = NegLabel(clip, bank=bank, groups=G, device="cpu")
    x = torch.randn(n_images, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    ref = det.score(x).double()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for exporter in exporters:
            path = fx.to_onnx(det, Path(tmp) / exporter, exporter=exporter)
            model = onnx.load(str(path))
            got = fx.load(path).score(x).double()
            rows.append({
                "exporter": exporter,
                "nodes_top_level": len(model.graph.node),
                "nodes_with_subgraphs": _count_nodes(model.graph),
                "file_bytes": Path(path).stat().st_size,
                "max_abs_score_diff_vs_torch": float((got - ref).abs().max()),
                "images": n_images,
            })
    return rows


def main(args) -> None:
    meta = provenance("cpu")
    meta.update(model="ViT-B-32 tiny random (32 px, 1+1 layers, D=32)", head="NegLabel standard, K=6, M=35, G=4")
    rows = measure()
    lines = [
        "# bench exporters — ONNX graph facts of the two exporters (no timing)",
        "",
        f"commit {meta['commit']}, {meta['date']}, torch {meta['torch']}; {meta['model']}, {meta['head']}",
        "",
        "| exporter | nodes (top level) | nodes (incl. subgraphs) | file bytes | max abs Δscore vs torch |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['exporter']} | {r['nodes_top_level']} | {r['nodes_with_subgraphs']} | {r['file_bytes']} | "
                     f"{r['max_abs_score_diff_vs_torch']:.1e} |")
    md = "\n".join(lines) + "\n"
    print(md)
    write_results("exporters", "cpu", meta, rows, md)
