"""Check that a data folder holds everything training needs, and say how to get what is missing (spec §4, §7).

The code reads data in the VOC layout (:mod:`vwl_lightning.data.voc`): ``JPEGImages/``, a mask folder
(``SegmentationClassAug/``), ``ImageSets/Segmentation/<split>.txt`` and the cached labels
``cls_labels.json``. Real VOC needs SBD merged in (``train_aug``, spec §4) and COCO needs converting,
so the most common failure is a half-prepared folder; this reports each missing piece with the command
or download that provides it::

    python -m vwl_lightning.data.check_layout VOCdevkit/VOC2012 --kind voc --splits train_aug val

Exit status 0 when complete, 1 otherwise. Split sizes that differ from the real data sets only warn,
since subsets and test fixtures are legitimate.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vwl_lightning.data.coco import COCO_DOWNLOAD_URLS, COCO_SPLIT_SIZES
from vwl_lightning.data.image_labels import LABELS_FILENAME, load_image_labels
from vwl_lightning.data.label_png import read_label_png
from vwl_lightning.data.layout import VOCLayout
from vwl_lightning.data.meta import IGNORE_INDEX, DatasetMeta
from vwl_lightning.data.sbd import SBD_URL, VOC_SPLIT_SIZES, VOC_URL
from vwl_lightning.data.source import DATASET_INFO, KINDS, read_meta
from vwl_lightning.errors import ConfigError, DataError

IMAGE_DIR = "JPEGImages"
SPLIT_DIR = "ImageSets/Segmentation"
DEFAULT_MASK_DIR = "SegmentationClassAug"
DEFAULT_SPLITS: dict[str, tuple[str, ...]] = {"voc": ("train_aug", "val"), "coco": ("train", "val"),
                                              "synthetic": ("train", "val")}
EXPECTED_SIZES: dict[str, dict[str, int]] = {"voc": VOC_SPLIT_SIZES, "coco": COCO_SPLIT_SIZES, "synthetic": {}}
SHOWN_IDS = 3  # ids quoted in a message about missing files


@dataclass(frozen=True)
class Finding:
    """One piece of the layout: what it is, what was found, and how to get it when it is missing."""

    what: str
    detail: str
    how: str = ""

    def __str__(self) -> str:
        return f"{self.what} {self.detail}" + (f": {self.how}" if self.how else "")


@dataclass
class LayoutReport:
    """Result of :func:`check_layout`: present pieces, missing pieces (fatal) and warnings (not fatal)."""

    root: Path
    kind: str
    splits: tuple[str, ...]
    present: list[Finding] = field(default_factory=list)
    missing: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing

    def format(self) -> str:
        """Human-readable report, one piece per line."""
        lines = [f"data root: {self.root} (kind {self.kind}, splits {' '.join(self.splits)})"]
        if self.present:
            lines.append("present:")
            lines.extend(f"  {item.what}: {item.detail}" for item in self.present)
        for title, items in (("warnings", self.warnings), ("missing", self.missing)):
            if items:
                lines.append(f"{title}:")
                lines.extend(f"  {item}" for item in items)
        lines.append("status: complete" if self.complete else f"status: INCOMPLETE ({len(self.missing)} missing)")
        return "\n".join(lines)


def _how(kind: str, piece: str, root: Path, split: str = "") -> str:
    """The command or download that provides ``piece`` of a ``kind`` data set."""
    if kind == "synthetic":
        return ("the embedded benchmark is written on first use by `python -m vwl_lightning` with data=synthetic; "
                "delete this incomplete folder and run again")
    if kind == "coco":
        coco_split = "val2014" if split.startswith("val") else "train2014"
        name = split or "train"
        return (f"convert COCO 2014 with `python -m vwl_lightning.data.coco --instances "
                f"annotations/instances_{coco_split}.json --images {coco_split} --out-root {root} "
                f"--split-name {name}`; images from {COCO_DOWNLOAD_URLS[coco_split]}, annotations from "
                f"{COCO_DOWNLOAD_URLS['annotations']}")
    sbd_command = (f"build it from SBD with `python -m vwl_lightning.data.sbd --voc-root {root} --sbd-root "
                   f"benchmark_RELEASE/dataset`; SBD is at {SBD_URL}")
    if piece in ("masks", "train_aug"):
        return sbd_command
    return f"part of PASCAL VOC 2012 trainval from {VOC_URL}; extract it and use VOCdevkit/VOC2012 as the root"


def _count(folder: Path, suffix: str) -> int:
    with os.scandir(folder) as entries:
        return sum(1 for e in entries if e.name.endswith(suffix) and not e.name.startswith("."))


def _ids_text(ids: list[str]) -> str:
    shown = ", ".join(ids[:SHOWN_IDS])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > SHOWN_IDS else "")


def _infer_kind(root: Path) -> str:
    info = root / DATASET_INFO
    if info.is_file():
        try:
            name = read_meta(root, "voc").name
        except DataError:
            return "voc"
        if name in KINDS:
            return name
    return "voc"


def check_layout(
    root: str | os.PathLike,
    kind: str | None = None,
    splits: Sequence[str] | None = None,
    mask_dir: str = DEFAULT_MASK_DIR,
    deep: bool = False,
    decode_images: bool = True,
) -> LayoutReport:
    """Inspect ``root`` (the folder that should hold ``JPEGImages/``) without changing it.

    Args:
        root: the data set root (``VOCdevkit/VOC2012`` for VOC, the converted folder for COCO).
        kind: ``voc``, ``coco`` or ``synthetic``; default: ``dataset.json``'s name, else ``voc``.
        splits: split lists to check; default ``train_aug val`` (VOC) or ``train val``.
        mask_dir: the mask folder under the root.
        deep: also decode every listed mask, check its values (class indices ``0..C-1`` or 255) and its size
            against its image's, and (with ``decode_images``) decode every listed image completely, so a
            truncated JPEG is found here and not in the middle of training.
        decode_images: with ``deep``, decode the images too (the pipeline's start-up check leaves this off:
            mask decoding is the cheap part, image sizes then come from the JPEG headers).
    """
    root = Path(root).expanduser()
    kind = kind or (_infer_kind(root) if root.is_dir() else "voc")
    if kind not in KINDS:
        raise ConfigError(f"--kind must be one of {KINDS}, got {kind!r}")
    report = LayoutReport(root, kind, tuple(splits or DEFAULT_SPLITS[kind]))
    if not root.is_dir():
        report.missing.append(Finding("data root", f"{root} does not exist", _how(kind, "root", root)))
        return report

    meta = _check_info(report)
    image_dir = root / IMAGE_DIR
    if image_dir.is_dir():
        report.present.append(Finding(f"{IMAGE_DIR}/", f"{_count(image_dir, '.jpg')} images"))
    else:
        hint = _root_hint(root)
        report.missing.append(Finding(f"{IMAGE_DIR}/", "missing" + hint, _how(kind, "images", root)))
        if hint:  # the wrong folder: everything else would be reported missing too
            return report
    masks = root / mask_dir
    if masks.is_dir():
        report.present.append(Finding(f"{mask_dir}/", f"{_count(masks, '.png')} masks"))
    else:
        report.missing.append(Finding(f"{mask_dir}/", "missing", _how(kind, "masks", root)))

    listed: list[str] = []
    for split in report.splits:
        ids = _check_split(report, split, image_dir, masks, deep, meta, decode_images)
        listed.extend(ids)
    _check_labels(report, meta, listed)
    return report


def _root_hint(root: Path) -> str:
    for sub in ("VOC2012", "VOCdevkit/VOC2012"):
        if (root / sub / IMAGE_DIR).is_dir():
            return f" (did you mean {root / sub}?)"
    return ""


def _check_info(report: LayoutReport) -> DatasetMeta | None:
    """``dataset.json``: required for the synthetic benchmark, optional (standard names) otherwise."""
    info = report.root / DATASET_INFO
    if not info.is_file():
        if report.kind == "synthetic":
            report.missing.append(Finding(DATASET_INFO, "missing (the generator writes it last)",
                                          _how("synthetic", "info", report.root)))
            return None
        if report.kind == "coco":
            report.warnings.append(Finding(DATASET_INFO, "missing; the standard 81 COCO class names are used",
                                           _how("coco", "info", report.root)))
    try:
        meta = read_meta(report.root, report.kind)
    except DataError as exc:
        report.missing.append(Finding(DATASET_INFO, f"unreadable ({exc})", _how(report.kind, "info", report.root)))
        return None
    if info.is_file():
        report.present.append(Finding(DATASET_INFO, f"{meta.name}, {meta.num_classes} classes"))
    return meta


def _check_split(report: LayoutReport, split: str, image_dir: Path, masks: Path, deep: bool,
                 meta: DatasetMeta | None = None, decode_images: bool = True) -> list[str]:
    """Split list present, its size, and the images and masks of its ids."""
    kind, root = report.kind, report.root
    path = root / SPLIT_DIR / f"{split}.txt"
    piece = "train_aug" if split == "train_aug" else "split"
    if not path.is_file():
        report.missing.append(Finding(f"{SPLIT_DIR}/{split}.txt", "missing", _how(kind, piece, root, split)))
        return []
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        report.missing.append(Finding(f"{SPLIT_DIR}/{split}.txt", "is empty", _how(kind, piece, root, split)))
        return []
    report.present.append(Finding(f"split {split}", f"{len(ids)} ids"))
    expected = EXPECTED_SIZES[kind].get(split)
    if expected is not None and expected != len(ids):
        report.warnings.append(Finding(f"split {split}", f"has {len(ids)} ids; the real {kind.upper()} list has "
                                       f"{expected} (fine for a subset or a test fixture)"))
    if image_dir.is_dir():
        no_image = [i for i in ids if not (image_dir / f"{i}.jpg").is_file()]
        if no_image:
            report.missing.append(Finding(f"{IMAGE_DIR}/ images of split {split}",
                                          f"missing for {_ids_text(no_image)}", _how(kind, "images", root, split)))
    if masks.is_dir():
        no_mask = [i for i in ids if not (masks / f"{i}.png").is_file()]
        if no_mask:
            report.missing.append(Finding(f"{masks.name}/ masks of split {split}",
                                          f"missing for {_ids_text(no_mask)}", _how(kind, "masks", root, split)))
        if deep:
            _check_masks(report, split, ids, image_dir, masks, meta, decode_images)
    elif deep and decode_images and image_dir.is_dir():
        _check_masks(report, split, ids, image_dir, None, meta, decode_images)
    return ids


def decode_image(path: Path) -> tuple[int, int]:
    """Decode ``path`` completely (a truncated or corrupt file raises DataError naming it); return (W, H)."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None


def mask_problem(mask_path: Path, image_path: Path, num_classes: int | None, decode: bool) -> str | None:
    """Why the mask (and, with ``decode``, its image) cannot be used, or None: mask undecodable, values
    outside ``0..num_classes-1`` and 255, or a size that differs from the image's."""
    try:
        if decode:
            width, height = decode_image(image_path)
        else:
            with Image.open(image_path) as image:
                width, height = image.size
    except DataError as exc:
        return str(exc)
    except (OSError, SyntaxError, ValueError) as exc:
        return f"{image_path}: cannot read image header ({exc})"
    if not mask_path.is_file():
        return None
    try:
        mask = read_label_png(mask_path)
    except DataError as exc:
        return str(exc)
    if mask.shape != (height, width):
        return f"{mask_path}: mask {mask.shape[1]}x{mask.shape[0]} differs from image {width}x{height}"
    if num_classes is not None:
        values = np.unique(mask)
        bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
        if bad.size:
            return (f"{mask_path}: mask holds value(s) {bad.tolist()[:5]}; expected class indices 0..{num_classes - 1} "
                    f"or {IGNORE_INDEX}")
    return None


def _check_masks(report: LayoutReport, split: str, ids: list[str], image_dir: Path, masks: Path | None,
                 meta: DatasetMeta | None, decode_images: bool) -> None:
    """Every listed mask decodes, holds only valid values and has its image's size; with ``decode_images``
    every listed image decodes completely."""
    bad: list[str] = []
    first_error = ""
    num_classes = meta.num_classes if meta is not None else None
    for image_id in ids:
        image_path = image_dir / f"{image_id}.jpg"
        if not image_path.is_file():
            continue
        mask_path = (masks / f"{image_id}.png") if masks is not None else image_dir / f".none-{image_id}.png"
        problem = mask_problem(mask_path, image_path, num_classes, decode_images)
        if problem:
            bad.append(image_id)
            first_error = first_error or problem
    if bad:
        what = f"{masks.name}/ masks" if masks is not None else f"{IMAGE_DIR}/ images"
        report.missing.append(Finding(f"{what} of split {split}",
                                      f"unreadable, with invalid values or of the wrong size for {_ids_text(bad)} "
                                      f"(first: {first_error})", _how(report.kind, "masks", report.root, split)))


def masks_check_key(layout: VOCLayout, splits: Sequence[str]) -> str:
    """Cache key of :func:`check_masks_before_training`: root, mask folder, and the size and modification time
    of the split lists and of the image and mask folders (a re-prepared data set gets a new key)."""
    import hashlib

    parts = [str(Path(layout.root).resolve()), str(layout.mask_dir)]
    folders = [layout.root / layout.image_dir, layout.root / layout.mask_dir]
    for path in [layout.root / SPLIT_DIR / f"{split}.txt" for split in splits] + folders:
        stat = path.stat() if path.exists() else None
        parts.append(f"{path.name}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def check_masks_before_training(layout: VOCLayout, num_classes: int, splits: Sequence[str],
                                cache_dir: str | os.PathLike | None = None) -> int:
    """The cheap part of ``--deep`` that the pipeline runs before the classifier starts: every existing mask
    of ``splits`` decodes, holds only ``0..num_classes-1`` or 255, and has its image's size (from the JPEG
    header). The first bad mask raises DataError naming it. A pass is remembered in
    ``<cache_dir>/layout_checks/<key>.json`` (:func:`masks_check_key`); returns the masks checked (0 when cached).
    """
    from vwl_lightning.utils.io import write_json_atomic

    splits = list(dict.fromkeys(splits))
    stamp = Path(cache_dir) / "layout_checks" / f"{masks_check_key(layout, splits)}.json" if cache_dir else None
    if stamp is not None and stamp.is_file():
        return 0
    checked = 0
    for split in splits:
        for image_id in layout.split_ids(split):
            mask_path, image_path = layout.mask_path(image_id), layout.image_path(image_id)
            if not (mask_path.is_file() and image_path.is_file()):
                continue
            problem = mask_problem(mask_path, image_path, num_classes, decode=False)
            if problem:
                raise DataError(f"{problem} (split {split}; found before training by the mask check, "
                                f"`python -m vwl_lightning.data.check_layout {layout.root} --deep` lists all)")
            checked += 1
    if stamp is not None:
        write_json_atomic(stamp, {"root": str(layout.root), "mask_dir": str(layout.mask_dir), "splits": splits,
                                  "masks_checked": checked, "status": "ok"})
    return checked


def _check_labels(report: LayoutReport, meta: DatasetMeta | None, listed: list[str]) -> None:
    """The labels cache: optional (derived on first use), but a broken one stops training."""
    path = report.root / LABELS_FILENAME
    splits = " ".join(report.splits)
    command = f"`python -m vwl_lightning.data.make_labels {report.root} --splits {splits}`"
    if not path.is_file():
        report.warnings.append(Finding(LABELS_FILENAME, "missing; training derives it from the masks on first "
                                       f"use, or make it now with {command}"))
        return
    if meta is None:
        return
    try:
        labels = load_image_labels(path, meta.num_classes)
    except DataError as exc:
        report.missing.append(Finding(LABELS_FILENAME, f"unusable ({exc})", f"rebuild it with {command} --rebuild"))
        return
    uncovered = sorted(set(listed) - set(labels))
    report.present.append(Finding(LABELS_FILENAME, f"labels of {len(labels)} images"))
    if uncovered:
        report.warnings.append(Finding(LABELS_FILENAME, f"has no labels for {_ids_text(uncovered)}; they are "
                                       f"derived on first use, or now with {command}"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vwl_lightning.data.check_layout",
        description="Check a data folder in the VOC layout and say how to get any missing piece.",
    )
    parser.add_argument("root", help="the folder that should hold JPEGImages/ (VOCdevkit/VOC2012 for VOC)")
    parser.add_argument("--kind", choices=KINDS, default=None, help="default: dataset.json's name, else voc")
    parser.add_argument("--splits", nargs="+", default=None,
                        help="split lists to check (default: train_aug val for VOC, train val otherwise)")
    parser.add_argument("--mask-dir", default=DEFAULT_MASK_DIR, help="mask folder under the root")
    parser.add_argument("--deep", action="store_true",
                        help="decode every listed image and mask; check mask values and sizes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Print the report; exit status 0 when complete, 1 otherwise."""
    args = build_parser().parse_args(argv)
    report = check_layout(args.root, args.kind, args.splits, args.mask_dir, args.deep)
    print(report.format())
    return 0 if report.complete else 1


if __name__ == "__main__":
    sys.exit(main())
