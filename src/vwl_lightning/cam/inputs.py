"""The inputs of CAM inference: full-size normalised images with their label keys, one size per batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from vwl_lightning.data.batching import SameSizeBatches, image_size
from vwl_lightning.data.datamodule import collate
from vwl_lightning.data.layout import VOCLayout, load_rgb
from vwl_lightning.data.transforms import EvalTransform


class CamInputs(Dataset):
    """Normalised full-size images with their 0-based foreground label indices."""

    def __init__(self, layout: VOCLayout, ids: Sequence[str], labels: dict[str, list[int]],
                 normalise: dict[str, Sequence[float]] | None = None) -> None:
        self.layout = layout
        self.ids = list(ids)
        self.labels = labels
        self.transform = EvalTransform(size=0, **{k: tuple(v) for k, v in (normalise or {}).items()})

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        image, _ = self.transform(load_rgb(self.layout.image_path(image_id)), None)
        return {"image": image, "keys": torch.tensor([c - 1 for c in self.labels[image_id]]), "id": image_id}


def collate_cams(items: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [item.pop("keys") for item in items]
    batch = collate(items)
    batch["keys"] = keys
    return batch


class CamDataModule(pl.LightningDataModule):
    """Serves this rank's share (``todo[rank::world]``) of the images that still need a CAM file."""

    def __init__(self, layout: VOCLayout, todo: list[str], labels: dict[str, list[int]], batch_size: int,
                 num_workers: int, normalise: dict[str, Sequence[float]] | None = None) -> None:
        super().__init__()
        self.layout, self.todo, self.labels, self.normalise = layout, todo, labels, normalise
        self.batch_size, self.num_workers = batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        share = self.todo[rank::world]
        dataset = CamInputs(self.layout, share, self.labels, self.normalise)
        sizes = [image_size(self.layout.image_path(i)) for i in share]
        return DataLoader(dataset, batch_sampler=SameSizeBatches(sizes, self.batch_size),
                          num_workers=self.num_workers, collate_fn=collate_cams)
