"""Small fixtures in the exact on-disk layouts of the real data sets: PASCAL VOC 2012, SBD, MS COCO 2014.

No real data set can be downloaded here, so the loaders and converters are tested on these. Each builder
writes under a folder it is given (a pytest ``tmp_path``) and returns a dataclass with the paths and the
ground truth it wrote (mask arrays, ids, annotation records), so a test can compare outputs pixel by
pixel with what went in. Everything is deterministic in ``seed``.

* :func:`make_voc_fixture` — ``VOCdevkit/VOC2012`` with JPEGs, ``SegmentationClass`` palette PNGs with
  255 borders, ``ImageSets/Segmentation/{train,val}.txt``; ids in the real ``2007_000032`` style. With
  ``with_aug=True`` it is also ready for training (``SegmentationClassAug`` and ``train_aug.txt`` made
  from VOC's own masks, no SBD).
* :func:`make_sbd_fixture` — ``benchmark_RELEASE/dataset`` with ``cls/<id>.mat`` files written by
  ``scipy.io.savemat`` holding a ``GTcls`` struct (``Segmentation``, ``Boundaries``,
  ``CategoriesPresent``) as the real files do, ``img/<id>.jpg`` and ``train.txt``/``val.txt``.
* :func:`make_coco_fixture` — ``annotations/instances_train2014.json`` (real sparse category ids,
  polygon / compressed-RLE / crowd uncompressed-RLE annotations, an image without annotations, an image
  with only a crowd) and ``train2014/COCO_train2014_000000000009.jpg``-style images.

Other test modules import these builders (e.g. ``from fixtures_real import make_voc_fixture``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image

from vwl_lightning.data.label_png import write_label_png
from vwl_lightning.data.meta import COCO_CLASSES, IGNORE_INDEX, VOC_CLASSES

VOC_NUM_CLASSES = len(VOC_CLASSES)
JPEG_QUALITY = 90
#: (H, W) choices of the fixture images: small, and different per image so size mix-ups show.
IMAGE_SIZES: tuple[tuple[int, int], ...] = ((32, 40), (36, 28), (40, 48), (30, 30), (44, 36))

#: The 80 real COCO category ids (sparse in 1..90), in COCO_CLASSES order.
COCO_CATEGORY_IDS: tuple[int, ...] = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83), *range(84, 91),
)
COCO_SUPERCATEGORY = "object"  # the real file has per-class supercategories; nothing reads them


# --------------------------------------------------------------------------------------------------- images


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random RGB image (a colour gradient plus noise), (H, W, 3) uint8."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(0, 255, size=3)
    slope = rng.uniform(-3, 3, size=(2, 3))
    image = base + y[..., None] * slope[0] + x[..., None] * slope[1] + rng.normal(0, 8, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_jpeg(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=JPEG_QUALITY)
    return path


def random_mask(rng: np.random.Generator, height: int, width: int, num_classes: int, max_objects: int = 3,
                borders: bool = True) -> np.ndarray:
    """1..``max_objects`` rectangles of random foreground classes; with ``borders`` a 1-pixel 255 outline
    wherever the class changes, as VOC's ``SegmentationClass`` has. At least one foreground pixel survives."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        h, w = int(rng.integers(height // 3, height // 2 + 1)), int(rng.integers(width // 3, width // 2 + 1))
        top, left = int(rng.integers(1, height - h)), int(rng.integers(1, width - w))
        mask[top:top + h, left:left + w] = int(rng.integers(1, num_classes))
    if borders:
        mask = add_borders(mask)
    return mask


def add_borders(mask: np.ndarray) -> np.ndarray:
    """Set to 255 each pixel whose right or lower neighbour has another class (VOC-style outlines)."""
    out = mask.copy()
    edge = np.zeros(mask.shape, dtype=bool)
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    out[edge] = IGNORE_INDEX
    return out


def voc_style_ids(count: int, offset: int = 0) -> list[str]:
    """Sorted ids in the real VOC style (``2007_000032``), distinct for distinct ``offset`` ranges."""
    return sorted(f"{2007 + (offset + i) % 5}_{32 + 7 * (offset + i):06d}" for i in range(count))


# ------------------------------------------------------------------------------------------------------ VOC


@dataclass
class VOCFixture:
    """A ``VOCdevkit/VOC2012`` folder and what was written into it."""

    devkit: Path  # .../VOCdevkit
    root: Path  # .../VOCdevkit/VOC2012, the folder that holds JPEGImages/
    train_ids: list[str]
    val_ids: list[str]
    extra_ids: list[str]  # JPEGs without a VOC mask (the images only SBD annotates)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # (H, W) of every JPEG
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # SegmentationClass content per id

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def split_path(self, split: str) -> Path:
        return self.root / "ImageSets" / "Segmentation" / f"{split}.txt"


def write_split(path: Path, ids: list[str]) -> Path:
    """A split list as the real ones: one id per line, trailing newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))
    return path


def make_voc_fixture(tmp_path: Path, n_train: int = 4, n_val: int = 3, n_extra: int = 4, seed: int = 0,
                     with_aug: bool = False) -> VOCFixture:
    """Write ``<tmp_path>/VOCdevkit/VOC2012`` as the VOC 2012 trainval tarball lays it out.

    ``n_train``/``n_val`` images get a ``SegmentationClass`` PNG (palette, 255 borders) and are listed in
    ``train.txt``/``val.txt``; ``n_extra`` more JPEGs have no mask (as most of VOC's 17,125 images).
    ``with_aug=True`` also writes ``SegmentationClassAug/`` (VOC's masks) and ``train_aug.txt`` (= train),
    a training-ready layout without SBD.
    """
    rng = np.random.default_rng(seed)
    devkit = tmp_path / "VOCdevkit"
    root = devkit / "VOC2012"
    ids = voc_style_ids(n_train + n_val + n_extra)
    order = rng.permutation(len(ids))
    train_ids = sorted(ids[i] for i in order[:n_train])
    val_ids = sorted(ids[i] for i in order[n_train:n_train + n_val])
    extra_ids = sorted(ids[i] for i in order[n_train + n_val:])
    fixture = VOCFixture(devkit, root, train_ids, val_ids, extra_ids)
    for k, image_id in enumerate(ids):
        height, width = IMAGE_SIZES[k % len(IMAGE_SIZES)]
        fixture.sizes[image_id] = (height, width)
        write_jpeg(fixture.image_path(image_id), random_image(rng, height, width))
    for image_id in train_ids + val_ids:
        height, width = fixture.sizes[image_id]
        mask = random_mask(rng, height, width, VOC_NUM_CLASSES)
        fixture.masks[image_id] = mask
        write_label_png(root / "SegmentationClass" / f"{image_id}.png", mask)
    write_split(fixture.split_path("train"), train_ids)
    write_split(fixture.split_path("val"), val_ids)
    write_split(fixture.split_path("trainval"), sorted(train_ids + val_ids))
    if with_aug:
        shutil.copytree(root / "SegmentationClass", root / "SegmentationClassAug")
        write_split(fixture.split_path("train_aug"), train_ids)
    return fixture


# ------------------------------------------------------------------------------------------------------ SBD


@dataclass
class SBDFixture:
    """A ``benchmark_RELEASE/dataset`` folder and the masks its ``.mat`` files hold."""

    root: Path  # .../benchmark_RELEASE/dataset
    train_ids: list[str]
    val_ids: list[str]
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    def mat_path(self, image_id: str) -> Path:
        return self.root / "cls" / f"{image_id}.mat"


def write_sbd_mat(path: Path, segmentation: np.ndarray, num_classes: int = VOC_NUM_CLASSES) -> Path:
    """Write a ``GTcls`` struct as SBD's ``cls/<id>.mat``: ``Segmentation`` (uint8 H×W), ``Boundaries``
    (a 20×1 cell of sparse logical boundary maps, one per class) and ``CategoriesPresent`` (column vector)."""
    segmentation = np.asarray(segmentation, dtype=np.uint8)
    boundaries = np.empty((num_classes - 1, 1), dtype=object)
    for c in range(1, num_classes):
        region = segmentation == c
        edge = np.zeros_like(region)
        edge[:, :-1] |= region[:, :-1] != region[:, 1:]
        edge[:-1, :] |= region[:-1, :] != region[1:, :]
        boundaries[c - 1, 0] = scipy.sparse.csc_matrix(edge & region)
    present = np.array([c for c in np.unique(segmentation) if c > 0], dtype=np.uint8).reshape(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": segmentation, "Boundaries": boundaries,
                                      "CategoriesPresent": present}}, do_compression=True)
    return path


def make_sbd_fixture(tmp_path: Path, voc: VOCFixture, train_ids: list[str] | None = None,
                     val_ids: list[str] | None = None, seed: int = 1) -> SBDFixture:
    """Write ``<tmp_path>/benchmark_RELEASE/dataset`` annotating images of ``voc``.

    By default SBD annotates, as the real one does, some VOC train images (VOC's own mask must win), some
    VOC val images (which must stay out of ``train_aug``) and the images only SBD annotates: SBD train =
    first VOC train id + first VOC val id + half of the extras; SBD val = second VOC val id + the rest.
    Its masks have no 255 borders and differ from VOC's for the shared ids.
    """
    rng = np.random.default_rng(seed)
    half = (len(voc.extra_ids) + 1) // 2
    if train_ids is None:
        train_ids = sorted(voc.train_ids[:1] + voc.val_ids[:1] + voc.extra_ids[:half])
    if val_ids is None:
        val_ids = sorted(voc.val_ids[1:2] + voc.extra_ids[half:])
    root = tmp_path / "benchmark_RELEASE" / "dataset"
    fixture = SBDFixture(root, list(train_ids), list(val_ids))
    for image_id in sorted(set(train_ids) | set(val_ids)):
        height, width = voc.sizes[image_id]
        mask = random_mask(rng, height, width, VOC_NUM_CLASSES, borders=False)
        fixture.masks[image_id] = mask
        write_sbd_mat(fixture.mat_path(image_id), mask)
        (root / "img").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(voc.image_path(image_id), root / "img" / f"{image_id}.jpg")
    write_split(root / "train.txt", fixture.train_ids)
    write_split(root / "val.txt", fixture.val_ids)
    return fixture


# ----------------------------------------------------------------------------------------------------- COCO


def coco_categories() -> list[dict[str, Any]]:
    """The 80 categories with their real sparse ids and names."""
    return [{"id": cat_id, "name": name, "supercategory": COCO_SUPERCATEGORY}
            for cat_id, name in zip(COCO_CATEGORY_IDS, COCO_CLASSES[1:], strict=True)]


def coco_index(category_id: int) -> int:
    """The contiguous label (1..80) of a real COCO category id, from the fixture's own table."""
    return COCO_CATEGORY_IDS.index(category_id) + 1


def rectangle_polygon(top: int, left: int, bottom: int, right: int) -> list[float]:
    """A polygon whose rasterisation covers rows ``top:bottom`` and columns ``left:right``."""
    return [float(left), float(top), float(right), float(top), float(right), float(bottom), float(left),
            float(bottom)]


def uncompressed_rle(region: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE (as crowd annotations use): run lengths of the column-major flattening,
    starting with a run of zeros; written by hand here, independent of pycocotools."""
    flat = region.astype(np.uint8).flatten(order="F")
    counts: list[int] = []
    current, run = 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = int(value), 1
    counts.append(run)
    return {"counts": counts, "size": [int(region.shape[0]), int(region.shape[1])]}


@dataclass
class COCOFixture:
    """A COCO 2014 folder (``annotations/``, ``<split>/``) and the records its JSON holds."""

    root: Path
    split: str  # train2014 / val2014
    image_dir: Path
    instances_json: Path
    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    categories: list[dict[str, Any]]
    regions: dict[int, np.ndarray] = field(default_factory=dict)  # annotation id -> its intended (H, W) region
    unannotated: list[str] = field(default_factory=list)  # file names without any annotation
    crowd_only: list[str] = field(default_factory=list)  # file names whose only annotation is a crowd

    def stem(self, image_id: int) -> str:
        return next(Path(i["file_name"]).stem for i in self.images if i["id"] == image_id)


def make_coco_fixture(tmp_path: Path, split: str = "train2014", seed: int = 0) -> COCOFixture:
    """Write ``<tmp_path>/coco/{annotations/instances_<split>.json, <split>/*.jpg}``.

    Images (real-style ids and names, ``COCO_<split>_000000000009.jpg``):

    * 9: person rectangle (polygon), then a toothbrush rectangle overlapping it (painted later, so it
      wins), and a stop sign (compressed RLE, as ``pycocotools`` writes it);
    * 25: giraffe (two-part polygon) and a person crowd (uncompressed RLE) half over it;
    * 30: bottle (polygon) and a zebra added after it elsewhere;
    * 34: no annotation at all;
    * 36: only a crowd of cars.

    Every region a test needs is in ``regions`` as an exact boolean array (polygons are axis-aligned
    rectangles, so their rasterisation is known: rows top:bottom, columns left:right).
    """
    from pycocotools import mask as mask_utils  # the fixture writes compressed RLE as the real tools do

    rng = np.random.default_rng(seed)
    root = tmp_path / "coco"
    image_dir = root / split
    sizes = {9: (40, 48), 25: (36, 44), 30: (32, 40), 34: (30, 36), 36: (34, 30)}
    images = []
    for image_id, (height, width) in sizes.items():
        file_name = f"COCO_{split}_{image_id:012d}.jpg"
        write_jpeg(image_dir / file_name, random_image(rng, height, width))
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width, "license": 1,
                       "coco_url": f"http://images.cocodataset.org/{split}/{file_name}",
                       "date_captured": "2013-11-14 16:28:13", "flickr_url": ""})

    annotations: list[dict[str, Any]] = []
    regions: dict[int, np.ndarray] = {}

    def box(image_id: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        region = np.zeros(sizes[image_id], dtype=bool)
        region[top:bottom, left:right] = True
        return region

    def add(image_id: int, category_id: int, segmentation: Any, region: np.ndarray, crowd: int = 0) -> None:
        ann_id = 100 + len(annotations)
        rows, cols = np.nonzero(region)
        bbox = [float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1),
                float(rows.max() - rows.min() + 1)]
        annotations.append({"id": ann_id, "image_id": image_id, "category_id": category_id,
                            "segmentation": segmentation, "area": float(region.sum()), "bbox": bbox,
                            "iscrowd": crowd})
        regions[ann_id] = region

    add(9, 1, [rectangle_polygon(4, 4, 30, 24)], box(9, 4, 4, 30, 24))  # person
    add(9, 90, [rectangle_polygon(20, 16, 36, 40)], box(9, 20, 16, 36, 40))  # toothbrush over the person
    stop = box(9, 2, 30, 14, 46)
    rle = mask_utils.encode(np.asfortranarray(stop.astype(np.uint8)))
    add(9, 13, {"size": rle["size"], "counts": rle["counts"].decode("ascii")}, stop)  # stop sign, compressed RLE
    giraffe = box(25, 4, 4, 16, 20) | box(25, 20, 10, 32, 30)
    add(25, 25, [rectangle_polygon(4, 4, 16, 20), rectangle_polygon(20, 10, 32, 30)], giraffe)
    crowd = box(25, 10, 15, 30, 40)
    add(25, 1, uncompressed_rle(crowd), crowd, crowd=1)  # a crowd of people half over the giraffe
    add(30, 44, [rectangle_polygon(3, 3, 20, 15)], box(30, 3, 3, 20, 15))  # bottle
    add(30, 24, [rectangle_polygon(10, 20, 28, 36)], box(30, 10, 20, 28, 36))  # zebra
    cars = box(36, 5, 5, 25, 25)
    add(36, 3, uncompressed_rle(cars), cars, crowd=1)  # crowd only

    categories = coco_categories()
    instances = {"info": {"description": "fixture in the COCO 2014 format", "year": 2014}, "licenses": [],
                 "images": images, "annotations": annotations, "categories": categories}
    instances_json = root / "annotations" / f"instances_{split}.json"
    instances_json.parent.mkdir(parents=True, exist_ok=True)
    instances_json.write_text(json.dumps(instances))
    return COCOFixture(root=root, split=split, image_dir=image_dir, instances_json=instances_json, images=images,
                       annotations=annotations, categories=categories, regions=regions,
                       unannotated=[f"COCO_{split}_{34:012d}.jpg"], crowd_only=[f"COCO_{split}_{36:012d}.jpg"])
