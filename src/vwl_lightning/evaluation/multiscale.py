"""The segmenter's test-time prediction (spec §7): multi-scale + flip fusion of the network's logits.

For every scale s of ``scales`` the image is resized by s (bilinear), run through the network together with
its mirror image when ``flip``, the logits are resized back to the image size (bilinear) and un-mirrored, and
the set is fused by ``fusion`` (element-wise ``max`` or ``mean``); P = softmax(fused logits), prediction =
argmax P.  (MSC, when on, acts inside the network.)  The resize by s is the one of the training MSC
(:func:`~vwl_lightning.models.deeplab.resize_by_scale`, ``scale_factor``: size ``floor(H·s) × floor(W·s)``,
grid by s itself, as the official deeplab-pytorch MSC); no official code exists for this test-time loop
(spec §7).  Used by the segmenter stage's evaluation
(:mod:`vwl_lightning.stages.train_segmenter`) and by prediction on your own images
(:mod:`vwl_lightning.inference.predict`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

from vwl_lightning.models.deeplab import resize_by_scale


class LogitsModel(Protocol):
    """A segmenter (DeepLabV2 or EMANet LightningModule): normalised images → logits ``(B, C, h, w)``."""

    def predict_logits(self, images: torch.Tensor) -> torch.Tensor: ...


@torch.inference_mode()
def predict_probs(module: LogitsModel, images: torch.Tensor, scales: Sequence[float], flip: bool,
                  fusion: str) -> torch.Tensor:
    """Class probabilities ``(B, C, H, W)`` of a batch of same-size images (module docstring)."""
    height, width = images.shape[-2:]
    batch = images.shape[0]
    collected: list[torch.Tensor] = []
    for scale in scales:
        scaled = images if scale == 1.0 else resize_by_scale(images, scale)
        if flip:
            scaled = torch.cat([scaled, scaled.flip(-1)], dim=0)
        logits = module.predict_logits(scaled)
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        collected.append(logits[:batch])
        if flip:
            collected.append(logits[batch:].flip(-1))
    stacked = torch.stack(collected)
    fused = stacked.amax(dim=0) if fusion == "max" else stacked.mean(dim=0)
    return torch.softmax(fused, dim=1)
