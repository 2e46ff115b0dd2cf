"""Segmentation reports: ``metrics.json``, ``metrics.md`` and PNG plots, all written atomically (spec §5).

The numbers come from :func:`vwl_lightning.evaluation.metrics.scores_from_confusion` (IoU over the classes that occur)
and, for seeds, :meth:`vwl_lightning.evaluation.metrics.BackgroundSweep.summary`.  In JSON, NaN (a class that never
occurs) is written as ``null``.  Plots use matplotlib's Agg canvas directly, so the global backend is not
touched.

The run's own summary (:func:`write_results`): ``results.json`` and ``results.md`` at the top of the run
directory, from the stages' summaries and ``timings.json``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vwl_lightning.utils.io import atomic_path, read_json, write_json_atomic, write_text_atomic

METRICS_JSON = "metrics.json"
METRICS_MD = "metrics.md"
SWEEP_PLOT = "miou_vs_bg_score.png"
CLASS_PLOT = "per_class_iou.png"
TIMINGS = "timings.json"  # {stage: seconds} at the top of the run directory (the pipeline records them)


def _num(value: Any) -> float | None:
    """A JSON-safe float: NaN/inf become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _pct(value: Any) -> str:
    v = _num(value)
    return "–" if v is None else f"{100.0 * v:.2f}"


def build_metrics_dict(
    scores: Mapping[str, Any],
    class_names: Sequence[str],
    sweep: Mapping[str, Any] | None = None,
    configured_score: float | None = None,
    title: str = "Segmentation metrics",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of ``metrics.json``: headline numbers, per-class IoU/precision/recall by class name,
    and for a sweep the best score, best mIoU, mIoU at the configured score and the whole curve."""
    if len(class_names) != len(scores["iou"]):
        raise ValueError(f"{len(class_names)} class names for {len(scores['iou'])} classes")
    per_class: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(class_names):
        row = {
            "iou": _num(scores["iou"][index]),
            "precision": _num(scores["precision"][index]),
            "recall": _num(scores["recall"][index]),
            "gt_pixels": int(scores["gt_pixels"][index]),
            "pred_pixels": int(scores["pred_pixels"][index]),
        }
        if "iou_strict" in scores:
            row["iou_strict"] = _num(scores["iou_strict"][index])
            row["coverage"] = _num(scores["class_coverage"][index])
        per_class[str(name)] = row
    out: dict[str, Any] = {
        "title": title,
        "num_classes": len(class_names),
        "miou": _num(scores["miou"]),
        "pixel_accuracy": _num(scores["pixel_accuracy"]),
        "classes_present": int(np.sum(scores["present"])),
        "per_class": per_class,
    }
    for key in ("coverage", "miou_strict"):
        if key in scores:
            out[key] = _num(scores[key])
    if sweep is not None:
        curve = [{"bg_score": round(float(s), 6), "miou": _num(m)}
                 for s, m in zip(sweep["bg_scores"], sweep["miou"], strict=True)]
        out["best_bg_score"] = round(float(sweep["best_bg_score"]), 6)
        out["best_miou"] = _num(sweep["best_miou"])
        edge = sweep_edge(curve, out["best_bg_score"])
        if edge is not None:
            out["best_at_sweep_edge"] = edge
        if configured_score is not None:
            hits = [c for c in curve if abs(c["bg_score"] - configured_score) < 1e-6]
            out["configured_bg_score"] = float(configured_score)
            out["miou_at_configured"] = hits[0]["miou"] if hits else None
        out["curve"] = curve
    if extra:
        out.update({k: v for k, v in extra.items() if k not in out})
    return out


def sweep_edge(curve: Sequence[Mapping[str, Any]], best: float) -> str | None:
    """``"low"`` / ``"high"`` when the best background score is the first / last score of a sweep of at least
    three scores (the optimum may lie outside the range), else None."""
    scores = [float(c["bg_score"]) for c in curve]
    if len(scores) < 3:
        return None
    if abs(best - min(scores)) < 1e-9:
        return "low"
    if abs(best - max(scores)) < 1e-9:
        return "high"
    return None


def _markdown(metrics: Mapping[str, Any]) -> str:
    lines = [f"# {metrics['title']}", ""]
    headline = [f"- mIoU: **{_pct(metrics['miou'])}** over {metrics['classes_present']} classes that occur "
                f"(IoU = TP / (TP + FP + FN), 255 ignored)",
                f"- pixel accuracy: {_pct(metrics['pixel_accuracy'])}"]
    if "coverage" in metrics:
        headline.append(f"- coverage (labelled / valid pixels): {_pct(metrics['coverage'])}; mIoU counting "
                        f"unlabelled pixels as misses: {_pct(metrics.get('miou_strict'))}")
    if "best_bg_score" in metrics:
        headline.append(f"- best background score {metrics['best_bg_score']:.2f}: mIoU "
                        f"{_pct(metrics['best_miou'])}")
        if metrics.get("best_at_sweep_edge"):
            headline.append(f"- **warning**: the best background score is the {metrics['best_at_sweep_edge']} "
                            f"end of the sweep; the optimum may lie beyond it (widen seeds.sweep)")
        if "configured_bg_score" in metrics:
            headline.append(f"- configured background score {metrics['configured_bg_score']:.2f}: mIoU "
                            f"{_pct(metrics['miou_at_configured'])}")
    lines += headline + [""]
    strict = any("iou_strict" in row for row in metrics["per_class"].values())
    header = "| class | IoU | precision | recall |" + (" IoU (strict) | coverage |" if strict else "")
    lines += [header, "|---|---:|---:|---:|" + ("---:|---:|" if strict else "")]
    for name, row in metrics["per_class"].items():
        line = f"| {name} | {_pct(row['iou'])} | {_pct(row['precision'])} | {_pct(row['recall'])} |"
        if strict:
            line += f" {_pct(row.get('iou_strict'))} | {_pct(row.get('coverage'))} |"
        lines.append(line)
    lines.append("")
    lines.append("Values in %; – marks a class that occurs in neither the ground truth nor the prediction.")
    return "\n".join(lines) + "\n"


def _save_figure(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def plot_sweep(path: str | os.PathLike, metrics: Mapping[str, Any]) -> Path:
    """Line plot of mIoU against background score, marking the best and the configured score."""
    from matplotlib.figure import Figure

    xs = [c["bg_score"] for c in metrics["curve"]]
    ys = [np.nan if c["miou"] is None else 100.0 * c["miou"] for c in metrics["curve"]]
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(xs, ys, marker=".", label="seed mIoU")
    if metrics.get("best_miou") is not None:
        ax.axvline(metrics["best_bg_score"], color="tab:green", linestyle="--",
                   label=f"best {metrics['best_bg_score']:.2f}: {100 * metrics['best_miou']:.2f}")
    if metrics.get("miou_at_configured") is not None:
        ax.axvline(metrics["configured_bg_score"], color="tab:red", linestyle=":",
                   label=f"configured {metrics['configured_bg_score']:.2f}: "
                         f"{100 * metrics['miou_at_configured']:.2f}")
    ax.set_xlabel("background score")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(metrics["title"])
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    _save_figure(fig, Path(path))
    return Path(path)


def plot_per_class(path: str | os.PathLike, metrics: Mapping[str, Any]) -> Path:
    """Bar chart of per-class IoU (classes that never occur are drawn empty)."""
    from matplotlib.figure import Figure

    names = list(metrics["per_class"])
    values = [np.nan if row["iou"] is None else 100.0 * row["iou"] for row in metrics["per_class"].values()]
    fig = Figure(figsize=(max(6.0, 0.35 * len(names) + 2), 4))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(names)), np.nan_to_num(values, nan=0.0), color="tab:blue")
    if metrics.get("miou") is not None:
        ax.axhline(100.0 * metrics["miou"], color="tab:red", linestyle="--",
                   label=f"mIoU {100 * metrics['miou']:.2f}")
        ax.legend(loc="best", fontsize=8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(metrics["title"])
    fig.tight_layout()
    _save_figure(fig, Path(path))
    return Path(path)


def write_segmentation_report(
    out_dir: str | os.PathLike,
    scores: Mapping[str, Any],
    class_names: Sequence[str],
    sweep: Mapping[str, Any] | None = None,
    configured_score: float | None = None,
    title: str = "Segmentation metrics",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``metrics.md``, ``per_class_iou.png`` and (with a sweep)
    ``miou_vs_bg_score.png`` into ``out_dir``, each atomically; return the metrics dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = build_metrics_dict(scores, class_names, sweep, configured_score, title, extra)
    plot_per_class(out / CLASS_PLOT, metrics)
    if sweep is not None:
        plot_sweep(out / SWEEP_PLOT, metrics)
    write_text_atomic(out / METRICS_MD, _markdown(metrics))
    write_json_atomic(out / METRICS_JSON, metrics)
    return metrics


# results.md rows in pipeline order: (stage, what, results.json key, kind) with kind "pct" (mIoU) or "score"
RESULT_ROWS = (
    ("seeds", "CAM seed mIoU at the best background score", "cam_seed_miou_best", "pct"),
    ("seeds", "best background score of the sweep", "cam_seed_best_bg_score", "score"),
    ("seeds", "CAM seed mIoU at the configured background score", "cam_seed_miou_configured", "pct"),
    ("seeds", "configured background score", "cam_seed_configured_bg_score", "score"),
    ("pseudo", "pseudo-mask mIoU", "pseudo_mask_miou", "pct"),
    ("segmenter", "val mIoU", "segmenter_val_miou", "pct"),
    ("segmenter", "val mIoU with CRF", "segmenter_val_miou_crf", "pct"),
)


def _cell(value: Any, kind: str) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    return f"{100 * value:.2f} %" if kind == "pct" else f"{value:.2f}"


def write_results(run_dir: Path, results: dict[str, Any], order: Sequence[str],
                  every_stage: Sequence[str] = ()) -> dict[str, Any]:
    """``results.json`` (fractions, for scripts) and ``results.md`` (mIoU in %, stages in ``order``, this
    run's; the times of other stages of ``every_stage`` (the pipeline's order) after them) with the headline
    numbers and each stage's time; returns the headline."""
    order = tuple(order)
    timings = read_json(run_dir / TIMINGS) if (run_dir / TIMINGS).is_file() else {}
    ordered = [n for n in order if n in timings] + [n for n in every_stage if n in timings and n not in order]
    seeds = results.get("seeds", {})
    pseudo = (results.get("pseudo") or {}).get("metrics") or {}
    segmenter = results.get("segmenter") or {}
    headline = {
        "cam_seed_miou_best": seeds.get("best_miou"),
        "cam_seed_best_bg_score": seeds.get("best_bg_score"),
        "cam_seed_miou_configured": seeds.get("miou_at_configured"),
        "cam_seed_configured_bg_score": seeds.get("configured_bg_score"),
        "pseudo_mask_miou": pseudo.get("miou"),
        "segmenter_val_miou": segmenter.get("miou"),
        "segmenter_val_miou_crf": segmenter.get("miou_crf"),
        "stage_seconds": {n: timings[n] for n in ordered},
        "fingerprints": results.get("fingerprints", {}),
    }
    write_json_atomic(run_dir / "results.json", headline)
    lines = ["# Results", "", "| stage | measure | value |", "|---|---|---:|"]
    for stage, what, key, kind in sorted(RESULT_ROWS, key=lambda r: order.index(r[0]) if r[0] in order else 99):
        if headline[key] is not None:
            lines.append(f"| {stage} | {what} (`{key}`) | {_cell(headline[key], kind)} |")
    if seeds.get("best_at_sweep_edge"):
        lines += ["", f"Warning: the best background score sits at the {seeds['best_at_sweep_edge']} end of the "
                      "sweep (seeds.sweep); widen the sweep to see whether a better score lies beyond it."]
    lines += ["", "| stage | seconds (last run that did the work) |", "|---|---:|"]
    lines += [f"| {k} | {timings[k]:.1f} |" for k in ordered]
    lines += ["", "| stage | fingerprint of the settings it was made with |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in headline["fingerprints"].items()]
    write_text_atomic(run_dir / "results.md", "\n".join(lines) + "\n")
    return headline
