"""Seed evaluation on a tiny VOC-layout fixture, and the CAM file format it reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures_cams import rectangle_cam_fixture
from vwl_lightning.cam.files import (
    cam_path,
    is_complete_cam_file,
    load_cam_file,
    save_cam_file,
    stride4_shape,
)
from vwl_lightning.data.label_png import write_label_png
from vwl_lightning.data.voc import VOCLayout
from vwl_lightning.errors import DataError
from vwl_lightning.stages.evaluate_seeds import evaluate_seeds

CLASSES = ("background", "cat", "dog", "car")
SIZES = [(40, 52), (36, 36), (48, 30), (33, 47)]


def build_fixture(root: Path, split: str = "train") -> tuple[VOCLayout, Path]:
    """Images with coloured rectangles, their masks (255 borders) and soft, shifted, noisy CAMs, in VOC layout."""
    layout, cam_dir, _ = rectangle_cam_fixture(root, SIZES, seed=7, year=2007, split=split, cam_noise=0.03,
                                               cam_manifest={"class_names": list(CLASSES)})
    return layout, cam_dir


def reference_curve(layout: VOCLayout, cam_dir: Path, scores: list[float]) -> np.ndarray:
    """NumPy reference: confusion matrices of the seeds at each score, from the files on disk."""
    c = len(CLASSES)
    conf = np.zeros((len(scores), c, c), dtype=np.int64)
    for image_id in layout.split_ids("train"):
        with np.load(cam_path(cam_dir, image_id)) as data:
            cams, keys = data["high_res"].astype(np.float32), data["keys"]
        gt = np.asarray(Image.open(layout.mask_path(image_id))).astype(np.int64)
        valid = gt != 255
        for j, s in enumerate(scores):
            pred = np.where(cams.max(0) > np.float32(s), keys[cams.argmax(0)], 0)
            conf[j] += np.bincount(gt[valid] * c + pred[valid], minlength=c * c).reshape(c, c)
    return conf


def iou_of(conf: np.ndarray) -> np.ndarray:
    tp = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - tp
    return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def test_seed_eval_matches_numpy_reference(tmp_path: Path) -> None:
    layout, cam_dir = build_fixture(tmp_path / "voc")
    scores = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    out = tmp_path / "seed_eval"
    metrics = evaluate_seeds(cam_dir, layout, "train", out, bg_scores=scores, configured_score=0.13,
                             progress=False)
    swept = sorted([*scores, 0.13])  # the configured score is added to the sweep
    ref = reference_curve(layout, cam_dir, swept)
    curve = np.array([np.nanmean(iou_of(m)) for m in ref])
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert [c["bg_score"] for c in on_disk["curve"]] == swept
    np.testing.assert_allclose([c["miou"] for c in on_disk["curve"]], curve, atol=1e-12)
    assert on_disk["best_bg_score"] == swept[int(np.argmax(curve))]
    assert on_disk["best_miou"] == pytest.approx(curve.max())
    assert on_disk["miou_at_configured"] == pytest.approx(curve[swept.index(0.13)])
    assert on_disk["miou"] == pytest.approx(curve[swept.index(0.13)])
    ref13 = ref[swept.index(0.13)]
    np.testing.assert_array_equal(on_disk["confusion_at_configured"], ref13)
    iou13 = iou_of(ref13)
    for c, name in enumerate(CLASSES):
        assert on_disk["per_class"][name]["iou"] == pytest.approx(iou13[c])
        assert on_disk["per_class"][name]["recall"] == pytest.approx(ref13[c, c] / ref13[c].sum())
    assert 0.3 < on_disk["best_miou"] < 0.95  # the fixture CAMs are informative but imperfect
    for name in ("metrics.md", "miou_vs_bg_score.png", "per_class_iou.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "miou_vs_bg_score.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{100 * curve[swept.index(0.13)]:.2f}" in (out / "metrics.md").read_text()
    assert not list(out.glob(".tmp-*"))


def test_seed_eval_names_corrupt_cam_file(tmp_path: Path) -> None:
    layout, cam_dir = build_fixture(tmp_path / "voc")
    victim = cam_path(cam_dir, "2007_000002")
    victim.write_bytes(victim.read_bytes()[:200])  # truncated by a killed writer
    with pytest.raises(DataError, match="2007_000002.npz"):
        evaluate_seeds(cam_dir, layout, "train", tmp_path / "out", bg_scores=[0.1, 0.2], progress=False)
    victim.unlink()
    with pytest.raises(DataError, match="2007_000002.npz.*not found"):
        evaluate_seeds(cam_dir, layout, "train", tmp_path / "out", bg_scores=[0.1, 0.2], progress=False)


def test_seed_eval_names_bad_ground_truth(tmp_path: Path) -> None:
    layout, cam_dir = build_fixture(tmp_path / "voc")
    gt_path = layout.mask_path("2007_000001")
    write_label_png(gt_path, np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match="2007_000001.png.*size"):
        evaluate_seeds(cam_dir, layout, "train", tmp_path / "out", bg_scores=[0.1], progress=False)
    bad = np.zeros(SIZES[1], np.uint8)
    bad[3, 3] = 9
    write_label_png(gt_path, bad)
    with pytest.raises(DataError, match="2007_000001.png.*9"):
        evaluate_seeds(cam_dir, layout, "train", tmp_path / "out", bg_scores=[0.1], progress=False)


def test_seed_eval_rejects_cams_of_another_split(tmp_path: Path) -> None:
    layout, cam_dir = build_fixture(tmp_path / "voc")
    (cam_dir / "manifest.json").write_text(json.dumps({"split": "val", "class_names": list(CLASSES)}))
    with pytest.raises(DataError, match="manifest.json.*'val'"):
        evaluate_seeds(cam_dir, layout, "train", tmp_path / "out", progress=False)


def test_cam_file_round_trip_and_checks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    high = rng.random((2, 9, 13)).astype(np.float32)
    low = high[:, ::4, ::4]
    assert low.shape[1:] == stride4_shape(9, 13) == (3, 4)
    path = save_cam_file(tmp_path / "a.npz", np.array([2, 5]), high, low, np.float16)
    record = load_cam_file(path)
    assert record.keys.dtype == np.int64 and record.keys.tolist() == [2, 5]
    assert record.high_res.dtype == np.float16 and record.image_shape == (9, 13)
    np.testing.assert_array_equal(record.high_res, high.astype(np.float16))
    assert is_complete_cam_file(path) and not is_complete_cam_file(tmp_path / "missing.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]  # no temporary left behind

    np.savez(tmp_path / "nokey.npz", keys=np.array([1]), high_res=high[:1])
    with pytest.raises(DataError, match=r"nokey.npz.*\['cam'\]"):
        load_cam_file(tmp_path / "nokey.npz")
    np.savez(tmp_path / "shape.npz", keys=np.array([1, 2]), high_res=high[:1], cam=low[:1])
    with pytest.raises(DataError, match="shape.npz.*channels"):
        load_cam_file(tmp_path / "shape.npz")
    np.savez(tmp_path / "small.npz", keys=np.array([1]), high_res=high[:1], cam=low[:1, :2])
    with pytest.raises(DataError, match="small.npz.*stride-4"):
        load_cam_file(tmp_path / "small.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="junk.npz"):
        load_cam_file(tmp_path / "junk.npz")
    assert not is_complete_cam_file(tmp_path / "junk.npz")
    with pytest.raises(DataError, match="a.npz.*exceed"):
        load_cam_file(path, num_classes=4)
    with pytest.raises(DataError, match="sorted"):
        save_cam_file(tmp_path / "b.npz", np.array([5, 2]), high, low)
