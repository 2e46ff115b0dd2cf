"""Hydra multirun summary: one table of every job's headline numbers, and a heat map of CAM seed mIoU over the
two knobs a sweep varies (e.g. codebook size K × pooling weight γ, spec §2–3; the knobs are read from the
jobs' own overrides).

Registered as a Hydra callback (``hydra.callbacks.sweep_summary`` in ``conf/config.yaml``). At the end of a
multirun it reads each job folder's ``results.json`` (or ``failed.json``, written when a job failed — the
sweep goes on) and ``.hydra/overrides.yaml``, and writes into the sweep folder::

    sweep_summary.csv   sweep_summary.md   sweep_heatmap.png   sweep_sensitivity.png (metric vs each swept knob)
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vwl_lightning.utils.io import atomic_path, read_json, write_text_atomic

log = logging.getLogger(__name__)

RESULTS = "results.json"
FAILED = "failed.json"
METRICS = ("cam_seed_miou_best", "cam_seed_miou_configured", "pseudo_mask_miou", "segmenter_val_miou",
           "segmenter_val_miou_crf")


def _overrides(job_dir: Path) -> dict[str, str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    items = yaml.safe_load(path.read_text()) or []
    return dict(item.split("=", 1) for item in items if "=" in item)


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder: its overrides, status, metrics (or error)."""
    rows = []
    for job_dir in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
                          key=lambda p: (len(p.name), p.name)):
        row: dict[str, Any] = {"job": job_dir.name, **_overrides(job_dir)}
        if (job_dir / RESULTS).is_file():
            results = read_json(job_dir / RESULTS)
            row["status"] = "ok"
            row.update({k: results.get(k) for k in METRICS})
        elif (job_dir / FAILED).is_file():
            row["status"] = "failed"
            row["error"] = read_json(job_dir / FAILED).get("error", "")
        else:
            row["status"] = "incomplete"
        rows.append(row)
    return rows


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    return columns


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def write_table(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    columns = _columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(sweep_dir / "sweep_summary.csv", buffer.getvalue())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    write_text_atomic(sweep_dir / "sweep_summary.md", "\n".join(lines) + "\n")


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def swept_knobs(rows: list[dict[str, Any]]) -> list[str]:
    """The override keys that take two or more numeric values across the jobs, in the sweep's own order (the
    order of the overrides on its command line)."""
    knobs = []
    for key in _columns(rows):
        if key in ("job", "status", "error", *METRICS):
            continue
        values = {row[key] for row in rows if key in row}
        if len(values) >= 2 and all(_number(v) is not None for v in values):
            knobs.append(key)
    return knobs


def heatmap_grid(rows: list[dict[str, Any]], metric: str = "cam_seed_miou_best"
                 ) -> tuple[str, str, list[float], list[float], np.ndarray] | None:
    """(row knob, column knob, row values, column values, grid of ``metric``; NaN where a job failed) when the
    sweep varies exactly two numeric knobs (e.g. K x gamma), else None."""
    knobs = swept_knobs(rows)
    if len(knobs) != 2:
        return None
    row_key, column_key = knobs
    jobs = [r for r in rows if row_key in r and column_key in r]
    row_values = sorted({float(r[row_key]) for r in jobs})
    column_values = sorted({float(r[column_key]) for r in jobs})
    grid = np.full((len(row_values), len(column_values)), np.nan)
    for r in jobs:
        if r.get(metric) is not None:
            grid[row_values.index(float(r[row_key])), column_values.index(float(r[column_key]))] = float(r[metric])
    return row_key, column_key, row_values, column_values, grid


def plot_heatmap(path: Path, row_key: str, column_key: str, row_values: list[float], column_values: list[float],
                 grid: np.ndarray, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.2 * len(column_values) + 2.5, 0.8 * len(row_values) + 1.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(100 * grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(column_values)), [f"{g:g}" for g in column_values])
    ax.set_yticks(range(len(row_values)), [f"{k:g}" for k in row_values])
    ax.set_xlabel(column_key)
    ax.set_ylabel(row_key)
    ax.set_title(title)
    for i in range(len(row_values)):
        for j in range(len(column_values)):
            text = "failed" if np.isnan(grid[i, j]) else f"{100 * grid[i, j]:.1f}"
            ax.text(j, i, text, ha="center", va="center", color="white", fontsize=9)
    fig.colorbar(image, ax=ax, label="mIoU (%)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def sensitivity_curves(path: Path, rows: list[dict[str, Any]], metric: str = "cam_seed_miou_best") -> bool:
    """Line plots of ``metric`` against each swept knob, one line per value of the other knobs.

    Returns False (and writes nothing) when no knob takes two or more values."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    jobs = [r for r in rows if r.get(metric) is not None]
    knobs = swept_knobs(jobs)
    if not knobs:
        return False
    fig = Figure(figsize=(5.5 * len(knobs), 3.8))
    FigureCanvasAgg(fig)
    for index, knob in enumerate(knobs):
        others = [k for k in knobs if k != knob]
        ax = fig.add_subplot(1, len(knobs), index + 1)
        groups = sorted({tuple(r.get(o) for o in others) for r in jobs},
                        key=lambda g: tuple(_number(v) or 0.0 for v in g))
        for group in groups:
            points = sorted((float(r[knob]), 100 * float(r[metric])) for r in jobs
                            if knob in r and tuple(r.get(o) for o in others) == group)
            label = ", ".join(f"{o.split('.')[-1]} = {v}" for o, v in zip(others, group, strict=True)) or None
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        values = sorted(float(r[knob]) for r in jobs if knob in r)
        if values[0] > 0 and values[-1] / values[0] >= 8:  # sizes such as K: a log axis
            ax.set_xscale("log", base=2)
        ax.set_xlabel(knob)
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return True


def summarise_sweep(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write the summary files of ``sweep_dir`` and return the rows."""
    sweep_dir = Path(sweep_dir)
    rows = collect_jobs(sweep_dir)
    if not rows:
        return rows
    write_table(sweep_dir, rows)
    grid = heatmap_grid(rows)
    if grid is not None:
        plot_heatmap(sweep_dir / "sweep_heatmap.png", *grid, title="CAM seed mIoU (best background score)")
    sensitivity_curves(sweep_dir / "sweep_sensitivity.png", rows)
    failed = [r["job"] for r in rows if r["status"] != "ok"]
    log.info("sweep summary: %d jobs, %d not ok %s -> %s", len(rows), len(failed), failed,
             sweep_dir / "sweep_summary.md")
    return rows


class SweepSummary(Callback):
    """Hydra callback: :func:`summarise_sweep` at the end of every multirun."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summarise_sweep(config.hydra.sweep.dir)


def record_failure(run_dir: Path, exc: BaseException) -> None:
    """Write ``failed.json`` for a job of a sweep that raised, so the summary lists it."""
    import traceback

    from vwl_lightning.utils.io import write_json_atomic

    write_json_atomic(run_dir / FAILED, {"error": f"{type(exc).__name__}: {exc}",
                                         "traceback": traceback.format_exc()})
    log.error("job failed (recorded in %s): %s", run_dir / FAILED, exc)
