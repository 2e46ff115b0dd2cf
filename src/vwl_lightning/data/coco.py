"""MS COCO 2014 converted to the VOC layout that :mod:`vwl_lightning.data.voc` reads (spec §7, §9.6).

The spec gives no COCO pipeline (§9.6); the WSSS literature trains on COCO 2014 ``train2014`` and
evaluates on ``val2014`` as semantic segmentation over background + 80 classes. This module rasterises
the instance annotations of ``instances_<split>.json`` into one VOC-palette PNG per image with
``pycocotools.mask``, so the rest of the code treats COCO exactly like VOC.

Output layout under ``out_root`` (several splits may share one ``out_root``)::

    JPEGImages/<stem>.jpg                 symlink (default), hard link or copy of the COCO image
    SegmentationClassAug/<stem>.png       0 background, 1..80 classes, 255 crowd (ignore)
    ImageSets/Segmentation/<split>.txt    sorted stems, e.g. COCO_train2014_000000000009
    cls_labels.json                       image-level labels derived from the masks (merged over splits)
    dataset.json                          {"name": "coco", "class_names": COCO_CLASSES}
    conversions.json                      per split: the instances JSON it was made from (path, SHA-256)

Converting refuses to mix: a split already made from another JSON, or masks of the same images made from
another JSON, stop the run with one line (use a new ``--out-root``); a conversion that keeps no image is
refused too.

Command line::

    python -m vwl_lightning.data.coco --instances annotations/instances_train2014.json \\
        --images train2014 --out-root coco_voc --split-name train
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from vwl_lightning.data.image_labels import LABELS_FILENAME, classes_in_mask, load_image_labels, save_image_labels
from vwl_lightning.data.label_png import read_label_png, write_label_png
from vwl_lightning.data.meta import COCO_CLASSES, IGNORE_INDEX
from vwl_lightning.errors import DataError, VWLError
from vwl_lightning.utils.io import atomic_path, read_json, write_json_atomic, write_text_atomic

COCO_DOWNLOAD_URLS: dict[str, str] = {
    "train2014": "http://images.cocodataset.org/zips/train2014.zip",
    "val2014": "http://images.cocodataset.org/zips/val2014.zip",
    "annotations": "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
}

#: Images of COCO 2014 with at least one annotation, the split sizes the WSSS literature reports
#: (train2014 has 82,783 images, val2014 40,504). The layout checker warns (does not fail) on a mismatch;
#: images whose only annotations are crowd regions are dropped here too, so a few fewer are expected.
COCO_SPLIT_SIZES: dict[str, int] = {"train": 82081, "val": 40137}

IMAGE_MODES = ("symlink", "hardlink", "copy")
IMAGE_DIR = "JPEGImages"
MASK_DIR = "SegmentationClassAug"
SPLIT_DIR = "ImageSets/Segmentation"
DATASET_INFO = "dataset.json"
NUM_CLASSES = len(COCO_CLASSES)
MIN_POLYGON_COORDS = 6  # a polygon part needs 3 points (6 numbers) to cover any area


@dataclass(frozen=True)
class COCOConvertReport:
    """What :func:`convert_coco` wrote."""

    out_root: Path
    split_path: Path
    num_images: int  # images in the JSON
    kept: int  # ids written to the split list
    written: int  # images converted in this run
    skipped: int  # images whose outputs already existed (resumed run)
    dropped: int  # images without any foreground label, left out of the split


def category_index_map(categories: Any, source: str | os.PathLike) -> dict[int, int]:
    """Map COCO's sparse category ids (1..90) to contiguous label indices 1..80 in ``COCO_CLASSES`` order.

    The mapping goes by category name, so it does not depend on the order of the JSON's ``categories``;
    every one of the 80 names must appear exactly once.
    """
    if not isinstance(categories, list) or not categories:
        raise DataError(f"{source}: 'categories' must be a non-empty list")
    index_of = {name: i for i, name in enumerate(COCO_CLASSES) if i > 0}
    mapping: dict[int, int] = {}
    seen: set[str] = set()
    for category in categories:
        try:
            cat_id, name = int(category["id"]), str(category["name"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{source}: every category needs an integer 'id' and a 'name', got {category!r}") from None
        if name not in index_of:
            raise DataError(f"{source}: category {cat_id} {name!r} is not one of the 80 COCO classes")
        if name in seen or cat_id in mapping:
            raise DataError(f"{source}: category {cat_id} {name!r} appears twice")
        seen.add(name)
        mapping[cat_id] = index_of[name]
    missing = [n for n in index_of if n not in seen]
    if missing:
        raise DataError(f"{source}: categories {missing[:5]} are missing; expected all 80 COCO classes")
    return mapping


def annotation_mask(segmentation: Any, height: int, width: int, source: str) -> np.ndarray:
    """Rasterise one annotation's ``segmentation`` (polygons, uncompressed or compressed RLE) as (H, W) bool."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= MIN_POLYGON_COORDS]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if [int(s) for s in segmentation["size"]] != [height, width]:
            raise DataError(f"{source}: RLE size {segmentation['size']} differs from the image's "
                            f"[{height}, {width}]")
        if isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
    else:
        raise DataError(f"{source}: 'segmentation' must be a polygon list or an RLE dict")
    return mask_utils.decode(rle).astype(bool)


def render_mask(annotations: Sequence[dict], height: int, width: int, category_map: dict[int, int],
                source: str) -> np.ndarray:
    """The semantic mask of one image: background 0, classes 1..80, crowd 255.

    Convention: non-crowd annotations are painted in the JSON's order, so a later annotation overwrites an
    earlier one where they overlap (the file order is the only order COCO defines; area-based orders are a
    heuristic). Crowd regions (``iscrowd=1``) then become 255 (ignore) wherever no individual annotation
    painted a class: a crowd region is a group of objects drawn without instance outlines, so its pixels
    are neither trustworthy background nor a single object, while pixels that an individual annotation
    claims keep their class. Since image-level labels are derived from the mask, a class present only as
    a crowd does not enter the image's label.
    """
    mask = np.zeros((height, width), dtype=np.uint8)
    crowd = np.zeros((height, width), dtype=bool)
    for ann in annotations:
        region = annotation_mask(ann.get("segmentation"), height, width, f"{source} annotation {ann.get('id')}")
        if ann.get("iscrowd", 0):
            crowd |= region
        else:
            mask[region] = category_map[int(ann["category_id"])]
    mask[crowd & (mask == 0)] = IGNORE_INDEX
    return mask


def check_image(path: Path, height: int, width: int) -> None:
    """Decode an image fully and check its size against the JSON's ``height``/``width``."""
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    try:
        with Image.open(path) as image:
            image.load()
            size = image.size
    except (OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    if size != (width, height):
        raise DataError(f"{path}: image is {size[0]}x{size[1]} but its annotation file says {width}x{height}")


def place_image(source: Path, target: Path, mode: str) -> None:
    """Put ``source`` at ``target`` as a symlink (absolute), hard link or copy, atomically."""
    with atomic_path(target) as tmp:
        if mode == "copy":
            shutil.copyfile(source, tmp)
        else:
            tmp.unlink()
            if mode == "symlink":
                os.symlink(source.resolve(), tmp)
            else:
                os.link(source, tmp)


def _existing_mask(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The mask an earlier run wrote here, or ``None`` if absent, unreadable or of the wrong size."""
    if not path.is_file():
        return None
    try:
        mask = read_label_png(path)
    except DataError:
        return None
    return mask if mask.shape == shape else None


def load_instances(instances_json: str | os.PathLike) -> dict[str, Any]:
    """Read and check an ``instances_*.json``: ``images``, ``annotations`` and ``categories`` lists."""
    path = Path(instances_json).expanduser()
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a COCO instances object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: no '{key}' list; expected a COCO instances file (instances_<split>.json "
                            f"from {COCO_DOWNLOAD_URLS['annotations']})")
    return data


CONVERSIONS = "conversions.json"


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_same_source(out: Path, split_name: str, instances_path: Path, digest: str, stems: set[str]) -> None:
    """DataError when ``out`` holds split ``split_name``, or masks of any of ``stems``, made from another
    instances JSON (``conversions.json``), or masks with no record of their JSON."""
    record_path = out / CONVERSIONS
    records = read_json(record_path) if record_path.is_file() else {}
    for split, record in records.items():
        if record.get("sha256") == digest:
            continue
        listed = out / SPLIT_DIR / f"{split}.txt"
        overlap = stems & set(listed.read_text().split()) if listed.is_file() else set()
        if split == split_name or overlap:
            what = (f"split {split}" if split == split_name
                    else f"masks of {len(overlap)} of these images (split {split})")
            raise DataError(f"{out}: {what} were made from {record.get('instances')} (sha256 "
                            f"{str(record.get('sha256'))[:12]}), not {instances_path} (sha256 {digest[:12]}); "
                            f"use a new --out-root")
    masks = out / MASK_DIR
    if not records and masks.is_dir() and any(masks.glob("*.png")):
        raise DataError(f"{masks}: holds masks but {record_path} does not say which instances JSON made them; "
                        f"use a new --out-root")


def convert_coco(
    instances_json: str | os.PathLike,
    image_dir: str | os.PathLike,
    out_root: str | os.PathLike,
    split_name: str,
    image_mode: str = "symlink",
    keep_unlabelled: bool = False,
    progress: bool = True,
) -> COCOConvertReport:
    """Convert one COCO 2014 split to the VOC layout (see the module docstring).

    Each image is decoded once and checked against the JSON's size; its mask is rendered with
    :func:`render_mask`. Images whose mask has no foreground class (no annotation, or crowd only) have no
    image-level label: they are dropped from the split unless ``keep_unlabelled``. Writes are atomic and
    the conversion is resumable: an image whose mask already exists with the right size and whose
    ``JPEGImages`` entry resolves is not decoded or rendered again.

    Args:
        instances_json: ``annotations/instances_train2014.json`` (or ``val2014``).
        image_dir: the folder with the split's JPEGs (``train2014/``).
        out_root: the VOC-layout folder to write (shared by several splits).
        split_name: name of the split list to write (``train``, ``val``).
        image_mode: ``symlink`` (default, no extra disk), ``hardlink`` or ``copy``.
        keep_unlabelled: keep images without a foreground class in the split.
        progress: show a tqdm progress bar.
    """
    if image_mode not in IMAGE_MODES:
        raise ValueError(f"image_mode must be one of {IMAGE_MODES}, got {image_mode!r}")
    instances_path = Path(instances_json).expanduser()
    image_dir, out = Path(image_dir).expanduser(), Path(out_root).expanduser()
    if not image_dir.is_dir():
        raise DataError(f"COCO image folder {image_dir} not found; expected e.g. train2014/ from "
                        f"{COCO_DOWNLOAD_URLS['train2014']}")
    data = load_instances(instances_path)
    category_map = category_index_map(data["categories"], instances_path)
    images = {}
    for record in data["images"]:
        try:
            images[int(record["id"])] = (str(record["file_name"]), int(record["height"]), int(record["width"]))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{instances_path}: every image needs 'id', 'file_name', 'height', 'width', "
                            f"got {record!r}") from None
    by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            raise DataError(f"{instances_path}: every annotation must be an object, got {ann!r}")
        if ann.get("image_id") not in images:
            raise DataError(f"{instances_path}: annotation {ann.get('id')} refers to image {ann.get('image_id')!r}, "
                            "which the file does not list")
        if ann.get("category_id") not in category_map:
            raise DataError(f"{instances_path}: annotation {ann.get('id')} has unknown category "
                            f"{ann.get('category_id')!r}")
        by_image[int(ann["image_id"])].append(ann)

    digest = _sha256(instances_path)
    check_same_source(out, split_name, instances_path, digest, {Path(v[0]).stem for v in images.values()})
    record_path = out / CONVERSIONS
    records = read_json(record_path) if record_path.is_file() else {}
    records[split_name] = {"instances": str(instances_path.resolve()), "sha256": digest}
    write_json_atomic(record_path, records)  # before any mask, so an interrupted run is recognised

    labels: dict[str, list[int]] = {}
    written = skipped = dropped = 0
    records = sorted(images.items(), key=lambda item: item[1][0])
    for image_id, (file_name, height, width) in tqdm(records, desc=f"COCO {split_name}", unit="image",
                                                     disable=not progress):
        stem = Path(file_name).stem
        source = image_dir / file_name
        image_target = out / IMAGE_DIR / f"{stem}.jpg"
        mask_target = out / MASK_DIR / f"{stem}.png"
        mask = _existing_mask(mask_target, (height, width)) if image_target.is_file() else None
        if mask is not None:
            skipped += 1
            labels[stem] = classes_in_mask(mask, NUM_CLASSES, str(mask_target))
            continue
        check_image(source, height, width)
        mask = render_mask(by_image.get(image_id, []), height, width, category_map, str(instances_path))
        classes = classes_in_mask(mask, NUM_CLASSES, str(mask_target))
        if not classes and not keep_unlabelled:
            dropped += 1
            continue
        place_image(source, image_target, image_mode)
        write_label_png(mask_target, mask)
        labels[stem] = classes
        written += 1

    ids = sorted(labels)
    if not ids:
        raise DataError(f"{instances_path}: the conversion keeps no image ({len(images)} images, "
                        f"{len(data['annotations'])} annotations, {dropped} without a foreground class); expected "
                        f"a COCO instances file with annotations (or --keep-unlabelled)")
    split_path = write_text_atomic(out / SPLIT_DIR / f"{split_name}.txt", "".join(f"{i}\n" for i in ids))
    labels_path = out / LABELS_FILENAME
    cached = load_image_labels(labels_path, NUM_CLASSES) if labels_path.is_file() else {}
    cached.update(labels)
    save_image_labels(labels_path, cached, NUM_CLASSES)
    write_json_atomic(out / DATASET_INFO, {"name": "coco", "class_names": list(COCO_CLASSES)})
    return COCOConvertReport(out_root=out, split_path=split_path, num_images=len(images), kept=len(ids),
                             written=written, skipped=skipped, dropped=dropped)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vwl_lightning.data.coco",
        description="Convert an MS COCO 2014 split (instances JSON + images) to the VOC layout.",
    )
    parser.add_argument("--instances", required=True, help="annotations/instances_train2014.json (or val2014)")
    parser.add_argument("--images", required=True, help="the split's image folder, e.g. train2014/")
    parser.add_argument("--out-root", required=True, help="VOC-layout output folder (shared by the splits)")
    parser.add_argument("--split-name", required=True, help="split list to write, e.g. train or val")
    parser.add_argument("--image-mode", choices=IMAGE_MODES, default="symlink",
                        help="how JPEGImages/ refers to the COCO images (default symlink)")
    parser.add_argument("--keep-unlabelled", action="store_true",
                        help="keep images without any foreground class in the split (default: drop them)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; user errors print as one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        report = convert_coco(args.instances, args.images, args.out_root, args.split_name,
                              image_mode=args.image_mode, keep_unlabelled=args.keep_unlabelled,
                              progress=not args.no_progress)
    except VWLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{report.split_path}: {report.kept} of {report.num_images} images ({report.written} converted, "
          f"{report.skipped} already present, {report.dropped} without a foreground class dropped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
