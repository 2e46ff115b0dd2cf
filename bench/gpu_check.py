"""One script that exercises every GPU path of the pipeline and checks it against the CPU path.

On a CUDA machine (budget: under 8 minutes on one modern GPU), with randomly initialised networks of the
paper's VOC configuration (``+experiment=voc_vwl_l``; no weights are downloaded):

1. **classifier steps** (ResNet-101, hybrid pooling, K = 256 codebook, batch 16 at 512²): ``--steps``
   optimiser steps in ``bf16-mixed`` and in ``32-true`` (Lightning, one GPU); s/step. Check: the fp32
   losses of one batch on GPU and CPU agree (relative 1e-3).
2. **CAM stage** (``make_cams`` on ``--cam-images`` 512×384 JPEGs cut from real photos, scales
   1/0.5/1.5/2 + flip, the default PIL rescaling) in ``cam.precision=auto`` and ``32-true``; s/image.
   Check: the fp32 GPU CAM files equal the CPU stage's on the first 2 images (max |diff| < 2e-3, float16
   files) and the auto-precision ones stay close (max |diff| reported, mean < 0.02).
3. **IRN random walk** (if ``vwl_lightning.pseudo.random_walk`` exists): one walk of 20 classes on a
   128×96 stride-4 map; s/walk. Check: GPU and CPU results agree (relative 1e-3 of the peak).
4. **segmenter steps** (DeepLabV2-ResNet101, MSC, batch 10 at 321²) in ``bf16-mixed`` and ``32-true``;
   s/step. Check: the fp32 loss of one batch on GPU and CPU agree (relative 1e-3).
5. **segmenter predict** (scales 1 + flip on 512×384): s/image. Check: GPU and CPU class probabilities
   agree (max |diff| < 1e-3) and so do the argmax maps (> 99.9 % of the pixels).

Each section prints its times; the end prints one table and writes ``--out`` (JSON). A failed check makes
the exit status 1. With no CUDA device it says so and exits 0 (``--smoke`` runs every section on the CPU
at toy sizes instead, to check that the script itself works, training in fp32 only; its times mean nothing).

Usage: ``python -m bench.gpu_check [--out gpu_check.json] [--steps 10] [--cam-images 8] [--smoke]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

BUDGET_S = 8 * 60
# training precisions per mode: the smoke test (CPU) skips bf16, which CPUs without AVX-512 BF16 emulate at
# minutes per ResNet-101 step; the GPU run times both
TRAIN_PRECISIONS = {False: ("bf16-mixed", "32-true"), True: ("32-true",)}


class Report:
    """Times and checks of the sections; a check that fails is recorded, not raised."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.checks: dict[str, dict[str, Any]] = {}
        self.start = time.perf_counter()

    def time(self, name: str, seconds: float, unit: str) -> None:
        self.times[f"{name} ({unit})"] = seconds
        print(f"  {name}: {seconds:.4f} {unit}", flush=True)

    def check(self, name: str, value: float, ok: bool, bound: str) -> None:
        self.checks[name] = {"value": value, "ok": bool(ok), "bound": bound}
        print(f"  check {name}: {value:.3g} ({bound}) {'OK' if ok else 'FAILED'}", flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FixedBatches(Dataset):
    """The same pre-made batch ``n`` times (the data loader costs nothing)."""

    def __init__(self, batch: dict[str, torch.Tensor], n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.batch


class StepTimer(pl.Callback):
    """Wall time of each training step (device synchronised)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        sync(trainer.strategy.root_device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        sync(trainer.strategy.root_device)
        self.times.append(time.perf_counter() - self._start)


def train_steps(module: pl.LightningModule, batch: dict[str, torch.Tensor], steps: int, precision: str,
                accelerator: str) -> float:
    """Median s/step of ``steps`` Lightning steps on one device (the first 2 dropped as warm-up)."""
    timer = StepTimer()
    trainer = pl.Trainer(accelerator=accelerator, devices=1, precision=precision, max_steps=steps + 2,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0,
                         limit_val_batches=0)
    trainer.fit(module, DataLoader(FixedBatches(batch, steps + 2), batch_size=None))
    return float(np.median(timer.times[2:]))


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def classifier_section(report: Report, cfg_for: Callable[..., Any], device: torch.device, smoke: bool,
                       steps: int) -> None:
    from vwl_lightning.data.meta import VOC_CLASSES
    from vwl_lightning.stages.train_classifier import build_module

    size, batch_size = (64, 2) if smoke else (512, 16)
    cfg = cfg_for()
    torch.manual_seed(0)
    images = torch.randn(batch_size, 3, size, size)
    labels = (torch.rand(batch_size, 20) < 0.15).float()
    labels[:, 0] = 1.0
    batch = {"image": images, "label": labels}
    module = build_module(cfg, len(VOC_CLASSES) - 1, list(VOC_CLASSES))
    state = {k: v.clone() for k, v in module.state_dict().items()}
    losses = {}
    for where in ("cpu", device.type):
        module.load_state_dict(state)
        module.to(where).train()
        with torch.no_grad():
            parts, _ = module.compute_losses(images.to(where), labels.to(where))
            losses[where] = float(sum(parts.values()))
    report.check("classifier fp32 loss GPU vs CPU (relative)", relative(losses[device.type], losses["cpu"]),
                 relative(losses[device.type], losses["cpu"]) < 1e-3, "< 1e-3")
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    for precision in TRAIN_PRECISIONS[smoke]:
        module.load_state_dict(state)
        report.time(f"classifier step {precision}, batch {batch_size} at {size}px",
                    train_steps(module, batch, steps, precision, accelerator), "s/step")


def cam_section(report: Report, cfg_for: Callable[..., Any], device: torch.device, smoke: bool, work: Path,
                n_images: int) -> None:
    from bench_official_cams import make_voc_images, save_random_checkpoint
    from vwl_lightning.cam.files import cam_path, load_cam_file
    from vwl_lightning.stages.make_cams import make_cams

    width, height = (160, 120) if smoke else (512, 384)
    root = work / "VOC2012"
    ids = make_voc_images(root, n_images, 0, width, height)
    checkpoint = save_random_checkpoint(work / "random_resnet101.ckpt", root, 0)
    trainer = "cpu" if device.type == "cpu" else "gpu"

    def run(precision: str, where: str, tag: str, count: int | None = None) -> tuple[Path, float]:
        out = work / f"cams_{where}_{precision}_{tag}"
        extra = [f"cam.checkpoint={checkpoint}", f"cam.out_dir={out}", f"cam.precision={precision}",
                 f"data.source.root={root}", "data.train_split=train", f"trainer={where}"]
        if count is not None:  # the CPU reference: the first images only
            (root / "ImageSets/Segmentation/first.txt").write_text("\n".join(ids[:count]) + "\n")
            extra.append("cam.split=first")
        cfg = cfg_for(*extra)
        sync(device)
        start = time.perf_counter()
        make_cams(cfg)
        sync(device)
        return out, time.perf_counter() - start

    run("32-true", trainer, "warmup")  # warm-up (cuDNN autotuning, first allocation), not timed
    for precision in ("auto", "32-true"):
        _, seconds = run(precision, trainer, "timed")
        report.time(f"CAM stage {precision}, ResNet-101 {width}x{height}, {2 if smoke else 4} scales + flip",
                    seconds / n_images,
                    "s/image")
    cpu_dir, _ = run("32-true", "cpu", "reference", count=2)
    worst_fp32 = worst_auto = mean_auto = 0.0
    for image_id in ids[:2]:
        ref = load_cam_file(cam_path(cpu_dir, image_id)).high_res.astype(np.float32)
        fp32 = load_cam_file(cam_path(work / f"cams_{trainer}_32-true_timed", image_id)).high_res.astype(np.float32)
        auto = load_cam_file(cam_path(work / f"cams_{trainer}_auto_timed", image_id)).high_res.astype(np.float32)
        worst_fp32 = max(worst_fp32, float(np.abs(fp32 - ref).max()))
        worst_auto = max(worst_auto, float(np.abs(auto - ref).max()))
        mean_auto = max(mean_auto, float(np.abs(auto - ref).mean()))
    report.check("CAM fp32 GPU vs CPU, max |diff| of normalised CAMs", worst_fp32, worst_fp32 < 2e-3, "< 2e-3")
    report.check("CAM auto precision vs CPU fp32, mean |diff|", mean_auto, mean_auto < 0.02, "< 0.02")
    print(f"  (auto precision vs CPU fp32, max |diff| {worst_auto:.4f})")


def walk_section(report: Report, device: torch.device, smoke: bool) -> None:
    if importlib.util.find_spec("vwl_lightning.pseudo.random_walk") is None:
        print("  vwl_lightning.pseudo.random_walk is not in this tree: skipped")
        return
    from vwl_lightning.pseudo.random_walk import random_walk

    h, w = (24, 32) if smoke else (96, 128)
    torch.manual_seed(0)
    cams = torch.rand(1, 21, h, w)
    boundary = torch.rand(1, h, w) * 0.5
    out = {}
    for where in ("cpu", device.type):
        sync(device)
        start = time.perf_counter()
        out[where] = random_walk(cams.to(where), boundary.to(where)).cpu()
        sync(device)
        if where == device.type:
            report.time(f"IRN random walk, 21 channels at {w}x{h}", time.perf_counter() - start, "s/walk")
    gap = float((out[device.type] - out["cpu"]).abs().max() / out["cpu"].abs().max().clamp_min(1e-12))
    report.check("random walk GPU vs CPU (relative to the peak)", gap, gap < 1e-3, "< 1e-3")


def segmenter_section(report: Report, cfg_for: Callable[..., Any], device: torch.device, smoke: bool,
                      steps: int) -> None:
    from vwl_lightning.data.meta import VOC_CLASSES
    from vwl_lightning.evaluation.multiscale import predict_probs
    from vwl_lightning.stages.train_segmenter import build_module

    crop, batch_size = (65, 2) if smoke else (321, 10)
    cfg = cfg_for("segmenter.backbone.pretrained=none")
    torch.manual_seed(0)
    module = build_module(cfg, len(VOC_CLASSES), list(VOC_CLASSES))
    state = {k: v.clone() for k, v in module.state_dict().items()}
    images = torch.randn(batch_size, 3, crop, crop)
    masks = torch.randint(0, 21, (batch_size, crop, crop))
    masks[:, :4] = 255
    losses = {}
    for where in ("cpu", device.type):
        module.load_state_dict(state)
        module.to(where).train()
        with torch.no_grad():
            losses[where] = float(module.compute_loss(images.to(where), masks.to(where)))
    report.check("segmenter fp32 loss GPU vs CPU (relative)", relative(losses[device.type], losses["cpu"]),
                 relative(losses[device.type], losses["cpu"]) < 1e-3, "< 1e-3")
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    for precision in TRAIN_PRECISIONS[smoke]:
        module.load_state_dict(state)
        report.time(f"segmenter step {precision}, batch {batch_size} at {crop}px",
                    train_steps(module, {"image": images, "mask": masks}, steps, precision, accelerator), "s/step")

    h, w = (48, 64) if smoke else (384, 512)
    image = torch.randn(1, 3, h, w)
    probs = {}
    for where in ("cpu", device.type):
        module.load_state_dict(state)
        module.to(where).eval()
        with torch.inference_mode():
            predict_probs(module, image.to(where), (1.0,), True, "max")  # warm-up
            sync(device)
            start = time.perf_counter()
            probs[where] = predict_probs(module, image.to(where), (1.0,), True, "max").cpu()
            sync(device)
        if where == device.type:
            report.time(f"segmenter predict fp32, {w}x{h}, scale 1 + flip", time.perf_counter() - start, "s/image")
    gap = float((probs[device.type] - probs["cpu"]).abs().max())
    agree = float((probs[device.type].argmax(1) == probs["cpu"].argmax(1)).float().mean())
    report.check("segmenter predict GPU vs CPU, max |prob diff|", gap, gap < 1e-3, "< 1e-3")
    report.check("segmenter predict GPU vs CPU, argmax agreement", agree, agree > 0.999, "> 0.999")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/vwl_gpu_check"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cam-images", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="no GPU needed: every section on the CPU, toy sizes")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available() and not args.smoke:
        print("gpu_check: no CUDA device on this machine; nothing to check (run it where a GPU is lent)")
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    import shutil

    from bench.common import compose_cfg

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    steps = 2 if args.smoke else args.steps
    base = ["+experiment=voc_vwl_l", "model.backbone.pretrained=none", "data.source.root=/nonexistent",
            "data.num_workers=0", "cam.num_workers=2"]
    if args.smoke:
        base += ["cam.scales=[1.0,0.5]", "segmenter.msc.scales=[0.5]"]

    def cfg_for(*extra: str) -> Any:
        return compose_cfg([*base, *extra], args.work / "run")

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke test)"
    print(f"gpu_check on {name}, torch {torch.__version__}", flush=True)
    report = Report()
    sections = [
        ("classifier", lambda: classifier_section(report, cfg_for, device, args.smoke, steps)),
        ("cams", lambda: cam_section(report, cfg_for, device, args.smoke, args.work / "cams",
                                     2 if args.smoke else args.cam_images)),
        ("random walk", lambda: walk_section(report, device, args.smoke)),
        ("segmenter", lambda: segmenter_section(report, cfg_for, device, args.smoke, steps)),
    ]
    for title, section in sections:
        if report.elapsed > BUDGET_S and not args.smoke:
            print(f"[{title}] skipped: the {BUDGET_S} s budget is spent")
            continue
        print(f"[{title}] at {report.elapsed:.0f} s", flush=True)
        section()
    failed = [k for k, v in report.checks.items() if not v["ok"]]
    print("\n| measure | value |\n|---|---|")
    for key, value in report.times.items():
        print(f"| {key} | {value:.4f} |")
    print(f"\nchecks: {len(report.checks) - len(failed)} of {len(report.checks)} passed; total {report.elapsed:.0f} s")
    args.out.write_text(json.dumps({"device": name, "torch": torch.__version__, "times": report.times,
                                    "checks": report.checks, "seconds": report.elapsed}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
