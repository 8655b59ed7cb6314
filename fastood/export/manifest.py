"""The JSON manifest written next to an exported model: everything a runtime needs.

``model.onnx`` gets ``model.manifest.json``::

    format, version          "fastood.export", 1
    model_file, files        the model file name; {file: {sha256, bytes}} for it and its external data
    method, head, precision  "neglabel"|"mcm", "standard"|"fused", "fp32"|"fp16" (encoder; the head is fp32)
    input, outputs           names, shapes (batch dim "batch"), dtypes
    preprocess               image_size [H, W], mean, std, interpolation, resize_mode
    classes, num_id          the K ID class names (pred indexes them)
    groups, temperature      G (1 for MCM), τ
    threshold                the calibrated threshold (is_ood = score < threshold) or null
    batch                    {min, opt, max}: the TensorRT optimization profile
    bank                     rows, dim, sha256 of the embeddings baked into the graph
    model                    open_clip name / pretrained tag it came from
    custom_ops               the fastood-domain nodes in the graph (fused head)
    versions                 fastood, torch, onnx, onnxscript, opset, exporter
    created                  UTC timestamp

Loading checks the format, the required keys and their types, and the sha256 of
every model file: a missing, modified or swapped file is a clear error.

**Protected fields.** Every field that changes results (:data:`PROTECTED`: method,
head, precision, input, outputs, preprocess, classes, num_id, groups, temperature,
threshold, bank) is also written, as canonical JSON, into the ONNX graph's own
metadata (``metadata_props["fastood.protected"]``). The model file is verified by
its sha256, so :func:`check_protected` can compare each manifest field with the
value the graph was exported with: an edited ``preprocess.mean``, class list,
temperature, group count or threshold is refused, naming the field. Fields that do
not change results (``batch``, the TensorRT profile; ``model``, ``versions``,
``created``, ``tensorrt``) may be edited.

**Files.** Every file the graph loads (its external-data ``location`` entries,
:func:`external_data_files`) must be listed in ``files`` (and so pass its sha256),
and the manifest, the model and every listed file must lie inside the export folder
after resolving symlinks (:func:`check_inside`): a link to a file elsewhere is refused.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from fastood._io import atomic_write_text, file_sha256

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ManifestError",
    "manifest_path_for",
    "file_sha256",
    "file_entry",
    "write_manifest",
    "read_manifest",
    "verify_files",
    "resolve",
    "PROTECTED",
    "PROTECTED_META_KEY",
    "protected_fields",
    "check_protected",
    "check_inside",
    "external_data_files",
]

FORMAT = "fastood.export"
#: 2: the graph carries the protected fields (``metadata_props["fastood.protected"]``)
FORMAT_VERSION = 2
SUFFIX = ".manifest.json"
#: manifest fields that change scores, predictions or decisions; the graph carries their exported values
PROTECTED = ("method", "head", "precision", "input", "outputs", "preprocess", "classes", "num_id", "groups",
             "temperature", "threshold", "bank")
PROTECTED_META_KEY = "fastood.protected"

# key -> accepted types (None allowed where listed)
_REQUIRED: dict[str, tuple[type, ...]] = {
    "format": (str,),
    "version": (int,),
    "model_file": (str,),
    "files": (dict,),
    "method": (str,),
    "head": (str,),
    "precision": (str,),
    "input": (dict,),
    "outputs": (dict,),
    "preprocess": (dict,),
    "classes": (list,),
    "num_id": (int,),
    "groups": (int,),
    "temperature": (float, int),
    "threshold": (float, int, type(None)),
    "batch": (dict,),
    "versions": (dict,),
}


class ManifestError(ValueError):
    """A manifest is missing, corrupt, or does not match its model file."""


def manifest_path_for(model_path: str | os.PathLike) -> Path:
    """``dir/model.onnx`` → ``dir/model.manifest.json``."""
    p = Path(model_path)
    return p.with_name(p.stem + SUFFIX)


def file_entry(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    return {"sha256": file_sha256(p), "bytes": p.stat().st_size}


def versions(opset: int, exporter: str) -> dict[str, Any]:
    """fastood / torch / onnx / onnxscript versions plus the opset and exporter used."""
    import torch

    import fastood

    out: dict[str, Any] = {"fastood": fastood.__version__, "torch": torch.__version__}
    for name in ("onnx", "onnxscript"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    out["opset"] = int(opset)
    out["exporter"] = exporter
    return out


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_manifest(manifest: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``manifest`` as JSON atomically (temp file + ``os.replace``)."""
    return atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def _check(manifest: Any, where: str) -> dict[str, Any]:
    if not isinstance(manifest, dict):
        raise ManifestError(f"manifest {where} is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{where} is not a fastood export manifest (format={manifest.get('format')!r}, expected {FORMAT!r})")
    if manifest.get("version") != FORMAT_VERSION:
        raise ManifestError(
            f"manifest {where} has version {manifest.get('version')!r}; this fastood reads version {FORMAT_VERSION}: re-export the model"
        )
    for key, types in _REQUIRED.items():
        if key not in manifest:
            raise ManifestError(f"manifest {where} is missing the key {key!r}")
        value = manifest[key]
        if isinstance(value, bool) or not isinstance(value, types):
            names = "/".join("null" if t is type(None) else t.__name__ for t in types)
            raise ManifestError(f"manifest {where}: {key!r} must be {names}, got {type(value).__name__}")
    if manifest["method"] not in ("neglabel", "mcm"):
        raise ManifestError(f"manifest {where}: unknown method {manifest['method']!r}")
    if manifest["head"] not in ("standard", "fused"):
        raise ManifestError(f"manifest {where}: unknown head {manifest['head']!r}")
    if len(manifest["classes"]) != manifest["num_id"]:
        raise ManifestError(f"manifest {where}: {len(manifest['classes'])} class names but num_id={manifest['num_id']}")
    pre = manifest["preprocess"]
    for key in ("image_size", "mean", "std", "interpolation"):
        if key not in pre:
            raise ManifestError(f"manifest {where}: preprocess is missing {key!r}")
    size = pre["image_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise ManifestError(f"manifest {where}: preprocess.image_size must be [H, W] positive ints, got {size!r}")
    for key in ("mean", "std"):
        v = pre[key]
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(s, (int, float)) for s in v)):
            raise ManifestError(f"manifest {where}: preprocess.{key} must be 3 numbers, got {v!r}")
    b = manifest["batch"]
    if not all(isinstance(b.get(k), int) for k in ("min", "opt", "max")) or not 1 <= b["min"] <= b["opt"] <= b["max"]:
        raise ManifestError(f"manifest {where}: batch must be ints 1 <= min <= opt <= max, got {b!r}")
    if manifest["model_file"] not in manifest["files"]:
        raise ManifestError(f"manifest {where}: files has no entry for the model file {manifest['model_file']!r}")
    return manifest


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a manifest (not the model files; see :func:`verify_files`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {str(path)!r} does not exist (an export writes it next to the model)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest {str(path)!r} is corrupt (not valid JSON): {exc}") from exc
    return _check(manifest, repr(str(path)))


def _canonical_json(obj: Any) -> str:
    return json.dumps(json.loads(json.dumps(obj)), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def protected_fields(manifest: dict[str, Any]) -> str:
    """Canonical JSON (sorted keys, compact) of the manifest's :data:`PROTECTED` fields — what the graph carries."""
    return _canonical_json({k: manifest.get(k) for k in PROTECTED})


def check_protected(manifest: dict[str, Any], graph_value: str | None, where: str) -> None:
    """Each :data:`PROTECTED` field of ``manifest`` equals the value the graph was exported with.

    ``graph_value`` is the graph's ``metadata_props["fastood.protected"]`` (``None`` if absent).
    """
    if graph_value is None:
        raise ManifestError(f"{where} carries no {PROTECTED_META_KEY!r} metadata (exported by an older fastood, or "
                            "not by fastood): its manifest cannot be checked against it; re-export the model")
    try:
        exported = json.loads(graph_value)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{where} has corrupt {PROTECTED_META_KEY!r} metadata: {exc}") from exc
    if not isinstance(exported, dict):
        raise ManifestError(f"{where} has malformed {PROTECTED_META_KEY!r} metadata (not a JSON object)")
    current = json.loads(protected_fields(manifest))
    changed = [k for k in PROTECTED if _canonical_json(current.get(k)) != _canonical_json(exported.get(k))]
    if changed:
        k = changed[0]
        raise ManifestError(
            f"the manifest's {', '.join(repr(c) for c in changed)} differ(s) from what {where} was exported with "
            f"(e.g. {k!r}: manifest {json.dumps(current.get(k))[:120]}, graph {json.dumps(exported.get(k))[:120]}): "
            "these fields change results and are fixed at export; re-export to change them"
        )


def check_inside(directory: str | os.PathLike, path: str | os.PathLike, what: str) -> Path:
    """``path`` resolved (symlinks followed) must lie inside ``directory`` resolved; returns it."""
    root = Path(directory).resolve()
    p = Path(path)
    real = p.resolve()
    if real != root and root not in real.parents:
        link = " (a symlink)" if p.is_symlink() else ""
        raise ManifestError(f"{what} {str(p)!r}{link} resolves to {str(real)!r}, outside the export folder "
                            f"{str(root)!r}: every file of an export must live in its folder")
    return real


def _tensors(graph: Any):
    """Every TensorProto of an ONNX graph: initializers, Constant / attribute tensors, subgraphs (recursively)."""
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def external_data_files(model_proto: Any) -> list[str]:
    """The ``location`` of every external-data tensor of an ONNX ``ModelProto`` (in order, unique)."""
    out: list[str] = []
    for t in _tensors(model_proto.graph):
        if t.data_location == 1:  # TensorProto.EXTERNAL
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc is not None and loc not in out:
                out.append(loc)
    return out


def verify_files(manifest: dict[str, Any], directory: str | os.PathLike) -> None:
    """Every file the manifest lists exists in ``directory`` (not a link out of it) with the recorded size and sha256."""
    directory = Path(directory)
    for name, entry in manifest["files"].items():
        p = directory / name
        if Path(name).name != name or name in (".", ".."):
            raise ManifestError(f"manifest lists {name!r}: file names must not contain directories")
        if p.exists():
            check_inside(directory, p, "model file")
        if not p.is_file():
            raise FileNotFoundError(f"model file {str(p)!r} listed in the manifest does not exist")
        if not isinstance(entry, dict) or "sha256" not in entry:
            raise ManifestError(f"manifest entry for {name!r} has no sha256")
        if "bytes" in entry and p.stat().st_size != entry["bytes"]:
            raise ManifestError(
                f"model file {str(p)!r} does not match its manifest ({p.stat().st_size} bytes, the manifest says "
                f"{entry['bytes']}): the file is truncated, modified, or from another export"
            )
        if file_sha256(p) != entry["sha256"]:
            raise ManifestError(
                f"model file {str(p)!r} does not match its manifest (sha256 differs): "
                "the file was modified or belongs to another export"
            )


def resolve(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(manifest_path, model_path)`` for a model file, a manifest file or an export directory."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = sorted(p.glob("*" + SUFFIX))
        if not found:
            raise FileNotFoundError(f"no *{SUFFIX} manifest in directory {str(p)!r}: is it a fastood export directory?")
        if len(found) > 1:
            raise ManifestError(
                f"directory {str(p)!r} holds several manifests ({', '.join(f.name for f in found)}): pass the model file"
            )
        mpath = found[0]
    elif p.name.endswith(SUFFIX):
        mpath = p
    else:
        if not p.exists():
            raise FileNotFoundError(f"model {str(p)!r} does not exist")
        mpath = manifest_path_for(p)
        if not mpath.is_file():
            raise FileNotFoundError(
                f"model {str(p)!r} has no manifest {mpath.name!r} next to it: export with fastood.export.to_onnx "
                "(or python -m fastood.export), which writes both"
            )
    check_inside(mpath.parent, mpath, "manifest")
    manifest = read_manifest(mpath)
    model = mpath.parent / manifest["model_file"]
    if p.is_file() and not p.name.endswith(SUFFIX) and p.resolve() != model.resolve():
        raise ManifestError(f"manifest {str(mpath)!r} describes {manifest['model_file']!r}, not {p.name!r}")
    return mpath, model
