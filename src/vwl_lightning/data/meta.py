"""Data-set metadata in one place: class names (index 0 is background), the VOC colour palette,
and the ignore index 255 that VOC uses on object borders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

COCO_CLASSES: tuple[str, ...] = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie",
    "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: colour ``i`` spreads the bits of ``i`` over R, G, B from the top bit down.

    Returns a ``(num_colors, 3)`` uint8 array; entry 255 is the border colour (224, 224, 192).
    """
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    return palette


@dataclass(frozen=True)
class DatasetMeta:
    """Class names (background first) and the palette used to write label PNGs."""

    name: str
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_names)

    @property
    def num_foreground(self) -> int:
        """Number of foreground classes (the classifier's outputs)."""
        return len(self.class_names) - 1

    @property
    def palette(self) -> np.ndarray:
        return voc_palette()


VOC_META = DatasetMeta("voc", VOC_CLASSES)
COCO_META = DatasetMeta("coco", COCO_CLASSES)
