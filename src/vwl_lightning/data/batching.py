"""Batches of images that share one size (full-size CAM inference and evaluation need no padding)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

from PIL import Image
from torch.utils.data import Sampler

from vwl_lightning.errors import DataError


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) read from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read image header ({exc})") from None


class SameSizeBatches(Sampler[list[int]]):
    """Batches of up to ``batch_size`` indices whose images share one size, in a fixed order."""

    def __init__(self, sizes: Sequence[tuple[int, int]], batch_size: int) -> None:
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, size in enumerate(sizes):
            groups[size].append(index)
        self.batches = [members[i:i + batch_size] for members in groups.values()
                        for i in range(0, len(members), batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
