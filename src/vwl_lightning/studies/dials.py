"""Where does each method help? The ablation's methods over a grid of the benchmark's two dials.

    python -m vwl_lightning.studies.dials [--sharing 1.0 0.5] [--cooccurrence 0.8 0.1] [--seeds 1 2]
        [--extra-seed 3 | --no-extra-seed] [--methods ...] [--out runs/dials] [-- overrides]

The embedded benchmark's two failure modes have a dial each (:class:`~vwl_lightning.data.synthetic.SyntheticConfig`):
``part_sharing`` (share of each object's body in class-shared textures; 1 = today, partial activation at full
strength) and ``cooccurrence`` (P(scene = the class's typical scene); 0.8 today, 1 / num_scenes = 0.1 none).
Every cell of the grid ``sharing × cooccurrence`` is a data set of its own; in it, plain CAM, + hybrid pooling,
+ VWL-L and VWL-L + hybrid pooling (the ablation's variants, :data:`~vwl_lightning.studies.ablation.VARIANTS`)
each run with every seed through classifier → CAMs → seed evaluation → CRF pseudo masks, in
``<out>/s<sharing>_p<cooccurrence>/<method>/seed<k>`` (resumable: finished stages and diagnostics are skipped).

Third seed, a rule fixed before any run: in a cell where a method's gain in CAM seed mIoU (best background
score) over plain CAM is within the spread, ``|mean_m - mean_plain| <= max(std_m, std_plain)`` (sample std
over the base seeds), ``--extra-seed`` runs for that method and for plain CAM.

Per cell and method: mean ± std of the ablation's measures (:data:`~vwl_lightning.studies.ablation.MEASURES`)
and mechanism checks, and the gain over plain CAM ``mean_m - mean_plain`` with its standard error
``sqrt(std_m² / n_m + std_plain² / n_plain)``. Writes ``dials.json`` (cells and every run), ``dials.csv`` (runs),
``dials.md`` and ``dials_gain.png`` (heat maps of the gain per method across the two dials) into ``<out>``.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vwl_lightning.errors import ConfigError
from vwl_lightning.evaluation.mechanism import mechanism_checks
from vwl_lightning.studies.ablation import DIAGNOSTICS, MEASURES, MECHANISM, VARIANTS, run_one
from vwl_lightning.utils.io import atomic_path, read_json, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

BASELINE = "plain CAM"
METHODS: tuple[str, ...] = (BASELINE, "+ hybrid pooling", "+ VWL-L", "VWL-L + hybrid pooling")
# measures whose gain over plain CAM the table and the heat maps show
GAIN_MEASURES = ("seed_miou_best", "pseudo_miou", "object_completeness", "background_spill")
_LABELS = {"seed_miou_best": "CAM seed mIoU (best bg)", "seed_miou_fixed": "CAM seed mIoU (fixed bg)",
           "pseudo_miou": "pseudo mIoU (CRF)", "object_completeness": "object completeness",
           "background_spill": "background spill"}
# the mechanism checks shown per cell: the ablation's, plus the class-specific vs shared body split
MECHANISM_SHOWN = (*MECHANISM[:2], "own_body_activation", "shared_body_activation", *MECHANISM[2:])
_KNOB_KEYS = ("data.source.generator.part_sharing", "data.source.generator.cooccurrence")


def cell_name(sharing: float, cooccurrence: float) -> str:
    """Folder of one grid cell, e.g. ``s1.00_p0.80``."""
    return f"s{sharing:.2f}_p{cooccurrence:.2f}"


def cell_overrides(sharing: float, cooccurrence: float) -> list[str]:
    return [f"{_KNOB_KEYS[0]}={sharing}", f"{_KNOB_KEYS[1]}={cooccurrence}"]


def check_grid(sharing: Sequence[float], cooccurrence: Sequence[float], methods: Sequence[str],
               overrides: Sequence[str]) -> None:
    """One-line :class:`ConfigError` for a knob outside [0, 1], a missing baseline or an override of a dial."""
    for flag, values in (("--sharing", sharing), ("--cooccurrence", cooccurrence)):
        for v in values:
            if not (0.0 <= v <= 1.0) or math.isnan(v):
                raise ConfigError(f"dials {flag} {v!r}: expected a value in [0, 1]")
        if len(set(values)) != len(values):
            raise ConfigError(f"dials {flag} {list(values)}: expected distinct values")
    if BASELINE not in methods:
        raise ConfigError(f"dials --methods {list(methods)}: expected {BASELINE!r} among them (gains are over it)")
    for o in overrides:
        if o.lstrip("+~").split("=", 1)[0] in _KNOB_KEYS:
            raise ConfigError(f"dials override {o!r}: expected the dials to be set by --sharing/--cooccurrence")


def _stats(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)  # NaN: undefined
    return {"mean": float(arr.mean()) if arr.size else None,
            "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0, "n": int(arr.size)}


def summarise_cell(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method of one cell: mean/std/n of every measure, and the gain over plain CAM with its standard error."""
    out: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == method]
        out[method] = {"seeds": [r["seed"] for r in mine],
                       **{m: _stats([r.get(m) for r in mine]) for m in (*MEASURES, *MECHANISM_SHOWN)}}
    base = out.get(BASELINE)
    for method, entry in out.items():
        entry["gain"] = {}
        for m in GAIN_MEASURES:
            a, b = entry[m], (base or {}).get(m)
            if method == BASELINE or b is None or a["mean"] is None or b["mean"] is None:
                entry["gain"][m] = None
                continue
            se = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
            entry["gain"][m] = {"mean": a["mean"] - b["mean"], "se": se,
                                "within_spread": abs(a["mean"] - b["mean"]) <= max(a["std"], b["std"])}
    return out


def needs_extra_seed(cell: dict[str, dict[str, Any]]) -> list[str]:
    """Methods of a cell whose seed-mIoU gain over plain CAM is within the spread (plain CAM first if any)."""
    close = [m for m, e in cell.items() if m != BASELINE and e["gain"]["seed_miou_best"] is not None
             and e["gain"]["seed_miou_best"]["within_spread"]]
    return [BASELINE, *close] if close else []


def _fmt(entry: dict[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    if entry is None or entry.get("mean") is None:
        return "–"
    spread = entry["std"] if "std" in entry else entry["se"]
    return f"{scale * entry['mean']:.{digits}f} ± {scale * spread:.{digits}f}"


def markdown(cells: dict[str, dict[str, Any]], seconds: float, compute_seconds: float) -> str:
    """The per-cell table (%, mean ± std over seeds), the gains (± standard error) and the mechanism checks."""
    head = ["part sharing", "co-occurrence", "method", "seeds", *(_LABELS[m] for m in MEASURES)]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for cell in cells.values():
        for method, e in cell["methods"].items():
            lines.append(f"| {cell['sharing']:.2f} | {cell['cooccurrence']:.2f} | {method} | {len(e['seeds'])} | "
                         + " | ".join(_fmt(e[m]) for m in MEASURES) + " |")
    lines += ["", "Gain over plain CAM in the same cell (points, ± standard error of the difference; "
              "* = within the spread of the seeds):", ""]
    head = ["part sharing", "co-occurrence", "method", *(_LABELS[m] for m in GAIN_MEASURES)]
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for cell in cells.values():
        for method, e in cell["methods"].items():
            if method == BASELINE:
                continue
            gains = [_fmt(g) + (" *" if g is not None and g["within_spread"] else "") for g in
                     (e["gain"][m] for m in GAIN_MEASURES)]
            lines.append(f"| {cell['sharing']:.2f} | {cell['cooccurrence']:.2f} | {method} | " + " | ".join(gains)
                         + " |")
    lines += ["", "Mechanism checks (generator truth, normalised CAMs): badge / body activation ratio (partial "
              "activation: ≫ 1; the body split into its class-specific and shared pixels when part sharing < 1) "
              "and the primary class's background spill on its typical vs another scene (co-occurrence: "
              "typical > other).", "",
              "| part sharing | co-occurrence | method | badge activation | body activation | class-specific body "
              "| shared body | badge / body | spill, typical scene | spill, other scene |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for cell in cells.values():
        for method, e in cell["methods"].items():
            lines.append(f"| {cell['sharing']:.2f} | {cell['cooccurrence']:.2f} | {method} | "
                         + " | ".join(_fmt(e[m], 1.0, 3) for m in MECHANISM_SHOWN) + " |")
    lines += ["", f"Compute time {compute_seconds / 60:.1f} min (sum of every run's stage times), wall time of this "
              f"invocation {seconds / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def heat_maps(path: Path, cells: dict[str, dict[str, Any]], sharing: Sequence[float],
              cooccurrence: Sequence[float], methods: Sequence[str]) -> None:
    """One panel per (gain measure, method): the gain over plain CAM across part sharing (x) and co-occurrence (y)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [m for m in methods if m != BASELINE]
    rows = ("seed_miou_best", "pseudo_miou")
    fig = Figure(figsize=(3.6 * max(len(shown), 1) + 0.8, 3.2 * len(rows)))
    FigureCanvasAgg(fig)
    xs, ys = sorted(sharing), sorted(cooccurrence)
    for r, measure in enumerate(rows):
        grids = {}
        for method in shown:
            grid = np.full((len(ys), len(xs)), np.nan)
            se = np.full_like(grid, np.nan)
            for cell in cells.values():
                gain = cell["methods"].get(method, {}).get("gain", {}).get(measure)
                if gain is not None:
                    i, j = ys.index(cell["cooccurrence"]), xs.index(cell["sharing"])
                    grid[i, j], se[i, j] = 100 * gain["mean"], 100 * gain["se"]
            grids[method] = (grid, se)
        finite = [abs(v) for g, _ in grids.values() for v in g.ravel() if np.isfinite(v)]
        limit = max(finite, default=1.0) or 1.0
        for c, method in enumerate(shown):
            grid, se = grids[method]
            ax = fig.add_subplot(len(rows), len(shown), r * len(shown) + c + 1)
            image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, origin="lower", aspect="auto")
            for i in range(len(ys)):
                for j in range(len(xs)):
                    if np.isfinite(grid[i, j]):
                        ax.text(j, i, f"{grid[i, j]:+.1f}\n±{se[i, j]:.1f}", ha="center", va="center", fontsize=9,
                                color="white" if abs(grid[i, j]) > 0.6 * limit else "black")
            ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
            ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
            ax.set_xlabel("part sharing")
            ax.set_ylabel("scene co-occurrence")
            ax.set_title(f"{method}\ngain in {_LABELS[measure]}", fontsize=9)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="points")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def body_split(run_dir: Path) -> dict[str, Any]:
    """Class-specific and shared body activation of a finished run (cached in its ``diagnostics.json``)."""
    cached = run_dir / DIAGNOSTICS
    diagnostics = read_json(cached)
    if "own_body_activation" not in diagnostics:  # a run whose diagnostics predate the split
        manifest = read_json(run_dir / "seeds" / "manifest.json")
        root = read_json(run_dir / "classifier" / "manifest.json")["data_root"]
        diagnostics.update(mechanism_checks(manifest["cam_dir"], root, manifest["split"]))
        write_json_atomic(cached, diagnostics)
    return {k: diagnostics.get(k) for k in ("own_body_activation", "shared_body_activation")}


def run_cell(sharing: float, cooccurrence: float, methods: Sequence[str], seeds: Sequence[int], out: Path,
             overrides: Sequence[str]) -> list[dict[str, Any]]:
    """Every method × seed of one cell (each resumable); the rows carry the cell's dials."""
    cell_dir = out / cell_name(sharing, cooccurrence)
    rows = []
    for method in methods:
        for seed in seeds:
            row = run_one(method, seed, cell_dir, [*overrides, *cell_overrides(sharing, cooccurrence)])
            rows.append({"sharing": sharing, "cooccurrence": cooccurrence, **row, **body_split(Path(row["run_dir"]))})
    return rows


def write_outputs(out: Path, rows: list[dict[str, Any]], sharing: Sequence[float], cooccurrence: Sequence[float],
                  methods: Sequence[str], seconds: float) -> dict[str, dict[str, Any]]:
    """Cells from ``rows`` (the per-run results); ``dials.{json,csv,md}`` and the heat maps."""
    cells: dict[str, dict[str, Any]] = {}
    for s in sharing:
        for p in cooccurrence:
            mine = [r for r in rows if r["sharing"] == s and r["cooccurrence"] == p]
            if mine:
                cells[cell_name(s, p)] = {"sharing": s, "cooccurrence": p, "methods": summarise_cell(mine)}
    compute_seconds = sum(r["stage_seconds"] or 0.0 for r in rows)
    write_json_atomic(out / "dials.json", {"cells": cells, "runs": rows, "seconds": seconds,
                                           "compute_seconds": compute_seconds, "sharing": list(sharing),
                                           "cooccurrence": list(cooccurrence), "methods": list(methods)})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "dials.csv", buffer.getvalue())
    write_text_atomic(out / "dials.md", markdown(cells, seconds, compute_seconds))
    if len(methods) > 1:
        heat_maps(out / "dials_gain.png", cells, sharing, cooccurrence, methods)
    return cells


def run_study(sharing: Sequence[float], cooccurrence: Sequence[float], methods: Sequence[str],
              seeds: Sequence[int], extra_seed: int | None, out: Path, overrides: Sequence[str]
              ) -> dict[str, dict[str, Any]]:
    """The whole grid, base seeds first in every cell, then the extra seed where the rule asks for it."""
    check_grid(sharing, cooccurrence, methods, overrides)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for s in sharing:
        for p in cooccurrence:
            rows += run_cell(s, p, methods, seeds, out, overrides)
    if extra_seed is not None and extra_seed not in seeds:
        for s in sharing:
            for p in cooccurrence:
                cell = summarise_cell([r for r in rows if r["sharing"] == s and r["cooccurrence"] == p])
                extra = needs_extra_seed(cell)
                if extra:
                    log.info("cell %s: gain within the spread for %s; running seed %d", cell_name(s, p),
                             ", ".join(extra[1:]), extra_seed)
                    rows += run_cell(s, p, extra, [extra_seed], out, overrides)
    order = {m: k for k, m in enumerate(methods)}
    rows.sort(key=lambda r: (sharing.index(r["sharing"]), cooccurrence.index(r["cooccurrence"]),
                             order[r["variant"]], r["seed"]))
    return write_outputs(out, rows, sharing, cooccurrence, methods, time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sharing", type=float, nargs="+", default=[1.0, 0.5], help="part_sharing values")
    parser.add_argument("--cooccurrence", type=float, nargs="+", default=[0.8, 0.1], help="cooccurrence values")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--extra-seed", type=int, default=3, help="seed run where a gain is within the spread")
    parser.add_argument("--no-extra-seed", action="store_true", help="never run the extra seed")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(VARIANTS), metavar="METHOD")
    parser.add_argument("--out", type=Path, default=Path("runs/dials"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    try:
        run_study(args.sharing, args.cooccurrence, args.methods, args.seeds,
                  None if args.no_extra_seed else args.extra_seed, args.out, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((args.out / "dials.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
