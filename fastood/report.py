"""The ``fastood eval`` report: report.md, report.json and PNG plots.

Metrics come from :func:`fastood.metrics.evaluate_many` (ID = positive class,
higher score = more in-distribution); FPR95 is reported in one *named*
convention (SPEC §7), stated in both files:

* ``neglabel`` — ID positive, the threshold whose ID recall is nearest 95 %
  (no interpolation); NegLabel / MCM code.
* ``interp`` — ``np.interp(0.95, TPR, FPR)`` on the ROC curve, ID positive; CMA / PLP.
* ``openood`` — OOD positive on ``−score``, first ROC point with TPR ≥ 95 %: the
  fraction of ID images flagged OOD when 95 % of OOD images are caught; OpenOOD v1.5.

Plots use matplotlib's object API with the Agg canvas (no pyplot, no global
backend switch); without matplotlib they are skipped with a warning.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fastood._io import atomic_write, atomic_write_bytes
from fastood.outputs import write_json_atomic

__all__ = ["CONVENTION_TEXT", "write_report", "plot_roc", "plot_histograms", "roc_curve"]

CONVENTION_TEXT = {
    "neglabel": "FPR95 convention `neglabel` (NegLabel/MCM code): ID positive; the threshold whose ID recall is "
                "nearest the target TPR, no interpolation; FPR = fraction of OOD images scoring at or above it.",
    "interp": "FPR95 convention `interp` (CMA/PLP code): `np.interp(tpr, TPR, FPR)` on the ROC curve with ID positive.",
    "openood": "FPR95 convention `openood` (OpenOOD v1.5, InterNeg, AdaNeg): OOD positive on −score; the first ROC "
               "point with TPR ≥ target; the value is the fraction of ID images flagged OOD when that fraction of "
               "OOD images is caught.",
}


def roc_curve(id_scores: Any, ood_scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` with ID positive: for each distinct threshold ``t`` (descending),
    ``tpr = #{id ≥ t}/n_id``, ``fpr = #{ood ≥ t}/n_ood``, starting at (0, 0)."""
    i = np.sort(np.asarray(id_scores, dtype=np.float64))
    o = np.sort(np.asarray(ood_scores, dtype=np.float64))
    thr = np.unique(np.concatenate([i, o]))[::-1]
    tpr = (i.size - np.searchsorted(i, thr, side="left")) / i.size
    fpr = (o.size - np.searchsorted(o, thr, side="left")) / o.size
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])


def _figure(width: float = 6.0, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """``fig.savefig`` through the atomic writer (a crash never leaves a truncated image; the
    file follows the umask); the format comes from the name's suffix (PNG without one)."""
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt))


def plot_roc(path: str | os.PathLike, id_scores: Any, ood_sets: Mapping[str, Any],
             aurocs: Mapping[str, float] | None = None, title: str = "ROC (ID positive)") -> Path:
    """One ROC curve per OOD set (x = FPR on that OOD set, y = TPR on ID); PNG."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, ood in ood_sets.items():
        fpr, tpr = roc_curve(id_scores, ood)
        label = name if not aurocs else f"{name} (AUROC {100 * aurocs[name]:.2f})"
        ax.plot(fpr, tpr, label=label)  # straight segments: tied scores give diagonal steps
    ax.plot([0, 1], [0, 1], linestyle=":", color="gray", linewidth=1)
    ax.axhline(0.95, linestyle="--", color="gray", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false-positive rate (OOD scored as ID)")
    ax.set_ylabel("true-positive rate (ID scored as ID)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_histograms(path: str | os.PathLike, id_scores: Any, ood_sets: Mapping[str, Any],
                    threshold: float | None = None, title: str = "score distributions") -> Path:
    """Overlaid density histograms of the ID scores and each OOD set's scores; PNG."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    arrays = {"ID": np.asarray(id_scores, dtype=np.float64)}
    arrays.update({k: np.asarray(v, dtype=np.float64) for k, v in ood_sets.items()})
    lo = min(float(a.min()) for a in arrays.values())
    hi = max(float(a.max()) for a in arrays.values())
    if hi <= lo:
        hi = lo + 1e-6
    bins = np.linspace(lo, hi, 41)
    for name, a in arrays.items():
        ax.hist(a, bins=bins, density=True, alpha=0.45, label=f"{name} (n={a.size})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.4g}")
    ax.set_xlabel("score (higher = more in-distribution)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save_figure(fig, path)


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _markdown(report: dict[str, Any]) -> str:
    m = report["metrics"]
    info = report["run"]
    conv = m["average"]["convention"]
    tpr = m["average"]["tpr"]
    lines = [f"# fastood eval — {info.get('method', '?')}", ""]
    if info.get("random_weights"):
        lines += ["> **RANDOM WEIGHTS: scores are meaningless** (no pretrained checkpoint was given).", ""]
    lines += [
        f"- model: `{info.get('model')}`, pretrained: `{info.get('pretrained')}`",
        f"- ID set: `{report['id']['dir']}` — {report['id']['num_images']} images, "
        f"{report['id']['num_classes']} classes, label mapping: {report['id']['label_mapping']}",
    ]
    acc = report["id"].get("accuracy")
    lines.append(f"- ID accuracy (top-1 over the detector's classes): {_pct(acc)} %" if acc is not None
                 else "- ID accuracy: not available (this detector predicts no ID class, or labels could not be mapped)")
    thr = info.get("calibrated_threshold")
    if thr is not None:
        lines.append(f"- threshold keeping {100 * m['average']['tpr']:g} % of ID images: score ≥ {thr:.6g} "
                     f"(use it as `--threshold` / `det.threshold`)")
    lines += [
        f"- skipped unreadable files: {len(report['skipped'])}",
        f"- {CONVENTION_TEXT[conv]} Target TPR = {tpr:g}.",
        f"- AUPR: `{m['average']['aupr_method']}` "
        f"({'average precision, as sklearn' if m['average']['aupr_method'] == 'ap' else 'trapezoid, as OpenOOD'}); "
        "AUPR-In = ID positive on score, AUPR-Out = OOD positive on −score.",
        "",
        f"| OOD set | images | FPR{round(100 * tpr)} ↓ (%) | AUROC ↑ (%) | AUPR-In ↑ (%) | AUPR-Out ↑ (%) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in m["per_set"].items():
        lines.append(f"| {name} | {r['num_ood']} | {_pct(r['fpr95'])} | {_pct(r['auroc'])} | "
                     f"{_pct(r['aupr_in'])} | {_pct(r['aupr_out'])} |")
    a = m["average"]
    lines.append(f"| **average** ({a['num_sets']} sets) | {a['num_ood']} | {_pct(a['fpr95'])} | {_pct(a['auroc'])} | "
                 f"{_pct(a['aupr_in'])} | {_pct(a['aupr_out'])} |")
    lines.append("")
    if report.get("plots"):
        lines += ["## Plots", ""]
        for name, file in report["plots"].items():
            lines.append(f"![{name}]({file})")
        lines.append("")
    if report["skipped"]:
        lines += ["## Skipped files", ""]
        lines += [f"- `{p}`: {reason}" for p, reason in report["skipped"]]
        lines.append("")
    t = report.get("timing", {})
    if t:
        lines += [f"Scored {t.get('images', 0)} images in {t.get('seconds', 0):.1f} s "
                  f"({t.get('images_per_s', 0):.1f} images/s) on {info.get('device')}.", ""]
    return "\n".join(lines)


def write_report(
    out_dir: str | os.PathLike,
    *,
    id_scores: Any,
    ood_scores: Mapping[str, Any],
    metrics: dict[str, Any],
    id_info: dict[str, Any],
    run_info: dict[str, Any],
    skipped: Sequence[tuple[str, str]] = (),
    timing: dict[str, Any] | None = None,
    threshold: float | None = None,
    plots: bool = True,
    robust: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and (with matplotlib) ``roc.png`` / ``hist.png``.

    Args:
        metrics: the output of :func:`fastood.metrics.evaluate_many`.
        id_info: ``dir``, ``num_images``, ``num_classes``, ``label_mapping``, ``accuracy``.
        run_info: method, model, pretrained, device, random_weights, …
        robust: the output of :func:`fastood.robust.robust_evaluate` (adds its section and ``robust.png``).
    Returns the paths written, by kind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    plot_files: dict[str, str] = {}
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            warnings.warn("matplotlib is not installed: skipping the ROC and histogram plots "
                          "(`pip install matplotlib`)", stacklevel=2)
        else:
            aurocs = {k: v["auroc"] for k, v in metrics["per_set"].items()}
            written["roc"] = plot_roc(out / "roc.png", id_scores, ood_scores, aurocs)
            written["hist"] = plot_histograms(out / "hist.png", id_scores, ood_scores, threshold)
            plot_files = {"ROC curves": "roc.png", "score histograms": "hist.png"}
            if robust is not None:
                from fastood.robust import plot_robust

                written["robust"] = plot_robust(out / "robust.png", robust)
                plot_files["AUROC vs attack radius"] = "robust.png"
    report = {
        "metrics": metrics,
        "convention_text": CONVENTION_TEXT[metrics["average"]["convention"]],
        "id": id_info,
        "run": run_info,
        "skipped": [list(s) for s in skipped],
        "timing": timing or {},
        "plots": plot_files,
    }
    if robust is not None:
        report["robust"] = robust
    written["json"] = write_json_atomic(out / "report.json", report)
    md = _markdown(report)
    if robust is not None:
        from fastood.robust import robust_markdown

        md += "\n" + robust_markdown(robust)
    # the one atomic writer; a file name that is not UTF-8 keeps its bytes (as in scores.csv)
    written["md"] = atomic_write_bytes(out / "report.md", md.encode("utf-8", errors="surrogateescape"))
    return written
