"""A tiny VOC-layout fixture with CAM files: images with coloured rectangles, their masks (255 on part of
the borders) and soft, shifted CAMs of the labelled classes, for the seed and pseudo-mask stage tests."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from vwl_lightning.cam.files import cam_path, save_cam_file
from vwl_lightning.data.label_png import write_label_png
from vwl_lightning.data.voc import VOCLayout


def rectangle_cam_fixture(root: Path, sizes: Sequence[tuple[int, int]], *, seed: int, year: int,
                          cam_manifest: Mapping[str, Any], split: str = "train", cam_noise: float = 0.0,
                          ) -> tuple[VOCLayout, Path, dict[str, list[int]]]:
    """Write the fixture under ``root``; return its layout, the CAM folder and each image's classes.

    Image ``n`` (``<year>_<n:06d>``, ``sizes[n]`` = (H, W)) holds 1 + n % 2 of the classes 1..3 as rectangles;
    its CAMs are the masks blurred (σ 3), shifted by (2, -1), plus Gaussian noise of std ``cam_noise`` (clipped
    at 0), each max-normalised, stored in float16 with the stride-4 ``cam`` taken as ``high_res[:, ::4, ::4]``.
    """
    rng = np.random.default_rng(seed)
    cam_dir = root / "cams"
    keys: dict[str, list[int]] = {}
    for n, (height, width) in enumerate(sizes):
        image_id = f"{year}_{n:06d}"
        image = np.clip(rng.normal(110, 12, (height, width, 3)), 0, 255)
        gt = np.zeros((height, width), dtype=np.uint8)
        classes = sorted(rng.choice([1, 2, 3], size=1 + n % 2, replace=False).tolist())
        for k, cls in enumerate(classes):
            y0, x0 = 4 + 12 * k, 5 + 10 * k
            gt[y0:y0 + height // 2, x0:x0 + width // 2] = cls
            image[y0:y0 + height // 2, x0:x0 + width // 2] = [60 * cls, 200 - 50 * cls, 90]
        border = ndimage.binary_dilation(gt > 0) & ~ndimage.binary_erosion(gt > 0)
        gt[border & (rng.random(gt.shape) < 0.5)] = 255
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        write_label_png(root / "SegmentationClassAug" / f"{image_id}.png", gt)
        high = np.stack([ndimage.shift(ndimage.gaussian_filter((gt == c).astype(np.float32), 3), (2, -1))
                         for c in classes])
        if cam_noise:
            high = np.clip(high + rng.normal(0, cam_noise, high.shape), 0, None)
        high /= high.max(axis=(1, 2), keepdims=True) + 1e-5
        save_cam_file(cam_path(cam_dir, image_id), np.array(classes), high, high[:, ::4, ::4], np.float16)
        keys[image_id] = classes
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(keys) + "\n")
    (cam_dir / "manifest.json").write_text(json.dumps({"split": split, **cam_manifest}))
    return VOCLayout.at(root), cam_dir, keys
