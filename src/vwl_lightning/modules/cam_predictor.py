"""The CAM-inference LightningModule: multi-scale + flip CAMs of a trained classifier (spec §5)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch

from vwl_lightning.cam.files import stride4_shape
from vwl_lightning.cam.fusion import keep_labelled, multiscale_cams
from vwl_lightning.cam.inputs import check_resize
from vwl_lightning.errors import ConfigError
from vwl_lightning.models.classifier import VWLClassifier
from vwl_lightning.models.fold_batchnorm import fold_batchnorm as fold_batchnorm_of


class CamPredictor(pl.LightningModule):
    """Runs :func:`~vwl_lightning.cam.fusion.multiscale_cams` and keeps each image's labelled classes.

    ``resize="pil_bicubic"`` (spec §5.1) takes each scale's input from ``batch["scaled"]`` (made by
    :class:`~vwl_lightning.cam.inputs.CamInputs`); ``"tensor_bicubic"`` resizes the normalised batch here.
    ``fold_batchnorm`` folds the frozen BatchNorms into their convolutions first (spec §5.1,
    :mod:`~vwl_lightning.models.fold_batchnorm`); ``folded_batchnorms`` says how many.
    """

    def __init__(self, classifier: VWLClassifier, scales: Sequence[float], flip: bool, flip_fusion: str,
                 channels_last: bool, resize: str = "pil_bicubic", fold_batchnorm: bool = False) -> None:
        super().__init__()
        self.resize = check_resize(resize)
        if flip_fusion not in ("max", "sum"):
            raise ConfigError(f"cam.flip_fusion must be 'max' (VWL) or 'sum' (IRN), got {flip_fusion!r}")
        if not scales or any(s <= 0 for s in scales):
            raise ConfigError(f"cam.scales must be a non-empty list of positive numbers, got {list(scales)}")
        self.classifier = classifier.eval()
        self.folded_batchnorms = 0
        if fold_batchnorm:
            probe = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
            self.classifier, self.folded_batchnorms = fold_batchnorm_of(self.classifier, lambda net, x: net.cam(x),
                                                                        probe)
        self.scales = tuple(float(s) for s in scales)
        self.flip, self.flip_fusion, self.channels_last = flip, flip_fusion, channels_last
        if channels_last:
            self.classifier = self.classifier.to(memory_format=torch.channels_last)

    def _cam(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.classifier.cam(images)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        images = batch["image"]
        low_size = stride4_shape(*images.shape[-2:])
        scaled = None
        if self.resize == "pil_bicubic" and any(s != 1.0 for s in self.scales):
            if "scaled" not in batch:
                raise ValueError("cam.resize=pil_bicubic needs batch['scaled'] (CamInputs with resize=pil_bicubic)")
            scaled = batch["scaled"]
        high, low = multiscale_cams(self._cam, images, self.scales, self.flip, self.flip_fusion, low_size, scaled)
        results = []
        for i, image_id in enumerate(batch["id"]):
            keys = batch["keys"][i].to(high.device)
            results.append({
                "id": image_id,
                "keys": (keys + 1).cpu().numpy(),
                "high_res": keep_labelled(high[i], keys).cpu().numpy(),
                "cam": keep_labelled(low[i], keys).cpu().numpy(),
            })
        return results
