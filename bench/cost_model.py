"""Cost model of the whole pipeline on VOC train_aug and COCO train: FLOPs counted, GPU speed assumed.

The FLOPs of each network step are **counted** (``torch.utils.flop_counter.FlopCounterMode``: convolutions
and matrix products, forward and, for training, backward) on the paper's VOC networks built on the meta
device (no memory, no weights): the classifier (ResNet-101, OS16, hybrid pooling, K = 256) training step at
batch 16 × 512², its CAM pass for one 500×375 image (scales 1/0.5/1.5/2, image + mirror), the DeepLabV2-
ResNet101 MSC training step at batch 10 × 321² and its test pass on one 500×375 image (scale 1 + flip).
Wall times then come from **assumptions** given on the command line (no GPU is lent to this task): the
sustained throughput a GPU reaches on these networks (``--gpu-tflops``, per precision), the multi-GPU scaling
efficiency, and the CPU costs of the CPU-only stages (dense CRF per 500×375 image, seed evaluation).
Prints the counted FLOPs and one table per data set: each stage on 1 GPU and on 8 GPUs (2 nodes × 4).

Usage: ``python -m bench.cost_model [--gpu-tflops-bf16 50] [--gpu-tflops-fp32 25] [--scaling 0.85]
[--crf-s 0.40] [--cpu-workers 16]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import compose_cfg
from vwl_lightning.data.meta import VOC_CLASSES
from vwl_lightning.stages.train_classifier import build_module as build_classifier_module
from vwl_lightning.stages.train_segmenter import build_module as build_segmenter_module

SCALES = (1.0, 0.5, 1.5, 2.0)
DATASETS = {  # images the CAM and pseudo stages see; the classifier's epochs and steps; segmenter steps
    "VOC train_aug": {"images": 10582, "epochs": 6, "batch": 16, "seg_steps": 20000, "val": 1449},
    "COCO train": {"images": 82783, "epochs": 6, "batch": 16, "seg_steps": 100000, "val": 40137},
}


def counted(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def network_flops() -> dict[str, float]:
    """FLOPs of one classifier step, one image's CAMs, one segmenter step, one image's segmenter test pass."""
    cfg = compose_cfg(["+experiment=voc_vwl_l", "model.backbone.pretrained=none",
                       "segmenter.backbone.pretrained=none"], Path("/tmp/vwl_cost_model"))
    with torch.device("meta"):
        classifier = build_classifier_module(cfg, len(VOC_CLASSES) - 1, list(VOC_CLASSES))
        segmenter = build_segmenter_module(cfg, len(VOC_CLASSES), list(VOC_CLASSES))
    out: dict[str, float] = {}

    def classifier_step() -> None:
        images = torch.randn(16, 3, 512, 512, device="meta")
        labels = torch.ones(16, 20, device="meta")
        losses, _ = classifier.compute_losses(images, labels)
        sum(losses.values()).backward()

    out["classifier step (batch 16, 512², fwd+bwd)"] = counted(classifier_step)

    def cam_image() -> None:
        with torch.no_grad():
            for s in SCALES:
                classifier.model.cam(torch.randn(2, 3, round(375 * s), round(500 * s), device="meta"))

    out["CAMs of one 500×375 image (4 scales × 2)"] = counted(cam_image)

    def segmenter_step() -> None:
        images = torch.randn(10, 3, 321, 321, device="meta")
        masks = torch.zeros(10, 321, 321, dtype=torch.long, device="meta")
        segmenter.train()
        segmenter.compute_loss(images, masks).backward()

    out["segmenter step (batch 10, 321², MSC, fwd+bwd)"] = counted(segmenter_step)

    def segmenter_test() -> None:
        segmenter.eval()
        with torch.no_grad():
            segmenter.model(torch.randn(2, 3, 375, 500, device="meta"))

    out["segmenter test of one 500×375 image (scale 1 × 2)"] = counted(segmenter_test)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-tflops-bf16", type=float, default=50.0,
                        help="ASSUMED sustained bf16 TFLOP/s of one GPU on these networks")
    parser.add_argument("--gpu-tflops-fp32", type=float, default=25.0,
                        help="ASSUMED sustained fp32 (TF32 off) TFLOP/s of one GPU")
    parser.add_argument("--scaling", type=float, default=0.85, help="ASSUMED efficiency of 8 GPUs vs 1")
    parser.add_argument("--crf-s", type=float, default=0.40, help="ASSUMED CPU-s of one dense CRF at 500×375")
    parser.add_argument("--cpu-workers", type=int, default=16, help="CPU cores per node for the CRF pool")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()

    flops = network_flops()
    print("| network work | GFLOP (counted) |\n|---|---|")
    for name, value in flops.items():
        print(f"| {name} | {value / 1e9:,.0f} |")
    names = list(flops)
    bf16 = args.gpu_tflops_bf16 * 1e12
    for data_name, d in DATASETS.items():
        steps = d["epochs"] * -(-d["images"] // d["batch"])
        one = {
            "classifier": steps * flops[names[0]] / bf16,
            "cams": d["images"] * flops[names[1]] / bf16,
            "pseudo (CRF, CPU)": d["images"] * args.crf_s / args.cpu_workers,
            "segmenter train": d["seg_steps"] * flops[names[2]] / bf16,
            "segmenter eval (val)": d["val"] * flops[names[3]] / bf16,
        }
        many = {k: (v / (args.gpus * args.scaling) if "CRF" not in k else v / args.nodes) for k, v in one.items()}
        print(f"\n{data_name}: {d['images']:,} images, classifier {steps:,} steps, segmenter {d['seg_steps']:,} steps")
        print(f"| stage | 1 GPU (h) | {args.gpus} GPUs / {args.nodes} nodes (h) |\n|---|---|---|")
        for k in one:
            print(f"| {k} | {one[k] / 3600:.2f} | {many[k] / 3600:.2f} |")
        print(f"| **total** | **{sum(one.values()) / 3600:.2f}** | **{sum(many.values()) / 3600:.2f}** |")
        fp32 = args.gpu_tflops_fp32 * 1e12
        print(f"(CAMs in fp32 instead: {d['images'] * flops[names[1]] / fp32 / 3600:.2f} h on 1 GPU)")


if __name__ == "__main__":
    main()
