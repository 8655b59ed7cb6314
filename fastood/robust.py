"""Robust OOD evaluation: the usual metrics on attacked data, per attack radius ε (SPEC §9).

For each ε, :func:`robust_evaluate` attacks (see :mod:`fastood.attacks`)

- ``target="id"``: every OOD image, to look ID (PGD raises the score; the feature attack moves
  its embedding toward a paired ID image's);
- ``target="ood"``: every ID image, to look OOD (PGD lowers the score; the feature attack moves
  it toward a paired OOD image's);
- ``target="both"``: both, independently,

and computes :func:`fastood.metrics.evaluate_many` on (ID scores, OOD scores) where the attacked
side is replaced by its adversarial scores — the robust table is ``evaluate_many``'s output per ε,
``metrics.evaluate`` itself is unchanged. The clean row (ε = 0) is the same computation on the
clean pixels the attack starts from (the model's preprocess without its normalisation, rounded
to 1/255 — bit-identical to ordinary scoring for 8-bit image files).

**Attack success rate.** With ``θ`` the threshold keeping ``tpr`` of the *clean* ID scores
(:func:`fastood.detectors.base.threshold_at_tpr`):

- OOD → ID: among OOD images detected when clean (``s < θ``), the fraction whose attacked score
  is ``≥ θ`` (accepted as ID);
- ID → OOD: among ID images accepted when clean (``s ≥ θ``), the fraction whose attacked score
  is ``< θ``.

``None`` when the denominator is empty (nothing to flip) or that side was not attacked.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from fastood.attacks import (NORMS, _check_steps, _feature_match, _scores_of, embed_targets, iter_pixels,
                             parse_eps_list, pgd, save_png)

__all__ = ["ATTACKS", "ROBUST_TARGETS", "robust_evaluate", "success_rate", "plot_robust", "robust_markdown",
           "eps_label"]

ATTACKS = ("pgd", "feature")
ROBUST_TARGETS = ("id", "ood", "both")


def eps_label(eps: float) -> str:
    """``8/255`` for multiples of 1/255 (``0`` for 0), else the number."""
    k = eps * 255.0
    if abs(k - round(k)) < 1e-6:
        return "0" if round(k) == 0 else f"{round(k)}/255"
    return f"{eps:.6g}"


def success_rate(clean: Tensor, attacked: Tensor, threshold: float, direction: str) -> float | None:
    """Fraction of images whose decision the attack flipped (see the module docstring).

    ``direction="ood_to_id"``: over ``clean < θ``, the fraction with ``attacked ≥ θ``;
    ``"id_to_ood"``: over ``clean ≥ θ``, the fraction with ``attacked < θ``. ``None`` if none qualify.
    """
    c, a = clean.double().reshape(-1), attacked.double().reshape(-1)
    if c.shape != a.shape:
        raise ValueError(f"clean and attacked scores differ in length: {c.numel()} vs {a.numel()}")
    if direction == "ood_to_id":
        base, flipped = c < threshold, a >= threshold
    elif direction == "id_to_ood":
        base, flipped = c >= threshold, a < threshold
    else:
        raise ValueError(f"direction must be 'ood_to_id' or 'id_to_ood', got {direction!r}")
    n = int(base.sum())
    return None if n == 0 else float((base & flipped).sum()) / n


def _file_names(names: Sequence[str], offset: int) -> list[str]:
    """``NNNNN_<stem>.png`` with the image's index in its set (names repeat across folders)."""
    return [f"{offset + i:05d}_{Path(n).stem if not n.startswith('<') else 'input'}.png" for i, n in enumerate(names)]


def _save(out: Path | None, eps: float, set_name: str, images: Tensor, names: Sequence[str], offset: int) -> None:
    if out is None:
        return
    d = out / ("eps_" + eps_label(eps).replace("/", "-")) / set_name
    d.mkdir(parents=True, exist_ok=True)
    save_png(images, [str(d / f) for f in _file_names(names, offset)])


def robust_evaluate(
    detector: Any,
    id_images: Any,
    ood_sets: Mapping[str, Any],
    *,
    attack: str = "pgd",
    eps: Any = "1/255,2/255,4/255,8/255",
    steps: int = 10,
    target: str = "both",
    norm: str = "linf",
    step_size: float | None = None,
    seed: int = 0,
    convention: str = "neglabel",
    tpr: float = 0.95,
    aupr_method: str = "ap",
    batch_size: int | None = None,
    save_adv: str | os.PathLike | None = None,
    progress: bool = False,
    chunk: int = 1024,
) -> dict[str, Any]:
    """Clean vs attacked metrics per ε (see the module docstring).

    Args:
        detector: a fitted Detector with a model (differentiable score for ``attack="pgd"``).
        id_images: the ID images (anything :func:`fastood.attacks.load_pixels` takes).
        ood_sets: ``{name: images}``.
        attack: ``"pgd"`` (on the detector's score) or ``"feature"`` (feature-based manipulation).
        eps: radii in [0, 1] pixel scale: ``"1/255,2/255"`` or a sequence.
        steps, norm, step_size, seed: the attack's (``norm`` is ``"linf"`` for ``"feature"``).
        target: ``"id"`` (attack OOD images), ``"ood"`` (attack ID images) or ``"both"``.
        convention, tpr, aupr_method: as :func:`fastood.metrics.evaluate_many`.
        save_adv: write the adversarial PNGs to ``save_adv/eps_8-255/<id|set>/NNNNN_<stem>.png``.
        chunk: images held in memory at once (as uint8 at the model's size); every ε is run on a
            chunk before the next is read, and only scores are kept. The random start of chunk
            ``k`` is seeded with ``seed + k``.

    Returns:
        ``{"attack", "norm", "steps", "step_size", "target", "seed", "threshold", "tpr",
        "clean": evaluate_many(...), "per_eps": [{"eps", "eps_label", "metrics": evaluate_many(...),
        "success_rate": {"ood_to_id", "id_to_ood"}, "success_rate_per_set": {name: ood_to_id}}]}``.
    """
    from fastood.detectors.base import Detector, threshold_at_tpr
    from fastood.metrics import evaluate_many

    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {', '.join(map(repr, ATTACKS))}, got {attack!r}")
    if target not in ROBUST_TARGETS:
        raise ValueError(f"target must be one of {', '.join(map(repr, ROBUST_TARGETS))}, got {target!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, got {norm!r}")
    if attack == "feature" and norm != "linf":
        raise ValueError("norm: the feature-based manipulation is defined in the L∞ ball (norm='linf')")
    if not isinstance(detector, Detector):
        raise TypeError(f"detector must be a fastood Detector, got {type(detector).__name__}")
    if not isinstance(ood_sets, Mapping) or not ood_sets:
        raise ValueError("ood_sets must be a non-empty mapping {name: images}")
    radii = parse_eps_list(eps)
    steps = _check_steps(steps)
    clip = detector._require_model()
    detector._check_fitted()
    bs = detector.batch_size if batch_size is None else batch_size
    out = None if save_adv is None else Path(save_adv)
    kw = dict(convention=convention, tpr=tpr, aupr_method=aupr_method)
    # feature attack: the partners' unit embeddings, computed once (image i ↔ partner i mod n, globally)
    id_targets = ood_targets = None
    if attack == "feature":
        if target in ("id", "both"):
            id_targets = embed_targets(detector, id_images, batch_size=bs, name="id_images")
        if target in ("ood", "both"):
            ood_targets = torch.cat([embed_targets(detector, v, batch_size=bs, name=f"ood_sets[{k!r}]")
                                     for k, v in ood_sets.items()])

    def attack_chunk(px: Tensor, e: float, tgt: str, partners: Tensor | None, offset: int, k: int) -> Tensor:
        s = seed + k  # one seeded stream per chunk: deterministic for (seed, chunk, batch size)
        if attack == "pgd":
            return pgd(detector, px, eps=e, steps=steps, step_size=step_size, norm=norm, target=tgt, seed=s,
                       batch_size=bs, progress=progress).images
        assert partners is not None
        return _feature_match(detector, px, [], partners, eps=e, steps=steps, step_size=step_size,
                              random_start=True, seed=s, batch_size=bs, progress=progress, offset=offset).images

    def run_set(images: Any, set_name: str, what: str, tgt: str | None, partners: Tensor | None
                ) -> tuple[Tensor, list[Tensor]]:
        """Clean scores and, per ε, attacked scores (the clean ones when this side is not attacked)."""
        clean, att = [], [[] for _ in radii]
        offset = 0
        for k, (px, names) in enumerate(iter_pixels(clip, images, chunk=chunk, name=what)):
            c = _scores_of(detector, px, bs)
            clean.append(c)
            for j, e in enumerate(radii):
                if tgt is None:
                    att[j].append(c)
                    continue
                adv = attack_chunk(px, e, tgt, partners, offset, k)
                att[j].append(_scores_of(detector, adv, bs))
                _save(out, e, set_name, adv, names, offset)
            offset += px.shape[0]
        return torch.cat(clean), [torch.cat(a) for a in att]

    id_clean, id_att = run_set(id_images, "id", "id_images", "ood" if target in ("ood", "both") else None,
                               ood_targets)
    ood_clean, ood_att = {}, {}
    for k, v in ood_sets.items():
        ood_clean[k], ood_att[k] = run_set(v, k, f"ood_sets[{k!r}]", "id" if target in ("id", "both") else None,
                                           id_targets)
    clean = evaluate_many(id_clean, ood_clean, **kw)
    theta = threshold_at_tpr(id_clean, tpr)
    all_clean = torch.cat(list(ood_clean.values()))
    rows = []
    for j, e in enumerate(radii):
        ood_e = {k: ood_att[k][j] for k in ood_sets}
        attacked_ood = target in ("id", "both")
        per_set = {k: success_rate(ood_clean[k], ood_e[k], theta, "ood_to_id") if attacked_ood else None
                   for k in ood_sets}
        o2i = success_rate(all_clean, torch.cat(list(ood_e.values())), theta, "ood_to_id") if attacked_ood else None
        i2o = success_rate(id_clean, id_att[j], theta, "id_to_ood") if target in ("ood", "both") else None
        rows.append({"eps": e, "eps_label": eps_label(e), "metrics": evaluate_many(id_att[j], ood_e, **kw),
                     "success_rate": {"ood_to_id": o2i, "id_to_ood": i2o}, "success_rate_per_set": per_set})
    return {"attack": attack, "norm": norm, "steps": steps,
            "step_size": "2.5·eps/steps" if step_size is None else float(step_size), "target": target,
            "seed": seed, "threshold": theta, "tpr": tpr, "num_id": int(id_clean.numel()),
            "num_ood": {k: int(v.numel()) for k, v in ood_clean.items()}, "clean": clean, "per_eps": rows,
            "save_adv": None if out is None else str(out)}


def plot_robust(path: str | os.PathLike, robust: Mapping[str, Any]) -> Path:
    """``robust.png``: AUROC (%) vs ε (in 1/255 units) per OOD set and their average; ε = 0 is clean."""
    from fastood.report import _figure

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    xs = [0.0] + [255.0 * r["eps"] for r in robust["per_eps"]]
    names = list(robust["clean"]["per_set"])
    series = {n: [robust["clean"]["per_set"][n]["auroc"]] + [r["metrics"]["per_set"][n]["auroc"]
                                                           for r in robust["per_eps"]] for n in names}
    if len(names) > 1:
        series["average"] = [robust["clean"]["average"]["auroc"]] + [r["metrics"]["average"]["auroc"]
                                                                    for r in robust["per_eps"]]
    order = np.argsort(xs, kind="stable")
    for n, ys in series.items():
        ax.plot(np.asarray(xs)[order], 100 * np.asarray(ys)[order], marker="o",
                linewidth=2.5 if n == "average" else 1.5, label=n)
    ax.axhline(50, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("ε (× 1/255, pixel scale)")
    ax.set_ylabel("AUROC (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"{robust['attack']} ({robust['norm']}, {robust['steps']} steps, target {robust['target']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, format="png")
    return p


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def robust_markdown(robust: Mapping[str, Any]) -> str:
    """The report's "Adversarial robustness" section (average over OOD sets per ε)."""
    what = {"id": "OOD images attacked to look ID", "ood": "ID images attacked to look OOD",
            "both": "OOD images attacked to look ID and ID images to look OOD"}[robust["target"]]
    lines = ["## Adversarial robustness", "",
             f"- attack: `{robust['attack']}` ({robust['norm']}, {robust['steps']} steps, step size "
             f"{robust['step_size']}, seed {robust['seed']}); {what}.",
             f"- success rate: fraction of decisions flipped at the clean-ID threshold θ = {robust['threshold']:.6g} "
             f"(keeps {100 * robust['tpr']:g} % of clean ID images).",
             "- clean row: the pixels the attack starts from (the model's input size, 1/255 steps).", "",
             "| ε | FPR ↓ (%) | AUROC ↑ (%) | AUPR-In ↑ (%) | AUPR-Out ↑ (%) | success OOD→ID (%) "
             "| success ID→OOD (%) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    c = robust["clean"]["average"]
    lines.append(f"| clean | {_pct(c['fpr95'])} | {_pct(c['auroc'])} | {_pct(c['aupr_in'])} | {_pct(c['aupr_out'])} "
                 "| – | – |")
    for r in robust["per_eps"]:
        a, s = r["metrics"]["average"], r["success_rate"]
        lines.append(f"| {r['eps_label']} | {_pct(a['fpr95'])} | {_pct(a['auroc'])} | {_pct(a['aupr_in'])} | "
                     f"{_pct(a['aupr_out'])} | {_pct(s['ood_to_id'])} | {_pct(s['id_to_ood'])} |")
    lines.append("")
    if len(robust["clean"]["per_set"]) > 1:
        lines += ["AUROC (%) per OOD set:", "",
                  "| OOD set | clean | " + " | ".join(r["eps_label"] for r in robust["per_eps"]) + " |",
                  "|---|---:|" + "---:|" * len(robust["per_eps"])]
        for n, m in robust["clean"]["per_set"].items():
            lines.append(f"| {n} | {_pct(m['auroc'])} | " + " | ".join(
                _pct(r["metrics"]["per_set"][n]["auroc"]) for r in robust["per_eps"]) + " |")
        lines.append("")
    return "\n".join(lines)
