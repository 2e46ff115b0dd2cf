"""The embedded synthetic benchmark: determinism, VOC layout, masks, the built-in failure modes, caching."""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vwl_lightning.data import synthetic
from vwl_lightning.data.image_labels import classes_in_mask, load_image_labels
from vwl_lightning.data.label_png import read_label_png
from vwl_lightning.data.synthetic import (
    SYNTHETIC_CLASS_NAMES,
    SyntheticConfig,
    build_world,
    class_names,
    default_cache_dir,
    materialise,
    outline_ring,
    render_indexed,
    render_sample,
    sample_id,
)
from vwl_lightning.data.synthetic import cache as synthetic_cache
from vwl_lightning.data.voc import ClassificationDataset, SegmentationDataset, VOCLayout, load_rgb
from vwl_lightning.errors import ConfigError

SMALL = SyntheticConfig(num_train=12, num_val=4)
FAST = SyntheticConfig(image_size=64)  # statistics do not depend on the image size; 64 px renders 2x faster


def _render_many(config: SyntheticConfig, count: int, seed: int = 100) -> list[synthetic.SyntheticSample]:
    return [render_sample(config, np.random.default_rng([seed, i])) for i in range(count)]


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialise(SMALL, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def fast_samples() -> list[synthetic.SyntheticSample]:
    return _render_many(FAST, 400)


# ---------------------------------------------------------------------------------------------- determinism

def test_render_is_deterministic_by_rng_and_seed() -> None:
    a = render_sample(SMALL, np.random.default_rng(5))
    b = render_sample(SMALL, np.random.default_rng(5))
    c = render_sample(SMALL, np.random.default_rng(6))
    for field in ("image", "mask", "part_mask", "instances"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert (a.objects, a.scene, a.classes) == (b.objects, b.scene, b.classes)
    assert not np.array_equal(a.image, c.image)

    first = render_indexed(SMALL, "train", 3)
    np.testing.assert_array_equal(first.image, render_indexed(SMALL, "train", 3).image)
    assert not np.array_equal(first.image, render_indexed(SMALL, "train", 4).image)
    assert not np.array_equal(first.image, render_indexed(SMALL, "val", 3).image)
    assert not np.array_equal(first.image, render_indexed(replace(SMALL, seed=1), "train", 3).image)


def test_materialise_is_byte_identical_for_the_same_seed(tmp_path: Path, small_root: Path) -> None:
    again = materialise(SMALL, tmp_path / "other")
    assert again.name == small_root.name
    files = sorted(p.relative_to(small_root) for p in small_root.rglob("*") if p.is_file())
    assert len(files) == 2 * (SMALL.num_train + SMALL.num_val) + 4  # jpg + png each, 2 lists, 2 json
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (small_root / rel).read_bytes() == (again / rel).read_bytes(), rel

    other = materialise(replace(SMALL, seed=1), tmp_path / "other")
    assert other != again
    name = f"JPEGImages/{sample_id('train', 1)}.jpg"
    assert (other / name).read_bytes() != (again / name).read_bytes()


def test_each_written_image_is_reproducible_alone(small_root: Path) -> None:
    layout = VOCLayout.at(small_root)
    for split, index in (("train", 7), ("val", 2)):
        sample = render_indexed(SMALL, split, index)
        image_id = sample_id(split, index)
        np.testing.assert_array_equal(read_label_png(layout.mask_path(image_id)), sample.mask)
        encoded = io.BytesIO()
        Image.fromarray(sample.image).save(encoded, format="JPEG", quality=SMALL.jpeg_quality, subsampling=0)
        assert layout.image_path(image_id).read_bytes() == encoded.getvalue()
        decoded = load_rgb(layout.image_path(image_id)).astype(np.int16)
        assert np.abs(decoded - sample.image).mean() < 5.0  # quality 95 keeps all but part of the pixel noise


# ---------------------------------------------------------------------------------------------- VOC layout

def test_layout_is_readable_by_the_voc_datasets(small_root: Path) -> None:
    assert small_root.name == f"synthetic-{SMALL.fingerprint()}"
    layout = VOCLayout.at(small_root)
    assert layout.split_ids("train") == [sample_id("train", i) for i in range(1, 13)]
    assert layout.split_ids("val") == ["syn_val_00001", "syn_val_00002", "syn_val_00003", "syn_val_00004"]

    train = ClassificationDataset(layout, "train", SMALL.num_labels)
    assert len(train) == 12
    item = train[0]
    assert item["image"].shape == (112, 112, 3) and item["image"].dtype == np.uint8
    assert item["label"].shape == (8,)
    expected = np.zeros(8, dtype=np.float32)
    expected[[c - 1 for c in render_indexed(SMALL, "train", 1).classes]] = 1
    np.testing.assert_array_equal(item["label"], expected)

    val = SegmentationDataset(layout, "val")
    assert len(val) == 4 and val[3]["mask"].shape == (112, 112)

    meta = json.loads(layout.root.joinpath("dataset.json").read_text())
    assert meta["name"] == "synthetic"
    assert meta["class_names"] == list(SYNTHETIC_CLASS_NAMES) == list(class_names(8))
    assert meta["class_names"][0] == "background" and len(set(meta["class_names"])) == 9
    # knobs at the default that reproduces the first generator are left out (test_synthetic_dials.py)
    assert meta["generator"] == SMALL.to_dict() == {k: v for k, v in asdict(SMALL).items() if k != "part_sharing"}
    assert SyntheticConfig(**meta["generator"]) == SMALL
    assert meta["version"] == synthetic.GENERATOR_VERSION
    assert meta["stats"]["train"]["num_images"] == 12


def test_cls_labels_equal_the_classes_in_the_masks(small_root: Path) -> None:
    labels = load_image_labels(small_root / "cls_labels.json", SMALL.num_labels)
    ids = [sample_id("train", i) for i in range(1, 13)] + [sample_id("val", i) for i in range(1, 5)]
    assert sorted(labels) == sorted(ids)
    for image_id in ids:
        mask = read_label_png(small_root / "SegmentationClassAug" / f"{image_id}.png")
        assert labels[image_id] == classes_in_mask(mask, SMALL.num_labels)
        assert len(labels[image_id]) >= 1


# ---------------------------------------------------------------------------------------------- masks

def _outline_pixels(instances: np.ndarray) -> np.ndarray:
    """Pixels with an 8-neighbour of another instance id (independent of ``outline_ring``)."""
    out = np.zeros(instances.shape, dtype=bool)
    h, w = instances.shape
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            a = instances[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
            b = instances[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] |= a != b
    return out


def test_masks_have_valid_values_and_a_two_pixel_ignore_ring(fast_samples: list) -> None:
    allowed = set(range(FAST.num_classes + 1)) | {255}
    for sample in fast_samples[:60]:
        assert set(np.unique(sample.mask).tolist()) <= allowed
        outline = _outline_pixels(sample.instances)
        ring = sample.mask == 255
        assert outline.any() and ring.any()
        assert np.all(ring == outline)  # radius 1: exactly the pixels on either side of an outline
        assert np.all(sample.mask[~ring] == np.array([0] + [o.class_index for o in sample.objects])[
            sample.instances[~ring]])
        assert sample.mask.dtype == np.uint8 and sample.image.dtype == np.uint8
        assert set(sample.classes) == {int(v) for v in np.unique(sample.mask) if 0 < v < 255}
        assert len(sample.classes) >= 1


def test_border_radius_sets_the_ring_width() -> None:
    rng_seed = 11
    thin = render_sample(replace(FAST, border_radius=1), np.random.default_rng(rng_seed))
    wide = render_sample(replace(FAST, border_radius=2), np.random.default_rng(rng_seed))
    none = render_sample(replace(FAST, border_radius=0), np.random.default_rng(rng_seed))
    np.testing.assert_array_equal(thin.instances, wide.instances)
    ratio = (wide.mask == 255).sum() / (thin.mask == 255).sum()
    assert 1.6 < ratio < 2.4
    assert not (none.mask == 255).any()
    assert outline_ring(np.zeros((5, 5), np.uint8), 1).sum() == 0


# ---------------------------------------------------------------------------------------------- failure modes

def test_typical_scene_rate_follows_cooccurrence(fast_samples: list) -> None:
    rate = np.mean([s.scene_is_typical for s in fast_samples])
    bound = 4 * math.sqrt(0.8 * 0.2 / len(fast_samples))  # 4 standard errors of a binomial proportion
    assert abs(rate - 0.8) < bound
    world = build_world(FAST)
    for s in fast_samples:
        assert s.scene_is_typical == (s.scene == world.typical_scene[s.primary_class - 1])
        assert s.primary_class == s.objects[0].class_index

    never = _render_many(replace(FAST, cooccurrence=0.0), 150)
    always = _render_many(replace(FAST, cooccurrence=1.0), 150)
    assert not any(s.scene_is_typical for s in never)
    assert all(s.scene_is_typical for s in always)
    assert len({s.scene for s in never}) >= FAST.num_scenes - 1  # "other" scenes are spread out


def _nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Fit class centroids on the first half, score on the second."""
    half = len(labels) // 2
    classes = np.unique(labels[:half])
    centroids = np.stack([features[:half][labels[:half] == c].mean(axis=0) for c in classes])
    distance = ((features[half:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    return float((classes[distance.argmin(axis=1)] == labels[half:]).mean())


def _badge_and_body_colours(samples: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per visible object: mean RGB of its badge pixels, of its other pixels, and its class."""
    badge, body, labels = [], [], []
    for s in samples:
        image = s.image.astype(np.float64)
        for k, obj in enumerate(s.objects):
            visible = s.instances == k + 1
            if (visible & s.part_mask).sum() < 3 or (visible & ~s.part_mask).sum() < 3:
                continue
            badge.append(image[visible & s.part_mask].mean(axis=0))
            body.append(image[visible & ~s.part_mask].mean(axis=0))
            labels.append(obj.class_index)
    return np.array(badge), np.array(body), np.array(labels)


def test_badge_names_the_class_but_the_body_does_not(fast_samples: list) -> None:
    badge, body, y = _badge_and_body_colours(fast_samples)
    assert len(y) > 500
    assert _nearest_centroid_accuracy(badge, y) > 0.95  # the small part alone names the class
    assert _nearest_centroid_accuracy(body, y) < 0.6    # the large body is weak evidence (chance: 1/8)

    # control: the same probe does see class-specific bodies, so the bound above is not vacuous
    own = replace(FAST, num_body_textures=8, body_textures_per_class=1)
    _, own_body, own_y = _badge_and_body_colours(_render_many(own, 300))
    assert _nearest_centroid_accuracy(own_body, own_y) > 0.6


def test_part_fraction_is_small_and_in_the_configured_range(fast_samples: list) -> None:
    objects = [o for s in fast_samples for o in s.objects]
    fractions = np.array([o.part_area / o.area for o in objects])
    assert fractions.min() >= FAST.part_fraction_min and fractions.max() <= FAST.part_fraction_max
    visible = sum(o.visible_part_area for o in objects) / sum(o.visible_area for o in objects)
    assert FAST.part_fraction_min <= visible <= FAST.part_fraction_max
    for s in fast_samples[:50]:
        assert not (s.part_mask & (s.instances == 0)).any()
        assert s.part_mask.sum() == sum(o.visible_part_area for o in s.objects)

    wide = replace(FAST, part_fraction_min=0.3, part_fraction_max=0.4)
    wide_fractions = [o.part_area / o.area for s in _render_many(wide, 40) for o in s.objects]
    assert 0.3 <= min(wide_fractions) and max(wide_fractions) <= 0.4


def test_body_textures_are_shared_between_classes(fast_samples: list) -> None:
    world = build_world(FAST)
    users = {t: {c + 1 for c, allowed in enumerate(world.class_bodies) if t in allowed}
             for t in range(FAST.num_body_textures)}
    assert all(len(classes) >= 2 for classes in users.values()), users

    seen: dict[int, set[int]] = {t: set() for t in range(FAST.num_body_textures)}
    for obj in (o for s in fast_samples for o in s.objects):
        assert obj.torso_texture in world.class_bodies[obj.class_index - 1]
        seen[obj.torso_texture].add(obj.class_index)
    assert all(len(classes) >= 2 for classes in seen.values()), seen

    badges = {(b.kind, b.color_a, b.color_b) for b in world.badges}
    assert len(badges) == FAST.num_classes
    hues = np.array([b.color_a for b in world.badges])
    gaps = np.linalg.norm(hues[:, None] - hues[None], axis=-1) + np.eye(len(hues)) * 9
    assert gaps.min() > 0.2


def test_objects_per_image_sizes_and_clutter(fast_samples: list) -> None:
    counts = [len(s.objects) for s in fast_samples]
    assert min(counts) >= 1 and max(counts) <= 3 and len(set(counts)) == 3
    assert all(0 <= s.num_clutter <= 3 for s in fast_samples)
    assert all(o.visible_area >= FAST.min_visible_fraction * o.area for s in fast_samples for o in s.objects)
    fraction = np.mean([o.visible_area / FAST.image_size**2 for s in fast_samples for o in s.objects])
    assert 0.03 < fraction < 0.15
    frequencies = np.bincount([c for s in fast_samples for c in s.classes], minlength=9)[1:]
    assert frequencies.min() > 0.5 * frequencies.mean()  # every class appears about equally often


# ---------------------------------------------------------------------------------------------- cache

def test_complete_folder_is_reused_without_regeneration(small_root: Path, monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("regenerated a complete data set")

    monkeypatch.setattr(synthetic_cache, "_write_dataset", fail)
    assert materialise(SMALL, small_root.parent) == small_root


def test_leftover_and_crashed_runs_do_not_break_materialise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    config = replace(SMALL, num_train=5, num_val=2)
    root = tmp_path / f"synthetic-{config.fingerprint()}"
    leftover = tmp_path / f".tmp-{root.name}-dead"
    (leftover / "JPEGImages").mkdir(parents=True)
    (leftover / "JPEGImages" / "junk.jpg").write_bytes(b"half")

    calls = {"n": 0}
    real = synthetic_cache.render_indexed

    def crash_after_three(*args: object) -> synthetic.SyntheticSample:
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(synthetic_cache, "render_indexed", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        materialise(config, tmp_path)
    assert not root.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [leftover.name]  # the crashed run cleaned up

    monkeypatch.setattr(synthetic_cache, "render_indexed", real)
    root.mkdir()  # an incomplete folder under the final name, e.g. copied by hand
    (root / "stray.txt").write_text("x")
    assert materialise(config, tmp_path) == root
    assert (root / "dataset.json").is_file() and not (root / "stray.txt").exists()
    assert len(list((root / "JPEGImages").iterdir())) == 7


# ---------------------------------------------------------------------------------------------- config

@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"cooccurrence": 1.5}, "cooccurrence"),
        ({"cooccurrence": -0.1}, "cooccurrence"),
        ({"image_size": 16}, "image_size"),
        ({"objects_min": 3, "objects_max": 2}, "objects_max"),
        ({"part_fraction_min": 0.3, "part_fraction_max": 0.2}, "part_fraction_max"),
        ({"jpeg_quality": 0}, "jpeg_quality"),
        ({"num_train": "10"}, "num_train"),
        ({"num_val": 0}, "num_val"),
        ({"body_textures_per_class": 7}, "body_textures_per_class"),
    ],
)
def test_bad_config_raises_config_error_naming_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        SyntheticConfig(**overrides)
    message = str(info.value)
    assert f"synthetic.{field}=" in message and "expected" in message and "\n" not in message


def test_fingerprint_covers_every_field() -> None:
    base = SyntheticConfig()
    assert base.fingerprint() == SyntheticConfig().fingerprint()
    assert len(base.fingerprint()) == 12 and int(base.fingerprint(), 16) >= 0
    assert SyntheticConfig(cooccurrence=1).fingerprint() == SyntheticConfig(cooccurrence=1.0).fingerprint()
    prints = {base.fingerprint()}
    for f in fields(SyntheticConfig):
        value = getattr(base, f.name)
        changed = replace(base, **{f.name: value + 1 if isinstance(value, int) else value * 0.9})
        prints.add(changed.fingerprint())
    assert len(prints) == len(fields(SyntheticConfig)) + 1


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VWL_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("VWL_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "vwl_lightning"


# ---------------------------------------------------------------------------------------------- command line

def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert synthetic.main(["materialise", "--cache-dir", str(tmp_path), "--num-train", "3", "--num-val", "2"]) == 0
    root = Path(capsys.readouterr().out.strip())
    assert root.parent == tmp_path and len(VOCLayout.at(root).split_ids("train")) == 3

    out = tmp_path / "grid.png"
    assert synthetic.main(["grid", "--out", str(out), "--rows", "1", "--cols", "2"]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > image.height > 100

    with pytest.raises(SystemExit) as info:
        synthetic.main(["materialise", "--cache-dir", str(tmp_path), "--num-train", "0"])
    assert info.value.code == 2
    assert "synthetic.num_train" in capsys.readouterr().err
