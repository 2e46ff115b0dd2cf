"""Confusion-matrix mIoU, the background sweep and the seed rule, pinned against NumPy references."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch

from vwl_lightning.cam.files import cams_to_label
from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.evaluation.metrics import (
    BackgroundSweep,
    SegmentationConfusion,
    scores_from_confusion,
)
from vwl_lightning.stages.evaluate_seeds import sweep_scores


def numpy_confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """Reference: ``bincount(gt * C + pred)`` over the pixels whose ground truth is not 255."""
    valid = gt != 255
    index = gt[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def numpy_miou(conf: np.ndarray) -> float:
    """Reference mIoU: mean of TP/(TP+FP+FN) over classes with a non-zero union."""
    ious = []
    for c in range(conf.shape[0]):
        tp = conf[c, c]
        union = conf[c, :].sum() + conf[:, c].sum() - tp
        if union > 0:
            ious.append(tp / union)
    return float(np.mean(ious))


def test_miou_matches_numpy_histogram_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    num_classes = 6
    metric = SegmentationConfusion(num_classes)
    reference = np.zeros((num_classes, num_classes), dtype=np.int64)
    for shape in [(17, 23), (31, 9), (40, 40), (5, 64)]:
        gt = rng.integers(0, num_classes, size=shape).astype(np.uint8)
        gt[rng.random(shape) < 0.15] = 255
        pred = np.where(rng.random(shape) < 0.6, gt, rng.integers(0, num_classes, size=shape)).astype(np.uint8)
        pred[pred == 255] = 0
        metric.update(pred, gt, name="x.png")
        reference += numpy_confusion(pred, gt, num_classes)
    conf = metric.compute().numpy()
    np.testing.assert_array_equal(conf, reference)
    scores = metric.scores()
    assert scores["miou"] == pytest.approx(numpy_miou(reference), abs=1e-12)
    assert scores["pixel_accuracy"] == pytest.approx(np.trace(reference) / reference.sum(), abs=1e-12)
    # accumulated over the split, reduced once: not the mean of per-image mIoUs
    assert 0.3 < scores["miou"] < 0.8


def test_hand_worked_two_by_three_example() -> None:
    gt = np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [1, 1, 0]], dtype=np.uint8)
    metric = SegmentationConfusion(4)  # class 3 occurs nowhere
    metric.update(pred, gt, name="hand.png")
    expected = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(metric.compute().numpy(), expected)
    s = metric.scores()
    # IoU_0 = 1/(1+0+1), IoU_1 = 2/(2+2+0), IoU_2 = 0/(0+0+1), class 3 absent
    np.testing.assert_allclose(s["iou"][:3], [0.5, 0.5, 0.0])
    assert np.isnan(s["iou"][3])
    assert s["miou"] == pytest.approx(1.0 / 3.0)  # not 0.25 (absent as 0) nor 0.5 (absent as 1)
    np.testing.assert_allclose(s["precision"][:2], [1.0, 0.5])
    assert np.isnan(s["precision"][2])  # never predicted
    np.testing.assert_allclose(s["recall"][:3], [0.5, 1.0, 0.0])
    assert s["pixel_accuracy"] == pytest.approx(3 / 5)
    np.testing.assert_array_equal(s["present"], [True, True, True, False])


def test_class_present_only_in_prediction_counts_as_zero() -> None:
    conf = np.array([[8, 0, 2], [0, 5, 0], [0, 0, 0]])  # class 2 predicted twice, never in gt
    s = scores_from_confusion(conf)
    assert s["iou"][2] == 0.0
    assert s["miou"] == pytest.approx((8 / 10 + 1.0 + 0.0) / 3)
    assert np.isnan(s["recall"][2]) and s["precision"][2] == 0.0
    # without the false positives, class 2 drops out of the mean
    conf[0, 2], conf[0, 0] = 0, 10
    assert scores_from_confusion(conf)["miou"] == pytest.approx(1.0)


def test_unlabelled_predictions_give_coverage_and_strict_miou() -> None:
    gt = np.array([[0, 0, 1, 1], [0, 1, 1, 255]], dtype=np.uint8)
    pred = np.array([[0, 255, 1, 255], [0, 1, 0, 255]], dtype=np.uint8)
    metric = SegmentationConfusion(2, pred_ignore_index=255)
    metric.update(pred, gt, name="p.png")
    s = metric.scores()
    # labelled valid pixels: (g0,p0) x2, (g1,p1) x2, (g1,p0) x1; unlabelled: one g0, one g1
    np.testing.assert_array_equal(metric.compute().numpy(), [[2, 0], [1, 2]])
    np.testing.assert_array_equal(s["unlabelled_pixels"], [1, 1])
    assert s["coverage"] == pytest.approx(5 / 7)
    assert s["miou"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert s["miou_strict"] == pytest.approx((2 / 4 + 2 / 4) / 2)
    np.testing.assert_allclose(s["class_coverage"], [2 / 3, 3 / 4])


def test_bad_ground_truth_raises_data_error_naming_the_file() -> None:
    metric = SegmentationConfusion(3)
    with pytest.raises(DataError, match="gt_7.png.*7"):
        metric.update(np.zeros((2, 2), np.uint8), np.array([[0, 7], [1, 255]], np.uint8), name="gt_7.png")
    with pytest.raises(DataError, match="small.png.*size"):
        metric.update(np.zeros((2, 3), np.uint8), np.zeros((2, 2), np.uint8), name="small.png")
    with pytest.raises(DataError, match="pred.png"):
        metric.update(np.full((2, 2), 5, np.uint8), np.zeros((2, 2), np.uint8), name="g.png", pred_name="pred.png")
    assert metric.compute().sum() == 0  # nothing was added by the failed updates


def test_cams_to_label_hand_example() -> None:
    keys = np.array([3, 7])
    high_res = np.array([[[0.9, 0.1, 0.5], [0.2, 0.13, 0.6]],
                         [[0.5, 0.2, 0.5], [0.8, 0.0, 0.1]]], dtype=np.float32)
    np.testing.assert_array_equal(cams_to_label(high_res, keys, 0.3), [[3, 0, 3], [7, 0, 3]])
    # bg 0.13: (0,1) now 7; (1,1) ties with the background (0.13 == 0.13) and stays background
    out = cams_to_label(high_res, keys, 0.13)
    np.testing.assert_array_equal(out, [[3, 7, 3], [7, 0, 3]])
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(cams_to_label(np.zeros((0, 2, 2)), np.zeros(0), 0.1), np.zeros((2, 2)))


def _random_cams(rng: np.random.Generator, shape: tuple[int, int], k: int, dtype: type) -> np.ndarray:
    cams = rng.random((k, *shape))
    cams[:, rng.random(shape) < 0.3] = np.round(rng.random(), 2)  # ties with scores and across channels
    cams = np.round(cams, 2) if dtype == np.float16 else cams
    return cams.astype(dtype)


def test_background_sweep_equals_separate_runs_exactly() -> None:
    rng = np.random.default_rng(1)
    num_classes = 7
    scores = sweep_scores()
    assert len(scores) == 56 and scores[0] == 0.05 and scores[-1] == 0.6
    sweep = BackgroundSweep(num_classes, scores)
    reference = np.zeros((len(scores), num_classes, num_classes), dtype=np.int64)
    for i, shape in enumerate([(23, 31), (16, 16), (40, 12), (9, 50), (20, 20)]):
        k = [1, 2, 3, 0, 2][i]
        keys = np.sort(rng.choice(np.arange(1, num_classes), size=k, replace=False))
        cams = _random_cams(rng, shape, k, np.float16 if i % 2 else np.float32)
        gt = rng.integers(0, num_classes, size=shape).astype(np.uint8)
        gt[rng.random(shape) < 0.1] = 255
        sweep.update(cams, keys, gt, name=f"{i}.png")
        for j, score in enumerate(scores):
            # independent rule: foreground where max CAM > score (float32), label = keys[first argmax]
            c32 = cams.astype(np.float32)
            pred = (np.where(c32.max(0) > np.float32(score), keys[c32.argmax(0)], 0) if k
                    else np.zeros(shape, np.int64))
            np.testing.assert_array_equal(pred, cams_to_label(cams, keys, score))
            reference[j] += numpy_confusion(pred, gt, num_classes)
    np.testing.assert_array_equal(sweep.compute().numpy(), reference)
    curve = [numpy_miou(m) for m in reference]
    assert sweep.curve() == pytest.approx(curve, abs=1e-12)
    summary = sweep.summary(configured_score=0.13)
    assert summary["best_bg_score"] == pytest.approx(scores[int(np.argmax(curve))])
    assert summary["best_miou"] == pytest.approx(max(curve))
    assert summary["miou_at_configured"] == pytest.approx(curve[8])  # 0.05 + 8 * 0.01


def test_background_sweep_tie_goes_to_background() -> None:
    sweep = BackgroundSweep(3, [0.1, 0.13, 0.2])
    cams = np.array([[[np.float32(0.13), np.float32(0.13) + np.float32(1e-6)]]], dtype=np.float32)
    gt = np.array([[1, 1]], dtype=np.uint8)
    sweep.update(cams, np.array([1]), gt)
    conf = sweep.compute().numpy()
    np.testing.assert_array_equal(conf[0], [[0, 0, 0], [0, 2, 0], [0, 0, 0]])  # both above 0.1
    np.testing.assert_array_equal(conf[1], [[0, 0, 0], [1, 1, 0], [0, 0, 0]])  # the tie is background
    np.testing.assert_array_equal(conf[2], [[0, 0, 0], [2, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(cams_to_label(cams, np.array([1]), 0.13), [[0, 1]])


def test_background_sweep_checks_inputs() -> None:
    with pytest.raises(ConfigError, match="bg_scores"):
        BackgroundSweep(3, [0.2, 0.1])
    sweep = BackgroundSweep(3, [0.1])
    with pytest.raises(DataError, match="gt.png"):
        sweep.update(np.zeros((1, 2, 2), np.float32), np.array([1]), np.zeros((3, 2), np.uint8), name="gt.png")
    with pytest.raises(DataError, match="cam.npz.*keys"):
        sweep.update(np.zeros((1, 2, 2), np.float32), np.array([5]), np.zeros((2, 2), np.uint8),
                     cam_name="cam.npz")
    with pytest.raises(ConfigError, match="0.33"):
        sweep.index_of(0.33)


def test_states_sum_like_ddp_ranks() -> None:
    """Two metric shards merged (what DDP's sum reduction does) equal one metric over all images."""
    rng = np.random.default_rng(2)
    images = [(rng.random((2, 8, 8)).astype(np.float32), np.array([1, 2]),
               rng.integers(0, 3, (8, 8)).astype(np.uint8)) for _ in range(4)]
    whole, a, b = (BackgroundSweep(3, [0.2, 0.5]) for _ in range(3))
    for i, (cams, keys, gt) in enumerate(images):
        whole.update(cams, keys, gt)
        (a if i % 2 else b).update(cams, keys, gt)
    a.merge_state(b)
    assert torch.equal(a.compute(), whole.compute())


def _ddp_images(seed: int = 3) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(4):
        gt = rng.integers(0, 4, (12, 10)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.1] = 255
        pred = rng.integers(0, 4, gt.shape).astype(np.uint8)
        pred[rng.random(gt.shape) < 0.2] = 255
        out.append((rng.random((2, 12, 10)).astype(np.float32), np.array([1, 3]), gt, pred))
    return out


def _ddp_worker(rank: int, world: int, folder: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        sweep, seg = BackgroundSweep(4, [0.2, 0.5]), SegmentationConfusion(4, pred_ignore_index=255)
        for cams, keys, gt, pred in _ddp_images()[rank::world]:
            sweep.update(cams, keys, gt)
            seg.update(pred, gt)
        scores = seg.scores()
        np.savez(f"{folder}/rank{rank}.npz", sweep=sweep.compute().numpy(), miou=scores["miou"],
                 strict=scores["miou_strict"], coverage=scores["coverage"])
    finally:
        dist.destroy_process_group()


@pytest.mark.integration  # not in the unit tier: 2 spawned processes
def test_two_process_ddp_sync_equals_one_process(tmp_path: Path) -> None:
    """Two gloo ranks, each with half the images: every rank's synced result equals one process's."""
    sweep, seg = BackgroundSweep(4, [0.2, 0.5]), SegmentationConfusion(4, pred_ignore_index=255)
    for cams, keys, gt, pred in _ddp_images():
        sweep.update(cams, keys, gt)
        seg.update(pred, gt)
    whole = seg.scores()
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_ddp_worker, args=(r, 2, str(tmp_path))) for r in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)  # spawned ranks import torch: slow on a loaded machine
        assert proc.exitcode == 0, f"rank exit code {proc.exitcode} (None: still running after 300 s)"
    for rank in range(2):
        with np.load(tmp_path / f"rank{rank}.npz") as result:
            np.testing.assert_array_equal(result["sweep"], sweep.compute().numpy())
            assert float(result["miou"]) == pytest.approx(whole["miou"])
            assert float(result["strict"]) == pytest.approx(whole["miou_strict"])
            assert float(result["coverage"]) == pytest.approx(whole["coverage"])
