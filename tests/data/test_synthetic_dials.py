"""The two dials of the embedded benchmark (part sharing, scene co-occurrence): they change what they claim
on generated data and leave the default data set identical to the version-1 generator's (text bytes, image pixels)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vwl_lightning.data.synthetic import (
    SyntheticConfig,
    build_world,
    dataset_root,
    materialise,
    render_indexed,
)
from vwl_lightning.data.synthetic.cache import write_sample
from vwl_lightning.errors import ConfigError
from vwl_lightning.utils.io import read_json

FAST = SyntheticConfig(image_size=64)

# sha256 of the files that the generator wrote BEFORE the dials existed (GENERATOR_VERSION 1, commit ef100b1);
# the default data set must keep every one of them. Text files: of their bytes; images: of their decoded pixels
# (dtype, shape, values), since the encoded JPEG/PNG bytes depend on the libjpeg/zlib build (taken from files
# whose bytes equalled version 1's).
DEFAULT_FINGERPRINT = "e4735aacc5d8"
SMALL_FINGERPRINT = "07848c7699b0"  # SyntheticConfig(num_train=6, num_val=2)
SMALL_FILES = {
    "ImageSets/Segmentation/train.txt": "eae70e55f8ec5b3f74a7119560f4a5dd6197ff51044c1aaec3cf01fa81302399",
    "ImageSets/Segmentation/val.txt": "1306f75a07a8c344f0fcfbb801b9a36f5a10daa84ccd890be02d7ce3a44bcd36",
    "JPEGImages/syn_train_00001.jpg": "f1f6ca6f905d2d163acbad695d2a90035b7625fb625c6e749c1f0d2de8fafb65",
    "JPEGImages/syn_train_00004.jpg": "9cb8d5dd92e75ef08088807ad13fa38bff09c15c4cb0549d62db3789d01261c5",
    "JPEGImages/syn_val_00002.jpg": "308550bec11ec1e820be5fe679a31a3f69e86dcba2e8ced2cc9f8a363885adac",
    "SegmentationClassAug/syn_train_00003.png": "72c012e6ba714f091bb3d00ff1e24060e9452e4d04814fd490c524fb45173a9e",
    "SegmentationClassAug/syn_val_00001.png": "128080984246e9833496e3529bef87c01b7a3748b0a4f19eabfddfb9f51d9484",
    "cls_labels.json": "031883d111bc4e0bc2152e30c63b38a8baec83ce3a5d16d669d1ad7a4abd5ea3",
    "dataset.json": "e2c6d6d96a27ea4fc80da50a86a6419a80c7f653016779abf5cc4ef2fc4d9af7",
}
# files of the full default data set (1,600 + 320 images), rendered alone
DEFAULT_FILES = {
    ("train", 777, "jpg"): "5a34bc9dba80c1ea25eebfb2d320a5216fa1b64e59548b6518761aca17f00046",
    ("train", 777, "png"): "f3c604eb0d511928322983a1b701bdc6145e02098a509d446c3df19d293c6862",
    ("val", 320, "jpg"): "1cad729129ed584091db33f5c6e419d848093a4c0d7901415033885af383c129",
    ("val", 320, "png"): "97bc62a70e48869cd4c3f125cd3471cda16bd85d0aa9747e8989967e5716d489",
}


def _sha(path: Path) -> str:
    """sha256 of a file's bytes, or for a JPEG/PNG of its decoded pixels (see SMALL_FILES)."""
    if path.suffix not in (".jpg", ".png"):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    with Image.open(path) as image:
        pixels = np.ascontiguousarray(np.asarray(image))
    digest = hashlib.sha256(f"{pixels.dtype}{pixels.shape}".encode())
    digest.update(pixels.tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- byte identity

def test_default_fingerprint_and_folder_are_unchanged(tmp_path: Path) -> None:
    assert SyntheticConfig().fingerprint() == DEFAULT_FINGERPRINT
    assert SyntheticConfig(part_sharing=1).fingerprint() == DEFAULT_FINGERPRINT
    assert "part_sharing" not in SyntheticConfig().to_dict()
    assert dataset_root(SyntheticConfig(), tmp_path).name == f"synthetic-{DEFAULT_FINGERPRINT}"
    dialled = SyntheticConfig(part_sharing=0.5)
    assert dialled.fingerprint() != DEFAULT_FINGERPRINT and dialled.to_dict()["part_sharing"] == 0.5
    for config in (SyntheticConfig(), dialled):
        assert SyntheticConfig(**config.to_dict()) == config


def test_small_default_data_set_hashes_as_before_and_both_ways(tmp_path: Path) -> None:
    implicit = materialise(SyntheticConfig(num_train=6, num_val=2), tmp_path / "a")
    explicit = materialise(SyntheticConfig(num_train=6, num_val=2, part_sharing=1.0), tmp_path / "b")
    assert implicit.name == explicit.name == f"synthetic-{SMALL_FINGERPRINT}"
    for rel, digest in SMALL_FILES.items():
        assert _sha(implicit / rel) == digest, rel
    files = sorted(p.relative_to(implicit) for p in implicit.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(explicit) for p in explicit.rglob("*") if p.is_file())
    assert len(files) == 2 + 2 * 8 + 2
    for rel in files:
        assert _sha(implicit / rel) == _sha(explicit / rel), rel


def test_full_default_data_set_files_hash_as_before(tmp_path: Path) -> None:
    config = SyntheticConfig()
    for split, index in {(s, i) for s, i, _ in DEFAULT_FILES}:
        image_id = f"syn_{split}_{index:05d}"
        write_sample(render_indexed(config, split, index), tmp_path, tmp_path, image_id, config.jpeg_quality)
        assert _sha(tmp_path / f"{image_id}.jpg") == DEFAULT_FILES[(split, index, "jpg")]
        assert _sha(tmp_path / f"{image_id}.png") == DEFAULT_FILES[(split, index, "png")]


# ---------------------------------------------------------------------------------------------- part sharing

@pytest.mark.parametrize("sharing", [0.0, 0.25, 0.5, 0.9])
def test_part_sharing_sets_the_class_specific_share_of_each_body(sharing: float) -> None:
    dialled = replace(FAST, part_sharing=sharing)
    own_total = body_total = 0
    for index in range(1, 41):
        a, base = render_indexed(dialled, "train", index), render_indexed(FAST, "train", index)
        assert len(a.objects) == len(base.objects)
        for obj, ref in zip(a.objects, base.objects, strict=True):
            body = obj.area - obj.part_area
            assert obj.own_area == max(1, round((1 - sharing) * body))  # exact, before occlusion
            assert obj.visible_own_area <= obj.own_area
            own_total, body_total = own_total + obj.own_area, body_total + body
            assert (obj.class_index, obj.area, obj.part_area) == (ref.class_index, ref.area, ref.part_area)
        # the knob touches nothing but the class-specific pixels: same mask, scene, badge, other pixels
        np.testing.assert_array_equal(a.mask, base.mask)
        np.testing.assert_array_equal(a.part_mask, base.part_mask)
        assert a.scene == base.scene
        assert not (a.own_mask & a.part_mask).any() and not (a.own_mask & (a.instances == 0)).any()
        assert a.own_mask.sum() == sum(o.visible_own_area for o in a.objects)
        np.testing.assert_array_equal(a.image[~a.own_mask], base.image[~a.own_mask])
        assert (a.image[a.own_mask] != base.image[a.own_mask]).any() or not a.own_mask.any()
    assert abs(own_total / body_total - (1 - sharing)) < 0.01
    assert not render_indexed(FAST, "train", 1).own_mask.any()


def _own_colours(samples: list) -> tuple[np.ndarray, np.ndarray]:
    colours, labels = [], []
    for s in samples:
        for k, obj in enumerate(s.objects):
            own = s.own_mask & (s.instances == k + 1)
            if own.sum() >= 3:
                colours.append(s.image[own].astype(np.float64).mean(axis=0))
                labels.append(obj.class_index)
    return np.array(colours), np.array(labels)


def test_class_specific_body_texture_names_the_class() -> None:
    world = build_world(replace(FAST, part_sharing=0.0))
    assert len({(t.kind, t.color_a, t.color_b) for t in world.own_bodies}) == FAST.num_classes
    assert world.scenes == build_world(FAST).scenes and world.bodies == build_world(FAST).bodies
    samples = [render_indexed(replace(FAST, part_sharing=0.0), "train", i) for i in range(1, 301)]
    x, y = _own_colours(samples)
    half = len(y) // 2
    centroids = np.stack([x[:half][y[:half] == c].mean(axis=0) for c in range(1, FAST.num_classes + 1)])
    predicted = 1 + ((x[half:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == y[half:]).mean() > 0.9  # class evidence, unlike the shared body (< 0.6 at sharing 1)


def test_dataset_json_records_the_knob_and_the_class_specific_share(tmp_path: Path) -> None:
    root = materialise(SyntheticConfig(num_train=8, num_val=2, image_size=64, part_sharing=0.4), tmp_path)
    info = read_json(root / "dataset.json")
    assert info["generator"]["part_sharing"] == 0.4
    assert SyntheticConfig(**info["generator"]).part_sharing == 0.4
    assert 0.5 < info["stats"]["train"]["own_fraction_of_bodies"] < 0.7  # 0.6 before occlusion


# ---------------------------------------------------------------------------------------------- co-occurrence

def test_cooccurrence_sets_scene_frequencies_and_one_over_num_scenes_is_none() -> None:
    tiny = SyntheticConfig(image_size=32)  # scene choice does not depend on the image size; 32 px renders fast
    world = build_world(tiny)
    n = 400
    for p in (0.8, 1 / tiny.num_scenes, 0.0):
        config = replace(tiny, cooccurrence=p)
        samples = [render_indexed(config, "val", i) for i in range(1, n + 1)]
        rate = np.mean([s.scene_is_typical for s in samples])
        assert abs(rate - p) <= 4 * math.sqrt(max(p * (1 - p), 1e-9) / n) + 1e-9, (p, rate)
        for s in samples:
            assert s.scene_is_typical == (s.scene == world.typical_scene[s.primary_class - 1])
        if p == 1 / tiny.num_scenes:  # none: every scene equally often, whatever the class
            counts = np.bincount([s.scene for s in samples], minlength=tiny.num_scenes)
            expected = n / tiny.num_scenes
            chi2 = float(((counts - expected) ** 2 / expected).sum())
            assert chi2 < 27.9  # chi-square, 9 degrees of freedom, p = 0.001
    # co-occurrence does not touch the bodies: no class-specific pixels at the default sharing
    assert not any(render_indexed(replace(tiny, cooccurrence=0.1), "val", i).own_mask.any() for i in range(1, 20))


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_bad_part_sharing_names_the_field(value: float) -> None:
    with pytest.raises(ConfigError) as info:
        SyntheticConfig(part_sharing=value)
    assert str(info.value).startswith(f"synthetic.part_sharing={value!r}: expected")
