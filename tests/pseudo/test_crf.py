"""Dense CRF: presets, validation, shapes, and a real photo (scikit-image's coffee) where the CRF must help."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2lab
from skimage.draw import disk

from vwl_lightning.cam.files import cams_to_label
from vwl_lightning.errors import ConfigError
from vwl_lightning.pseudo.confident_seeds import confident_region_labels
from vwl_lightning.pseudo.crf_masks import cam_crf_pseudo_mask
from vwl_lightning.pseudo.dense_crf import (
    CRF_PRESETS,
    CRFParams,
    crf_from_labels,
    crf_from_probs,
    crf_params_from_config,
)


def test_presets_hold_the_spec_values() -> None:
    as_tuple = {name: dataclasses.astuple(p) for name, p in CRF_PRESETS.items()}
    assert as_tuple == {
        "vwl_cam": (10, 1.0, 3.0, 64.0, 3.0, 4.0),
        "irn_label": (10, 3.0, 3.0, 50.0, 5.0, 10.0),
        "deeplab_test": (10, 1.0, 3.0, 67.0, 3.0, 4.0),
        "afa_alt": (10, 3.0, 3.0, 64.0, 5.0, 4.0),
    }


def test_params_are_validated_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="iterations"):
        CRFParams(iterations=0)
    with pytest.raises(ConfigError, match="bilateral_srgb"):
        CRFParams(bilateral_srgb=0.0)
    with pytest.raises(ConfigError, match="gaussian_compat"):
        CRFParams(gaussian_compat=-1.0)
    with pytest.raises(ConfigError, match="preset"):
        crf_params_from_config("nope")
    with pytest.raises(ConfigError, match="crf.sigma"):
        crf_params_from_config({"preset": "vwl_cam", "sigma": 3})
    with pytest.raises(ConfigError, match="pl_crf.iterations"):
        crf_params_from_config({"iterations": -2}, prefix="pl_crf")
    params = crf_params_from_config({"preset": "irn_label", "iterations": 3})
    assert params == dataclasses.replace(CRF_PRESETS["irn_label"], iterations=3)
    assert crf_params_from_config(None, default="deeplab_test") is CRF_PRESETS["deeplab_test"]
    with pytest.raises(ConfigError, match="gt_prob"):
        crf_from_labels(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.int64), 2, CRF_PRESETS["irn_label"],
                        gt_prob=1.0)


def _two_region_image(height: int = 40, width: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    truth = np.zeros((height, width), dtype=np.int64)
    rr, cc = disk((height // 2, width // 2), 12, shape=truth.shape)
    truth[rr, cc] = 1
    image = np.where(truth[..., None] == 1, [200, 60, 40], [30, 90, 160]).astype(np.float64)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    return image, truth


def test_crf_from_probs_shapes_and_normalisation() -> None:
    image, truth = _two_region_image()
    rng = np.random.default_rng(1)
    fg = np.clip(0.5 + 0.3 * (truth - 0.5) + rng.normal(0, 0.25, truth.shape), 0.01, 0.99)
    probs = np.stack([1 - fg, fg]).astype(np.float32)
    out = crf_from_probs(image[:, ::-1][:, ::-1], probs, CRF_PRESETS["vwl_cam"])  # non-contiguous input
    assert out.shape == probs.shape and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-4)
    noisy_acc = np.mean(probs.argmax(0) == truth)
    crf_acc = np.mean(out.argmax(0) == truth)
    assert crf_acc > noisy_acc + 0.05, (noisy_acc, crf_acc)


def test_crf_from_labels_and_cam_mask_label_ranges() -> None:
    image, truth = _two_region_image()
    labels = truth.copy()
    labels[::7, ::5] = 2  # salt noise in a third label
    out = crf_from_labels(image, labels, 3, CRF_PRESETS["irn_label"], gt_prob=0.7)
    assert out.shape == truth.shape and out.min() >= 0 and out.max() <= 2
    assert np.mean(out == truth) > np.mean(labels == truth)  # the label CRF removes the isolated noise
    cams = np.stack([ndimage.gaussian_filter(truth.astype(np.float32), 3), np.zeros_like(truth, np.float32)])
    cams /= np.maximum(cams.max(axis=(1, 2), keepdims=True), 1e-5)
    mask = cam_crf_pseudo_mask(image, cams, np.array([4, 9]), 0.15, CRF_PRESETS["vwl_cam"])
    assert mask.dtype == np.uint8 and mask.shape == truth.shape
    assert set(np.unique(mask)) <= {0, 4, 9} and 4 in mask
    empty = cam_crf_pseudo_mask(image, np.zeros((0, *truth.shape), np.float32), np.zeros(0), 0.15,
                                CRF_PRESETS["vwl_cam"])
    assert not empty.any()


def _coffee(scale: float) -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's coffee photo (600x400) and the mask of the coffee in the cup: the high-chroma region
    (CIELAB chroma > 48) around the cup's centre, holes filled; the cup's white rim and the shadowed inner wall
    (chroma < 45) bound it on every side. Both resized by ``scale``."""
    image = skimage.data.coffee()
    chroma = np.hypot(*rgb2lab(image)[..., 1:].transpose(2, 0, 1))
    labels, _ = ndimage.label(chroma > 48)
    mask = ndimage.binary_opening(ndimage.binary_fill_holes(labels == labels[140, 280]), iterations=3)
    photo = Image.fromarray(image)
    size = (round(photo.width * scale), round(photo.height * scale))
    small = np.asarray(photo.resize(size, Image.BILINEAR), dtype=np.uint8)
    small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(size, Image.NEAREST)).astype(bool)
    return small, small_mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_crf_refines_a_coarse_cam_on_a_real_photo() -> None:
    image, truth = _coffee(scale=0.64)
    height, width = truth.shape
    # a CAM-like map: pooled at stride 32, bilinearly upsampled (blurred, blocky), shifted by (8, -10) px
    pooled = F.adaptive_avg_pool2d(torch.tensor(truth, dtype=torch.float32)[None, None],
                                   (height // 32, width // 32))
    coarse = F.interpolate(pooled, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
    coarse = ndimage.shift(coarse, (8, -10), order=1)
    cam = (coarse / coarse.max()).astype(np.float32)[None]
    keys = np.array([1])
    bg_score = 0.30
    coarse_iou = _iou(cams_to_label(cam, keys, bg_score) == 1, truth)
    crf_iou = _iou(cam_crf_pseudo_mask(image, cam, keys, bg_score, CRF_PRESETS["vwl_cam"]) == 1, truth)
    print(f"coffee {width}x{height}: thresholded coarse CAM IoU {coarse_iou:.4f}, after CRF {crf_iou:.4f}")
    assert 0.55 < coarse_iou < 0.66  # 0.60 (the CAM spills over the cup's rim)
    assert crf_iou > coarse_iou + 0.15  # 0.90: the CRF snaps it to the rim


def test_confident_region_labels_leave_an_uncertain_band() -> None:
    height, width = 64, 80
    yy, xx = np.mgrid[:height, :width]
    radius = np.hypot(yy - height // 2, xx - width // 2)
    rng = np.random.default_rng(3)
    ramp = 255.0 * (1.0 - np.clip(radius / 40.0, 0, 1))  # a soft blob: no hard edge for the CRF to snap to
    image = np.clip(ramp[..., None] + rng.normal(0, 5, (height, width, 3)), 0, 255).astype(np.uint8)
    cam = np.clip(1.0 - radius / 20.0, 0, 1).astype(np.float32)[None]  # 0.30 at r=14, 0.05 at r=19
    params = CRF_PRESETS["irn_label"]
    out = confident_region_labels(image, cam, np.array([6]), fg_thres=0.30, bg_thres=0.05, params=params)
    assert out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 6, 255}
    assert out[height // 2, width // 2] == 6 and out[0, 0] == 0
    band = out == 255
    assert band.sum() > 300
    # the band is a ring between the confident core and the confident background
    assert np.median(radius[out == 6]) < np.median(radius[band]) < np.median(radius[out == 0])
    assert 0.05 < cam[0][band].mean() < 0.30
    # IRN's combination rule, from the two label-CRF maps
    fg = crf_from_labels(image, np.argmax(np.concatenate([np.full_like(cam, 0.30), cam]), 0), 2, params)
    bg = crf_from_labels(image, np.argmax(np.concatenate([np.full_like(cam, 0.05), cam]), 0), 2, params)
    expected = np.where(fg == 1, 6, np.where(bg == 0, 0, 255))
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ConfigError, match="bg_thres"):
        confident_region_labels(image, cam, np.array([6]), fg_thres=0.1, bg_thres=0.2)


def test_confident_combination_follows_irn(monkeypatch: pytest.MonkeyPatch) -> None:
    """IRN: start from the fg map, 255 where it is background, 0 only where *both* maps are background."""
    import vwl_lightning.pseudo.confident_seeds as crf_module

    fg_index = np.array([[1, 0, 0, 2]])  # label-CRF outputs (compact indices) at fg_thres, then bg_thres
    bg_index = np.array([[0, 0, 1, 2]])
    outputs = iter([fg_index, bg_index])
    monkeypatch.setattr(crf_module, "crf_from_labels", lambda *args, **kwargs: next(outputs))
    out = confident_region_labels(np.zeros((1, 4, 3), np.uint8), np.zeros((2, 1, 4), np.float32),
                                  np.array([3, 8]))
    # pixel 0: fg says class 3 although bg says background -> IRN keeps 3
    np.testing.assert_array_equal(out, [[3, 0, 255, 8]])
