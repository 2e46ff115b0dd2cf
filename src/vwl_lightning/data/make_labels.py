"""Derive the image-level labels of some splits from their masks and cache them (spec §4).

The classifier sees only image-level labels (spec §4: the reference code ships IRN's
``cls_labels.npy``). Here they are never hand-typed: a class is present in an image when one of its mask
pixels carries it (:mod:`vwl_lightning.data.image_labels`), and the result is cached in
``<root>/cls_labels.json``. Training derives missing labels on first use anyway; this command does it up
front and prints how many images of each split contain each class::

    python -m vwl_lightning.data.make_labels VOCdevkit/VOC2012 --splits train_aug val
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vwl_lightning.data.image_labels import derive_image_labels, load_image_labels, save_image_labels
from vwl_lightning.data.layout import VOCLayout
from vwl_lightning.data.meta import DatasetMeta
from vwl_lightning.data.source import DATASET_INFO, read_meta
from vwl_lightning.errors import ConfigError, DataError, VWLError

DEFAULT_SPLITS = ("train_aug", "val")


def dataset_meta(root: Path, num_classes: int | None) -> DatasetMeta:
    """Class names from ``dataset.json`` (VOC's when absent), checked against ``num_classes`` if given."""
    has_info = (root / DATASET_INFO).is_file()
    meta = read_meta(root, "voc")
    if num_classes is None:
        return meta
    if has_info and num_classes != meta.num_classes:
        raise ConfigError(f"--num-classes {num_classes} contradicts {root / DATASET_INFO}, which lists "
                          f"{meta.num_classes} classes (background included)")
    if num_classes != meta.num_classes:
        names = tuple(["background", *(f"class_{i}" for i in range(1, num_classes))])
        return DatasetMeta(meta.name, names)
    return meta


def make_labels(
    root: str | os.PathLike,
    splits: Sequence[str] = DEFAULT_SPLITS,
    num_classes: int | None = None,
    mask_dir: str = "SegmentationClassAug",
    rebuild: bool = False,
) -> dict[str, dict[str, list[int]]]:
    """Labels of every image of ``splits`` (``{split: {id: [classes]}}``), cached in ``cls_labels.json``.

    ``num_classes`` counts background; by default it comes from ``dataset.json`` (21 for VOC). With
    ``rebuild`` the labels of these splits are derived from the masks again even where the cache has them.
    """
    layout = VOCLayout.at(root, mask_dir=mask_dir)
    meta = dataset_meta(layout.root, num_classes)
    count = meta.num_classes
    ids = {split: layout.split_ids(split) for split in splits}
    if rebuild:
        cached: dict[str, list[int]] = {}
        if layout.labels_path.is_file():
            try:
                cached = load_image_labels(layout.labels_path, count)
            except DataError:
                cached = {}  # made for another class count or unreadable: rebuilt from scratch
        wanted = sorted({i for split_ids in ids.values() for i in split_ids})
        cached.update(derive_image_labels(layout.root / layout.mask_dir, wanted, count))
        save_image_labels(layout.labels_path, cached, count)
        return {split: {i: cached[i] for i in split_ids} for split, split_ids in ids.items()}
    return {split: layout.image_labels(split_ids, count) for split, split_ids in ids.items()}


def class_counts(labels: dict[str, list[int]], num_classes: int) -> list[int]:
    """Number of images containing each class (index 0, background, counts images with no foreground)."""
    counts = [0] * num_classes
    for classes in labels.values():
        if not classes:
            counts[0] += 1
        for c in classes:
            counts[c] += 1
    return counts


def format_counts(per_split: dict[str, dict[str, list[int]]], meta: DatasetMeta) -> str:
    """A table: one row per class, one column per split, plus the image total and unlabelled images."""
    splits = list(per_split)
    counts = {s: class_counts(per_split[s], meta.num_classes) for s in splits}
    name_width = max(len(n) for n in meta.class_names[1:] + ("no foreground", "images"))
    widths = [max(len(s), 7) for s in splits]
    lines = ["class".ljust(name_width) + "".join(f"  {s:>{w}}" for s, w in zip(splits, widths, strict=True))]
    for c in range(1, meta.num_classes):
        lines.append(meta.class_names[c].ljust(name_width)
                     + "".join(f"  {counts[s][c]:>{w}}" for s, w in zip(splits, widths, strict=True)))
    lines.append("no foreground".ljust(name_width)
                 + "".join(f"  {counts[s][0]:>{w}}" for s, w in zip(splits, widths, strict=True)))
    lines.append("images".ljust(name_width)
                 + "".join(f"  {len(per_split[s]):>{w}}" for s, w in zip(splits, widths, strict=True)))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vwl_lightning.data.make_labels",
        description="Derive image-level labels from the masks of some splits and cache them in cls_labels.json.",
    )
    parser.add_argument("root", help="data set root in the VOC layout (holds JPEGImages/)")
    parser.add_argument("--splits", nargs="+", default=list(DEFAULT_SPLITS), help="split names (default: "
                        + " ".join(DEFAULT_SPLITS) + ")")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes including background (default: from dataset.json, else 21 for VOC)")
    parser.add_argument("--mask-dir", default="SegmentationClassAug", help="mask folder under the root")
    parser.add_argument("--rebuild", action="store_true", help="derive again even where the cache has labels")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; user errors print as one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        per_split = make_labels(args.root, args.splits, args.num_classes, args.mask_dir, args.rebuild)
        meta = dataset_meta(Path(args.root).expanduser(), args.num_classes)
    except VWLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = len({i for labels in per_split.values() for i in labels})
    print(f"{VOCLayout(Path(args.root).expanduser()).labels_path}: labels of {total} images, "
          f"{meta.num_classes} classes (background included)")
    print(format_counts(per_split, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
