"""CRF vs IRN pseudo masks and DeepLabV2 vs EMANet on the embedded benchmark, over seeds.

Per seed ``S``, three runs under ``--out`` (each a normal ``python -m vwl_lightning`` command, printed before it
runs; a re-run skips the stages already complete, so the study resumes after a kill):

* ``sS/crf``: the default pipeline (classifier → CAMs → seeds → CRF masks → DeepLabV2);
* ``sS/irn``: ``pseudo.mode=irn`` on that run's CAMs and classifier (confident seeds → boundary branch →
  walk), then DeepLabV2 on the IRN masks;
* ``sS/emanet``: EMANet (``segmenter=emanet_synthetic``) on the CRF masks of ``sS/crf``;

and, on the first seed only, IRN's backbone choices for the same CAMs (``pipeline=[pseudo]``):
``irn_scratch`` (``irn.backbone_source=scratch``: the classifier's trunk architecture trained from random
init with the branch) and ``irn_efficientnet`` (``irn=efficientnet_lite0``: the packaged ImageNet
EfficientNet-Lite0, frozen), beside ``irn`` (the default: this run's classifier trunk, frozen).

Then it reads the manifests and prints (and writes to ``<out>/summary.md`` / ``summary.json``) one row per
seed and the mean ± sample std: seed mIoU, CRF / IRN pseudo-mask mIoU, the segmenters' val mIoU, and the
time per segmenter training step (training seconds / steps, validation included, from the manifests).

Usage: ``python bench/refinement_study.py [--seeds 1 2 3] [--out runs/refinement_study] [--collect-only]
[--runs crf irn emanet irn_efficientnet irn_scratch] [extra Hydra overrides ...]`` (``--runs`` picks which of
the runs above to make; the backbone choices always use the first seed).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

COMMON = ["logger=csv", "trainer.enable_progress_bar=false"]


def commands(seed: int, out: Path, extra: list[str]) -> dict[str, list[str]]:
    base = out / f"s{seed}"
    crf, irn, ema = base / "crf", base / "irn", base / "emanet"
    return {
        "crf": [f"seed={seed}", f"run_dir={crf}", *COMMON, *extra],
        "irn": [f"seed={seed}", f"run_dir={irn}", "pipeline=[pseudo,segmenter]", "pseudo.mode=irn",
                f"pseudo.cam_dir={crf}/cams", f"irn.cam_dir={crf}/cams", f"irn.classifier_dir={crf}/classifier",
                f"segmenter.backbone_init={crf}/classifier", *COMMON, *extra],
        "emanet": [f"seed={seed}", f"run_dir={ema}", "stage=segmenter", "segmenter=emanet_synthetic",
                   f"segmenter.pseudo_dir={crf}/pseudo", f"segmenter.backbone_init={crf}/classifier", *COMMON,
                   *extra],
    }


IRN_BACKBONES = {"irn_scratch": ["irn.backbone_source=scratch"], "irn_efficientnet": ["irn=efficientnet_lite0"]}


def backbone_commands(seed: int, out: Path, extra: list[str]) -> dict[str, list[str]]:
    crf = out / f"s{seed}" / "crf"
    return {name: [f"seed={seed}", f"run_dir={out / f's{seed}' / name}", "pipeline=[pseudo]", "pseudo.mode=irn",
                   f"pseudo.cam_dir={crf}/cams", f"irn.cam_dir={crf}/cams", f"irn.classifier_dir={crf}/classifier",
                   *choice, *COMMON, *extra]
            for name, choice in IRN_BACKBONES.items()}


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
    base = out / f"s{seed}"
    seeds, crf = manifest(base / "crf" / "seeds"), manifest(base / "crf" / "pseudo")
    irn_seeds, irn_train, irn = (manifest(base / "irn" / "irn" / "seeds"), manifest(base / "irn" / "irn" / "train"),
                                 manifest(base / "irn" / "pseudo"))
    row: dict[str, Any] = {"seed": seed}
    if seeds:
        row.update(seed_miou_best=seeds["metrics"]["best_miou"],
                   seed_miou_configured=seeds["metrics"]["miou_at_configured"])
    if crf:
        row["crf_pseudo_miou"] = crf["metrics"]["miou"]
    if irn_seeds and irn_seeds.get("metrics"):
        row.update(irn_seed_miou=irn_seeds["metrics"]["miou"], irn_seed_coverage=irn_seeds["metrics"].get("coverage"))
    if irn_train:
        row.update(irn_train_images_per_s=irn_train.get("images_per_second"),
                   irn_train_loss=irn_train["metrics"].get("train/loss"))
    if irn:
        row.update(irn_pseudo_miou=irn["metrics"]["miou"], irn_walk_images_per_s=irn.get("walk_images_per_second"))
    for name, folder in (("deeplab_on_crf", base / "crf"), ("deeplab_on_irn", base / "irn"),
                         ("emanet_on_crf", base / "emanet")):
        for key, value in seg_row(folder).items():
            row[f"{name}_{key}"] = value
    return row


ROWS = [
    ("CAM seed mIoU (best bg / bg 0.13)", "seed_miou_best", "seed_miou_configured"),
    ("CRF pseudo-mask mIoU", "crf_pseudo_miou", None),
    ("IRN confident seeds: mIoU on labelled pixels / coverage", "irn_seed_miou", "irn_seed_coverage"),
    ("IRN pseudo-mask mIoU", "irn_pseudo_miou", None),
    ("DeepLabV2 val mIoU on CRF masks (no CRF / test CRF)", "deeplab_on_crf_miou", "deeplab_on_crf_miou_crf"),
    ("DeepLabV2 val mIoU on IRN masks (no CRF / test CRF)", "deeplab_on_irn_miou", "deeplab_on_irn_miou_crf"),
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


def backbone_rows(seed: int, out: Path) -> list[dict[str, Any]]:
    rows = []
    for name, choice in (("irn", "classifier trunk, frozen (default)"),
                         ("irn_scratch", "scratch (irn.backbone_source=scratch)"),
                         ("irn_efficientnet", "ImageNet EfficientNet-Lite0, frozen (irn=efficientnet_lite0)")):
        base = out / f"s{seed}" / name
        trained, walked = manifest(base / "irn" / "train"), manifest(base / "pseudo")
        if walked:
            rows.append({"run": name, "backbone": choice, "irn_pseudo_miou": walked["metrics"]["miou"],
                         "train_images_per_s": trained.get("images_per_second"),
                         "train_loss": trained.get("metrics", {}).get("train/loss"),
                         "walk_images_per_s": walked.get("walk_images_per_second")})
    return rows


def backbone_markdown(seed: int, out: Path) -> str:
    rows = backbone_rows(seed, out)
    if not rows:
        return ""
    lines = [f"IRN backbone choices, seed {seed}, the same CAMs and confident seeds:", "",
             "| IRN trunk | IRN pseudo-mask mIoU (%) | final train loss | train img/s | walk img/s |",
             "|---|---|---|---|---|"]
    for r in rows:
        loss = f"{r['train_loss']:.3f}" if r.get("train_loss") is not None else "—"
        lines.append(f"| {r['backbone']} | {100 * r['irn_pseudo_miou']:.2f} | {loss} | "
                     f"{r.get('train_images_per_s')} | {r.get('walk_images_per_s')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=Path("runs/refinement_study"))
    parser.add_argument("--collect-only", action="store_true")
    parser.add_argument("--runs", nargs="+", default=["crf", "irn", "emanet", *IRN_BACKBONES],
                        choices=["crf", "irn", "emanet", *IRN_BACKBONES], help="which runs to make")
    args, extra = parser.parse_known_args()
    out = args.out.resolve()
    jobs = [(seed, name, o) for seed in args.seeds for name, o in commands(seed, out, extra).items()
            if name in args.runs]
    jobs += [(args.seeds[0], name, o) for name, o in backbone_commands(args.seeds[0], out, extra).items()
             if name in args.runs]
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
    text = summary_markdown(rows) + "\n" + backbone_markdown(args.seeds[0], out)
    (out / "summary.json").write_text(json.dumps({"seeds": rows, "irn_backbones": backbone_rows(args.seeds[0], out)},
                                                 indent=2))
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
