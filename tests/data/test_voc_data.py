"""PASCAL VOC 2012 + SBD on fixtures in the real layout: SegmentationClassAug, train_aug, the layout
checker, the labels command, and bad input through the real data-set classes (spec §4, §7)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fixtures_real import (
    VOC_NUM_CLASSES,
    make_sbd_fixture,
    make_voc_fixture,
    write_sbd_mat,
)
from vwl_lightning.data.check_layout import check_layout
from vwl_lightning.data.check_layout import main as check_main
from vwl_lightning.data.image_labels import LABELS_FILENAME, save_image_labels
from vwl_lightning.data.label_png import read_label_png, write_label_png
from vwl_lightning.data.make_labels import class_counts, make_labels
from vwl_lightning.data.make_labels import main as labels_main
from vwl_lightning.data.meta import VOC_CLASSES, voc_palette
from vwl_lightning.data.sbd import (
    SBD_URL,
    VOC_SPLIT_SIZES,
    build_segmentation_class_aug,
    read_sbd_mask,
    train_aug_ids,
)
from vwl_lightning.data.sbd import main as sbd_main
from vwl_lightning.data.source import resolve_data
from vwl_lightning.data.voc import ClassificationDataset, SegmentationDataset, VOCLayout
from vwl_lightning.errors import DataError


def classes_of(mask: np.ndarray) -> list[int]:
    """Foreground classes of a mask, computed here independently of the package."""
    return sorted(int(v) for v in set(mask.reshape(-1).tolist()) if 0 < v < VOC_NUM_CLASSES)


@pytest.fixture
def voc_sbd(tmp_path: Path):
    voc = make_voc_fixture(tmp_path, n_train=4, n_val=3, n_extra=4)
    sbd = make_sbd_fixture(tmp_path, voc)
    return voc, sbd


@pytest.fixture
def built(voc_sbd):
    voc, sbd = voc_sbd
    report = build_segmentation_class_aug(voc.root, sbd.root, progress=False)
    return voc, sbd, report


# ------------------------------------------------------------------------------------------------ fixtures


def test_fixtures_have_the_real_layout(voc_sbd) -> None:
    voc, sbd = voc_sbd
    assert voc.root == voc.devkit / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        assert (voc.root / sub).is_dir()
    assert all(len(i) == 11 and i[4] == "_" for i in voc.train_ids + voc.val_ids + voc.extra_ids)
    assert voc.split_path("train").read_text().split() == voc.train_ids
    for image_id, mask in voc.masks.items():
        png = voc.root / "SegmentationClass" / f"{image_id}.png"
        with Image.open(png) as image:
            assert image.mode == "P"
        assert np.array_equal(read_label_png(png), mask)
        assert (mask == 255).any() and classes_of(mask)
        with Image.open(voc.image_path(image_id)) as image:
            assert image.size == (mask.shape[1], mask.shape[0])
    # SBD: a GTcls struct with the real files' three fields
    for image_id, mask in sbd.masks.items():
        struct = scipy.io.loadmat(sbd.mat_path(image_id), struct_as_record=False, squeeze_me=True)["GTcls"]
        assert set(struct._fieldnames) == {"Segmentation", "Boundaries", "CategoriesPresent"}
        assert struct.Segmentation.dtype == np.uint8 and np.array_equal(struct.Segmentation, mask)
        assert len(struct.Boundaries) == VOC_NUM_CLASSES - 1
        assert sorted(np.atleast_1d(struct.CategoriesPresent).tolist()) == classes_of(mask)
        assert not (mask == 255).any()
        assert (sbd.root / "img" / f"{image_id}.jpg").is_file()
    assert voc.train_ids[0] in sbd.train_ids and voc.val_ids[0] in sbd.train_ids and voc.val_ids[1] in sbd.val_ids


def test_read_sbd_mask_matches_source(voc_sbd) -> None:
    _, sbd = voc_sbd
    for image_id, mask in sbd.masks.items():
        assert np.array_equal(read_sbd_mask(sbd.mat_path(image_id)), mask)


# ------------------------------------------------------------------------------------ SegmentationClassAug


def test_aug_masks_pixel_by_pixel(built) -> None:
    voc, sbd, report = built
    out = voc.root / "SegmentationClassAug"
    assert report.out_dir == out
    voc_ids = set(voc.train_ids) | set(voc.val_ids)
    sbd_only = sorted(set(sbd.masks) - voc_ids)
    assert (report.from_voc, report.from_sbd, report.skipped) == (len(voc_ids), len(sbd_only), 0)
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(voc_ids | set(sbd_only))
    for image_id in voc_ids:  # VOC's own PNG, byte for byte (255 borders kept)
        source = voc.root / "SegmentationClass" / f"{image_id}.png"
        assert (out / f"{image_id}.png").read_bytes() == source.read_bytes()
        assert np.array_equal(read_label_png(out / f"{image_id}.png"), voc.masks[image_id])
    for image_id in sbd_only:  # converted from the .mat
        with Image.open(out / f"{image_id}.png") as image:
            assert image.mode == "P"
            assert np.array_equal(np.asarray(image.getpalette(), dtype=np.uint8).reshape(-1, 3)[:256],
                                  voc_palette())
            assert np.array_equal(np.asarray(image), sbd.masks[image_id])


def test_voc_mask_preferred_over_sbd(built) -> None:
    voc, sbd, _ = built
    for shared in (voc.train_ids[0], voc.val_ids[0], voc.val_ids[1]):
        assert shared in sbd.masks
        assert not np.array_equal(sbd.masks[shared], voc.masks[shared])  # the choice is observable
        assert np.array_equal(read_label_png(voc.root / "SegmentationClassAug" / f"{shared}.png"), voc.masks[shared])


def test_train_aug_set_arithmetic(built) -> None:
    voc, sbd, report = built
    listed = voc.split_path("train_aug").read_text().split()
    assert report.train_aug_path == voc.split_path("train_aug")
    # (VOC train ∪ SBD train ∪ SBD val) − VOC val: all VOC train images and the SBD-only extras
    assert listed == sorted(voc.train_ids + voc.extra_ids)
    assert listed == sorted(listed) and len(listed) == len(set(listed)) == report.train_aug_size
    assert not set(listed) & set(voc.val_ids)  # SBD annotates VOC val images, but they stay out
    assert train_aug_ids(["b", "a"], ["c"], ["c", "d"], ["e", "a"]) == ["a", "b", "d", "e"]


def test_build_is_resumable(built) -> None:
    voc, sbd, first = built
    out = voc.root / "SegmentationClassAug"
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    broken, removed = out / f"{voc.extra_ids[0]}.png", out / f"{voc.train_ids[1]}.png"
    broken.write_bytes(b"not a png")
    removed.unlink()
    again = build_segmentation_class_aug(voc.root, sbd.root, progress=False)
    total = first.from_voc + first.from_sbd
    assert (again.skipped, again.from_voc, again.from_sbd) == (total - 2, 1, 1)
    assert np.array_equal(read_label_png(broken), sbd.masks[voc.extra_ids[0]])
    assert np.array_equal(read_label_png(removed), voc.masks[voc.train_ids[1]])
    for path in out.glob("*.png"):
        if path not in (broken, removed):
            assert path.stat().st_mtime_ns == stamps[path.name]
    assert not list(out.glob(".tmp-*"))


def test_build_into_another_folder(voc_sbd, tmp_path: Path) -> None:
    voc, sbd = voc_sbd
    report = build_segmentation_class_aug(voc.root, sbd.root, out_dir=tmp_path / "aug", split_dir=tmp_path / "lists",
                                          progress=False)
    assert report.out_dir == tmp_path / "aug" and (tmp_path / "lists" / "train_aug.txt").is_file()
    assert not (voc.root / "SegmentationClassAug").exists()


def test_sbd_cli(voc_sbd, capsys) -> None:
    voc, sbd = voc_sbd
    assert sbd_main(["--voc-root", str(voc.root), "--sbd-root", str(sbd.root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "train_aug.txt: 8 ids" in out and str(VOC_SPLIT_SIZES["train_aug"]) in out
    assert sbd_main(["--voc-root", str(voc.devkit), "--sbd-root", str(sbd.root), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "did you mean" in err and str(voc.root) in err


# --------------------------------------------------------------------------------------- SBD bad input


def test_mat_that_does_not_load_names_the_file(voc_sbd) -> None:
    voc, sbd = voc_sbd
    bad = sbd.mat_path(voc.extra_ids[0])
    bad.write_bytes(b"MATLAB 5.0 MAT-file, but truncated")
    with pytest.raises(DataError, match=str(bad)):
        build_segmentation_class_aug(voc.root, sbd.root, progress=False)


def test_mat_without_gtcls_names_the_file(voc_sbd) -> None:
    voc, sbd = voc_sbd
    bad = sbd.mat_path(voc.extra_ids[0])
    scipy.io.savemat(bad, {"GTinst": {"Segmentation": np.zeros((3, 3), np.uint8)}})
    with pytest.raises(DataError, match=f"{bad}.*GTcls"):
        read_sbd_mask(bad)


def test_mat_of_wrong_size_names_the_file(voc_sbd) -> None:
    voc, sbd = voc_sbd
    image_id = voc.extra_ids[-1]
    h, w = voc.sizes[image_id]
    bad = write_sbd_mat(sbd.mat_path(image_id), np.ones((h + 2, w), dtype=np.uint8))
    with pytest.raises(DataError, match=f"{bad}: mask size {w}x{h + 2} differs"):
        build_segmentation_class_aug(voc.root, sbd.root, progress=False)


def test_mat_with_non_class_values_names_the_file(voc_sbd) -> None:
    voc, sbd = voc_sbd
    image_id = voc.extra_ids[0]
    bad = write_sbd_mat(sbd.mat_path(image_id), np.full(voc.sizes[image_id], 255, dtype=np.uint8))
    with pytest.raises(DataError, match=f"{bad}.*expected class indices 0..20"):
        read_sbd_mask(bad)


def test_missing_sbd_list_and_root(voc_sbd, tmp_path: Path) -> None:
    voc, sbd = voc_sbd
    with pytest.raises(DataError, match="did you mean .*benchmark_RELEASE/dataset"):
        build_segmentation_class_aug(voc.root, tmp_path / "benchmark_RELEASE", progress=False)
    (sbd.root / "val.txt").unlink()
    with pytest.raises(DataError, match=f"split list {sbd.root / 'val.txt'} not found"):
        build_segmentation_class_aug(voc.root, sbd.root, progress=False)


# --------------------------------------------------------------------------- reading through the real classes


def test_datasets_read_the_built_layout(built) -> None:
    voc, sbd, _ = built
    data = resolve_data({"kind": "voc", "root": str(voc.root)})
    assert data.meta.class_names == VOC_CLASSES
    train = ClassificationDataset(data.layout, "train_aug", data.meta.num_classes)
    expected = {**{i: sbd.masks[i] for i in voc.extra_ids}, **{i: voc.masks[i] for i in voc.train_ids}}
    assert train.ids == sorted(expected)
    for k, image_id in enumerate(train.ids):
        item = train[k]
        hot = np.flatnonzero(item["label"]) + 1
        assert hot.tolist() == classes_of(expected[image_id]) and item["id"] == image_id
        assert item["image"].shape == (*voc.sizes[image_id], 3)
    val = SegmentationDataset(data.layout, "val")
    for k, image_id in enumerate(val.ids):
        assert np.array_equal(val[k]["mask"], voc.masks[image_id])


def test_wrong_root_names_the_folder(voc_sbd, tmp_path: Path) -> None:
    voc, _ = voc_sbd
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        resolve_data({"kind": "voc", "root": str(tmp_path / "nowhere")})
    with pytest.raises(DataError, match=f"{voc.devkit} has no JPEGImages"):
        VOCLayout.at(voc.devkit)


def test_missing_split_list_names_the_file(voc_sbd) -> None:
    voc, _ = voc_sbd
    layout = VOCLayout.at(voc.root, mask_dir="SegmentationClass")
    with pytest.raises(DataError, match=str(voc.split_path("train_aug"))):
        SegmentationDataset(layout, "train_aug")


def test_mask_size_mismatch_names_the_mask(voc_sbd) -> None:
    voc, _ = voc_sbd
    image_id = voc.val_ids[0]
    h, w = voc.sizes[image_id]
    bad = write_label_png(voc.root / "SegmentationClass" / f"{image_id}.png", np.zeros((h, w + 3), np.uint8))
    dataset = SegmentationDataset(VOCLayout.at(voc.root, mask_dir="SegmentationClass"), "val")
    with pytest.raises(DataError, match=f"{bad}: mask size {w + 3}x{h} differs from its image's {w}x{h}"):
        dataset[dataset.ids.index(image_id)]


def test_undecodable_image_names_the_file(voc_sbd) -> None:
    voc, _ = voc_sbd
    layout = VOCLayout.at(voc.root, mask_dir="SegmentationClass")
    dataset = ClassificationDataset(layout, "train", VOC_NUM_CLASSES)
    bad = voc.image_path(voc.train_ids[2])
    bad.write_bytes(b"\xff\xd8 this is not a JPEG")
    with pytest.raises(DataError, match=f"{bad}: cannot decode image"):
        dataset[2]
    with pytest.raises(DataError, match=f"{bad}: cannot decode image"):
        build_segmentation_class_aug(voc.root, make_sbd_fixture(voc.devkit.parent / "sbd", voc).root,
                                     progress=False)


# ------------------------------------------------------------------------------------------ layout checker


def test_checker_on_a_complete_layout(built, capsys) -> None:
    voc, _, _ = built
    report = check_layout(voc.root)
    assert report.complete and report.kind == "voc" and report.splits == ("train_aug", "val")
    text = report.format()
    assert "SegmentationClassAug/: 11 masks" in text and "split train_aug: 8 ids" in text
    assert "status: complete" in text
    # fixture-sized splits and the absent labels cache only warn
    warned = " ".join(str(w) for w in report.warnings)
    assert "10582" in warned and "1449" in warned and "make_labels" in warned
    assert check_main([str(voc.root), "--deep"]) == 0
    assert "status: complete" in capsys.readouterr().out


def test_checker_before_sbd_says_how_to_build(voc_sbd, capsys) -> None:
    voc, _ = voc_sbd
    report = check_layout(voc.root, "voc", ["train_aug", "val"])
    assert not report.complete
    missing = {f.what: str(f) for f in report.missing}
    assert set(missing) == {"SegmentationClassAug/", "ImageSets/Segmentation/train_aug.txt"}
    for message in missing.values():
        assert "python -m vwl_lightning.data.sbd --voc-root" in message and SBD_URL in message
    assert missing["SegmentationClassAug/"].startswith("SegmentationClassAug/ missing: build it from SBD")
    assert check_main([str(voc.root)]) == 1
    assert "status: INCOMPLETE (2 missing)" in capsys.readouterr().out


def test_checker_names_missing_masks_images_and_bad_sizes(built) -> None:
    voc, _, _ = built
    (voc.root / "SegmentationClassAug" / f"{voc.extra_ids[1]}.png").unlink()
    voc.image_path(voc.val_ids[2]).unlink()
    h, w = voc.sizes[voc.train_ids[0]]
    write_label_png(voc.root / "SegmentationClassAug" / f"{voc.train_ids[0]}.png", np.zeros((h + 1, w), np.uint8))
    report = check_layout(voc.root, deep=True)
    text = "\n".join(str(f) for f in report.missing)
    assert f"SegmentationClassAug/ masks of split train_aug missing for {voc.extra_ids[1]}" in text
    assert f"JPEGImages/ images of split val missing for {voc.val_ids[2]}" in text
    assert f"wrong size for {voc.train_ids[0]}" in text
    assert "VOCtrainval_11-May-2012.tar" in text


def test_checker_on_wrong_roots(voc_sbd, tmp_path: Path) -> None:
    voc, _ = voc_sbd
    report = check_layout(tmp_path / "nowhere")
    assert not report.complete and "does not exist" in str(report.missing[0])
    report = check_layout(voc.devkit)
    assert f"JPEGImages/ missing (did you mean {voc.root}?)" in report.format()
    report = check_layout(voc.root, kind="synthetic", splits=["train"])
    assert any(f.what == "dataset.json" for f in report.missing)


def test_checker_flags_a_broken_labels_cache(built) -> None:
    voc, _, _ = built
    save_image_labels(voc.root / LABELS_FILENAME, {voc.train_ids[0]: [1]}, num_classes=5)
    report = check_layout(voc.root)
    assert not report.complete
    assert "made for 5 classes" in str(report.missing[0]) and "--rebuild" in str(report.missing[0])


# ---------------------------------------------------------------------------------------- labels command


def test_make_labels_derives_and_caches(built, capsys) -> None:
    voc, sbd, _ = built
    masks = {**{i: sbd.masks[i] for i in voc.extra_ids}, **voc.masks}
    assert labels_main([str(voc.root), "--splits", "train_aug", "val"]) == 0
    out = capsys.readouterr().out
    cache = voc.root / LABELS_FILENAME
    assert f"{cache}: labels of 11 images, 21 classes" in out
    blob = json.loads(cache.read_text())
    assert blob["num_classes"] == VOC_NUM_CLASSES
    assert blob["labels"] == {i: classes_of(m) for i, m in masks.items()}
    # the printed table: one row per class with the count of images containing it, per split
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:] if line.split()}
    for split, ids in (("train_aug", voc.train_ids + voc.extra_ids), ("val", voc.val_ids)):
        column = ["train_aug", "val"].index(split)
        for c in range(1, VOC_NUM_CLASSES):
            expected = sum(c in classes_of(masks[i]) for i in ids)
            assert int(rows[VOC_CLASSES[c]][column]) == expected
        assert int(rows["images"][column]) == len(ids)
    assert check_layout(voc.root).warnings == [w for w in check_layout(voc.root).warnings
                                               if w.what != LABELS_FILENAME]


def test_make_labels_rebuild_replaces_stale_entries(built) -> None:
    voc, _, _ = built
    stale = {i: [20] for i in voc.val_ids}
    save_image_labels(voc.root / LABELS_FILENAME, stale, VOC_NUM_CLASSES)
    assert make_labels(voc.root, ["val"])["val"] == stale  # the cache is trusted...
    fresh = make_labels(voc.root, ["val"], rebuild=True)["val"]  # ...until rebuilt from the masks
    assert fresh == {i: classes_of(voc.masks[i]) for i in voc.val_ids}
    assert class_counts({"a": [1, 2], "b": [], "c": [2]}, 3) == [1, 1, 2]


def test_make_labels_errors(built, capsys) -> None:
    voc, _, _ = built
    assert labels_main([str(voc.root), "--splits", "test"]) == 2
    assert str(voc.split_path("test")) in capsys.readouterr().err
    assert labels_main([str(voc.root), "--splits", "val", "--num-classes", "5"]) == 2  # class 5+ in masks
    assert "are not classes" in capsys.readouterr().err


def test_sha_of_fixture_is_stable(tmp_path: Path) -> None:
    """The builders are deterministic in their seed: two builds write identical bytes."""
    digests = []
    for name in ("a", "b"):
        voc = make_voc_fixture(tmp_path / name, n_train=2, n_val=2, n_extra=1)
        files = sorted(p for p in voc.root.rglob("*") if p.is_file())
        digests.append([(os.fspath(p.relative_to(voc.root)), hashlib.sha256(p.read_bytes()).hexdigest())
                        for p in files])
    assert digests[0] == digests[1]


def test_training_ready_voc_fixture_and_kind_from_dataset_json(tmp_path: Path) -> None:
    """``with_aug=True`` gives a layout the real classes train on without SBD; the checker takes the kind
    from ``dataset.json`` when there is one."""
    voc = make_voc_fixture(tmp_path, n_train=3, n_val=2, n_extra=0, with_aug=True)
    data = resolve_data({"kind": "voc", "root": str(voc.root)})
    assert ClassificationDataset(data.layout, "train_aug", VOC_NUM_CLASSES).ids == voc.train_ids
    assert check_layout(voc.root).complete
    (voc.root / "dataset.json").write_text(json.dumps({"name": "synthetic", "class_names": list(VOC_CLASSES)}))
    report = check_layout(voc.root)
    assert report.kind == "synthetic" and report.splits == ("train", "val") and report.complete


@pytest.mark.integration  # not in the unit tier: 2 subprocesses
def test_checker_module_exit_status(voc_sbd) -> None:
    """``python -m vwl_lightning.data.check_layout`` exits 1 on an incomplete layout, 0 once SBD is merged."""
    import subprocess
    import sys

    voc, sbd = voc_sbd
    command = [sys.executable, "-m", "vwl_lightning.data.check_layout", str(voc.root)]
    before = subprocess.run(command, capture_output=True, text=True, check=False)
    assert before.returncode == 1 and "SegmentationClassAug/ missing: build it from SBD" in before.stdout
    build_segmentation_class_aug(voc.root, sbd.root, progress=False)
    after = subprocess.run(command, capture_output=True, text=True, check=False)
    assert after.returncode == 0 and "status: complete" in after.stdout


# ---------------------------------------------------------------- --deep: images decoded, mask values checked


def test_deep_check_catches_a_truncated_jpeg_and_a_mask_value_of_37(tmp_path: Path, capsys) -> None:
    """`--deep` reports a truncated JPEG and a mask value of 37 (the layout is not complete)."""
    from vwl_lightning.data.check_layout import check_masks_before_training

    voc = make_voc_fixture(tmp_path, n_train=3, n_val=2, n_extra=0, with_aug=True)
    assert check_layout(voc.root, deep=True).complete
    image = voc.image_path(voc.val_ids[0])
    original = image.read_bytes()
    image.write_bytes(original[: len(original) // 2])
    mask_path = voc.root / "SegmentationClassAug" / f"{voc.train_ids[1]}.png"
    mask = read_label_png(mask_path)
    mask[0, 0] = 37
    write_label_png(mask_path, mask)
    assert check_layout(voc.root).complete  # the shallow check reads no pixel
    report = check_layout(voc.root, deep=True)
    text = "\n".join(str(f) for f in report.missing)
    assert f"of split val unreadable, with invalid values or of the wrong size for {voc.val_ids[0]}" in text
    assert "cannot decode image" in text and str(image) in text
    assert f"{mask_path}: mask holds value(s) [37]; expected class indices 0..20 or 255" in text
    assert check_main([str(voc.root), "--deep"]) == 1
    assert "status: INCOMPLETE (2 missing)" in capsys.readouterr().out
    # the pipeline's cheap part (masks only, sizes from the headers) names the bad mask; a pass is cached
    layout = resolve_data({"kind": "voc", "root": str(voc.root)}).layout
    with pytest.raises(DataError, match=rf"{mask_path}: mask holds value\(s\) \[37\].*split train_aug"):
        check_masks_before_training(layout, 21, ["train_aug", "val"], cache_dir=tmp_path / "cache")
    mask[0, 0] = 255
    write_label_png(mask_path, mask)
    image.write_bytes(original)
    os.utime(voc.root / "SegmentationClassAug")  # the folder's mtime is part of the cache key
    assert check_masks_before_training(layout, 21, ["train_aug", "val"], cache_dir=tmp_path / "cache") == 5
    assert check_masks_before_training(layout, 21, ["train_aug", "val"], cache_dir=tmp_path / "cache") == 0


def test_pipeline_finds_a_bad_train_mask_before_training(tmp_path: Path, make_config, monkeypatch) -> None:
    """A bad train mask is reported before the classifier trains, not at the seeds stage after training and CAMs."""
    import vwl_lightning.stages.train_classifier as train_stage
    from vwl_lightning.stages.pipeline import run

    voc = make_voc_fixture(tmp_path, n_train=3, n_val=2, n_extra=0, with_aug=True)
    mask_path = voc.root / "SegmentationClassAug" / f"{voc.train_ids[2]}.png"
    mask = read_label_png(mask_path)
    mask[1, 1] = 37
    write_label_png(mask_path, mask)

    def must_not_train(cfg):
        raise AssertionError("the classifier started despite a bad mask")

    monkeypatch.setattr(train_stage, "train_classifier", must_not_train)
    cfg = make_config("data=voc", f"data.source.root={voc.root}", "pipeline=[classifier]", tiny=False)
    with pytest.raises(DataError, match=rf"{mask_path}: mask holds value\(s\) \[37\]"):
        run(cfg)
