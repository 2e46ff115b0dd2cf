"""The inputs of CAM inference: full-size normalised images with their label keys, one size per batch.

With ``resize="pil_bicubic"`` (spec §5.1, the official inference) each item also carries the image at every
scale s ≠ 1: the **uint8** image resized by PIL bicubic to (round(sH), round(sW)) (PIL antialiases when it
shrinks and rounds/clips to uint8), then normalised. The resizing runs in the DataLoader workers, as in the
official code; the network still sees one batch per scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vwl_lightning.cam.fusion import scaled_size
from vwl_lightning.data.batching import SameSizeBatches, image_size
from vwl_lightning.data.datamodule import collate
from vwl_lightning.data.layout import VOCLayout, load_rgb
from vwl_lightning.data.transforms import EvalTransform
from vwl_lightning.errors import ConfigError

RESIZE_MODES = ("pil_bicubic", "tensor_bicubic")


def check_resize(resize: str) -> str:
    """``cam.resize`` must be one of :data:`RESIZE_MODES`."""
    if resize not in RESIZE_MODES:
        raise ConfigError(f"cam.resize must be 'pil_bicubic' (spec §5.1) or 'tensor_bicubic', got {resize!r}")
    return resize


def pil_rescale(image: np.ndarray, scale: float) -> np.ndarray:
    """uint8 ``(H, W, 3)`` → PIL bicubic resize to :func:`scaled_size` (spec §5.1), still uint8."""
    height, width = scaled_size(image.shape[0], image.shape[1], scale)
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


class CamInputs(Dataset):
    """Normalised full-size images with their 0-based foreground label indices, and with
    ``resize="pil_bicubic"`` the PIL-rescaled, normalised image of every scale ≠ 1 (``"scaled"``)."""

    def __init__(self, layout: VOCLayout, ids: Sequence[str], labels: dict[str, list[int]],
                 normalise: dict[str, Sequence[float]] | None = None, scales: Sequence[float] = (),
                 resize: str = "tensor_bicubic") -> None:
        self.layout = layout
        self.ids = list(ids)
        self.labels = labels
        self.transform = EvalTransform(size=0, **{k: tuple(v) for k, v in (normalise or {}).items()})
        self.resize = check_resize(resize)
        self.pil_scales = tuple(float(s) for s in scales if float(s) != 1.0) if resize == "pil_bicubic" else ()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        raw = load_rgb(self.layout.image_path(image_id))
        image, _ = self.transform(raw, None)
        item = {"image": image, "keys": torch.tensor([c - 1 for c in self.labels[image_id]]), "id": image_id}
        if self.pil_scales:
            item["scaled"] = {s: self.transform(pil_rescale(raw, s), None)[0] for s in self.pil_scales}
        return item


def collate_cams(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the images (and each scale's rescaled images); keep the label keys as a list."""
    keys = [item.pop("keys") for item in items]
    scaled = [item.pop("scaled") for item in items] if "scaled" in items[0] else None
    batch = collate(items)
    batch["keys"] = keys
    if scaled is not None:
        batch["scaled"] = {s: torch.stack([one[s] for one in scaled]) for s in scaled[0]}
    return batch


class CamDataModule(pl.LightningDataModule):
    """Serves this rank's share (``todo[rank::world]``) of the images that still need a CAM file."""

    def __init__(self, layout: VOCLayout, todo: list[str], labels: dict[str, list[int]], batch_size: int,
                 num_workers: int, normalise: dict[str, Sequence[float]] | None = None,
                 scales: Sequence[float] = (), resize: str = "tensor_bicubic") -> None:
        super().__init__()
        self.layout, self.todo, self.labels, self.normalise = layout, todo, labels, normalise
        self.batch_size, self.num_workers = batch_size, num_workers
        self.scales, self.resize = tuple(scales), check_resize(resize)

    def predict_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        share = self.todo[rank::world]
        dataset = CamInputs(self.layout, share, self.labels, self.normalise, self.scales, self.resize)
        sizes = [image_size(self.layout.image_path(i)) for i in share]
        return DataLoader(dataset, batch_sampler=SameSizeBatches(sizes, self.batch_size),
                          num_workers=self.num_workers, collate_fn=collate_cams)
