"""Mechanism checks on the embedded benchmark, pinned with hand-made CAMs built from the generator's truth."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from vwl_lightning.cam.files import cam_path, save_cam_file, stride4_shape
from vwl_lightning.data.synthetic import SyntheticConfig, materialise, render_indexed
from vwl_lightning.data.voc import VOCLayout
from vwl_lightning.evaluation.mechanism import mechanism_checks

CONFIG = SyntheticConfig(num_train=12, num_val=4, image_size=64)


def write_cams(root, cam_dir, make_cam, config: SyntheticConfig = CONFIG) -> None:
    layout = VOCLayout.at(root)
    for image_id in layout.split_ids("train"):
        sample = render_indexed(config, "train", int(image_id.rsplit("_", 1)[1]))
        keys = np.array(sample.classes)
        cams = np.stack([make_cam(sample, c) for c in keys]).astype(np.float32)
        low = cams[:, ::4, ::4][:, : stride4_shape(64, 64)[0], : stride4_shape(64, 64)[1]]
        save_cam_file(cam_path(cam_dir, image_id), keys, cams, low, np.float32)


def test_badge_only_and_whole_object_cams(tmp_path) -> None:
    root = materialise(CONFIG, tmp_path / "cache")
    write_cams(root, tmp_path / "badge", lambda s, c: ((s.mask == c) & s.part_mask).astype(float))
    badge_only = mechanism_checks(tmp_path / "badge", root, "train")
    assert badge_only["badge_activation"] == pytest.approx(1.0)
    assert badge_only["body_activation"] == pytest.approx(0.0)
    write_cams(root, tmp_path / "whole", lambda s, c: (s.mask == c).astype(float))
    whole = mechanism_checks(tmp_path / "whole", root, "train")
    assert whole["badge_to_body_ratio"] == pytest.approx(1.0)
    assert whole["spill_typical_scene"] == pytest.approx(0.0) and whole["spill_other_scene"] == pytest.approx(0.0)
    # a CAM that is 1 on the object and 0.5 on the background spills bg_pixels*0.5 / (obj + bg*0.5)
    write_cams(root, tmp_path / "spill", lambda s, c: np.where(s.mask == c, 1.0, np.where(s.mask == 0, 0.5, 0)))
    spill = mechanism_checks(tmp_path / "spill", root, "train")
    expected_typical, expected_other = [], []
    for index in range(1, 13):
        s = render_indexed(CONFIG, "train", index)
        obj, bg = float((s.mask == s.primary_class).sum()), float((s.mask == 0).sum())
        (expected_typical if s.scene_is_typical else expected_other).append(0.5 * bg / (obj + 0.5 * bg))
    assert spill["spill_typical_scene"] == pytest.approx(np.mean(expected_typical))
    if expected_other:
        assert spill["spill_other_scene"] == pytest.approx(np.mean(expected_other))
    assert spill["images_typical"] + spill["images_other"] == 12


def test_class_specific_and_shared_body_activation(tmp_path) -> None:
    config = replace(CONFIG, part_sharing=0.5)
    root = materialise(config, tmp_path / "cache")
    write_cams(root, tmp_path / "own", lambda s, c: ((s.mask == c) & s.own_mask).astype(float), config)
    own_only = mechanism_checks(tmp_path / "own", root, "train")
    assert own_only["own_body_activation"] == pytest.approx(1.0)
    assert own_only["shared_body_activation"] == pytest.approx(0.0)
    assert own_only["badge_activation"] == pytest.approx(0.0) and own_only["body_activation"] > 0.3
    # without class-specific pixels the split is undefined
    shared_root = materialise(CONFIG, tmp_path / "cache")
    write_cams(shared_root, tmp_path / "whole", lambda s, c: (s.mask == c).astype(float))
    assert np.isnan(mechanism_checks(tmp_path / "whole", shared_root, "train")["own_body_activation"])
