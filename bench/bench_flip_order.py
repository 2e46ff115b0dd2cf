"""How far IRN's boundary map moves between the spec's flip order and the former pad-then-flip (issue 29).

Spec §10.6 steps 1-2: stack the image with its flip, pad right/bottom to ``pad_to``, crop the logits to
(h, w), flip the mirrored half back (:func:`~vwl_lightning.models.irnet.boundary_map`). The former code padded
first and flipped the padded canvas, so the mirrored pass saw its padding on the left. Prints max |ΔB| and
mean |ΔB| over the (h, w) map for random images with the project's IRNet (ResNet-50 trunk, random weights,
seeded) and the toy ResNet-18 of the tests, at widths W mod 4 = 0..3, padded to 512 (VOC/COCO) or 64 (toy).

Usage: ``python -m bench.bench_flip_order``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from vwl_lightning.models.backbone import Backbone
from vwl_lightning.models.irnet import IRNet, boundary_map


def former(net: IRNet, x: torch.Tensor, pad_to: int) -> torch.Tensor:
    n, _, height, width = x.shape
    p = F.pad(x, (0, pad_to - width, 0, pad_to - height))
    z = net(torch.cat([p, p.flip(-1)], 0))
    return torch.sigmoid((z[:n] + z[n:].flip(-1)) / 2)[:, 0, : -(-height // 4), : -(-width // 4)]


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    print(f"load average {os.getloadavg()}")
    nets = {
        "IRNet ResNet-50 (irn/resnet50.yaml trunk, random init)":
            (Backbone("resnet50", output_stride=16, dilate=False, fixed_bn=True, frozen=[], pretrained="none"),
             512, 375, (500, 498, 497, 499)),
        "toy ResNet-18 (tests)":
            (Backbone("resnet18", output_stride=16, fixed_bn=True, frozen=[], pretrained="none",
                      model_kwargs={"channels": (8, 16, 32, 64)}), 64, 30, (40, 42, 45, 43)),
    }
    print("| net | pad_to | H×W | W mod 4 | max abs dB | mean abs dB |\n|---|---|---|---|---|---|")
    for name, (trunk, pad_to, height, widths) in nets.items():
        net = IRNet(trunk).eval()
        for width in widths:
            x = torch.randn(1, 3, height, width)
            with torch.no_grad():
                d = (boundary_map(net, x, pad_to) - former(net, x, pad_to)).abs()
            print(f"| {name} | {pad_to} | {height}×{width} | {width % 4} | {d.max():.4f} | {d.mean():.4f} |",
                  flush=True)


if __name__ == "__main__":
    main()
