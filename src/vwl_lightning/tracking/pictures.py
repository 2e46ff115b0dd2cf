"""Pictures on disk (no W&B needed): palette masks, mask overlays with a colour legend, CAM overlays with
class names, and a grid of them (the CAM stage's ``overlays.png``: :func:`write_cam_grid`).

* colour mask: label ``i`` drawn in the VOC palette colour ``i`` (:func:`vwl_lightning.data.meta.voc_palette`;
  255 = border colour);
* mask overlay: ``(1 - alpha) * image + alpha * colour`` on labelled pixels (background left as is), with a
  legend strip on the right listing each class present (swatch + name);
* CAM overlay: the [0, 1] CAM drawn with the jet colour map, blended the same way, captioned with the class.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vwl_lightning.cam.files import cam_path, cams_to_label, load_cam_file
from vwl_lightning.data.layout import load_rgb
from vwl_lightning.data.meta import IGNORE_INDEX, voc_palette
from vwl_lightning.data.source import ResolvedData
from vwl_lightning.utils.io import atomic_path

LEGEND_ROW = 14   # pixels per legend line
CAPTION = 14      # caption band height of a grid tile


def colour_mask(label: np.ndarray) -> np.ndarray:
    """``(H, W)`` label map → ``(H, W, 3)`` uint8 in the VOC palette."""
    return voc_palette()[np.asarray(label, dtype=np.uint8)]


def present_classes(label: np.ndarray) -> list[int]:
    """Sorted labels that occur in ``label``, the ignore index left out."""
    return [int(v) for v in np.unique(label) if int(v) != IGNORE_INDEX]


def blend_mask(image: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Image with each non-background pixel blended with its class colour: (1-α)·image + α·colour."""
    out = image.astype(np.float32).copy()
    colour = colour_mask(label).astype(np.float32)
    on = np.asarray(label) != 0
    out[on] = (1 - alpha) * out[on] + alpha * colour[on]
    return np.clip(out, 0, 255).astype(np.uint8)


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


def with_legend(picture: np.ndarray, classes: Sequence[int], class_names: Sequence[str]) -> Image.Image:
    """``picture`` with a white legend strip on the right: one swatch (palette colour) and name per class."""
    font = ImageFont.load_default()
    palette = voc_palette()
    names = [class_names[c] if c < len(class_names) else str(c) for c in classes]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = 16 + max((_text_width(probe, n, font) for n in names), default=0) + 8
    height = max(picture.shape[0], LEGEND_ROW * len(names) + 4)
    canvas = Image.new("RGB", (picture.shape[1] + width, height), "white")
    canvas.paste(Image.fromarray(picture), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = picture.shape[1] + 4
    for row, (c, name) in enumerate(zip(classes, names, strict=True)):
        y = 2 + row * LEGEND_ROW
        draw.rectangle([x, y + 1, x + 9, y + 10], fill=tuple(int(v) for v in palette[c]), outline="black")
        draw.text((x + 13, y), name, fill="black", font=font)
    return canvas


def mask_overlay(image: np.ndarray, label: np.ndarray, class_names: Sequence[str], alpha: float = 0.5
                 ) -> Image.Image:
    """The mask blended over the image, with a legend of the classes present (module docstring)."""
    return with_legend(blend_mask(image, label, alpha), present_classes(label), class_names)


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] CAM (H, W), drawn with the jet colour map, over an HWC uint8 image."""
    from matplotlib import colormaps

    heat = (colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255).astype(np.float32)
    return ((1 - alpha) * image.astype(np.float32) + alpha * heat).astype(np.uint8)


def captioned(picture: np.ndarray, caption: str) -> Image.Image:
    """``picture`` above a white band with ``caption``."""
    canvas = Image.new("RGB", (picture.shape[1], picture.shape[0] + CAPTION), "white")
    canvas.paste(Image.fromarray(picture), (0, 0))
    ImageDraw.Draw(canvas).text((2, picture.shape[0] + 1), caption, fill="black", font=ImageFont.load_default())
    return canvas


def cam_tiles(image: np.ndarray, high_res: np.ndarray, keys: Sequence[int], class_names: Sequence[str],
              seed: np.ndarray | None = None) -> list[Image.Image]:
    """One image's tiles: the image, one CAM overlay per labelled class (captioned with its name) and,
    when given, the seed mask overlay."""
    tiles = [captioned(image, "image")]
    for channel, key in enumerate(keys):
        name = class_names[int(key)] if int(key) < len(class_names) else str(key)
        tiles.append(captioned(cam_overlay(image, np.asarray(high_res[channel], dtype=np.float32)), name))
    if seed is not None:
        tiles.append(captioned(blend_mask(image, seed), "seed"))
    return tiles


def grid(rows: Sequence[Sequence[Image.Image]], gap: int = 2) -> Image.Image:
    """Rows of tiles on a white canvas, left-aligned; each row as high as its tallest tile."""
    heights = [max(t.height for t in row) if row else 0 for row in rows]
    width = max((sum(t.width for t in row) + gap * (len(row) - 1) for row in rows if row), default=1)
    canvas = Image.new("RGB", (width, max(1, sum(heights) + gap * (len(rows) - 1))), "white")
    y = 0
    for row, height in zip(rows, heights, strict=True):
        x = 0
        for tile in row:
            canvas.paste(tile, (x, y))
            x += tile.width + gap
        y += height + gap
    return canvas


def save_png(picture: Image.Image | np.ndarray, path: str | os.PathLike) -> Path:
    """Write an RGB PNG atomically."""
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


CAM_GRID = "overlays.png"


def write_cam_grid(cam_dir: Path, data: ResolvedData, split: str, count: int, bg_score: float, path: Path) -> Path:
    """A grid of the first ``count`` images of ``split``: the image, one captioned CAM overlay per labelled
    class, and the seed at ``bg_score`` (spec §5), written as an RGB PNG."""
    rows = []
    for image_id in data.layout.split_ids(split)[:count]:
        record = load_cam_file(cam_path(cam_dir, image_id))
        image = load_rgb(data.layout.image_path(image_id))
        seed = cams_to_label(record.high_res, record.keys, bg_score)
        rows.append(cam_tiles(image, record.high_res.astype(np.float32), record.keys.tolist(),
                              data.meta.class_names, seed))
    return save_png(grid(rows), path)
