"""The CAM stage's pictures: a grid of overlays with class names in its folder and in its own W&B run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from vwl_lightning.cam.files import cam_path, save_cam_file
from vwl_lightning.data.label_png import read_label_png
from vwl_lightning.data.layout import load_rgb
from vwl_lightning.data.source import resolve_data
from vwl_lightning.stages import pipeline
from vwl_lightning.tracking.pictures import CAPTION, cam_overlay, write_cam_grid


def fake_cams(cfg, folder: Path, count: int):
    """CAM files whose maps are the ground-truth masks of each labelled class (values 1 inside, 0 outside)."""
    data = resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True))
    ids = data.layout.split_ids("train")[:count]
    for image_id in ids:
        gt = read_label_png(data.layout.mask_path(image_id))
        keys = [int(k) for k in np.unique(gt) if 0 < k < 255]
        high = np.stack([(gt == k).astype(np.float32) for k in keys])
        low = high[:, ::4, ::4]
        save_cam_file(cam_path(folder, image_id), keys, high, low)
    return data, ids


def test_grid_shows_each_class_cam_with_its_name(make_config, tmp_path: Path) -> None:
    cfg = make_config()
    data, ids = fake_cams(cfg, tmp_path / "cams", 3)
    path = write_cam_grid(tmp_path / "cams", data, "train", 3, 0.13, tmp_path / "grid.png")
    picture = np.asarray(Image.open(path).convert("RGB"))
    first = load_rgb(data.layout.image_path(ids[0]))
    gt = read_label_png(data.layout.mask_path(ids[0]))
    keys = [int(k) for k in np.unique(gt) if 0 < k < 255]
    h, w = first.shape[:2]
    # row 0: image, then the CAM of keys[0] as a jet overlay, exactly
    np.testing.assert_array_equal(picture[:h, :w], first)
    np.testing.assert_array_equal(picture[:h, w + 2:2 * w + 2], cam_overlay(first, (gt == keys[0]).astype(np.float32)))
    caption = picture[h:h + CAPTION, w + 2:2 * w + 2]
    assert (caption < 128).any() and (caption == 255).mean() > 0.5  # dark text on white: the class name
    assert picture.shape[1] >= (2 + len(keys)) * w  # image + CAMs + seed


def test_cam_stage_writes_the_grid_and_its_own_wandb_run(make_config, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_config("logger=wandb", "cam.overlay_images=2")
    cam_dir = Path(cfg.cam.out_dir)
    data, _ = fake_cams(cfg, cam_dir, 2)
    monkeypatch.setattr("vwl_lightning.stages.make_cams.make_cams", lambda cfg, data: cam_dir)
    pipeline.run_cams(cfg, data)
    assert (cam_dir / "overlays.png").is_file()
    runs = sorted(cam_dir.glob("wandb/offline-run-*"))
    assert len(runs) == 1
    assert sorted(runs[0].glob("files/media/images/cams/overlays_*.png"))
