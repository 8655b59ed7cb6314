r"""The papers' OOD benchmarks in one command: protocol sets, their folder layouts, each paper's
metric convention and preprocessing, and the computed table next to the published numbers.

``fastood eval --benchmark imagenet1k --data-root DIR [--method neglabel]`` (or
``--benchmark openood-v1.5``) finds the protocol's sets under ``DIR``, scores them, and prints

    set | images | FPR95 | AUROC | published FPR95 | AUROC | Δ FPR95 | Δ AUROC

with ``Δ = computed − published`` in percentage points.

Protocols (shared/SPEC.md §8, §10)
---------------------------------
``imagenet1k`` — the MOS protocol (NegLabel, CMA, MCM): ID ImageNet-1k val (50,000); OOD
iNaturalist, SUN, Places (10,000 each, the MOS subsets) and Textures (DTD, 5,640).

``openood-v1.5`` — OpenOOD v1.5, ImageNet-1k (InterNeg, AdaNeg): near-OOD SSB-hard and NINCO;
far-OOD iNaturalist, Textures and OpenImage-O; FPR95 convention ``openood``, AUPR by the
trapezoid rule; the table adds near-OOD and far-OOD averages.

Where the sets are looked for
-----------------------------
Under ``DIR``, ``DIR/images_largescale`` and ``DIR/data/images_largescale`` (OpenOOD's tree),
each set under the folder names the papers' repositories use (first match wins, see
:data:`PROTOCOLS`), e.g. ``iNaturalist``, ``SUN``, ``Places``, ``dtd/images`` for the MOS sets
and ``imagenet_1k/val``, ``ssb_hard``, ``ninco``, ``inaturalist``, ``textures``, ``openimage_o``
for OpenOOD. Image files are collected recursively. Where OpenOOD's list files exist
(``benchmark_imglist/imagenet/test_<set>.txt`` under ``DIR`` or ``DIR/data``), exactly the files
they list are used, as OpenOOD does.

ImageNet-1k val may be an ImageFolder (one folder per class, e.g. the wnids: labels by sorted
folder order, which is the class order of CLIP's ImageNet names) or flat
(``ILSVRC2012_val_00000001.JPEG`` …) with a label file next to it or in its parent: ``val.txt``
/ ``val_labels.txt`` / ``labels.txt`` (``file label`` lines, label a 0-based class index or a
wnid), ``LOC_val_solution.csv`` (Kaggle: ``ImageId,PredictionString`` with the wnid first), or
OpenOOD's ``test_imagenet.txt``. Labels only feed the ID accuracy; without them it is ``n/a``.

A missing set is an error that lists every missing set and each place looked; a set without
any image file is an error; unreadable files are skipped and reported (and counted in the
report), like ``fastood eval``. A set whose image count differs from the protocol's is
flagged: such numbers are not comparable with the paper's.

Conventions and preprocessing by default
----------------------------------------
The published row chosen (``--published``, default from ``--method``: neglabel → NegLabel,
mcm → MCM, interneg → InterNeg) fixes the FPR95 convention (SPEC §7: NegLabel/MCM
``neglabel``, CMA ``interp``, InterNeg/AdaNeg ``openood``) and, where the paper's code
specifies one, the resize interpolation (NegLabel: ``Resize(224, bilinear) → CenterCrop(224)``).
``--convention`` / ``--interpolation`` override them (the table then says the numbers are not
on the paper's convention). ``--published cma-neglabel`` also scores with one group (the CMA
paper's test-time NegLabel score has no grouping) unless ``-o groups=…`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

__all__ = [
    "SetSpec",
    "Published",
    "Protocol",
    "PROTOCOLS",
    "BenchmarkDataError",
    "ResolvedBenchmark",
    "resolve",
    "label_map",
    "compare",
    "format_table",
    "add_cli_args",
    "run_eval",
]

#: roots under --data-root where sets are searched, in order
SEARCH_BASES = (".", "images_largescale", "data/images_largescale")
#: where OpenOOD's list files live, relative to --data-root; their paths are relative to images_largescale
IMGLIST_DIRS = (("benchmark_imglist/imagenet", "images_largescale"),
                ("data/benchmark_imglist/imagenet", "data/images_largescale"))
LABEL_FILES = ("val.txt", "val_labels.txt", "labels.txt", "LOC_val_solution.csv", "test_imagenet.txt")


class BenchmarkDataError(ValueError):
    """A protocol's data is missing, empty or malformed under ``--data-root``."""


@dataclass(frozen=True)
class SetSpec:
    """One set of a protocol.

    ``folders``: relative paths people use for it (first existing one wins);
    ``size``: the protocol's image count (SPEC §8/§10) or ``None`` where the SPEC gives none;
    ``group``: ``"id"``, ``"near"``, ``"far"`` or ``"ood"``; ``imglist``: OpenOOD's list file name.
    """

    key: str
    title: str
    folders: tuple[str, ...]
    size: int | None = None
    group: str = "ood"
    imglist: str | None = None


@dataclass(frozen=True)
class Published:
    """A paper's published result on a protocol (FPR95 / AUROC in %, CLIP ViT-B/16; SPEC §1–§4, §10)."""

    key: str
    title: str
    method: str | None  # the fastood --method that reproduces it (None: not implemented in fastood)
    convention: str
    average: tuple[float, float]
    per_set: dict[str, tuple[float, float]] = field(default_factory=dict)
    interpolation: str | None = None  # None: the model's own preprocessing (open_clip: bicubic)
    options: dict[str, Any] = field(default_factory=dict)  # detector options the paper's test uses
    note: str = ""


@dataclass(frozen=True)
class Protocol:
    key: str
    title: str
    id_set: SetSpec
    ood_sets: tuple[SetSpec, ...]
    convention: str  # the protocol's own FPR95 convention when no published row is chosen
    aupr_method: str
    published: dict[str, Published]
    note: str = ""


_IMAGENET_VAL = ("imagenet/val", "ImageNet/val", "imagenet_1k/val", "imagenet1k/val", "ILSVRC2012/val",
                 "ILSVRC/Data/CLS-LOC/val", "ILSVRC2012_img_val", "imagenet_val", "val")

_MOS = Protocol(
    key="imagenet1k",
    title="ImageNet-1k, MOS protocol (NegLabel, CMA, MCM)",
    id_set=SetSpec("imagenet", "ImageNet-1k val", _IMAGENET_VAL, 50_000, "id"),
    ood_sets=(
        SetSpec("inaturalist", "iNaturalist", ("iNaturalist", "inaturalist", "iNaturalist/images"), 10_000),
        SetSpec("sun", "SUN", ("SUN", "sun", "SUN/images"), 10_000),
        SetSpec("places", "Places", ("Places", "places", "Places365", "places365"), 10_000),
        SetSpec("textures", "Textures", ("dtd/images", "Textures", "textures", "dtd", "DTD"), 5_640),
    ),
    convention="neglabel",
    aupr_method="ap",
    published={
        "neglabel": Published(
            "neglabel", "NegLabel (Jiang et al., ICLR 2024)", "neglabel", "neglabel", (25.40, 94.21),
            {"inaturalist": (1.91, 99.49), "sun": (20.53, 95.49), "places": (35.59, 91.64),
             "textures": (43.56, 90.22)}, interpolation="bilinear"),
        "mcm": Published("mcm", "MCM (Ming et al., NeurIPS 2022)", "mcm", "neglabel", (42.74, 90.77)),
        "cma-neglabel": Published(
            "cma-neglabel", "CMA + NegLabel (Kim et al., CVPR 2025)", "neglabel", "interp", (19.93, 95.13),
            options={"groups": 1}, note="needs the CMA fine-tuned encoders (--pretrained CHECKPOINT)"),
        "interneg": Published("interneg", "InterNeg (2026)", "interneg", "openood", (14.04, 97.43)),
        "adaneg": Published("adaneg", "AdaNeg (NeurIPS 2024)", None, "openood", (18.92, 96.66),
                            note="not implemented in fastood: shown for reference"),
    },
)

_OPENOOD = Protocol(
    key="openood-v1.5",
    title="OpenOOD v1.5, ImageNet-1k (InterNeg, AdaNeg)",
    id_set=SetSpec("imagenet", "ImageNet-1k val", _IMAGENET_VAL, 50_000, "id", "test_imagenet.txt"),
    ood_sets=(
        SetSpec("ssb_hard", "SSB-hard", ("ssb_hard", "SSB_hard", "ssb-hard", "SSB-hard"), None, "near",
                "test_ssb_hard.txt"),
        SetSpec("ninco", "NINCO", ("ninco", "NINCO"), None, "near", "test_ninco.txt"),
        SetSpec("inaturalist", "iNaturalist", ("inaturalist", "iNaturalist"), None, "far", "test_inaturalist.txt"),
        SetSpec("textures", "Textures", ("textures", "Textures", "dtd/images", "dtd"), None, "far",
                "test_textures.txt"),
        SetSpec("openimage_o", "OpenImage-O", ("openimage_o", "OpenImage-O", "openimage-o", "OpenImageO"), None,
                "far", "test_openimage_o.txt"),
    ),
    convention="openood",
    aupr_method="trapezoid",
    published={},
    note="SPEC §10 gives no absolute numbers for this protocol (InterNeg reports a 5.50 % AUROC gain on "
         "near-OOD over the previous best): the table shows the computed numbers only",
)

PROTOCOLS: dict[str, Protocol] = {p.key: p for p in (_MOS, _OPENOOD)}
#: --method → the published row compared by default
DEFAULT_PUBLISHED = {"neglabel": "neglabel", "mcm": "mcm", "interneg": "interneg"}


# ------------------------------------------------------------------------------ finding the data


@dataclass
class ResolvedSet:
    spec: SetSpec
    path: Path  # the folder (or list file) the images came from
    files: list[str]
    source: str  # "folder" or "imglist"


@dataclass
class ResolvedBenchmark:
    protocol: Protocol
    data_root: Path
    id: ResolvedSet
    id_labels: list[int] | None  # per ID file, class index; None when unknown
    id_label_source: str
    ood: dict[str, ResolvedSet]
    listing_skipped: list[tuple[str, str]]
    warnings: list[str]
    #: the class names the labels index (wnid folders / wnids of a label file, sorted), when they have names
    id_label_names: list[str] | None = None


def _image_files(root: Path, skipped: list[tuple[str, str]]) -> list[str]:
    from fastood.images import scan_image_files

    files, left_out = scan_image_files([str(root)])
    skipped.extend(left_out)  # special files, broken links: reported like unreadable ones
    return sorted(str(f) for f in files)


def _find_folder(root: Path, spec: SetSpec) -> tuple[Path | None, list[Path]]:
    looked = []
    for base in SEARCH_BASES:
        for rel in spec.folders:
            p = (root / base / rel) if base != "." else (root / rel)
            looked.append(p)
            if p.is_dir():
                return p, looked
    return None, looked


def _find_imglist(root: Path, spec: SetSpec) -> tuple[Path, Path] | None:
    if spec.imglist is None:
        return None
    for lst, images in IMGLIST_DIRS:
        f = root / lst / spec.imglist
        if f.is_file():
            return f, root / images
    return None


def _read_imglist(path: Path, images_root: Path) -> tuple[list[str], list[int]]:
    """OpenOOD list file: ``relative/path label`` per line (label −1 for OOD sets)."""
    files, labels = [], []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < 2:
            raise BenchmarkDataError(f"{path}:{i}: expected 'relative/path label', got {line!r}")
        files.append(str(images_root / parts[0]))
        try:
            labels.append(int(parts[1]))
        except ValueError:
            raise BenchmarkDataError(f"{path}:{i}: label {parts[1]!r} is not an integer") from None
    return files, labels


def _read_label_file(path: Path) -> dict[str, str]:
    """``{file name: label string}`` from ``file label`` lines or Kaggle's ``LOC_val_solution.csv``."""
    out: dict[str, str] = {}
    lines = path.read_text().splitlines()
    if lines and lines[0].replace(" ", "").lower().startswith("imageid,predictionstring"):
        for line in lines[1:]:
            if line.strip():
                image_id, _, pred = line.partition(",")
                out[f"{image_id.strip()}.JPEG"] = pred.split()[0]
        return out
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < 2:
            raise BenchmarkDataError(f"{path}:{i}: expected 'file label', got {line!r}")
        out[os.path.basename(parts[0])] = parts[1]
    return out


def _labels_from_strings(values: list[str]) -> tuple[list[int], list[str] | None]:
    """Integer labels as given (names ``None``); wnid labels → index in the sorted wnid list (the
    ImageNet class order) and that list."""
    if all(v.lstrip("-").isdigit() for v in values):
        return [int(v) for v in values], None
    names = sorted(set(values))
    order = {w: i for i, w in enumerate(names)}
    return [order[v] for v in values], names


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def label_map(label_names: list[str] | None, classes: Sequence[str]) -> tuple[list[int] | None, str]:
    """How dataset labels index the detector's ``classes``: ``(map, how)`` with ``map[label] = class``.

    Names that all match class names (case, ``_`` and spaces ignored) map by name; otherwise as
    many labels as classes map by position (ImageNet's wnids sorted = CLIP's class order);
    otherwise there is no mapping (``None``: the ID accuracy is not computed). Integer labels
    (``label_names`` ``None``) are class indices already.
    """
    if label_names is None:
        return list(range(len(classes))), "class indices"
    index: dict[str, int] = {}
    for i, c in enumerate(classes):
        index.setdefault(_norm(c), i)
    if all(_norm(n) in index for n in label_names):
        return [index[_norm(n)] for n in label_names], "by name"
    if len(label_names) == len(classes):
        return list(range(len(classes))), "by sorted position (wnid order = class order)"
    return None, (f"{len(label_names)} label names match neither the {len(classes)} class names nor their "
                  "count: accuracy not computed")


def _has_subfolders_with_images(path: Path) -> bool:
    from fastood.images import IMAGE_EXTENSIONS

    top_images = any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir())
    return not top_images and any(p.is_dir() for p in path.iterdir())


def resolve(protocol: str | Protocol, data_root: str | os.PathLike) -> ResolvedBenchmark:
    """Find every set of ``protocol`` under ``data_root`` (see the module docstring).

    Raises :class:`BenchmarkDataError` naming every missing set and the paths looked at, or a
    set with no image files.
    """
    proto = PROTOCOLS.get(protocol) if isinstance(protocol, str) else protocol
    if not isinstance(proto, Protocol):
        raise ValueError(f"unknown benchmark {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise BenchmarkDataError(f"--data-root {str(data_root)!r} is not a directory")
    skipped: list[tuple[str, str]] = []
    warnings: list[str] = []
    found: dict[str, tuple[Path, list[str], str, list[int] | None]] = {}
    missing: list[str] = []
    for spec in (proto.id_set, *proto.ood_sets):
        lst = _find_imglist(root, spec)
        if lst is not None:
            files, labels = _read_imglist(*lst)
            found[spec.key] = (lst[0], files, "imglist", labels if spec.group == "id" else None)
            continue
        folder, looked = _find_folder(root, spec)
        if folder is None:
            where = ", ".join(str(p) for p in looked)
            missing.append(f"  {spec.title}: looked for {where}")
            continue
        found[spec.key] = (folder, _image_files(folder, skipped), "folder", None)
    if missing:
        raise BenchmarkDataError(
            f"{proto.key}: {len(missing)} set(s) missing under {root}:\n" + "\n".join(missing) +
            "\n(create the folder or a symlink with one of these names, or pass --data-root)")
    for spec in (proto.id_set, *proto.ood_sets):
        path, files, _, _ = found[spec.key]
        if not files:
            raise BenchmarkDataError(f"{proto.key}: set {spec.title} at {path} contains no image files")
        if spec.size is not None and len(files) != spec.size:
            warnings.append(f"{spec.title}: {len(files):,} images, the protocol has {spec.size:,}: these numbers are "
                            "not comparable with the published ones")

    # ID labels: an ImageFolder's sorted folder index, a label file, or OpenOOD's list
    id_path, id_files, id_source, id_labels = found[proto.id_set.key]
    label_names: list[str] | None = None
    label_source = "OpenOOD list file" if id_labels is not None else "none"
    if id_labels is None and id_source == "folder":
        if _has_subfolders_with_images(id_path):
            folders = sorted(p.name for p in id_path.iterdir() if p.is_dir())
            index = {f: i for i, f in enumerate(folders)}
            id_labels = [index[Path(f).relative_to(id_path).parts[0]] for f in id_files]
            label_names = folders
            label_source = f"ImageFolder ({len(folders)} class folders, sorted order)"
        else:
            for cand in [id_path / n for n in LABEL_FILES] + [id_path.parent / n for n in LABEL_FILES]:
                if cand.is_file():
                    table = _read_label_file(cand)
                    names = [os.path.basename(f) for f in id_files]
                    unlabelled = [n for n in names if n not in table]
                    if unlabelled:
                        raise BenchmarkDataError(f"label file {cand} has no label for {len(unlabelled)} ID image(s), "
                                                 f"e.g. {unlabelled[0]!r}")
                    id_labels, label_names = _labels_from_strings([table[n] for n in names])
                    label_source = f"label file {cand}"
                    break
            if id_labels is None:
                warnings.append(f"{proto.id_set.title} at {id_path} is flat and no label file ({', '.join(LABEL_FILES)}) "
                                "was found next to it: ID accuracy is not computed")
    ood = {s.key: ResolvedSet(s, found[s.key][0], found[s.key][1], found[s.key][2]) for s in proto.ood_sets}
    return ResolvedBenchmark(proto, root, ResolvedSet(proto.id_set, id_path, id_files, id_source), id_labels,
                             label_source, ood, skipped, warnings, label_names)


# ------------------------------------------------------------------------------ the side-by-side table


def compare(protocol: Protocol, metrics: dict, published: Published | None) -> list[dict[str, Any]]:
    """Rows ``{set, title, images, fpr95, auroc, pub_fpr95, pub_auroc, d_fpr95, d_auroc}`` in %.

    ``metrics`` is :func:`fastood.metrics.evaluate_many`'s output keyed by set key. Per-set rows,
    then (OpenOOD) near-OOD and far-OOD averages, then the average over all sets. ``d_* =
    computed − published`` (percentage points) where a published number exists, else ``None``.
    """
    def row(key: str, title: str, images: int | None, fpr: float, auc: float) -> dict[str, Any]:
        pub = None
        if published is not None:
            pub = published.average if key == "average" else published.per_set.get(key)
        r = {"set": key, "title": title, "images": images, "fpr95": 100 * fpr, "auroc": 100 * auc,
             "pub_fpr95": pub[0] if pub else None, "pub_auroc": pub[1] if pub else None}
        r["d_fpr95"] = r["fpr95"] - pub[0] if pub else None
        r["d_auroc"] = r["auroc"] - pub[1] if pub else None
        return r

    rows = []
    per_set = metrics["per_set"]
    for spec in protocol.ood_sets:
        m = per_set[spec.key]
        rows.append(row(spec.key, spec.title, m["num_ood"], m["fpr95"], m["auroc"]))
    groups = [g for g in ("near", "far") if any(s.group == g for s in protocol.ood_sets)]
    for g in groups:
        keys = [s.key for s in protocol.ood_sets if s.group == g]
        rows.append(row(f"{g}_average", f"{g}-OOD average", sum(per_set[k]["num_ood"] for k in keys),
                        sum(per_set[k]["fpr95"] for k in keys) / len(keys),
                        sum(per_set[k]["auroc"] for k in keys) / len(keys)))
    a = metrics["average"]
    rows.append(row("average", "average", a["num_ood"], a["fpr95"], a["auroc"]))
    return rows


def _cell(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "—"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def format_table(rows: Sequence[dict[str, Any]], published: Published | None) -> str:
    """The side-by-side table as aligned text (one header, one line per row)."""
    pub = published.title if published is not None else "none"
    head = (f"{'set':<20} {'images':>8} {'FPR95':>7} {'AUROC':>7} | {'pub FPR95':>9} {'pub AUROC':>9} | "
            f"{'Δ FPR95':>8} {'Δ AUROC':>8}")
    lines = [f"computed vs published ({pub}); FPR95 / AUROC in %, Δ = computed − published", head,
             "-" * len(head)]
    for r in rows:
        lines.append(f"{r['title']:<20} {r['images'] if r['images'] is not None else '':>8} {_cell(r['fpr95']):>7} "
                     f"{_cell(r['auroc']):>7} | {_cell(r['pub_fpr95']):>9} {_cell(r['pub_auroc']):>9} | "
                     f"{_cell(r['d_fpr95'], True):>8} {_cell(r['d_auroc'], True):>8}")
    return "\n".join(lines)


def _markdown(rows: Sequence[dict[str, Any]], header: list[str]) -> str:
    out = [*header, "", "| set | images | FPR95 | AUROC | published FPR95 | published AUROC | Δ FPR95 | Δ AUROC |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['title']} | {r['images']} | {_cell(r['fpr95'])} | {_cell(r['auroc'])} | "
                   f"{_cell(r['pub_fpr95'])} | {_cell(r['pub_auroc'])} | {_cell(r['d_fpr95'], True)} | "
                   f"{_cell(r['d_auroc'], True)} |")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------ the CLI


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """``--benchmark``, ``--data-root`` and ``--published`` on ``fastood eval``."""
    g = parser.add_argument_group("benchmark (instead of --id / --ood)")
    g.add_argument("--benchmark", default=None, choices=sorted(PROTOCOLS),
                   help="run a paper's protocol: imagenet1k (MOS: iNaturalist, SUN, Places, Textures) or "
                        "openood-v1.5 (SSB-hard, NINCO | iNaturalist, Textures, OpenImage-O)")
    g.add_argument("--data-root", default=None, help="folder holding the protocol's sets (see fastood.benchmarks)")
    g.add_argument("--published", default=None,
                   help="published row to compare with: " + ", ".join(sorted(_MOS.published)) +
                        ", or none (default: the one matching --method)")


def _choose_published(proto: Protocol, args: argparse.Namespace) -> Published | None:
    key = args.published
    if key is None:
        key = DEFAULT_PUBLISHED.get(args.method.lower())
        return proto.published.get(key) if key else None
    if key == "none":
        return None
    if key not in proto.published:
        known = ", ".join(sorted(proto.published)) or "none for this protocol"
        raise SystemExit(f"fastood eval: --published {key!r} is not a published row of {proto.key} (known: {known})")
    return proto.published[key]


def run_eval(args: argparse.Namespace) -> int:
    """``fastood eval --benchmark …``: resolve, score, compare, print and write the report."""
    from fastood import cli
    from fastood.metrics import CONVENTIONS, evaluate_many
    from fastood.report import write_report

    if args.data_root is None:
        raise SystemExit("fastood eval: --benchmark needs --data-root DIR (the folder holding the protocol's sets)")
    if args.id is not None or args.ood:
        raise SystemExit("fastood eval: --benchmark finds the sets itself: drop --id / --ood (or drop --benchmark)")
    proto = PROTOCOLS[args.benchmark]
    published = _choose_published(proto, args)
    convention = args.convention or (published.convention if published else proto.convention)
    if convention not in CONVENTIONS:
        raise SystemExit(f"--convention must be one of {CONVENTIONS}")
    if args.interpolation is None and published is not None and published.interpolation is not None:
        args.interpolation = published.interpolation
    if published is not None:
        given = {o.partition("=")[0].strip().replace("-", "_") for o in args.option}
        args.option = list(args.option) + [f"{k}={json.dumps(v)}" for k, v in published.options.items()
                                           if k not in given]
    out = Path(args.out)
    cli._check_out_writable(out, "eval", directory=True)
    try:
        data = resolve(proto, args.data_root)
    except BenchmarkDataError as exc:
        raise SystemExit(f"fastood eval --benchmark {proto.key}: {exc}") from None
    for w in data.warnings:
        print(f"WARNING: {w}", file=sys.stderr)

    device = args.device or cli._default_device()
    det = cli._build_detector(args, classes=args.classes or "imagenet1k", device=device)
    skipped: list[tuple[str, str]] = list(data.listing_skipped)
    if getattr(det, "needs_fit", False):
        cli._fit_detector(det, args, skipped)
    if hasattr(det, "reset"):
        det.reset()
    t0 = time.perf_counter()
    id_names, id_scores, id_pred = cli._score_files(det, data.id.files, args, proto.id_set.title, skipped)
    ood_scores = {}
    for key, rs in data.ood.items():
        _, ood_scores[key], _ = cli._score_files(det, rs.files, args, rs.spec.title, skipped)
        if ood_scores[key].numel() == 0:
            raise SystemExit(f"fastood eval --benchmark {proto.key}: every image of {rs.spec.title} at {rs.path} "
                             "was unreadable")
    seconds = time.perf_counter() - t0
    metrics = evaluate_many(id_scores, ood_scores, convention=convention, tpr=args.tpr, aupr_method=proto.aupr_method)

    accuracy, classes = None, getattr(det, "classes", None)
    label_how = data.id_label_source
    if data.id_labels is not None and id_pred is not None and classes is not None:
        mapping, how = label_map(data.id_label_names, classes)
        label_of = dict(zip(data.id.files, data.id_labels))
        truth = [label_of[n] for n in id_names]
        if mapping is not None and 0 <= min(truth) and max(truth) < len(mapping):
            accuracy = sum(int(p) == mapping[t] for p, t in zip(id_pred.tolist(), truth)) / len(truth)
            label_how += f", mapped {how}"
        else:
            print(f"WARNING: ID labels ({data.id_label_source}) do not index the detector's {len(classes)} "
                  f"classes{': ' + how if mapping is None else ''}", file=sys.stderr)

    rows = compare(proto, metrics, published)
    interp = args.interpolation or "the model's default (open_clip: bicubic)"
    off_paper = published is not None and convention != published.convention
    header = [f"benchmark: {proto.title}",
              f"data root: {data.data_root}",
              f"method: {args.method}; FPR{round(100 * args.tpr)} convention: {convention}"
              + (f" (NOT the paper's {published.convention}: not comparable)" if off_paper else "")
              + f"; AUPR: {proto.aupr_method}",
              f"preprocessing: resize interpolation {interp}",
              f"ID: {len(id_names)} images, accuracy "
              f"{'n/a' if accuracy is None else f'{100 * accuracy:.2f} %'} (labels: {label_how})"]
    if published is not None and published.note:
        header.append(f"published row: {published.note}")
    if published is not None and published.method is not None and published.method != args.method.lower():
        header.append(f"WARNING: comparing --method {args.method} with {published.title}, a {published.method} result")
    if proto.note:
        header.append(f"note: {proto.note}")
    info = cli._run_info(args, det, args.classes)
    info.update(device=device, benchmark=proto.key, published=published.key if published else None)
    if info.get("random_weights"):
        header.append("RANDOM WEIGHTS: these numbers are meaningless.")
    id_info = {"dir": str(data.id.path), "num_images": len(id_names), "num_classes": len(classes or []),
               "label_mapping": label_how, "accuracy": accuracy}
    n_images = len(id_names) + sum(int(v.numel()) for v in ood_scores.values())
    written = write_report(out, id_scores=id_scores.numpy(),
                           ood_scores={k: v.numpy() for k, v in ood_scores.items()}, metrics=metrics,
                           id_info=id_info, run_info=info, skipped=skipped,
                           timing={"images": n_images, "seconds": seconds,
                                   "images_per_s": n_images / seconds if seconds > 0 else None},
                           plots=not args.no_plots)
    (out / "benchmark.md").write_text(_markdown(rows, [f"# {proto.title}", ""] + [f"- {h}" for h in header]))
    (out / "benchmark.json").write_text(json.dumps(
        {"benchmark": proto.key, "convention": convention, "aupr_method": proto.aupr_method,
         "published": published.key if published else None, "interpolation": args.interpolation,
         "accuracy": accuracy, "rows": rows, "warnings": data.warnings,
         "sets": {k: str(v.path) for k, v in data.ood.items()}, "skipped": len(skipped)}, indent=2))
    cli._report_skipped(skipped)
    print("\n".join(header))
    print(format_table(rows, published))
    print(f"skipped {len(skipped)} unreadable file(s); wrote {out / 'benchmark.md'}, {out / 'benchmark.json'}, "
          f"{', '.join(str(p) for p in written.values())}")
    return 0
