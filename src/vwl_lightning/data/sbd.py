"""PASCAL VOC 2012 + SBD: build ``SegmentationClassAug`` and the ``train_aug`` split (spec §4, §7).

The classifier trains on ``train_aug`` (10,582 images, spec §4) and the segmentation stage reads
``SegmentationClassAug/`` (spec §7). Neither ships with VOC 2012: both come from merging VOC's own
``SegmentationClass`` masks with the Semantic Boundaries Dataset (SBD, Hariharan et al. 2011), whose
``cls/<id>.mat`` files hold a MATLAB struct ``GTcls`` with a ``Segmentation`` field (uint8 H×W, 0..20,
no 255 borders).

Input layouts::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png            palette PNG with 255 borders
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
    benchmark_RELEASE/dataset/{cls/<id>.mat, img/<id>.jpg, train.txt, val.txt}

Command line::

    python -m vwl_lightning.data.sbd --voc-root VOCdevkit/VOC2012 --sbd-root benchmark_RELEASE/dataset
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image
from tqdm import tqdm

from vwl_lightning.data.label_png import read_label_png, write_label_png
from vwl_lightning.data.meta import VOC_CLASSES
from vwl_lightning.errors import DataError, VWLError
from vwl_lightning.utils.io import atomic_path, write_text_atomic

VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
SBD_URL = "http://home.bharathh.info/pubs/codes/SBD/download.html"

#: Image counts of the real splits; the layout checker warns (does not fail) when a split differs.
VOC_SPLIT_SIZES: dict[str, int] = {"train": 1464, "val": 1449, "train_aug": 10582}
#: Image counts of SBD's own ``train.txt`` / ``val.txt``.
SBD_SPLIT_SIZES: dict[str, int] = {"train": 8498, "val": 2857}

VOC_SPLIT_DIR = "ImageSets/Segmentation"
VOC_MASK_DIR = "SegmentationClass"
AUG_MASK_DIR = "SegmentationClassAug"
SBD_STRUCT = "GTcls"
SBD_FIELD = "Segmentation"


@dataclass(frozen=True)
class AugBuildReport:
    """What :func:`build_segmentation_class_aug` wrote."""

    out_dir: Path
    train_aug_path: Path
    from_voc: int  # masks copied from VOC's SegmentationClass
    from_sbd: int  # masks converted from SBD .mat files
    skipped: int  # outputs that already existed and decoded (resumed run)
    train_aug_size: int


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Image ids of a split list (one id per line, first token), in file order."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"split list {p} not found; expected one image id per line")
    ids = [line.split()[0] for line in p.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"split list {p} is empty")
    return ids


def read_sbd_mask(path: str | os.PathLike, num_classes: int = len(VOC_CLASSES)) -> np.ndarray:
    """Read ``GTcls.Segmentation`` of an SBD ``cls/<id>.mat`` as an (H, W) uint8 class-index array."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: SBD mask not found")
    try:
        mat = scipy.io.loadmat(p, struct_as_record=False, squeeze_me=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's fault
        raise DataError(f"{p}: cannot read as a MATLAB .mat file ({type(exc).__name__}: {exc})") from None
    struct = mat.get(SBD_STRUCT)
    segmentation = getattr(struct, SBD_FIELD, None)
    if segmentation is None:
        raise DataError(f"{p}: expected a struct '{SBD_STRUCT}' with a field '{SBD_FIELD}' (SBD cls/ format)")
    mask = np.asarray(segmentation)
    if mask.ndim != 2:
        raise DataError(f"{p}: {SBD_STRUCT}.{SBD_FIELD} must be a 2-D mask, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() >= num_classes):
        raise DataError(f"{p}: {SBD_STRUCT}.{SBD_FIELD} holds values {int(mask.min())}..{int(mask.max())}; "
                        f"expected class indices 0..{num_classes - 1}")
    return mask.astype(np.uint8)


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header, naming the file when it is missing or unreadable."""
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    return height, width


def train_aug_ids(
    voc_train: Iterable[str], voc_val: Iterable[str], sbd_train: Iterable[str], sbd_val: Iterable[str]
) -> list[str]:
    """``train_aug`` = (VOC train ∪ SBD train ∪ SBD val) − VOC val, sorted.

    This is the common practice of the WSSS literature (the list that gives 10,582 images, as used by
    DeepLab, IRN and the spec's reference code): every image with a full mask from either source, except
    the VOC 2012 val images, which stay held out for evaluation.
    """
    return sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - set(voc_val))


def _existing_mask_ok(path: Path, shape: tuple[int, int]) -> bool:
    """Whether an earlier run left a complete output here (it exists, decodes, and has the image's size)."""
    if not path.is_file():
        return False
    try:
        return read_label_png(path).shape == shape
    except DataError:
        return False


def _check_size(mask_shape: tuple[int, ...], image_shape: tuple[int, int], mask_path: Path, image_path: Path) -> None:
    if tuple(mask_shape) != image_shape:
        raise DataError(f"{mask_path}: mask size {mask_shape[1]}x{mask_shape[0]} differs from its image "
                        f"{image_path} ({image_shape[1]}x{image_shape[0]})")


def build_segmentation_class_aug(
    voc_root: str | os.PathLike,
    sbd_root: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    split_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> AugBuildReport:
    """Write ``SegmentationClassAug/`` and ``train_aug.txt`` from VOC 2012 and SBD.

    Every id of VOC ``train`` ∪ ``val`` gets VOC's own ``SegmentationClass`` PNG (copied byte for byte,
    255 borders kept): where VOC and SBD both annotate an image, VOC's mask is preferred. Every other id of
    SBD ``train`` ∪ ``val`` gets its ``.mat`` mask written as a VOC-palette PNG. Masks are checked against
    the size of ``<voc_root>/JPEGImages/<id>.jpg`` (the image training reads). The split
    ``train_aug`` (see :func:`train_aug_ids`) goes to ``<split_dir>/train_aug.txt``.

    Writes are atomic and the build is resumable: an output that exists, decodes and has the right size is
    skipped.

    Args:
        voc_root: ``VOCdevkit/VOC2012``.
        sbd_root: ``benchmark_RELEASE/dataset`` (holds ``cls/``, ``train.txt``, ``val.txt``).
        out_dir: where the masks go; default ``<voc_root>/SegmentationClassAug``.
        split_dir: where ``train_aug.txt`` goes; default ``<voc_root>/ImageSets/Segmentation``.
        progress: show a tqdm progress bar.
    """
    voc_root, sbd_root = Path(voc_root).expanduser(), Path(sbd_root).expanduser()
    _check_voc_root(voc_root)
    _check_sbd_root(sbd_root)
    out = Path(out_dir).expanduser() if out_dir is not None else voc_root / AUG_MASK_DIR
    splits = Path(split_dir).expanduser() if split_dir is not None else voc_root / VOC_SPLIT_DIR

    voc_train = read_id_list(voc_root / VOC_SPLIT_DIR / "train.txt")
    voc_val = read_id_list(voc_root / VOC_SPLIT_DIR / "val.txt")
    sbd_train = read_id_list(sbd_root / "train.txt")
    sbd_val = read_id_list(sbd_root / "val.txt")

    voc_ids = sorted(set(voc_train) | set(voc_val))
    voc_set = set(voc_ids)
    sbd_ids = sorted((set(sbd_train) | set(sbd_val)) - voc_set)
    jobs = [(i, True) for i in voc_ids] + [(i, False) for i in sbd_ids]

    from_voc = from_sbd = skipped = 0
    for image_id, from_voc_png in tqdm(jobs, desc="SegmentationClassAug", unit="mask", disable=not progress):
        image_path = voc_root / "JPEGImages" / f"{image_id}.jpg"
        shape = image_size(image_path)
        target = out / f"{image_id}.png"
        if _existing_mask_ok(target, shape):
            skipped += 1
            continue
        if from_voc_png:
            source = voc_root / VOC_MASK_DIR / f"{image_id}.png"
            _check_size(read_label_png(source).shape, shape, source, image_path)
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
            from_voc += 1
        else:
            source = sbd_root / "cls" / f"{image_id}.mat"
            mask = read_sbd_mask(source)
            _check_size(mask.shape, shape, source, image_path)
            write_label_png(target, mask)
            from_sbd += 1

    ids = train_aug_ids(voc_train, voc_val, sbd_train, sbd_val)
    train_aug_path = write_text_atomic(splits / "train_aug.txt", "".join(f"{i}\n" for i in ids))
    return AugBuildReport(out_dir=out, train_aug_path=train_aug_path, from_voc=from_voc, from_sbd=from_sbd,
                          skipped=skipped, train_aug_size=len(ids))


def _check_voc_root(voc_root: Path) -> None:
    if not (voc_root / "JPEGImages").is_dir():
        hint = ""
        if (voc_root / "VOC2012" / "JPEGImages").is_dir():
            hint = f" (did you mean {voc_root / 'VOC2012'}?)"
        elif (voc_root / "VOCdevkit" / "VOC2012").is_dir():
            hint = f" (did you mean {voc_root / 'VOCdevkit' / 'VOC2012'}?)"
        raise DataError(f"VOC root {voc_root} has no JPEGImages/ folder; expected VOCdevkit/VOC2012 from "
                        f"{VOC_URL}{hint}")
    if not (voc_root / VOC_MASK_DIR).is_dir():
        raise DataError(f"VOC root {voc_root} has no {VOC_MASK_DIR}/ folder; expected the VOC 2012 trainval "
                        f"release ({VOC_URL})")


def _check_sbd_root(sbd_root: Path) -> None:
    if not (sbd_root / "cls").is_dir():
        hint = ""
        if (sbd_root / "dataset" / "cls").is_dir():
            hint = f" (did you mean {sbd_root / 'dataset'}?)"
        elif (sbd_root / "benchmark_RELEASE" / "dataset" / "cls").is_dir():
            hint = f" (did you mean {sbd_root / 'benchmark_RELEASE' / 'dataset'}?)"
        raise DataError(f"SBD root {sbd_root} has no cls/ folder; expected benchmark_RELEASE/dataset from "
                        f"{SBD_URL}{hint}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vwl_lightning.data.sbd",
        description="Build VOC 2012 SegmentationClassAug/ and ImageSets/Segmentation/train_aug.txt from SBD.",
    )
    parser.add_argument("--voc-root", required=True, help="VOCdevkit/VOC2012 (holds JPEGImages/, "
                        "SegmentationClass/, ImageSets/Segmentation/)")
    parser.add_argument("--sbd-root", required=True, help=f"benchmark_RELEASE/dataset (holds cls/, train.txt, "
                        f"val.txt); download: {SBD_URL}")
    parser.add_argument("--out-dir", default=None, help="mask folder (default <voc-root>/SegmentationClassAug)")
    parser.add_argument("--split-dir", default=None,
                        help="folder for train_aug.txt (default <voc-root>/ImageSets/Segmentation)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; user errors print as one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        report = build_segmentation_class_aug(args.voc_root, args.sbd_root, args.out_dir, args.split_dir,
                                              progress=not args.no_progress)
    except VWLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{report.out_dir}: {report.from_voc} masks from VOC SegmentationClass, {report.from_sbd} from SBD, "
          f"{report.skipped} already present")
    expected = VOC_SPLIT_SIZES["train_aug"]
    note = "" if report.train_aug_size == expected else f" (the standard list has {expected})"
    print(f"{report.train_aug_path}: {report.train_aug_size} ids{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
