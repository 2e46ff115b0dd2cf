"""The ablation on the embedded benchmark: does VWL + hybrid pooling beat plain CAMs? (spec §2–3)

    python -m vwl_lightning.studies.ablation [--seeds 1 2 3] [--out runs/ablation] [--variants ...]
        [--irn [VARIANT ...]] [-- overrides]

The six variants of the issue (plain CAM, + hybrid pooling, + VWL-L, + VWL-M, VWL-L + hybrid pooling,
VWL-M + hybrid pooling) and one correction that is not in the spec (the learned codebook initialised
from feature directions) × seeds, each run through classifier → CAMs → seed evaluation → CRF pseudo masks in its own
run directory (``<out>/<variant>/seed<k>``, resumable: finished stages are skipped). Reported per variant,
mean ± standard deviation over seeds: CAM seed mIoU at the best and at the configured background score,
pseudo-mask mIoU after CRF, object completeness and background spill (:mod:`vwl_lightning.evaluation.diagnostics`,
at the configured score), the classifier's validation mAP, and Pearson r between seed mIoU and that mAP over the
runs. For the embedded benchmark it adds the generator-side mechanism checks
(:mod:`vwl_lightning.evaluation.mechanism`), and for every codebook how many words are in use
(:mod:`vwl_lightning.evaluation.codebook_usage`). Writes ``ablation.json``, ``ablation.md``, ``ablation.csv`` and
``ablation_bars.png`` into ``<out>``.

``--irn [VARIANT ...]`` adds IRN pseudo masks (spec §10, ``pseudo.mode=irn``) made from the CAMs of each run of
those variants (all when none is named), in ``<run>/irn_run`` (resumable too), and their mIoU as a column (the
IRN trunk is the ``irn`` group's, by default the packaged ImageNet EfficientNet-Lite0).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from vwl_lightning.data.source import resolve_data
from vwl_lightning.evaluation.codebook_usage import codebook_usage, usage_summary
from vwl_lightning.evaluation.diagnostics import diagnose_cams
from vwl_lightning.evaluation.mechanism import mechanism_checks
from vwl_lightning.evaluation.reports import TIMINGS
from vwl_lightning.modules.classifier import load_classifier
from vwl_lightning.stages.pipeline import run_stages
from vwl_lightning.utils.config import config_dir
from vwl_lightning.utils.io import atomic_path, read_json, write_json_atomic, write_text_atomic
from vwl_lightning.utils.manifest import read_manifest

log = logging.getLogger(__name__)

VARIANTS: dict[str, list[str]] = {
    "plain CAM": ["+experiment=synthetic_baseline"],
    "+ hybrid pooling": ["+experiment=synthetic_baseline", "model/pool=hybrid"],
    "+ VWL-L": ["+experiment=synthetic_vwl_l", "model/pool=gap"],
    "+ VWL-M": ["+experiment=synthetic_vwl_m", "model/pool=gap"],
    "VWL-L + hybrid pooling": ["+experiment=synthetic_vwl_l"],
    "VWL-M + hybrid pooling": ["+experiment=synthetic_vwl_m"],
    # not in the spec: the learned codebook started from feature directions against its collapse (README)
    "VWL-L (feature init) + hybrid pooling": ["+experiment=synthetic_vwl_l", "model.codebook.init=features"],
}
STAGES = ("classifier", "cams", "seeds", "pseudo")
MEASURES = ("seed_miou_best", "seed_miou_fixed", "pseudo_miou", "object_completeness", "background_spill")
# generator-side checks of the two failure modes (vwl_lightning.evaluation.mechanism), synthetic data only
MECHANISM = ("badge_activation", "body_activation", "badge_to_body_ratio", "spill_typical_scene",
             "spill_other_scene")
# how much of the codebook the word labels use (vwl_lightning.evaluation.codebook_usage); variants with a codebook
USAGE = ("words_used", "words_per_image", "word_perplexity", "largest_word_share")
# with --irn: mIoU of the IRN pseudo masks made from the run's CAMs
IRN_MEASURES = ("irn_pseudo_miou",)
# the classifier's validation mAP after its last epoch (its manifest): how far each classifier got in its budget
CLASSIFIER_MEASURES = ("classifier_val_map",)
DIAGNOSTICS = "diagnostics.json"
IRN_RUN = "irn_run"


def slug(variant: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in variant.lower()).strip("_").replace("__", "_")


def variant_config(variant: str, seed: int, run_dir: Path, overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config",
                      overrides=[*VARIANTS[variant], f"seed={seed}", "logger=csv", *overrides])
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return cfg


def stage_seconds(run_dir: Path) -> float | None:
    """Sum of the stage times recorded in ``run_dir`` by the invocation that did the work (None: none recorded)."""
    return round(sum(read_json(run_dir / TIMINGS).values()), 1) if (run_dir / TIMINGS).is_file() else None


def run_irn(variant: str, seed: int, run_dir: Path, overrides: Sequence[str]) -> float | None:
    """IRN pseudo masks (``pseudo.mode=irn``) from the CAMs and classifier of ``run_dir``, in ``run_dir/irn_run``;
    their mIoU on the pseudo-mask split."""
    cfg = variant_config(variant, seed, run_dir / IRN_RUN, [
        *overrides, "pseudo.mode=irn", f"pseudo.cam_dir={run_dir / 'cams'}", f"irn.cam_dir={run_dir / 'cams'}",
        f"irn.classifier_dir={run_dir / 'classifier'}"])
    return (run_stages(cfg, ("pseudo",))["pseudo"]["metrics"] or {}).get("miou")


def run_one(variant: str, seed: int, out: Path, overrides: Sequence[str], irn: bool = False) -> dict[str, Any]:
    """One variant and seed: the pipeline up to pseudo masks (and IRN's with ``irn``), then the diagnostics
    (cached)."""
    run_dir = out / slug(variant) / f"seed{seed}"
    cfg = variant_config(variant, seed, run_dir, overrides)
    start = time.perf_counter()
    results = run_stages(cfg, STAGES)
    cached = run_dir / DIAGNOSTICS
    diagnostics = read_json(cached) if cached.is_file() else {}
    data = resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True))
    if "object_completeness" not in diagnostics:
        diagnostics.update(diagnose_cams(cfg.seeds.cam_dir, data.layout, cfg.seeds.split,
                                         float(cfg.seeds.bg_score)))
        if data.meta.name == "synthetic":  # the generator's truth exists for the embedded benchmark only
            diagnostics.update(mechanism_checks(cfg.seeds.cam_dir, data.layout.root, cfg.seeds.split))
        write_json_atomic(cached, diagnostics)
    if "codebook_usage" not in diagnostics:
        network = load_classifier(Path(results["classifier"]["checkpoint"])).model
        usage = codebook_usage(network, data.layout, cfg.seeds.split, data.meta.num_classes,
                               OmegaConf.to_container(cfg.data.normalise, resolve=True))
        if usage is not None:
            log.info("%s, seed %d: %s", variant, seed, usage_summary(usage))
        diagnostics["codebook_usage"] = usage
        write_json_atomic(cached, diagnostics)
    usage = diagnostics["codebook_usage"] or {}
    seeds, pseudo = results["seeds"], results["pseudo"]["metrics"] or {}
    extra = {"irn_pseudo_miou": run_irn(variant, seed, run_dir, overrides) if irn else None,
             "classifier_val_map": ((read_manifest(run_dir / "classifier") or {}).get("metrics") or {}).get("val/mAP")}
    timed = [t for t in (stage_seconds(run_dir), stage_seconds(run_dir / IRN_RUN) if irn else 0.0) if t is not None]
    return {
        "variant": variant, "seed": seed, "run_dir": str(run_dir),
        "seed_miou_best": seeds["best_miou"], "best_bg_score": seeds["best_bg_score"],
        "seed_miou_fixed": seeds["miou_at_configured"], "fixed_bg_score": seeds["configured_bg_score"],
        "pseudo_miou": pseudo.get("miou"), **extra,
        "object_completeness": diagnostics["object_completeness"],
        "background_spill": diagnostics["background_spill"],
        **{k: diagnostics.get(k) for k in MECHANISM},
        **{k: usage.get(k) for k in USAGE},
        "seconds": round(time.perf_counter() - start, 1),
        # stage times of the runs that did the work (kept when a later invocation resumes and skips)
        "stage_seconds": round(sum(timed), 1) if timed else None,
    }


def aggregate(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and standard deviation (ddof = 1 when ≥ 2 seeds) per variant and measure."""
    table: dict[str, dict[str, Any]] = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in mine]}
        for measure in (*MEASURES, *IRN_MEASURES, *CLASSIFIER_MEASURES, *MECHANISM, *USAGE):
            values = np.array([r[measure] for r in mine if r.get(measure) is not None], dtype=np.float64)
            entry[measure] = {"mean": float(values.mean()) if values.size else None,
                              "std": float(values.std(ddof=1)) if values.size > 1 else 0.0}
        table[variant] = entry
    return table


def shown_measures(table: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """:data:`MEASURES`, with the IRN pseudo-mask mIoU after the CRF one when any run has it, then the classifier's
    validation mAP."""
    with_irn = any(e["irn_pseudo_miou"]["mean"] is not None for e in table.values())
    return (*MEASURES[:3], *(IRN_MEASURES if with_irn else ()), *MEASURES[3:], *CLASSIFIER_MEASURES)


def seed_miou_vs_val_map(rows: list[dict[str, Any]]) -> float | None:
    """Pearson r between CAM seed mIoU (best bg) and classifier validation mAP over the runs (None: < 3 runs
    with both, or no spread): does a variant's seed mIoU follow how far its classifier got?"""
    pairs = np.array([(r["seed_miou_best"], r["classifier_val_map"]) for r in rows
                      if r.get("classifier_val_map") is not None], dtype=np.float64).reshape(-1, 2)
    if len(pairs) < 3 or np.any(pairs.std(axis=0) == 0):
        return None
    return float(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1])


def markdown(table: dict[str, dict[str, Any]], seconds: float | None, compute_seconds: float,
             map_correlation: float | None = None) -> str:
    """The study's tables; ``seconds`` (this invocation's wall time) is left out when None (pooled studies)."""
    shown = shown_measures(table)
    with_irn = IRN_MEASURES[0] in shown
    head = ["variant", "CAM seed mIoU (best bg)", "CAM seed mIoU (fixed bg)", "pseudo mIoU (CRF)",
            *(["pseudo mIoU (IRN)"] if with_irn else []), "object completeness", "background spill",
            "classifier val mAP"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for variant, entry in table.items():
        cells = [f"{100 * entry[m]['mean']:.1f} ± {100 * entry[m]['std']:.1f}" if entry[m]["mean"] is not None
                 else "–" for m in shown]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += ["", "Mechanism (generator truth, normalised CAMs): mean activation on the class-unique badge and on the",
              "rest of the object, their ratio (partial activation: ≫ 1), and background spill of the primary class",
              "on its typical scene vs another scene (co-occurrence: typical > other).", "",
              "| variant | badge activation | body activation | badge / body | spill, typical scene "
              "| spill, other scene |",
              "|---|---|---|---|---|---|"]
    for variant, entry in table.items():
        if entry["badge_to_body_ratio"]["mean"] is None:
            continue
        cells = [f"{entry[m]['mean']:.3f} ± {entry[m]['std']:.3f}" for m in MECHANISM]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    with_codebook = [v for v, e in table.items() if e["words_used"]["mean"] is not None]
    if with_codebook:
        lines += ["", "Codebook use over the first 256 images of the split (nearest word by cosine, spec §2.1): words "
                  "that are nearest somewhere, distinct words per image, effective number of words exp(H), and the "
                  "largest word's share of all positions.", "",
                  "| variant | words in use | words per image | effective words | largest share |",
                  "|---|---|---|---|---|"]
        for variant in with_codebook:
            e = table[variant]
            lines.append(f"| {variant} | {e['words_used']['mean']:.0f} ± {e['words_used']['std']:.0f} | "
                         f"{e['words_per_image']['mean']:.1f} ± {e['words_per_image']['std']:.1f} | "
                         f"{e['word_perplexity']['mean']:.1f} ± {e['word_perplexity']['std']:.1f} | "
                         f"{e['largest_word_share']['mean']:.2f} ± {e['largest_word_share']['std']:.2f} |")
    lines.append("")
    lines.append(f"First table in %, mean ± standard deviation over seeds {next(iter(table.values()))['seeds']}; "
                 f"compute time {compute_seconds / 60:.1f} min (sum of every run's stage times)"
                 + (f", wall time of this invocation {seconds / 60:.1f} min." if seconds is not None else "."))
    if map_correlation is not None:
        lines.append(f"Pearson r between CAM seed mIoU (best bg) and classifier val mAP over the runs: "
                     f"{map_correlation:.2f}.")
    return "\n".join(lines) + "\n"


def bar_values(entry: dict[str, Any], shown: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions, means and standard deviations (in %) of one variant's bars: a measure the variant has no value
    for (IRN's mIoU where IRN did not run) gets no bar, not a bar at 0."""
    kept = [(i, entry[m]) for i, m in enumerate(shown) if entry[m]["mean"] is not None]
    return (np.array([i for i, _ in kept], dtype=np.float64), np.array([100 * v["mean"] for _, v in kept]),
            np.array([100 * v["std"] for _, v in kept]))


def bar_chart(path: Path, table: dict[str, dict[str, Any]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = {"seed_miou_best": "seed mIoU (best bg)", "seed_miou_fixed": "seed mIoU (fixed bg)",
              "pseudo_miou": "pseudo mIoU (CRF)", "irn_pseudo_miou": "pseudo mIoU (IRN)",
              "object_completeness": "object completeness",
              "background_spill": "background spill", "classifier_val_map": "classifier val mAP"}
    fig = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(table)
    shown = shown_measures(table)
    for k, (variant, entry) in enumerate(table.items()):
        x, means, stds = bar_values(entry, shown)
        ax.bar(x + k * width, means, width, yerr=stds, capsize=2, label=variant)
    ax.set_xticks(np.arange(len(shown)) + 0.4 - width / 2, [labels[m] for m in shown])
    ax.set_ylabel("%")
    ax.set_title("Ablation on the embedded benchmark (mean ± std over seeds)")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def write_outputs(out: Path, rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    table = aggregate(rows)
    compute_seconds = sum(r["stage_seconds"] or 0.0 for r in rows)
    correlation = seed_miou_vs_val_map(rows)
    write_json_atomic(out / "ablation.json", {"variants": table, "runs": rows, "seconds": seconds,
                                              "compute_seconds": compute_seconds,
                                              "seed_miou_vs_val_map_r": correlation})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "ablation.csv", buffer.getvalue())
    write_text_atomic(out / "ablation.md", markdown(table, seconds, compute_seconds, correlation))
    bar_chart(out / "ablation_bars.png", table)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT")
    parser.add_argument("--irn", nargs="*", default=None, choices=list(VARIANTS), metavar="VARIANT",
                        help="also IRN pseudo masks from the CAMs of these variants' runs (none named: all)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    irn = set() if args.irn is None else set(args.irn or args.variants)
    start = time.perf_counter()
    # Seed-major: a study stopped early holds whole seeds of every variant, so its partial table compares like
    # with like; a re-run resumes from the manifests.
    rows = [run_one(variant, seed, args.out, args.overrides, irn=variant in irn) for seed in args.seeds
            for variant in args.variants]
    write_outputs(args.out, rows, time.perf_counter() - start)
    print((args.out / "ablation.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
