"""CAM-step speed, accuracy under bf16 and peak memory, in one run on one checkpoint (spec §5).

1. Speed on the same checkpoint and images: our CAM stage (``make_cams``: same-size images batched, each
   scale's flips in the same forward pass as the originals, ``inference_mode``, channels-last, files written by
   a prediction writer) against a plain per-image loop that runs every scale and every flip as its own
   forward pass (``no_grad``, default memory format) and writes the same files. Target: plain / ours >= 2.
   Also ``cam.precision=bf16-mixed`` (what the default ``auto`` picks on a CPU with AVX-512 BF16): its
   speed-up and its accuracy against fp32 (max |difference| of the
   normalised CAMs, seed mIoU difference at the configured background score and at the best one).
   A network-only comparison (images already in memory, no Lightning, no files) shows how much of the
   speed-up the batching, the one-pass flips and channels-last give by themselves.
2. Peak memory of the CAM step (the process plus its DataLoader workers) for 100 and for 400 images,
   ``--memory-repeats`` fresh processes each (medians compared), and within the 400-image run the main
   process's peak over the first and the last quarter of the batches (growth would show there).
   Target: flat, ratio <= 1.1.

Every measurement runs in a fresh child process (clean memory peaks, no warm caches shared between
contenders); the seconds are wall time of the CAM step itself (model load included, interpreter start-up
not). The machine is shared: each measurement waits until the CPUs are idle and is repeated when other
processes took more than 5 % of the CPU time while it ran (printed per run; a run that never got a quiet
machine is flagged DISTURBED). With no ``--checkpoint``, a default synthetic classifier (half-width
ResNet-18, 112 px images) is trained for ``--train-steps`` steps first and reused by later runs in the same
``--work`` folder.

Usage: ``python -m bench.bench_cams [--work /tmp/vwl_bench_cams] [--checkpoint CKPT] [--images 100]
[--memory-images 100 400] [--repeats 2] [--memory-repeats 3]``. Prints a markdown table and the ratios.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bench.common import (
    PeakMemory,
    compose_cfg,
    data_overrides,
    emit,
    ensure_checkpoint,
    machine,
    machine_line,
    run_clean,
)
from vwl_lightning.cam.files import cam_path, load_cam_file, save_cam_file, stride4_shape
from vwl_lightning.cam.fusion import keep_labelled, multiscale_cams
from vwl_lightning.cam.inputs import CamInputs
from vwl_lightning.data.source import resolve_data
from vwl_lightning.modules.classifier import load_classifier
from vwl_lightning.stages import make_cams as cam_stage
from vwl_lightning.stages.evaluate_seeds import evaluate_seeds
from vwl_lightning.stages.make_cams import make_cams

MODULE = "bench.bench_cams"  # run as ``python -m bench.bench_cams``


def cam_config(checkpoint: str, num_train: int, out_dir: Path, work: Path, extra: list[str]):
    """The default CAM-stage config (batch 16, 2 workers, channels-last, float16 files) on the data set
    with ``num_train`` images."""
    return compose_cfg([*data_overrides(work / "cache", num_train), f"cam.checkpoint={checkpoint}",
                        f"cam.out_dir={out_dir}", *extra], work / "run")


def child_ours(checkpoint: str, num_train: int, out_dir: Path, work: Path, extra: list[str]) -> dict[str, Any]:
    """Our stage, timed and memory-sampled; also the main process's peak RSS during each batch."""
    cfg = cam_config(checkpoint, num_train, out_dir, work, extra)
    data = resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True))
    batch_peaks: list[float] = []
    write = cam_stage.CamFileWriter.write_on_batch_end

    def write_and_mark(self: Any, *args: Any) -> None:  # a batch ends when its files are written
        write(self, *args)
        batch_peaks.append(memory.take_self_peak_mib())

    cam_stage.CamFileWriter.write_on_batch_end = write_and_mark  # type: ignore[method-assign]
    with PeakMemory() as memory:
        start = time.perf_counter()
        make_cams(cfg, data)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": len(data.layout.split_ids(cfg.cam.split)),
            "peak_tree_mib": memory.peak_tree_mib, "peak_self_mib": memory.peak_self_mib(),
            "batch_peaks_mib": batch_peaks}


def child_plain(checkpoint: str, num_train: int, out_dir: Path, work: Path) -> dict[str, Any]:
    """The plain loop: one image at a time, one forward pass per scale and per flip, same files."""
    cfg = cam_config(checkpoint, num_train, out_dir, work, [])
    data = resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True))
    layout = data.layout
    ids = layout.split_ids(cfg.cam.split)
    scales = [float(s) for s in cfg.cam.scales]
    with PeakMemory() as memory:
        start = time.perf_counter()
        model = load_classifier(Path(checkpoint)).model.eval().to(memory_format=torch.contiguous_format)
        dataset = CamInputs(layout, ids, layout.image_labels(ids, data.meta.num_classes))
        with torch.no_grad():
            for index in range(len(dataset)):
                item = dataset[index]
                image, keys = item["image"][None], item["keys"]
                h, w = image.shape[-2:]
                high = low = 0.0
                for s in scales:
                    x = image if s == 1.0 else F.interpolate(image, size=(round(h * s), round(w * s)),
                                                             mode="bicubic", align_corners=False)
                    plain = model.cam(x)
                    mirrored = model.cam(x.flip(-1)).flip(-1)
                    fused = torch.maximum(plain, mirrored)
                    high = high + F.interpolate(fused, size=(h, w), mode="bilinear", align_corners=False)
                    low = low + F.interpolate(fused, size=stride4_shape(h, w), mode="bilinear", align_corners=False)
                save_cam_file(cam_path(out_dir, item["id"]), (keys + 1).numpy(), keep_labelled(high[0], keys).numpy(),
                              keep_labelled(low[0], keys).numpy(), dtype=np.float16)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": len(ids), "peak_tree_mib": memory.peak_tree_mib,
            "peak_self_mib": memory.peak_self_mib()}


def child_compute(checkpoint: str, num_train: int, work: Path) -> dict[str, Any]:
    """Network work only, on images already in memory: our batched multi-scale pass (batch 16 and 4,
    channels-last and not) against the plain per-image loop; no data loading, no Lightning, no files."""
    cfg = cam_config(checkpoint, num_train, work / "unused", work, [])
    data = resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True))
    ids = data.layout.split_ids(cfg.cam.split)
    dataset = CamInputs(data.layout, ids, data.layout.image_labels(ids, data.meta.num_classes))
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    scales = tuple(float(s) for s in cfg.cam.scales)
    low = stride4_shape(*images.shape[-2:])

    def batched(batch_size: int, channels_last: bool) -> float:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = load_classifier(Path(checkpoint)).model.eval().to(memory_format=fmt)

        def cam(x: torch.Tensor) -> torch.Tensor:
            return model.cam(x.contiguous(memory_format=fmt))

        with torch.inference_mode():
            multiscale_cams(cam, images[:batch_size], scales, True, "max", low)  # warm-up
            start = time.perf_counter()
            for i in range(0, len(images), batch_size):
                multiscale_cams(cam, images[i:i + batch_size], scales, True, "max", low)
            return time.perf_counter() - start

    def plain() -> float:
        model = load_classifier(Path(checkpoint)).model.eval().to(memory_format=torch.contiguous_format)
        with torch.no_grad():
            model.cam(images[:1])  # warm-up
            start = time.perf_counter()
            for i in range(len(images)):
                image = images[i:i + 1]
                h, w = image.shape[-2:]
                for s in scales:
                    x = image if s == 1.0 else F.interpolate(image, size=(round(h * s), round(w * s)),
                                                             mode="bicubic", align_corners=False)
                    fused = torch.maximum(model.cam(x), model.cam(x.flip(-1)).flip(-1))
                    F.interpolate(fused, size=(h, w), mode="bilinear", align_corners=False)
                    F.interpolate(fused, size=low, mode="bilinear", align_corners=False)
            return time.perf_counter() - start

    return {"plain": plain(), "batch16_channels_last": batched(16, True), "batch16_nchw": batched(16, False),
            "batch4_channels_last": batched(4, True), "images": len(images)}


def max_abs_difference(dir_a: Path, dir_b: Path, ids: list[str]) -> float:
    """Largest |a - b| over every ``high_res`` value of every image."""
    worst = 0.0
    for image_id in ids:
        a, b = load_cam_file(cam_path(dir_a, image_id)), load_cam_file(cam_path(dir_b, image_id))
        worst = max(worst, float(np.abs(a.high_res.astype(np.float32) - b.high_res.astype(np.float32)).max()))
    return worst


def seeds(cam_dir: Path, data: Any, out_dir: Path) -> dict[str, float]:
    metrics = evaluate_seeds(cam_dir, data.layout, "train", out_dir, class_names=list(data.meta.class_names),
                             configured_score=0.13, progress=False)
    return {"at_0.13": metrics["miou_at_configured"], "best": metrics["best_miou"],
            "best_bg": metrics["best_bg_score"]}


def timed(label: str, work: Path, args: list[str], repeats: int) -> dict[str, Any]:
    """Best (minimum) of ``repeats`` fresh runs of a child; each run starts from an empty output folder."""
    runs = []
    for _ in range(repeats):
        out = Path(args[args.index("--out") + 1])
        shutil.rmtree(out, ignore_errors=True)
        runs.append(run_clean(MODULE, args))
    best = min(runs, key=lambda r: r["seconds"])
    best["all_seconds"] = [round(r["seconds"], 2) for r in runs]
    best["others"] = [round(r["others_cpu_share"], 3) for r in runs]
    flags = " DISTURBED" if any(r.get("disturbed") for r in runs) else ""
    print(f"  {label}: {best['all_seconds']} s (CPU share of other processes {best['others']}, attempts "
          f"{[r['attempts'] for r in runs]}){flags}", flush=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/vwl_bench_cams"))
    parser.add_argument("--checkpoint", default=None, help="a classifier checkpoint; default: train one")
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--images", type=int, default=100, help="images of the speed comparison")
    parser.add_argument("--memory-images", type=int, nargs=2, default=[100, 400])
    parser.add_argument("--repeats", type=int, default=2, help="fresh runs per contender (the best counts)")
    parser.add_argument("--memory-repeats", type=int, default=3, help="fresh runs per memory size")
    args = parser.parse_args()
    work = args.work
    before = machine()
    print("machine:", machine_line(before), flush=True)

    sizes = sorted({args.images, *args.memory_images})
    for n in sizes:  # materialise the data sets outside every measurement
        resolve_data(OmegaConf.to_container(compose_cfg(data_overrides(work / "cache", n), work).data.source,
                                            resolve=True))
    checkpoint = str(ensure_checkpoint(work, args.checkpoint, max(sizes), args.train_steps))
    print("checkpoint:", checkpoint, flush=True)

    def child_args(mode: str, n: int, out: str, *extra: str) -> list[str]:
        return ["--child", mode, "--checkpoint", checkpoint, "--n", str(n), "--out", str(work / out),
                "--work", str(work), *extra]

    n = args.images
    print(f"speed on {n} images:", flush=True)
    ours = timed("ours fp32", work, child_args("ours", n, "ours", "cam.precision=32-true"), args.repeats)
    plain = timed("plain loop", work, child_args("plain", n, "plain"), args.repeats)
    bf16 = timed("ours bf16-mixed", work, child_args("ours", n, "bf16", "cam.precision=bf16-mixed"), args.repeats)

    compute = run_clean(MODULE, child_args("compute", n, "unused"))
    print("  network only: " + ", ".join(f"{k} {v:.2f}" for k, v in compute.items() if k != "images"), flush=True)

    data = resolve_data(OmegaConf.to_container(compose_cfg(data_overrides(work / "cache", n), work).data.source,
                                               resolve=True))
    ids = data.layout.split_ids("train")
    seeds_fp32 = seeds(work / "ours", data, work / "seeds_ours")
    seeds_plain = seeds(work / "plain", data, work / "seeds_plain")
    seeds_bf16 = seeds(work / "bf16", data, work / "seeds_bf16")
    diff_plain = max_abs_difference(work / "ours", work / "plain", ids)
    diff_bf16 = max_abs_difference(work / "ours", work / "bf16", ids)

    print("peak memory:", flush=True)
    memory: dict[int, list[dict[str, Any]]] = {m: [] for m in args.memory_images}
    for _ in range(args.memory_repeats):  # interleaved, so that a busy spell hits both sizes alike
        for m in args.memory_images:
            memory[m].append(timed(f"ours fp32, {m} images", work,
                                   child_args("ours", m, f"mem{m}", "cam.precision=32-true"), 1))
    after = machine()

    small, large = args.memory_images
    speedup = plain["seconds"] / ours["seconds"]
    print()
    print(f"| CAM step, {n} images of 112 px, scales {[1.0, 0.5, 1.5, 2.0]} + flips | s | img/s | vs plain |")
    print("|---|---|---|---|")
    for label, r in (("plain per-image loop (fp32)", plain), ("ours, fp32", ours), ("ours, bf16-mixed", bf16)):
        print(f"| {label} | {r['seconds']:.2f} | {r['images'] / r['seconds']:.1f} | "
              f"{plain['seconds'] / r['seconds']:.2f}x |")
    print()
    print(f"| network only, {n} images in memory, fp32 | s | vs plain |")
    print("|---|---|---|")
    for key, label in (("plain", "plain per-image loop, NCHW, one pass per scale and flip"),
                       ("batch16_nchw", "batched (16 + 16 mirrored), NCHW"),
                       ("batch16_channels_last", "batched (16 + 16 mirrored), channels-last (ours)"),
                       ("batch4_channels_last", "batched (4 + 4 mirrored), channels-last")):
        print(f"| {label} | {compute[key]:.2f} | {compute['plain'] / compute[key]:.2f}x |")
    print()
    print("| accuracy vs ours fp32 | max abs diff of normalised CAMs | seed mIoU @0.13 | best seed mIoU (bg) |")
    print("|---|---|---|---|")
    print(f"| ours fp32 | 0 | {seeds_fp32['at_0.13']:.4f} | {seeds_fp32['best']:.4f} ({seeds_fp32['best_bg']:.2f}) |")
    for label, diff, s in (("plain loop", diff_plain, seeds_plain), ("ours bf16-mixed", diff_bf16, seeds_bf16)):
        print(f"| {label} | {diff:.4f} | {s['at_0.13']:.4f} ({s['at_0.13'] - seeds_fp32['at_0.13']:+.4f}) | "
              f"{s['best']:.4f} ({s['best_bg']:.2f}) |")
    print()
    def median(m: int, key: str) -> float:
        return float(np.median([r[key] for r in memory[m]]))

    def quarters(r: dict[str, Any]) -> tuple[float, float]:
        peaks = r["batch_peaks_mib"]
        q = max(1, len(peaks) // 4)
        return max(peaks[:q]), max(peaks[-q:])

    print("| peak RSS of the CAM step, fresh process per run | process + workers (MiB) | main process (MiB) "
          "| main, first / last quarter of the batches (MiB) |")
    print("|---|---|---|---|")
    for m in args.memory_images:
        runs = memory[m]
        tree = ", ".join(f"{r['peak_tree_mib']:.0f}" for r in runs)
        own = ", ".join(f"{r['peak_self_mib']:.0f}" for r in runs)
        trend = ", ".join("{:.0f} / {:.0f}".format(*quarters(r)) for r in runs)
        print(f"| {m} images ({len(runs)} runs) | {tree} | {own} | {trend} |")
    print()
    print(f"speed-up ours / plain: fp32 {speedup:.2f}x, bf16-mixed (cam.precision=auto on this CPU) "
          f"{plain['seconds'] / bf16['seconds']:.2f}x (target >= 2); "
          f"bf16 / fp32: {ours['seconds'] / bf16['seconds']:.2f}x")
    trend = max(b / a for a, b in map(quarters, memory[large]))
    print(f"peak memory {large} / {small} images (medians): process + workers "
          f"{median(large, 'peak_tree_mib') / median(small, 'peak_tree_mib'):.3f}, main process "
          f"{median(large, 'peak_self_mib') / median(small, 'peak_self_mib'):.3f} (target <= 1.1); "
          f"within a {large}-image run, last / first quarter of the batches: {trend:.3f}")
    print(f"bf16: max |CAM difference| {diff_bf16:.4f}, seed mIoU difference at 0.13 "
          f"{seeds_bf16['at_0.13'] - seeds_fp32['at_0.13']:+.4f}, "
          f"at best {seeds_bf16['best'] - seeds_fp32['best']:+.4f}")
    print(f"load average before {before['load_avg']}, after {after['load_avg']}")


if __name__ == "__main__":
    if "--child" in sys.argv:
        child = argparse.ArgumentParser()
        child.add_argument("--child", choices=["ours", "plain", "compute"])
        child.add_argument("--checkpoint")
        child.add_argument("--n", type=int)
        child.add_argument("--out", type=Path)
        child.add_argument("--work", type=Path)
        known, rest = child.parse_known_args()
        if known.child == "ours":
            emit(child_ours(known.checkpoint, known.n, known.out, known.work, rest))
        elif known.child == "compute":
            emit(child_compute(known.checkpoint, known.n, known.work))
        else:
            emit(child_plain(known.checkpoint, known.n, known.out, known.work))
    else:
        main()
