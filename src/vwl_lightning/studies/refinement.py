"""CRF vs IRN pseudo masks, IRN's trunk choices, and DeepLabV2 vs EMANet on the embedded benchmark, over seeds.

Per seed ``S``, runs under ``--out`` (each a normal ``python -m vwl_lightning`` command, printed before it
runs; a re-run skips the stages already complete, so the study resumes after a kill):

* ``sS/crf``: the default pipeline (classifier → CAMs → seeds → CRF masks → DeepLabV2);
* ``sS/irn``, ``sS/irn_efficientnet``, ``sS/irn_scratch``: ``pseudo.mode=irn`` on that seed's CAMs and
  classifier (confident seeds → boundary branch → walk), then DeepLabV2 on the IRN masks, with IRN's three
  trunk choices: this run's classifier trunk, frozen (``irn=synthetic``); the packaged ImageNet
  EfficientNet-Lite0, frozen (``irn=efficientnet_lite0``, the default); the classifier's trunk architecture
  trained from random init with the branch (``irn=synthetic irn.backbone_source=scratch``);
* ``sS/emanet``: EMANet (``segmenter=emanet_synthetic``) on the CRF masks of ``sS/crf``.

The jobs run in the order of ``--runs``, each over all seeds, so the first-named runs finish first.
Then it reads the manifests and prints (and writes to ``<out>/summary.md`` / ``summary.json``) one column per
seed and the mean ± sample std: seed mIoU, CRF / IRN pseudo-mask mIoU per trunk, the segmenters' val mIoU,
IRN's training / walk speed, and the time per segmenter training step (training seconds / steps, validation
included, from the manifests).

Usage: ``python -m vwl_lightning.studies.refinement [--seeds 1 2 3] [--out runs/refinement_study]
[--collect-only] [--runs crf irn_efficientnet irn_scratch irn emanet] [extra Hydra overrides ...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vwl_lightning.utils.io import write_json_atomic, write_text_atomic

COMMON = ["logger=csv", "trainer.enable_progress_bar=false"]


IRN_TRUNKS = {"irn": ["irn=synthetic", "irn.backbone_source=classifier"],
              "irn_efficientnet": ["irn=efficientnet_lite0"],
              "irn_scratch": ["irn=synthetic", "irn.backbone_source=scratch"]}
IRN_TRUNK_NAMES = {"irn": "classifier trunk, frozen", "irn_efficientnet": "ImageNet EfficientNet-Lite0, frozen",
                   "irn_scratch": "trained from scratch"}
RUN_NAMES = ["crf", *IRN_TRUNKS, "emanet"]


def commands(seed: int, out: Path, extra: list[str]) -> dict[str, list[str]]:
    """The Hydra overrides of every run of one seed, by run name."""
    base = out / f"s{seed}"
    crf = base / "crf"
    runs = {"crf": [f"seed={seed}", f"run_dir={crf}", *COMMON, *extra]}
    for name, choice in IRN_TRUNKS.items():
        runs[name] = [f"seed={seed}", f"run_dir={base / name}", "pipeline=[pseudo,segmenter]", "pseudo.mode=irn",
                      f"pseudo.cam_dir={crf}/cams", f"irn.cam_dir={crf}/cams", f"irn.classifier_dir={crf}/classifier",
                      f"segmenter.backbone_init={crf}/classifier", *choice, *COMMON, *extra]
    runs["emanet"] = [f"seed={seed}", f"run_dir={base / 'emanet'}", "stage=segmenter", "segmenter=emanet_synthetic",
                      f"segmenter.pseudo_dir={crf}/pseudo", f"segmenter.backbone_init={crf}/classifier", *COMMON,
                      *extra]
    return runs


def manifest(path: Path) -> dict[str, Any]:
    file = path / "manifest.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def seg_row(folder: Path) -> dict[str, Any]:
    m = manifest(folder / "segmenter")
    if not m:
        return {}
    training = m.get("training", {})
    steps = int(training.get("global_step") or 0)
    return {"miou": m["eval"]["eval"]["miou"], "miou_crf": (m["eval"].get("eval_crf") or {}).get("miou"),
            "s_per_step": training["seconds"] / steps if steps else None}


def collect(seed: int, out: Path) -> dict[str, Any]:
    """One seed's numbers, read from the runs' manifests (missing runs leave their keys out)."""
    base = out / f"s{seed}"
    seeds, crf = manifest(base / "crf" / "seeds"), manifest(base / "crf" / "pseudo")
    row: dict[str, Any] = {"seed": seed}
    if seeds.get("metrics"):
        row.update(seed_miou_best=seeds["metrics"]["best_miou"],
                   seed_miou_configured=seeds["metrics"]["miou_at_configured"])
    if crf.get("metrics"):
        row["crf_pseudo_miou"] = crf["metrics"]["miou"]
    for name in IRN_TRUNKS:
        irn_seeds, irn_train = manifest(base / name / "irn" / "seeds"), manifest(base / name / "irn" / "train")
        walked = manifest(base / name / "pseudo")
        if irn_seeds.get("metrics") and "irn_seed_miou" not in row:
            row.update(irn_seed_miou=irn_seeds["metrics"]["miou"],
                       irn_seed_coverage=irn_seeds["metrics"].get("coverage"))
        if irn_train:
            row.update({f"{name}_train_images_per_s": irn_train.get("images_per_second"),
                        f"{name}_train_seconds": irn_train.get("seconds"),
                        f"{name}_train_loss": irn_train.get("metrics", {}).get("train/loss")})
        if walked.get("metrics"):                      # a stage still running has no metrics yet
            row.update({f"{name}_pseudo_miou": walked["metrics"]["miou"],
                        f"{name}_walk_images_per_s": walked.get("walk_images_per_second")})
    for name, folder in (("deeplab_on_crf", base / "crf"), ("emanet_on_crf", base / "emanet"),
                         *((f"deeplab_on_{name}", base / name) for name in IRN_TRUNKS)):
        for key, value in seg_row(folder).items():
            row[f"{name}_{key}"] = value
    return row


ROWS = [
    ("CAM seed mIoU (best bg / bg 0.13)", "seed_miou_best", "seed_miou_configured"),
    ("CRF pseudo-mask mIoU", "crf_pseudo_miou", None),
    ("IRN confident seeds: mIoU on labelled pixels / coverage", "irn_seed_miou", "irn_seed_coverage"),
    *((f"IRN pseudo-mask mIoU, {IRN_TRUNK_NAMES[name]}", f"{name}_pseudo_miou", None) for name in IRN_TRUNKS),
    ("DeepLabV2 val mIoU on CRF masks (no CRF / test CRF)", "deeplab_on_crf_miou", "deeplab_on_crf_miou_crf"),
    *((f"DeepLabV2 val mIoU on IRN masks, {IRN_TRUNK_NAMES[name]} (no CRF / test CRF)",
       f"deeplab_on_{name}_miou", f"deeplab_on_{name}_miou_crf") for name in IRN_TRUNKS),
    ("EMANet val mIoU on CRF masks (no CRF / test CRF)", "emanet_on_crf_miou", "emanet_on_crf_miou_crf"),
]


def mean_std(values: list[float], scale: float) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.2f} (n=1)"
    return f"{mean:.2f} ± {statistics.stdev(values) * scale:.2f}"


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    seeds = [r["seed"] for r in rows]
    lines = ["| measure (%) | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for title, a, b in ROWS:
        cells = []
        for r in rows:
            parts = [f"{100 * r[k]:.2f}" if r.get(k) is not None else "—" for k in (a, b) if k]
            cells.append(" / ".join(parts))
        means = " / ".join(mean_std([r[k] for r in rows if r.get(k) is not None], 100) for k in (a, b) if k)
        lines.append(f"| {title} | " + " | ".join(cells) + f" | {means} |")
    dl = [r["deeplab_on_crf_s_per_step"] for r in rows if r.get("deeplab_on_crf_s_per_step")]
    em = [r["emanet_on_crf_s_per_step"] for r in rows if r.get("emanet_on_crf_s_per_step")]
    if dl and em:
        per_seed = [f"{r.get('deeplab_on_crf_s_per_step', 0):.3f} / {r.get('emanet_on_crf_s_per_step', 0):.3f}"
                    for r in rows]
        lines.append("| s per training step, DeepLabV2 / EMANet (manifests) | " + " | ".join(per_seed)
                     + f" | ratio EMANet/DeepLabV2 {statistics.fmean(em) / statistics.fmean(dl):.2f} |")
    return "\n".join(lines) + "\n"


def speed_markdown(rows: list[dict[str, Any]]) -> str:
    """IRN's boundary-training and walk speed per trunk (mean over the seeds that ran it)."""
    lines = ["| IRN trunk | boundary training s (img/s) | final train loss | walk img/s |", "|---|---|---|---|"]
    for name in IRN_TRUNKS:
        seconds = [r[f"{name}_train_seconds"] for r in rows if r.get(f"{name}_train_seconds")]
        if not seconds:
            continue
        rate = statistics.fmean(r[f"{name}_train_images_per_s"] for r in rows if r.get(f"{name}_train_images_per_s"))
        loss = [r[f"{name}_train_loss"] for r in rows if r.get(f"{name}_train_loss") is not None]
        walk = [r[f"{name}_walk_images_per_s"] for r in rows if r.get(f"{name}_walk_images_per_s")]
        lines.append(f"| {IRN_TRUNK_NAMES[name]} | {statistics.fmean(seconds):.0f} ({rate:.1f}) | "
                     f"{statistics.fmean(loss):.3f} | " + (f"{statistics.fmean(walk):.1f} |" if walk else "— |"))
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vwl_lightning.studies.refinement",
                                description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--out", type=Path, default=Path("runs/refinement_study"))
    p.add_argument("--collect-only", action="store_true")
    p.add_argument("--runs", nargs="+", default=RUN_NAMES, choices=RUN_NAMES,
                   help="which runs to make, in this order (each over all seeds); crf first: the others use it")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study (or only collect its numbers); exit status 0, or a message naming the failed run."""
    args, extra = parser().parse_known_args(argv)
    out = args.out.resolve()
    per_seed = {seed: commands(seed, out, extra) for seed in args.seeds}
    jobs = [(seed, name, per_seed[seed][name]) for name in args.runs for seed in args.seeds]
    for seed, name, overrides in [] if args.collect_only else jobs:
        cmd = [sys.executable, "-m", "vwl_lightning", *overrides]
        print("$", shlex.join(cmd), flush=True)
        log = out / f"s{seed}" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as handle:
            code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=os.environ).returncode
        if code:
            sys.exit(f"{name} (seed {seed}) failed with exit code {code}; see {log}")
    rows = [collect(seed, out) for seed in args.seeds]
    text = summary_markdown(rows) + "\n" + speed_markdown(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "summary.json", {"seeds": rows})
    write_text_atomic(out / "summary.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
