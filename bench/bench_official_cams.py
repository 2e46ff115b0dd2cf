"""Our CAM stage against a re-creation of the official inference loop, on the VOC ResNet-101 model (spec §5).

Both contenders run in one process, interleaved, on the same checkpoint and the same JPEGs:

* **official loop** (as the official ``infer_cam.py``, spec §5.1): a DataLoader gives one image at a time with,
  per scale, the uint8 image resized by PIL bicubic, normalised, and stacked with its mirror; one forward
  pass per scale on that pair (batch 2), fp32, NCHW, ``no_grad``. The network computes what the official
  one computes in CAM mode: the features, the CAM (ReLU of the 1×1 classifier), the hybrid-pooled logits and
  the visual-word heads (cosine similarity to the K codewords, soft assignment, word histogram), the last
  two thrown away. Max flip fusion, bilinear upsampling to full and stride-4 size, sum over scales,
  max-normalisation of the labelled classes, one float32 file per image.
* **ours**: the CAM stage itself (``make_cams``: Lightning predict loop, same-size batching, one pass for
  images + mirrors per scale, ``inference_mode``, channels-last, float16 files) with the default
  ``cam.precision=auto`` (bf16-mixed on a CPU with AVX-512 BF16) and with ``cam.precision=32-true``, each
  also with ``cam.fold_batchnorm=true`` (the frozen BatchNorms folded into their convolutions).

The model: the IJCV VOC configuration (``+experiment=voc_vwl_l``: ResNet-101, output stride 16 without
dilation, hybrid pooling, learned codebook K = 256), randomly initialised with ``--seed`` (no weights can be
downloaded here; the speed does not depend on the values). Images: ``--images`` 500×375 JPEGs cut from real
photos (scikit-image, imgaug), each labelled with 1–3 classes. Every contender runs ``--repeats`` times in
the order official, ours auto, ours fp32, the same two folded; the best time of each is reported as seconds
per image (wall) and CPU-seconds per image (this process and its DataLoader workers), with the official /
ours ratio of both. Then: max |difference| of the normalised CAMs of each of ours against the official
files, and a ``torch.profiler`` table of one batch of our network work per precision (top operators by self
CPU time).

Usage: ``python -m bench.bench_official_cams [--work /tmp/vwl_bench_official] [--images 4] [--repeats 2]
[--batch-size 16] [--workers 2] [--profile-scales 1.0] [--profile-bf16] [--profile-fold]``. Extra
``key=value`` arguments after ``--`` go to all of our runs' config.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bench.common import compose_cfg, machine, machine_line
from vwl_lightning.cam.files import cam_path, load_cam_file, save_cam_file, stride4_shape
from vwl_lightning.cam.fusion import keep_labelled, multiscale_cams
from vwl_lightning.cam.inputs import CamInputs, collate_cams, pil_rescale
from vwl_lightning.data.label_png import write_label_png
from vwl_lightning.data.layout import VOCLayout, load_rgb
from vwl_lightning.data.meta import VOC_CLASSES
from vwl_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalise
from vwl_lightning.modules.cam_predictor import CamPredictor
from vwl_lightning.modules.classifier import load_classifier
from vwl_lightning.stages.make_cams import make_cams
from vwl_lightning.stages.train_classifier import build_module

SCALES = (1.0, 0.5, 1.5, 2.0)


def photos() -> list[np.ndarray]:
    """Real RGB photos shipped by scikit-image and imgaug (found without importing imgaug)."""
    images = [getattr(skimage.data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")]
    spec = importlib.util.find_spec("imgaug")
    if spec is not None and spec.submodule_search_locations:
        quokka = Path(next(iter(spec.submodule_search_locations))) / "quokka.jpg"
        if quokka.is_file():
            images.append(np.asarray(Image.open(quokka).convert("RGB")))
    return [im[..., :3] for im in images]


def make_voc_images(root: Path, count: int, seed: int, width: int = 500, height: int = 375) -> list[str]:
    """``count`` ``width × height`` JPEGs (VOC's typical size is 500×375): random 4:3 windows of the photos,
    PIL bicubic; a label PNG each with 1–3 classes in rectangles; ``ImageSets/Segmentation/train.txt``."""
    rng = np.random.default_rng(seed)
    sources = photos()
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for k in range(count):
        src = sources[k % len(sources)]
        h, w = src.shape[:2]
        ch = int(min(h, w * 3 / 4) * rng.uniform(0.7, 1.0))
        cw = int(ch * 4 / 3)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        window = Image.fromarray(np.ascontiguousarray(src[y:y + ch, x:x + cw])).resize((width, height), Image.BICUBIC)
        image_id = f"2007_{k:06d}"
        window.save(root / "JPEGImages" / f"{image_id}.jpg", quality=90)
        mask = np.zeros((height, width), np.uint8)
        for c in rng.choice(np.arange(1, 21), size=int(rng.integers(1, 4)), replace=False):
            y0, x0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
            mask[y0:y0 + height // 3, x0:x0 + width // 3] = c
        write_label_png(root / "SegmentationClassAug" / f"{image_id}.png", mask)
        ids.append(image_id)
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    return ids


def overrides(root: Path, checkpoint: Path | None, batch_size: int, workers: int, extra: list[str]) -> list[str]:
    """The paper's VOC experiment on the bench images, random init, CPU, quiet."""
    base = ["+experiment=voc_vwl_l", f"data.source.root={root}", "data.train_split=train", "data.num_workers=0",
            "model.backbone.pretrained=none", "trainer=cpu", f"cam.batch_size={batch_size}",
            f"cam.num_workers={workers}"]
    return [*base, *([f"cam.checkpoint={checkpoint}"] if checkpoint else []), *extra]


def save_random_checkpoint(path: Path, root: Path, seed: int) -> Path:
    """A randomly initialised VOC classifier (fixed ``seed``) saved as a checkpoint ``load_classifier`` reads."""
    cfg = compose_cfg(overrides(root, None, 1, 0, []), path.parent / "run")
    torch.manual_seed(seed)
    module = build_module(cfg, len(VOC_CLASSES) - 1, list(VOC_CLASSES))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": pl.__version__}, path)
    return path


class OfficialMSF(Dataset):
    """One image per item: per scale, PIL bicubic on the uint8 image, normalise, stack with the mirror."""

    def __init__(self, layout: VOCLayout, ids: list[str], labels: dict[str, list[int]]) -> None:
        self.layout, self.ids, self.labels = layout, ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        raw = load_rgb(self.layout.image_path(image_id))
        pairs = []
        for s in SCALES:
            x = normalise(raw if s == 1.0 else pil_rescale(raw, s), IMAGENET_MEAN, IMAGENET_STD).transpose(2, 0, 1)
            pairs.append(torch.from_numpy(np.ascontiguousarray(np.stack([x, x[..., ::-1]]))))
        return {"id": image_id, "pairs": pairs, "size": raw.shape[:2],
                "keys": torch.tensor([c - 1 for c in self.labels[image_id]])}


def official_loop(checkpoint: Path, layout: VOCLayout, ids: list[str], labels: dict[str, list[int]],
                  out_dir: Path, workers: int) -> None:
    """The official inference loop (module docstring), writing float32 files into ``out_dir``."""
    model = load_classifier(checkpoint).model.eval()
    loader = DataLoader(OfficialMSF(layout, ids, labels), batch_size=None, num_workers=workers)
    weight = model.classifier.weight
    with torch.no_grad():
        for item in loader:
            size = tuple(item["size"])
            high = low = 0.0
            for pair in item["pairs"]:
                out = model(pair)  # features, pooled logits and visual-word heads, as the official forward
                cams = torch.relu(F.conv2d(out.features, weight))
                fused = torch.maximum(cams[0], cams[1].flip(-1))[None]
                high = high + F.interpolate(fused, size=size, mode="bilinear", align_corners=False)
                low = low + F.interpolate(fused, size=stride4_shape(*size), mode="bilinear", align_corners=False)
            keys = item["keys"]
            save_cam_file(cam_path(out_dir, item["id"]), (keys + 1).numpy(), keep_labelled(high[0], keys).numpy(),
                          keep_labelled(low[0], keys).numpy(), dtype=np.float32)


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the DataLoader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Any) -> tuple[float, float]:
    cpu, start = cpu_seconds(), time.perf_counter()
    fn()
    return time.perf_counter() - start, cpu_seconds() - cpu


def max_difference(dir_a: Path, dir_b: Path, ids: list[str]) -> float:
    worst = 0.0
    for i in ids:
        a, b = load_cam_file(cam_path(dir_a, i)), load_cam_file(cam_path(dir_b, i))
        worst = max(worst, float(np.abs(a.high_res.astype(np.float32) - b.high_res.astype(np.float32)).max()))
    return worst


def profile_ours(checkpoint: Path, layout: VOCLayout, ids: list[str], labels: dict[str, list[int]],
                 bf16: bool, rows: int, scales: tuple[float, ...], fold: bool = False) -> str:
    """``torch.profiler`` table of our network work on the first image at ``scales`` (PIL inputs,
    channels-last, ``inference_mode``, image + mirror in one pass; BatchNorms folded with ``fold``): the top
    operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    model = CamPredictor(load_classifier(checkpoint).model, scales, True, "max", True,
                         fold_batchnorm=fold).classifier
    dataset = CamInputs(layout, ids[:1], labels, scales=scales, resize="pil_bicubic")
    batch = collate_cams([dataset[0]])

    def cam(x: torch.Tensor) -> torch.Tensor:
        return model.cam(x.contiguous(memory_format=torch.channels_last))

    low_size = stride4_shape(*batch["image"].shape[-2:])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            multiscale_cams(cam, batch["image"], scales, True, "max", low_size, batch.get("scaled"))
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/vwl_bench_official"))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"),
                        help="image size (default VOC's typical 500 375; small sizes for a smoke test)")
    parser.add_argument("--profile-rows", type=int, default=12)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--profile-scales", type=float, nargs="+", default=list(SCALES),
                        help="scales of the profiled pass (one image)")
    parser.add_argument("--profile-bf16", action="store_true", help="also profile under bf16 autocast")
    parser.add_argument("--profile-fold", action="store_true", help="profile with cam.fold_batchnorm=true")
    parser.add_argument("extra", nargs="*", help="config overrides for our runs (key=value)")
    args = parser.parse_args()

    info = machine()
    print("machine:", machine_line(info), flush=True)
    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    root = work / "VOC2012"
    width, height = args.size
    ids = make_voc_images(root, args.images, args.seed, width, height)
    checkpoint = save_random_checkpoint(work / "random_resnet101.ckpt", root, args.seed)
    layout = VOCLayout.at(root)
    labels = layout.image_labels(ids, len(VOC_CLASSES))

    def ours(precision: str, fold: bool, out: Path) -> None:
        cfg = compose_cfg(overrides(root, checkpoint, args.batch_size, args.workers,
                                    [f"cam.precision={precision}", f"cam.fold_batchnorm={str(fold).lower()}",
                                     f"cam.out_dir={out}", *args.extra]), work / "run")
        make_cams(cfg)

    contenders = {
        "official loop, fp32 NCHW, batch = image + mirror": lambda out: official_loop(
            checkpoint, layout, ids, labels, out, args.workers),
        "ours, cam.precision=auto (default)": lambda out: ours("auto", False, out),
        "ours, cam.precision=32-true": lambda out: ours("32-true", False, out),
        "ours, auto + cam.fold_batchnorm=true": lambda out: ours("auto", True, out),
        "ours, 32-true + cam.fold_batchnorm=true": lambda out: ours("32-true", True, out),
    }
    best: dict[str, tuple[float, float]] = {}
    for repeat in range(args.repeats):
        for name, run in contenders.items():
            out = work / f"out_{list(contenders).index(name)}_{repeat}"
            wall, cpu = timed(lambda run=run, out=out: run(out))
            print(f"repeat {repeat}: {name}: {wall:.1f} s wall, {cpu:.1f} CPU-s", flush=True)
            if name not in best or wall < best[name][0]:
                best[name] = (wall, cpu)
    n = len(ids)
    names = list(contenders)
    official_wall = best[names[0]][0]
    print(f"\n{n} images {width}x{height}, scales {list(SCALES)} + flip, best of {args.repeats}; "
          f"load average at the end {machine()['load_avg']}\n")
    official_cpu = best[names[0]][1]
    print("| contender | s/image (wall) | CPU-s/image | official / this (wall) | official / this (CPU-s) |")
    print("|---|---|---|---|---|")
    for name in names:
        wall, cpu = best[name]
        print(f"| {name} | {wall / n:.2f} | {cpu / n:.2f} | {official_wall / wall:.2f}x | {official_cpu / cpu:.2f}x |")
    last = args.repeats - 1
    for k in range(1, len(names)):
        print(f"max |normalised CAM difference|, {names[k]} vs official: "
              f"{max_difference(work / f'out_0_{last}', work / f'out_{k}_{last}', ids):.4f}")
    if not args.no_profile:
        for bf16 in ((True, False) if args.profile_bf16 else (False,)):
            print(f"\nprofile of our network work on one image, scales {args.profile_scales} + flip "
                  f"({'bf16 autocast' if bf16 else 'fp32'}{', BatchNorms folded' if args.profile_fold else ''}):")
            print(profile_ours(checkpoint, layout, ids, labels, bf16, args.profile_rows,
                               tuple(args.profile_scales), args.profile_fold), flush=True)


if __name__ == "__main__":
    main()
