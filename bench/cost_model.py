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

**IRN** (``pseudo.mode=irn``, the paper experiments' pseudo masks; spec §10): its confident seeds (two label
CRFs per image, CPU, at ``--crf-s`` each), the boundary training (IRNet on a frozen ResNet-50, batch 32 of
512² crops, 3 epochs of ⌊images/32⌋ steps: FLOPs counted as above, forward of the frozen trunk + the
branch's forward and backward, at the mixed-precision throughput) and the walk (per image: the boundary
map of the image and its flip padded to 512, FLOPs counted, plus 256 sparse steps). The sparse walk is not
FLOP-bound on a GPU: it is projected from kernel launches (``--gpu-launch-us`` per kernel, 256 × 71
kernels per image at ``irn.walk.batch_size`` 1) or memory traffic (``--gpu-gbps``), whichever is larger —
an **assumption**, labelled. On the CPU the same IRN steps are **measured** on this machine (ResNet-50
IRNet, random weights: one training step at batch 2 scaled ×16 to batch 32, one boundary map of a 500×375
image, the sparse walk on a 500×375 grid at K = 1 and 3 on one thread, interpolated to the data set's mean number of
classes per image ``K̄``, an assumption: VOC 1.5, COCO 2.9), flush-to-zero on as in the stage, and scaled
to the data set (hours on these cores; ``--no-cpu`` skips the measurement).

Usage: ``python -m bench.cost_model [--gpu-tflops-bf16 50] [--gpu-tflops-fp32 25] [--scaling 0.85]
[--crf-s 0.40] [--cpu-workers 16] [--gpu-launch-us 8] [--gpu-gbps 2000] [--no-cpu]``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import compose_cfg
from vwl_lightning.data.meta import VOC_CLASSES
from vwl_lightning.models.backbone import Backbone
from vwl_lightning.models.irnet import IRNet, boundary_map
from vwl_lightning.modules.irn import stride4_labels
from vwl_lightning.pseudo.affinity import affinity_loss, pair_labels, training_affinities
from vwl_lightning.pseudo.random_walk import disc_offsets, random_walk
from vwl_lightning.stages.train_classifier import build_module as build_classifier_module
from vwl_lightning.stages.train_segmenter import build_module as build_segmenter_module

SCALES = (1.0, 0.5, 1.5, 2.0)
DATASETS = {  # images the CAM and pseudo stages see; the classifier's epochs and steps; segmenter steps;
    # mean classes per image (ASSUMED: the walk's K; VOC 2012 ~1.5, COCO ~2.9 labels per image)
    "VOC train_aug": {"images": 10582, "epochs": 6, "batch": 16, "seg_steps": 20000, "val": 1449, "k": 1.5},
    "COCO train": {"images": 82783, "epochs": 6, "batch": 16, "seg_steps": 100000, "val": 40137, "k": 2.9},
}
IRN_BATCH, IRN_EPOCHS, IRN_CROP, IRN_RADIUS, PAD_TO = 32, 3, 512, 10, 512  # conf/irn/resnet50.yaml, spec §10.5
WALK_STEPS, WALK_RADIUS, WALK_BETA = 256, 5, 10.0
IMAGE = (375, 500)  # a typical VOC image (H, W)


def irn_net() -> IRNet:
    """IRNet on IRN's frozen ResNet-50 (conf/irn/resnet50.yaml's trunk, random weights)."""
    trunk = Backbone("resnet50", output_stride=16, dilate=False, fixed_bn=True, frozen=[], pretrained="none")
    return IRNet(trunk, frozen=True)


def irn_step(net: IRNet, batch: int, device: str) -> None:
    """One boundary-training step as IRNModule.losses does it (spec §10.3-10.5), forward and backward."""
    images = torch.randn(batch, 3, IRN_CROP, IRN_CROP, device=device)
    masks = torch.zeros(batch, IRN_CROP, IRN_CROP, dtype=torch.long, device=device)
    labels = stride4_labels(masks)
    boundary = torch.sigmoid(net(images))[:, 0, : labels.shape[1], : labels.shape[2]]
    bg, fg, neg = pair_labels(labels, IRN_RADIUS, 255, dtype=boundary.dtype)
    affinity_loss(training_affinities(boundary, IRN_RADIUS), bg, fg, neg)["total"].backward()


def irn_flops() -> dict[str, float]:
    """Counted FLOPs of one IRN training step (batch 32, 512²) and one image's boundary map (500×375 + flip, 512)."""
    with torch.device("meta"):
        net = irn_net().train()
    step = counted(lambda: irn_step(net, IRN_BATCH, "meta"))
    net.eval()

    def infer() -> None:
        with torch.no_grad():
            boundary_map(net, torch.randn(1, 3, *IMAGE, device="meta"), PAD_TO)

    return {"IRN boundary training step (batch 32, 512², frozen trunk fwd + branch fwd+bwd)": step,
            "IRN boundary map of one 500×375 image (+ flip, padded to 512)": counted(infer)}


def walk_gpu_seconds(k: float, launch_us: float, gbps: float) -> float:
    """ASSUMED GPU time of the sparse walk on one 500×375 image (K classes): launch- or memory-bound."""
    n = (-(-IMAGE[0] // 4)) * (-(-IMAGE[1] // 4))
    kernels = WALK_STEPS * (len(disc_offsets(WALK_RADIUS)) + 2)  # 69 multiply-adds + pad + first product
    bytes_moved = WALK_STEPS * len(disc_offsets(WALK_RADIUS)) * (1 + 3 * k) * n * 4  # weight + 3 state passes
    return max(kernels * launch_us * 1e-6, bytes_moved / (gbps * 1e9))


def irn_cpu_measured() -> dict[str, float]:
    """Seconds on this CPU (flush-to-zero on, as the stage): training step at batch 2, one boundary map (torch's
    threads), the walk on a 500×375 grid at K = 1 and K = 3 (one thread, median of 3)."""
    from bench.bench_walk import scene

    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    net = irn_net().train()
    irn_step(net, 1, "cpu")  # warm-up
    start = time.perf_counter()
    irn_step(net, 2, "cpu")
    out = {"train_step_batch2": time.perf_counter() - start}
    net.eval()
    with torch.no_grad():
        x = torch.randn(1, 3, *IMAGE)
        boundary_map(net, x, PAD_TO)
        start = time.perf_counter()
        boundary_map(net, x, PAD_TO)
    out["boundary_map"] = time.perf_counter() - start
    b, cams = (torch.from_numpy(a) for a in scene(*IMAGE))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the walk's 17,664 small kernels per image: one thread (BENCHMARKS.md, IRN walk)
    for k in (1, 3):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            random_walk(cams[None, :k], b[None], WALK_BETA, 8, WALK_RADIUS)
            times.append(time.perf_counter() - start)
        out[f"walk_k{k}"] = sorted(times)[1]
    torch.set_num_threads(threads)
    return out


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
    parser.add_argument("--gpu-launch-us", type=float, default=8.0,
                        help="ASSUMED seconds·1e-6 per CUDA kernel launch (the sparse walk's bound on a GPU)")
    parser.add_argument("--gpu-gbps", type=float, default=2000.0, help="ASSUMED sustained GPU memory GB/s")
    parser.add_argument("--no-cpu", action="store_true", help="skip the IRN measurement on this CPU")
    args = parser.parse_args()

    flops = network_flops()
    irn = irn_flops()
    print("| network work | GFLOP (counted) |\n|---|---|")
    for name, value in {**flops, **irn}.items():
        print(f"| {name} | {value / 1e9:,.0f} |")
    cpu = None
    if not args.no_cpu:
        load = os.getloadavg()
        cpu = irn_cpu_measured()
        print(f"\nIRN on this CPU (measured, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads, "
              f"flush-to-zero on; load average {load[0]:.2f} -> {os.getloadavg()[0]:.2f}): training step at batch "
              f"2 {cpu['train_step_batch2']:.2f} s, boundary map {cpu['boundary_map']:.2f} s per image, walk "
              f"(1 thread) {cpu['walk_k1']:.2f} s (K = 1) / {cpu['walk_k3']:.2f} s (K = 3) per 500×375 image")
    names = list(flops)
    irn_names = list(irn)
    bf16 = args.gpu_tflops_bf16 * 1e12
    fp32 = args.gpu_tflops_fp32 * 1e12
    for data_name, d in DATASETS.items():
        steps = d["epochs"] * -(-d["images"] // d["batch"])
        irn_steps = IRN_EPOCHS * (d["images"] // IRN_BATCH)
        walk_gpu = walk_gpu_seconds(d["k"], args.gpu_launch_us, args.gpu_gbps)
        one = {
            "classifier": steps * flops[names[0]] / bf16,
            "cams": d["images"] * flops[names[1]] / bf16,
            "IRN seeds (2 label CRFs, CPU, A3)": d["images"] * 2 * args.crf_s / args.cpu_workers,
            "IRN boundary training (bf16-mixed)": irn_steps * irn[irn_names[0]] / bf16,
            "IRN boundary maps (fp32) + sparse walk (A6)": d["images"] * (irn[irn_names[1]] / fp32 + walk_gpu),
            "segmenter train": d["seg_steps"] * flops[names[2]] / bf16,
            "segmenter eval (val)": d["val"] * flops[names[3]] / bf16,
        }
        crf = d["images"] * args.crf_s / args.cpu_workers
        many = {k: (v / (args.gpus * args.scaling) if "CPU" not in k else v / args.nodes) for k, v in one.items()}
        print(f"\n{data_name}: {d['images']:,} images, classifier {steps:,} steps, IRN {irn_steps:,} steps, "
              f"segmenter {d['seg_steps']:,} steps (GPU columns PROJECTED from counted FLOPs and assumed speeds)")
        print(f"| stage | 1 GPU (h, projected) | {args.gpus} GPUs / {args.nodes} nodes (h, projected) |"
              f"\n|---|---|---|")
        for k in one:
            print(f"| {k} | {one[k] / 3600:.2f} | {many[k] / 3600:.2f} |")
        print(f"| **total** | **{sum(one.values()) / 3600:.2f}** | **{sum(many.values()) / 3600:.2f}** |")
        irn_keys = [k for k in one if k.startswith("IRN")]
        top = max(irn_keys, key=lambda k: one[k])
        print(f"(pseudo.mode=crf instead of IRN: dense CRF {crf / 3600:.2f} h on {args.cpu_workers} CPU cores; "
              f"CAMs in fp32: {d['images'] * flops[names[1]] / fp32 / 3600:.2f} h on 1 GPU; "
              f"walk per image {walk_gpu * 1e3:.0f} ms on the GPU, K̄ = {d['k']}; "
              f"IRN's largest GPU-side stage: {top})")
        if cpu is not None:
            walk_k = cpu["walk_k1"] + (d["k"] - 1) * (cpu["walk_k3"] - cpu["walk_k1"]) / 2
            train_h = irn_steps * cpu["train_step_batch2"] * IRN_BATCH / 2 / 3600
            walk_h = d["images"] * (cpu["boundary_map"] + walk_k) / 3600
            side = "boundary training" if train_h > walk_h else "boundary maps + walk"
            print(f"| IRN on this CPU (measured per step / image, scaled; {os.cpu_count()} cores) | boundary "
                  f"training {train_h:,.1f} h | boundary maps {d['images'] * cpu['boundary_map'] / 3600:,.1f} h + "
                  f"walk {d['images'] * walk_k / 3600:,.1f} h (K̄ = {d['k']}) | dominant: {side} |")

if __name__ == "__main__":
    main()
