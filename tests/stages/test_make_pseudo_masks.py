"""Pseudo-label stage on a tiny VOC-layout fixture: outputs, resume after a kill, workers, manifest, scores."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures_cams import rectangle_cam_fixture
from vwl_lightning.cam.files import cam_path
from vwl_lightning.data.label_png import read_label_png
from vwl_lightning.data.voc import VOCLayout
from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.pseudo.dense_crf import CRF_PRESETS
from vwl_lightning.stages.make_pseudo_masks import make_pseudo_labels

CLASSES = ("background", "cat", "dog", "car")
SIZES = [(40, 52), (36, 36), (48, 30), (33, 47), (30, 41)]


def build_fixture(root: Path, split: str = "train") -> tuple[VOCLayout, Path, dict[str, list[int]]]:
    """Images with coloured rectangles, their masks (255 borders) and soft, shifted CAMs, in VOC layout."""
    return rectangle_cam_fixture(root, SIZES, seed=11, year=2008, split=split,
                                 cam_manifest={"num_classes": len(CLASSES)})


def read_masks(out: Path, ids: list[str]) -> dict[str, np.ndarray]:
    return {i: read_label_png(out / "masks" / f"{i}.png") for i in ids}


def numpy_scores(layout: VOCLayout, masks: dict[str, np.ndarray]) -> tuple[float, float, float]:
    """Reference mIoU on labelled pixels, coverage, and strict mIoU (unlabelled = miss) from the PNGs."""
    c = len(CLASSES)
    conf = np.zeros((c, c), dtype=np.int64)
    unlabelled = np.zeros(c, dtype=np.int64)
    for image_id, pred in masks.items():
        gt = np.asarray(Image.open(layout.mask_path(image_id))).astype(np.int64)
        valid = gt != 255
        unl = valid & (pred == 255)
        unlabelled += np.bincount(gt[unl], minlength=c)
        use = valid & ~unl
        conf += np.bincount(gt[use] * c + pred[use], minlength=c * c).reshape(c, c)
    tp = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - tp
    strict_union = union + unlabelled
    miou = float(np.mean(tp[union > 0] / union[union > 0]))
    strict = float(np.mean(tp[strict_union > 0] / strict_union[strict_union > 0]))
    return miou, float(conf.sum() / (conf.sum() + unlabelled.sum())), strict


def test_crf_mode_writes_masks_manifest_and_scores(tmp_path: Path) -> None:
    layout, cam_dir, keys = build_fixture(tmp_path / "voc")
    out = tmp_path / "pl"
    manifest = make_pseudo_labels(cam_dir, layout, "train", out, bg_score=0.15, mode="crf",
                                  class_names=CLASSES, num_workers=0, progress=False)
    masks = read_masks(out, list(keys))
    for image_id, mask in masks.items():
        assert mask.shape == SIZES[int(image_id[-1])]
        assert set(np.unique(mask)) <= {0, *keys[image_id]}
        assert set(keys[image_id]) <= set(np.unique(mask))
    assert not list((out / "masks").glob(".tmp-*"))
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert on_disk["cam_dir"] == str(cam_dir.resolve())
    assert on_disk["mode"] == "crf" and on_disk["bg_score"] == 0.15
    assert on_disk["crf_params"] == dataclasses.asdict(CRF_PRESETS["vwl_cam"])
    assert on_disk["counts"] == {"images": 5, "written": 5, "skipped": 0, "written_per_rank": [5],
                                  "stale_temporaries_removed": 0}
    miou, coverage, _ = numpy_scores(layout, masks)
    assert coverage == 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["miou"] == pytest.approx(miou) == pytest.approx(on_disk["metrics"]["miou"])
    assert 0.5 < miou < 1.0
    assert (out / "per_class_iou.png").is_file() and not (out / "miou_vs_bg_score.png").exists()


def test_kill_and_rerun_redoes_only_missing_or_broken_masks(tmp_path: Path) -> None:
    layout, cam_dir, keys = build_fixture(tmp_path / "voc")
    out = tmp_path / "pl"
    ids = list(keys)
    make_pseudo_labels(cam_dir, layout, "train", out, class_names=CLASSES, progress=False, evaluate=False)
    first = read_masks(out, ids)
    mtimes = {i: (out / "masks" / f"{i}.png").stat().st_mtime_ns for i in ids}
    # a kill: one mask never written, one cut short, a temporary left behind, the manifest still "running"
    (out / "masks" / f"{ids[1]}.png").unlink()
    broken = out / "masks" / f"{ids[3]}.png"
    broken.write_bytes(broken.read_bytes()[:40])
    (out / "masks" / f".tmp-{ids[4]}-abc123.png").write_bytes(b"partial")
    running = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**running, "status": "running"}))

    manifest = make_pseudo_labels(cam_dir, layout, "train", out, class_names=CLASSES, progress=False)
    assert manifest["counts"] == {"images": 5, "written": 2, "skipped": 3, "written_per_rank": [2],
                                   "stale_temporaries_removed": 1}
    assert not list((out / "masks").glob(".tmp-*"))
    for i in (ids[0], ids[2], ids[4]):
        assert (out / "masks" / f"{i}.png").stat().st_mtime_ns == mtimes[i]  # untouched
    again = read_masks(out, ids)
    for i in ids:
        np.testing.assert_array_equal(again[i], first[i])
    assert "miou" in manifest["metrics"]
    # a completed folder made with other settings is refused, naming its manifest
    with pytest.raises(DataError, match="manifest.json.*bg_score"):
        make_pseudo_labels(cam_dir, layout, "train", out, bg_score=0.3, class_names=CLASSES, progress=False)


@pytest.mark.parametrize("previous", ["interrupted", "no manifest"])
def test_interrupted_run_and_another_setting_never_mix_masks(previous: str, tmp_path: Path) -> None:
    """Masks of an interrupted run with bg_score 0.15, re-run with 0.40: refused, naming the
    key and both values; nothing in the folder is touched, and no manifest labels the old masks as 0.40."""
    layout, cam_dir, keys = build_fixture(tmp_path / "voc")
    ids = list(keys)
    out = tmp_path / "pl"
    real_save = Image.Image.save
    calls = {"n": 0}

    def save_then_die(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_save(self, fp, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Image.Image, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            make_pseudo_labels(cam_dir, layout, "train", out, bg_score=0.15, class_names=CLASSES, progress=False)
    if previous == "no manifest":  # a folder from before the running record: settings unknown
        (out / "manifest.json").unlink()
    before = {p.name: p.read_bytes() for p in (out / "masks").iterdir()}
    assert sorted(before) == sorted(f"{i}.png" for i in ids[:2])
    match = "bg_score=0.15, not 0.4" if previous == "interrupted" else "settings are unknown"
    with pytest.raises(DataError, match=match):
        make_pseudo_labels(cam_dir, layout, "train", out, bg_score=0.40, class_names=CLASSES, progress=False)
    assert {p.name: p.read_bytes() for p in (out / "masks").iterdir()} == before
    manifest = out / "manifest.json"
    assert not manifest.exists() or json.loads(manifest.read_text())["bg_score"] == 0.15


def test_two_workers_equal_one_worker(tmp_path: Path) -> None:
    layout, cam_dir, keys = build_fixture(tmp_path / "voc")
    one = make_pseudo_labels(cam_dir, layout, "train", tmp_path / "w1", class_names=CLASSES, num_workers=1,
                             progress=False, evaluate=False)
    two = make_pseudo_labels(cam_dir, layout, "train", tmp_path / "w2", class_names=CLASSES, num_workers=2,
                             progress=False, evaluate=False)
    assert one["counts"]["written"] == two["counts"]["written"] == 5
    a, b = read_masks(tmp_path / "w1", list(keys)), read_masks(tmp_path / "w2", list(keys))
    for i in keys:
        np.testing.assert_array_equal(a[i], b[i])


def test_confident_mode_scores_labelled_pixels_and_coverage(tmp_path: Path) -> None:
    layout, cam_dir, keys = build_fixture(tmp_path / "voc")
    out = tmp_path / "conf"
    manifest = make_pseudo_labels(cam_dir, layout, "train", out, mode="confident", fg_thres=0.30,
                                  bg_thres=0.05, class_names=CLASSES, progress=False)
    masks = read_masks(out, list(keys))
    for image_id, mask in masks.items():
        assert set(np.unique(mask)) <= {0, 255, *keys[image_id]}
    assert any((m == 255).any() for m in masks.values())
    assert manifest["crf_params"] == dataclasses.asdict(CRF_PRESETS["irn_label"])
    assert manifest["fg_thres"] == 0.30 and manifest["bg_thres"] == 0.05 and "bg_score" not in manifest
    miou, coverage, strict = numpy_scores(layout, masks)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["miou"] == pytest.approx(miou)
    assert metrics["coverage"] == pytest.approx(coverage)
    assert metrics["miou_strict"] == pytest.approx(strict)
    assert 0.5 < coverage < 1.0 and strict < miou
    assert "coverage" in (out / "metrics.md").read_text()


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    layout, cam_dir, keys = build_fixture(tmp_path / "voc")
    with pytest.raises(ConfigError, match="mode"):
        make_pseudo_labels(cam_dir, layout, "train", tmp_path / "x", mode="irn", class_names=CLASSES)
    with pytest.raises(ConfigError, match="iterations"):
        make_pseudo_labels(cam_dir, layout, "train", tmp_path / "x", crf_params={"iterations": 0},
                           class_names=CLASSES)
    with pytest.raises(DataError, match="num_classes 4"):
        make_pseudo_labels(cam_dir, layout, "train", tmp_path / "x", class_names=CLASSES[:3])
    victim = list(keys)[2]
    cam_path(cam_dir, victim).write_bytes(b"garbage")
    with pytest.raises(DataError, match=f"{victim}.npz"):
        make_pseudo_labels(cam_dir, layout, "train", tmp_path / "x", class_names=CLASSES, progress=False)
    assert json.loads((tmp_path / "x" / "manifest.json").read_text())["status"] == "running"
    assert not list((tmp_path / "x" / "masks").glob(".tmp-*"))


def test_a_crash_while_writing_leaves_no_partial_mask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout, cam_dir, keys = build_fixture(tmp_path / "voc")
    ids = list(keys)
    out = tmp_path / "pl"
    real_save = Image.Image.save
    calls = {"n": 0}

    def save_then_die(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # the third mask: some bytes reach the disk, then the process "dies"
            Path(str(fp)).write_bytes(b"\x89PNG\r\n\x1a\n partial")
            raise KeyboardInterrupt
        real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        make_pseudo_labels(cam_dir, layout, "train", out, class_names=CLASSES, progress=False)
    monkeypatch.setattr(Image.Image, "save", real_save)
    names = sorted(p.name for p in (out / "masks").iterdir())
    assert names == [f"{ids[0]}.png", f"{ids[1]}.png"]  # no partial file under any name
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"  # not complete
    manifest = make_pseudo_labels(cam_dir, layout, "train", out, class_names=CLASSES, progress=False)
    assert manifest["counts"]["written"] == 3 and manifest["counts"]["skipped"] == 2
