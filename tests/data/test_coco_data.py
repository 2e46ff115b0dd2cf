"""MS COCO 2014 → VOC layout on a fixture in the real layout (spec §7, §9.6): masks pixel by pixel,
category-id mapping, crowd handling, labels cache, resumability, bad input, and the layout checker."""

from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from fixtures_real import COCO_CATEGORY_IDS, coco_categories, coco_index, make_coco_fixture
from vwl_lightning.data.check_layout import check_layout
from vwl_lightning.data.coco import category_index_map, convert_coco
from vwl_lightning.data.coco import main as coco_main
from vwl_lightning.data.image_labels import LABELS_FILENAME
from vwl_lightning.data.label_png import read_label_png
from vwl_lightning.data.meta import COCO_CLASSES
from vwl_lightning.data.source import resolve_data
from vwl_lightning.data.voc import ClassificationDataset, SegmentationDataset
from vwl_lightning.errors import DataError

NUM = len(COCO_CLASSES)


@pytest.fixture
def coco(tmp_path: Path):
    return make_coco_fixture(tmp_path)


@pytest.fixture
def converted(coco, tmp_path: Path):
    out = tmp_path / "coco_voc"
    report = convert_coco(coco.instances_json, coco.image_dir, out, "train", progress=False)
    return coco, out, report


def expected_by_hand(coco, image_id: int) -> np.ndarray:
    """The mask from the fixture's exact regions: instances in file order (later wins), then crowd → 255
    where no instance painted."""
    record = next(i for i in coco.images if i["id"] == image_id)
    mask = np.zeros((record["height"], record["width"]), np.uint8)
    crowd = np.zeros_like(mask, dtype=bool)
    for ann in coco.annotations:
        if ann["image_id"] != image_id:
            continue
        if ann["iscrowd"]:
            crowd |= coco.regions[ann["id"]]
        else:
            mask[coco.regions[ann["id"]]] = coco_index(ann["category_id"])
    mask[crowd & (mask == 0)] = 255
    return mask


def expected_by_pycocotools(coco, image_id: int) -> np.ndarray:
    """The same convention computed through pycocotools' own ``COCO.annToMask``."""
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO(str(coco.instances_json))
    info = api.loadImgs(image_id)[0]
    mask = np.zeros((info["height"], info["width"]), np.uint8)
    anns = api.loadAnns(api.getAnnIds(imgIds=image_id, iscrowd=None))
    for ann in (a for a in anns if not a["iscrowd"]):
        mask[api.annToMask(ann) == 1] = COCO_CATEGORY_IDS.index(ann["category_id"]) + 1
    for ann in (a for a in anns if a["iscrowd"]):
        mask[(api.annToMask(ann) == 1) & (mask == 0)] = 255
    return mask


def test_fixture_layout(coco) -> None:
    assert coco.instances_json == coco.root / "annotations" / "instances_train2014.json"
    assert sorted(p.name for p in coco.image_dir.iterdir())[0] == "COCO_train2014_000000000009.jpg"
    blob = json.loads(coco.instances_json.read_text())
    assert set(blob) >= {"images", "annotations", "categories", "info", "licenses"}
    assert len(blob["categories"]) == 80 and max(c["id"] for c in blob["categories"]) == 90
    kinds = {type(a["segmentation"]).__name__ + ("-crowd" if a["iscrowd"] else "") for a in blob["annotations"]}
    assert kinds == {"list", "dict", "dict-crowd"}
    # the fixture's polygon / RLE regions are what pycocotools rasterises
    for image_id in (9, 25, 30, 36):
        assert np.array_equal(expected_by_hand(coco, image_id), expected_by_pycocotools(coco, image_id))


def test_category_id_mapping() -> None:
    categories = coco_categories()
    random.Random(0).shuffle(categories)  # the map follows names, not the JSON's order
    mapping = category_index_map(categories, "x.json")
    assert mapping == {cat_id: k + 1 for k, cat_id in enumerate(COCO_CATEGORY_IDS)}
    assert (mapping[1], mapping[13], mapping[25], mapping[44], mapping[90]) == (1, 12, 24, 40, 80)
    assert COCO_CLASSES[mapping[13]] == "stop sign" and COCO_CLASSES[mapping[90]] == "toothbrush"
    with pytest.raises(DataError, match="x.json: category 91 'unicorn'"):
        category_index_map([*categories, {"id": 91, "name": "unicorn"}], "x.json")
    with pytest.raises(DataError, match="x.json: categories .*missing"):
        category_index_map(categories[1:], "x.json")


def test_masks_pixel_by_pixel(converted) -> None:
    coco, out, report = converted
    kept = [9, 25, 30]
    assert (report.num_images, report.kept, report.written, report.skipped, report.dropped) == (5, 3, 3, 0, 2)
    assert sorted(p.stem for p in (out / "SegmentationClassAug").glob("*.png")) == [coco.stem(i) for i in kept]
    for image_id in kept:
        png = out / "SegmentationClassAug" / f"{coco.stem(image_id)}.png"
        with Image.open(png) as image:
            assert image.mode == "P"
        mask = read_label_png(png)
        assert np.array_equal(mask, expected_by_hand(coco, image_id))
        assert np.array_equal(mask, expected_by_pycocotools(coco, image_id))
    # spot checks of the convention: the later toothbrush wins over the person; the RLE stop sign
    mask9 = read_label_png(out / "SegmentationClassAug" / f"{coco.stem(9)}.png")
    assert mask9[10, 10] == 1 and mask9[25, 20] == 80 and mask9[5, 35] == 12 and mask9[38, 2] == 0


def test_crowd_becomes_ignore_only_outside_instances(converted) -> None:
    coco, out, _ = converted
    mask = read_label_png(out / "SegmentationClassAug" / f"{coco.stem(25)}.png")
    giraffe, crowd = (coco.regions[a["id"]] for a in coco.annotations if a["image_id"] == 25)
    assert (mask[crowd & ~giraffe] == 255).all()
    assert (mask[giraffe] == 24).all()
    assert (mask[~crowd & ~giraffe] == 0).all()
    labels = json.loads((out / LABELS_FILENAME).read_text())["labels"]
    assert labels[coco.stem(25)] == [24]  # the person crowd is no image-level label


def test_split_labels_and_dataset_json(converted) -> None:
    coco, out, report = converted
    stems = [coco.stem(i) for i in (9, 25, 30)]
    assert report.split_path == out / "ImageSets" / "Segmentation" / "train.txt"
    assert report.split_path.read_text().split() == stems
    blob = json.loads((out / LABELS_FILENAME).read_text())
    assert blob == {"num_classes": NUM, "labels": {stems[0]: [1, 12, 80], stems[1]: [24], stems[2]: [23, 40]}}
    info = json.loads((out / "dataset.json").read_text())
    assert info == {"name": "coco", "class_names": list(COCO_CLASSES)}
    for stem in stems:  # symlinks to the COCO images by default
        link = out / "JPEGImages" / f"{stem}.jpg"
        assert link.is_symlink() and link.resolve() == (coco.image_dir / f"{stem}.jpg").resolve()


def test_real_classes_read_the_converted_folder(converted) -> None:
    coco, out, _ = converted
    data = resolve_data({"kind": "coco", "root": str(out)})
    assert data.meta.name == "coco" and data.meta.num_classes == NUM
    dataset = ClassificationDataset(data.layout, "train", data.meta.num_classes)
    assert len(dataset) == 3
    item = dataset[0]
    assert item["id"] == coco.stem(9) and item["label"].shape == (80,)
    assert (np.flatnonzero(item["label"]) + 1).tolist() == [1, 12, 80]
    assert item["image"].shape == (40, 48, 3)
    seg = SegmentationDataset(data.layout, "train")
    assert np.array_equal(seg[1]["mask"], expected_by_hand(coco, 25))


def test_keep_unlabelled_and_copy(coco, tmp_path: Path) -> None:
    out = tmp_path / "kept"
    report = convert_coco(coco.instances_json, coco.image_dir, out, "train", image_mode="copy",
                          keep_unlabelled=True, progress=False)
    assert (report.kept, report.dropped) == (5, 0)
    empty, crowd_only = coco.stem(34), coco.stem(36)
    assert not read_label_png(out / "SegmentationClassAug" / f"{empty}.png").any()
    cars = next(coco.regions[a["id"]] for a in coco.annotations if a["image_id"] == 36)
    mask36 = read_label_png(out / "SegmentationClassAug" / f"{crowd_only}.png")
    assert (mask36[cars] == 255).all() and (mask36[~cars] == 0).all()
    labels = json.loads((out / LABELS_FILENAME).read_text())["labels"]
    assert labels[empty] == [] and labels[crowd_only] == []
    copy = out / "JPEGImages" / f"{empty}.jpg"
    assert not copy.is_symlink() and copy.read_bytes() == (coco.image_dir / f"{empty}.jpg").read_bytes()


def test_two_splits_share_one_root(converted, tmp_path: Path) -> None:
    coco, out, _ = converted
    val = make_coco_fixture(tmp_path / "v", split="val2014", seed=3)
    convert_coco(val.instances_json, val.image_dir, out, "val", progress=False)
    labels = json.loads((out / LABELS_FILENAME).read_text())["labels"]
    assert coco.stem(9) in labels and val.stem(9) in labels and val.stem(9).startswith("COCO_val2014_")
    report = check_layout(out)
    assert report.kind == "coco" and report.splits == ("train", "val") and report.complete, report.format()
    assert any("82081" in str(w) for w in report.warnings)


def test_conversion_is_resumable(converted) -> None:
    coco, out, first = converted
    masks = out / "SegmentationClassAug"
    stamps = {p.name: p.stat().st_mtime_ns for p in masks.glob("*.png")}
    removed = masks / f"{coco.stem(30)}.png"
    removed.unlink()
    again = convert_coco(coco.instances_json, coco.image_dir, out, "train", progress=False)
    assert (again.written, again.skipped, again.kept) == (1, 2, 3)
    assert np.array_equal(read_label_png(removed), expected_by_hand(coco, 30))
    for path in masks.glob("*.png"):
        if path != removed:
            assert path.stat().st_mtime_ns == stamps[path.name]
    assert json.loads((out / LABELS_FILENAME).read_text())["labels"][coco.stem(9)] == [1, 12, 80]
    assert not list(out.rglob(".tmp-*"))


def test_cli(coco, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    argv = ["--instances", str(coco.instances_json), "--images", str(coco.image_dir), "--out-root", str(out),
            "--split-name", "train", "--no-progress"]
    assert coco_main(argv) == 0
    assert "3 of 5 images" in capsys.readouterr().out
    assert coco_main([*argv[:2], "--images", str(tmp_path / "none"), *argv[4:]]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- bad input


def test_json_without_annotations_names_the_file(coco, tmp_path: Path) -> None:
    blob = json.loads(coco.instances_json.read_text())
    del blob["annotations"]
    bad = tmp_path / "image_info_test2014.json"
    bad.write_text(json.dumps(blob))
    with pytest.raises(DataError, match=f"{bad}: no 'annotations' list"):
        convert_coco(bad, coco.image_dir, tmp_path / "out", "train", progress=False)


def test_non_json_names_the_file(coco, tmp_path: Path) -> None:
    bad = tmp_path / "instances.json"
    bad.write_bytes(b"PK\x03\x04 a zip, not JSON")
    with pytest.raises(DataError, match=f"{bad}: not valid JSON"):
        convert_coco(bad, coco.image_dir, tmp_path / "out", "train", progress=False)


def test_undecodable_image_names_the_file(coco, tmp_path: Path) -> None:
    bad = coco.image_dir / f"{coco.stem(25)}.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated download
    with pytest.raises(DataError, match=f"{bad}: cannot decode image"):
        convert_coco(coco.instances_json, coco.image_dir, tmp_path / "out", "train", progress=False)


def test_image_size_mismatch_and_missing_image(coco, tmp_path: Path) -> None:
    path = coco.image_dir / f"{coco.stem(30)}.jpg"
    Image.new("RGB", (10, 10)).save(path)
    with pytest.raises(DataError, match=f"{path}: image is 10x10 but its annotation file says 40x32"):
        convert_coco(coco.instances_json, coco.image_dir, tmp_path / "out", "train", progress=False)
    path.unlink()
    with pytest.raises(DataError, match=f"{path}: image not found"):
        convert_coco(coco.instances_json, coco.image_dir, tmp_path / "out", "train", progress=False)


def test_unknown_category_names_the_file(coco, tmp_path: Path) -> None:
    blob = json.loads(coco.instances_json.read_text())
    blob["annotations"][0]["category_id"] = 12  # one of the 10 ids COCO leaves unused
    bad = tmp_path / "instances_bad.json"
    bad.write_text(json.dumps(blob))
    with pytest.raises(DataError, match=f"{bad}: annotation 100 has unknown category 12"):
        convert_coco(bad, coco.image_dir, tmp_path / "out", "train", progress=False)


def test_checker_on_incomplete_coco(converted) -> None:
    _, out, _ = converted
    report = check_layout(out, splits=["train", "val"])
    assert not report.complete
    (message,) = [str(f) for f in report.missing]
    assert message.startswith("ImageSets/Segmentation/val.txt missing: convert COCO 2014 with")
    assert "instances_val2014.json" in message and "--split-name val" in message
    assert "val2014.zip" in message


# ------------------------------------------------------------------------- empty result, mixed JSONs


def test_json_with_zero_annotations_is_refused(coco, tmp_path: Path) -> None:
    """An instances JSON with zero annotations is refused (not converted into an empty split list)."""
    blob = json.loads(coco.instances_json.read_text())
    blob["annotations"] = []
    empty = tmp_path / "instances_empty.json"
    empty.write_text(json.dumps(blob))
    out = tmp_path / "empty_out"
    with pytest.raises(DataError, match=r"instances_empty.json: the conversion keeps no image \(5 images, 0 "):
        convert_coco(empty, coco.image_dir, out, "train", progress=False)
    assert not (out / "ImageSets" / "Segmentation" / "train.txt").exists()


def test_converting_another_json_into_the_same_folder_is_refused(converted, tmp_path: Path) -> None:
    """A second JSON for the same images (moved annotations) into the same folder is refused, naming both
    files, and the first JSON's masks stay as they were."""
    coco, out, _ = converted
    blob = json.loads(coco.instances_json.read_text())
    for ann in blob["annotations"]:
        if ann["image_id"] == 30 and not ann["iscrowd"]:
            ann["category_id"] = COCO_CATEGORY_IDS[5]  # another class: the masks would differ
    other = tmp_path / "instances_fixed.json"
    other.write_text(json.dumps(blob))
    masks = out / "SegmentationClassAug"
    before = {p.name: p.read_bytes() for p in masks.glob("*.png")}
    for split in ("train", "train_fixed"):  # the same split, or another split over the same images
        with pytest.raises(DataError, match=r"made from .*instances_train2014.json .*not .*instances_fixed.json"):
            convert_coco(other, coco.image_dir, out, split, progress=False)
    assert {p.name: p.read_bytes() for p in masks.glob("*.png")} == before
    # the same JSON again resumes as before
    again = convert_coco(coco.instances_json, coco.image_dir, out, "train", progress=False)
    assert again.skipped == 3 and again.written == 0
