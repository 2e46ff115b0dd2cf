"""LightningDataModule of the classifier stage: image-level labels for training, masks for validation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vwl_lightning.data.source import ResolvedData, resolve_data
from vwl_lightning.data.transforms import EvalTransform, TrainTransform
from vwl_lightning.data.voc import ClassificationDataset, SegmentationDataset
from vwl_lightning.errors import ConfigError


def per_device_batch(global_batch: int, world_size: int, key: str = "data.batch_size") -> int:
    """Per-device batch so that the global batch stays fixed whatever the number of devices (spec §4)."""
    if global_batch <= 0 or global_batch % world_size:
        raise ConfigError(f"{key}={global_batch} is the global batch and must be a positive multiple of the "
                          f"world size {world_size}")
    return global_batch // world_size


class UnpaddedDistributedSampler(DistributedSampler):
    """Evaluation sharding without padding: rank r takes indices r, r + world, ... so every image is scored
    exactly once and a metric summed over ranks equals the single-process one (Lightning's default
    ``DistributedSampler`` repeats images to even out the shards, which would bias the mIoU)."""

    def __init__(self, dataset: Dataset) -> None:
        super().__init__(dataset, shuffle=False, drop_last=False)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


def train_loader(dataset: Dataset, batch: int, num_workers: int, pin_memory: bool) -> DataLoader:
    """A training loader: shuffled, last incomplete batch dropped (Lightning adds the DDP sampler)."""
    return DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0, collate_fn=collate)


def eval_loader(dataset: Dataset, batch: int, num_workers: int, pin_memory: bool) -> DataLoader:
    """An evaluation loader; under DDP each rank gets its unpadded share (:class:`UnpaddedDistributedSampler`)."""
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    return DataLoader(dataset, batch_size=batch, shuffle=False, drop_last=False, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0, collate_fn=collate,
                      sampler=UnpaddedDistributedSampler(dataset) if distributed else None)


class WithLabelsFromMask(Dataset):
    """Validation items: a segmentation item plus its multi-hot image labels (for mAP)."""

    def __init__(self, segmentation: SegmentationDataset, classification: ClassificationDataset) -> None:
        self.segmentation = segmentation
        self.labels = classification.labels

    def __len__(self) -> int:
        return len(self.segmentation)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.segmentation[index]
        item["label"] = self.labels[item["id"]]
        return item


class ClassificationDataModule(pl.LightningDataModule):
    """Training: (image, multi-hot label); validation: (image, label, mask) for mAP and quick CAM mIoU.

    ``batch_size`` is the **global** batch; each device gets ``batch_size / world_size``.
    """

    def __init__(
        self,
        source: dict,
        train_split: str = "train",
        val_split: str = "val",
        batch_size: int = 16,
        eval_batch_size: int = 16,
        num_workers: int = 2,
        train_transform: dict | None = None,
        eval_size: int = 512,
        pin_memory: bool = False,
        normalise: dict | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.train_split = train_split
        self.val_split = val_split
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        norm = {k: tuple(float(x) for x in v) for k, v in (normalise or {}).items()}  # mean, std
        self.train_transform = TrainTransform(**{k: tuple(v) if isinstance(v, list) else v
                                                 for k, v in (train_transform or {}).items()}, **norm)
        self.eval_transform = EvalTransform(size=eval_size, **norm)
        self.pin_memory = pin_memory
        self._data: ResolvedData | None = None

    @property
    def data(self) -> ResolvedData:
        if self._data is None:
            self._data = resolve_data(self.source)
        return self._data

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return self.data.meta.num_classes

    def prepare_data(self) -> None:
        self.data  # noqa: B018 - materialises the benchmark once, on local rank 0

    def setup(self, stage: str | None = None) -> None:
        world = self.trainer.world_size if self.trainer is not None else 1
        self.device_batch = per_device_batch(self.batch_size, world)
        self.device_eval_batch = max(1, self.eval_batch_size // world)
        layout, num_classes = self.data.layout, self.num_classes
        self.train_set = ClassificationDataset(layout, self.train_split, num_classes, self.train_transform)
        val_labels = ClassificationDataset(layout, self.val_split, num_classes)
        self.val_set = WithLabelsFromMask(SegmentationDataset(layout, self.val_split, self.eval_transform),
                                          val_labels)

    def train_dataloader(self) -> DataLoader:
        return train_loader(self.train_set, self.device_batch, self.num_workers, self.pin_memory)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.val_set, self.device_eval_batch, self.num_workers, self.pin_memory)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors/arrays, keep ids as a list."""
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key == "id":
            batch[key] = values
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = torch.as_tensor(np.stack(values))
    return batch
