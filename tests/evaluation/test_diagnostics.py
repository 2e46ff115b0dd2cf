"""Object completeness and background spill against hand-made CAMs and masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vwl_lightning.errors import DataError
from vwl_lightning.evaluation.diagnostics import CamDiagnostics


def test_hand_made_example() -> None:
    # 4x4 image: class 3 occupies the left two columns (8 px), one pixel ignored (255), rest background.
    gt = np.zeros((4, 4), np.uint8)
    gt[:, :2] = 3
    gt[0, 3] = 255
    cam = np.zeros((1, 4, 4), np.float32)
    cam[0, :2, 0] = 1.0        # covers 2 of the 8 object pixels above the score
    cam[0, 2, 0] = 0.1         # object pixel below the score 0.2: not covered
    cam[0, 3, 3] = 0.5         # spills onto background
    cam[0, 0, 3] = 0.9         # on an ignored pixel: counts nowhere
    diag = CamDiagnostics()
    diag.update(cam, np.array([3]), gt, bg_score=0.2)
    summary = diag.summary()
    assert summary["object_completeness"] == pytest.approx(2 / 8)
    # valid mass = 1 + 1 + 0.1 + 0.5 = 2.6, on background 0.5
    assert summary["background_spill"] == pytest.approx(0.5 / 2.6)
    assert summary["objects"] == 1


def test_average_over_objects_and_images() -> None:
    gt = np.array([[1, 1, 2, 2], [0, 0, 0, 0]], np.uint8)
    cams = np.array([[[1, 1, 0, 0], [0, 0, 0, 0]],     # class 1: complete, no spill
                     [[0, 0, 1, 0], [1, 1, 0, 0]]],    # class 2: half covered, spill 2/3
                    np.float32)
    diag = CamDiagnostics()
    diag.update(cams, np.array([1, 2]), gt, bg_score=0.5)
    summary = diag.summary()
    assert summary["object_completeness"] == pytest.approx((1.0 + 0.5) / 2)
    assert summary["background_spill"] == pytest.approx((0.0 + 2 / 3) / 2)


def test_class_absent_from_mask_and_empty_cam() -> None:
    gt = np.zeros((2, 2), np.uint8)
    diag = CamDiagnostics()
    diag.update(np.zeros((1, 2, 2), np.float32), np.array([5]), gt, bg_score=0.1)
    summary = diag.summary()
    assert math.isnan(summary["object_completeness"]) and math.isnan(summary["background_spill"])


def test_size_mismatch_is_reported() -> None:
    with pytest.raises(DataError, match="differs"):
        CamDiagnostics().update(np.zeros((1, 3, 3)), np.array([1]), np.zeros((2, 2), np.uint8), 0.1)
