"""The embedded, procedurally generated WSSS benchmark (the project's default data set).

It ships as code: a seed and a :class:`SyntheticConfig` fix every pixel. On first use
:func:`materialise` writes it into a cache folder in the PASCAL VOC layout that
:mod:`vwl_lightning.data.voc` reads (``JPEGImages``, ``SegmentationClassAug``, ``ImageSets/Segmentation``,
``cls_labels.json``) plus a ``dataset.json`` with the class names, the generator settings and summary
statistics.

Why it exists: it is a yardstick for the VWL method, so it reproduces *by construction* the two CAM
failure modes the paper attacks.

1. **Partial activation.** Every object is a random outline (a blob or a star polygon drawn from one
   family shared by all classes, at random scale, aspect and rotation) made of three parts:

   - a *torso* (about 55-75 % of the object) whose texture is drawn from the class's allowed subset of a
     pool of body textures; each pool texture is allowed for several classes;
   - a *limb* region (the rest of the body) whose texture is drawn from the whole pool, whatever the class;
   - a small *badge* (``part_fraction_min``..``part_fraction_max`` of the object's pixels) with a
     class-unique saturated colour and pattern.

   So the badge alone names the class, while the body, which covers most of the object, is only weak
   evidence. A classifier can therefore succeed while its CAM covers only the badge.
2. **Background co-occurrence.** Each class has a typical scene (background texture). The scene of an
   image is the typical scene of its primary (largest) object with probability ``cooccurrence`` and
   one of the other scenes otherwise, so background pixels carry class evidence.

On top: clutter (badge-less distractor shapes with pool textures, labelled background), 1-3 objects per
image with occlusion (the mask shows what is visible), colour/brightness jitter, Gaussian pixel noise and
JPEG compression. Masks mark a ``2 * border_radius`` px ring along every visible object outline with 255,
like VOC. Nothing here is tuned to make any method win.

Command line::

    python -m vwl_lightning.data.synthetic grid --out docs/synthetic_samples.png --rows 4 --cols 4 --seed 0
    python -m vwl_lightning.data.synthetic materialise [--cache-dir D] [--seed S]
"""

from __future__ import annotations

import argparse
import colorsys
import contextlib
import functools
import hashlib
import json
import logging
import math
import numbers
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vwl_lightning.data.image_labels import derive_image_labels, save_image_labels
from vwl_lightning.data.label_png import write_label_png
from vwl_lightning.data.meta import IGNORE_INDEX, DatasetMeta, voc_palette
from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.utils.io import read_json, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

#: Bump whenever a change alters the generated pixels; it is part of the fingerprint, so caches of an older
#: generator are never reused.
GENERATOR_VERSION = 1

DATASET_JSON = "dataset.json"
SPLITS: tuple[str, ...] = ("train", "val")
_SPLIT_CODES = {"train": 1, "val": 2}
_WORLD_CODE = 0
_REFERENCE_SIZE = 112  # texture periods are given in pixels at this image size and scaled with it

_NAME_POOL: tuple[str, ...] = (
    "arvo", "blick", "corra", "dunth", "esko", "fomp", "gresk", "hulo", "ivet", "jusk",
    "krell", "lumo", "morv", "nubo", "ostra", "pelk", "quon", "rask", "sulo", "tev",
)


def class_names(num_classes: int) -> tuple[str, ...]:
    """Class names for ``num_classes`` foreground classes, background first (invented, short)."""
    names = [_NAME_POOL[i] if i < len(_NAME_POOL) else f"class{i + 1}" for i in range(num_classes)]
    return ("background", *names)


#: Class names of the default configuration (8 foreground classes), background first.
SYNTHETIC_CLASS_NAMES: tuple[str, ...] = class_names(8)


# --------------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the generator. Equal configs give byte-identical data sets.

    ``num_classes`` counts *foreground* classes; masks and the VOC readers use ``num_classes + 1``
    labels (0 is background), see :attr:`num_labels`.
    """

    seed: int = 0
    num_train: int = 1600
    num_val: int = 320
    image_size: int = 112
    num_classes: int = 8
    cooccurrence: float = 0.8          # P(scene = the primary class's typical scene)
    extra_scenes: int = 2              # scenes that are no class's typical scene
    num_body_textures: int = 6         # size of the shared body-texture pool
    body_textures_per_class: int = 2   # torso textures allowed per class (each shared with other classes)
    torso_fraction_min: float = 0.55   # torso share of the object; the limb takes the rest
    torso_fraction_max: float = 0.75
    part_fraction_min: float = 0.10    # badge (discriminative part) share of the object's pixels
    part_fraction_max: float = 0.20
    objects_min: int = 1
    objects_max: int = 3
    object_size_min: float = 0.3       # object's long diameter / image side
    object_size_max: float = 0.55
    object_aspect_max: float = 1.8     # long / short axis, drawn uniformly in [1, max]
    min_visible_fraction: float = 0.5  # occlusion may hide at most half of an object
    clutter_min: int = 0
    clutter_max: int = 3
    clutter_size_min: float = 0.12
    clutter_size_max: float = 0.3
    color_jitter: float = 0.06         # per-channel gain jitter of each painted region
    brightness_jitter: float = 0.15    # overall gain jitter of each painted region
    noise_std: float = 6.0             # Gaussian pixel noise, in 0..255 units
    border_radius: int = 1             # ignore ring of width 2 * border_radius along outlines (0: none)
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                    raise ConfigError(f"synthetic.{f.name}={value!r}: expected an integer")
                object.__setattr__(self, f.name, int(value))
            else:
                if isinstance(value, bool) or not isinstance(value, numbers.Real):
                    raise ConfigError(f"synthetic.{f.name}={value!r}: expected a number")
                object.__setattr__(self, f.name, float(value))
        self._validate()

    def _validate(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ConfigError(f"synthetic.{name}={getattr(self, name)!r}: expected {expected}")

        need(self.seed >= 0, "seed", "an integer >= 0")
        need(self.num_train >= 1, "num_train", "at least 1 image")
        need(self.num_val >= 1, "num_val", "at least 1 image")
        need(32 <= self.image_size <= 1024, "image_size", "an image side in [32, 1024] px")
        need(1 <= self.num_classes <= 254, "num_classes", "1..254 foreground classes")
        need(0.0 <= self.cooccurrence <= 1.0, "cooccurrence", "a probability in [0, 1]")
        need(self.extra_scenes >= 0, "extra_scenes", "an integer >= 0")
        need(self.cooccurrence == 1.0 or self.num_classes + self.extra_scenes >= 2, "extra_scenes",
             "at least 2 scenes in all (num_classes + extra_scenes) when cooccurrence < 1")
        need(1 <= self.num_body_textures <= 64, "num_body_textures", "1..64 textures")
        need(1 <= self.body_textures_per_class <= self.num_body_textures, "body_textures_per_class",
             f"1..num_body_textures ({self.num_body_textures})")
        need(0.0 < self.torso_fraction_min <= 1.0, "torso_fraction_min", "a fraction in (0, 1]")
        need(self.torso_fraction_min <= self.torso_fraction_max <= 1.0, "torso_fraction_max",
             f"a fraction in [torso_fraction_min ({self.torso_fraction_min}), 1]")
        need(0.0 < self.part_fraction_min < 1.0, "part_fraction_min", "a fraction in (0, 1)")
        need(self.part_fraction_min <= self.part_fraction_max < 1.0, "part_fraction_max",
             f"a fraction in [part_fraction_min ({self.part_fraction_min}), 1)")
        need(1 <= self.objects_min <= 32, "objects_min", "1..32 objects")
        need(self.objects_min <= self.objects_max <= 32, "objects_max",
             f"objects_min ({self.objects_min})..32 objects")
        need(0.05 <= self.object_size_min <= 1.0, "object_size_min", "a fraction of the image side in [0.05, 1]")
        need(self.object_size_min <= self.object_size_max <= 1.0, "object_size_max",
             f"a fraction in [object_size_min ({self.object_size_min}), 1]")
        need(1.0 <= self.object_aspect_max <= 4.0, "object_aspect_max", "an aspect ratio in [1, 4]")
        need(0.0 < self.min_visible_fraction <= 1.0, "min_visible_fraction", "a fraction in (0, 1]")
        need(self.clutter_min >= 0, "clutter_min", "an integer >= 0")
        need(self.clutter_min <= self.clutter_max <= 64, "clutter_max", f"clutter_min ({self.clutter_min})..64")
        need(0.02 <= self.clutter_size_min <= 1.0, "clutter_size_min", "a fraction of the image side in [0.02, 1]")
        need(self.clutter_size_min <= self.clutter_size_max <= 1.0, "clutter_size_max",
             f"a fraction in [clutter_size_min ({self.clutter_size_min}), 1]")
        need(0.0 <= self.color_jitter <= 0.5, "color_jitter", "a gain jitter in [0, 0.5]")
        need(0.0 <= self.brightness_jitter <= 0.5, "brightness_jitter", "a gain jitter in [0, 0.5]")
        need(0.0 <= self.noise_std <= 64.0, "noise_std", "a standard deviation in [0, 64]")
        need(0 <= self.border_radius <= 8, "border_radius", "0..8 px")
        need(1 <= self.jpeg_quality <= 100, "jpeg_quality", "a JPEG quality in 1..100")

    @property
    def num_labels(self) -> int:
        """Number of labels including background: what ``ClassificationDataset`` calls ``num_classes``."""
        return self.num_classes + 1

    @property
    def num_scenes(self) -> int:
        """Number of background scenes: one typical scene per class plus ``extra_scenes``."""
        return self.num_classes + self.extra_scenes

    def fingerprint(self) -> str:
        """Short hash of every field and the generator version; names the cache folder."""
        blob = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def synthetic_meta(config: SyntheticConfig) -> DatasetMeta:
    """Class names and palette of the data set that ``config`` generates."""
    return DatasetMeta("synthetic", class_names(config.num_classes))


# --------------------------------------------------------------------------------------------------------
# the "world": textures, badges and class-scene / class-texture assignments, fixed by the seed
# --------------------------------------------------------------------------------------------------------

_SCENE_KINDS = ("blotches", "gradient", "waves", "stripes", "checker", "dots", "hatch", "mosaic")
_BODY_KINDS = ("stripes", "checker", "dots", "waves", "hatch", "mosaic")
_BADGE_KINDS = ("rings", "dots", "checker", "stripes")


@dataclass(frozen=True)
class TextureSpec:
    """A two-colour procedural texture; each painted instance gets a random phase and small jitter."""

    kind: str
    color_a: tuple[float, float, float]  # RGB in [0, 1]
    color_b: tuple[float, float, float]
    period: float                        # px at the 112 px reference size
    angle: float                         # radians
    param: float = 0.3                   # kind-specific: dot radius, line width, wave amplitude
    angle_jitter: float = 0.25           # radians of random rotation per instance


@dataclass(frozen=True)
class SyntheticWorld:
    """What the seed fixes once for the whole data set (index ``c - 1`` holds class ``c``)."""

    scenes: tuple[TextureSpec, ...]
    bodies: tuple[TextureSpec, ...]
    badges: tuple[TextureSpec, ...]
    class_bodies: tuple[tuple[int, ...], ...]  # torso textures allowed per class
    typical_scene: tuple[int, ...]             # typical scene per class


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (round(r, 4), round(g, 4), round(b, 4))


def _assign_bodies(rng: np.random.Generator, num_classes: int, num_textures: int, per_class: int
                   ) -> tuple[tuple[int, ...], ...]:
    """Give each class ``per_class`` torso textures, balancing use so every texture serves several classes.

    Greedy: take the least-used textures (random tie break), retrying to avoid a set another class already has.
    """
    counts = np.zeros(num_textures, dtype=np.int64)
    used: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    for _ in range(num_classes):
        choice: tuple[int, ...] = ()
        for _attempt in range(32):
            order = np.lexsort((rng.random(num_textures), counts))
            choice = tuple(sorted(int(t) for t in order[:per_class]))
            if choice not in used:
                break
        used.add(choice)
        counts[list(choice)] += 1
        out.append(choice)
    return tuple(out)


@functools.lru_cache(maxsize=16)
def build_world(config: SyntheticConfig) -> SyntheticWorld:
    """Draw the scenes, body textures, badges and assignments from the config's seed (cached)."""
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(_WORLD_CODE,)))
    golden = 0.618033988749895

    scenes = []
    hue0 = rng.random()
    for i in range(config.num_scenes):
        hue = hue0 + i * golden
        sat, val = rng.uniform(0.12, 0.45), rng.uniform(0.3, 0.62)
        shift = rng.uniform(0.1, 0.2) * (1 if val < 0.45 else -1)
        kind = _SCENE_KINDS[i % len(_SCENE_KINDS)]
        scenes.append(TextureSpec(
            kind=kind, color_a=_hsv(hue, sat, val), color_b=_hsv(hue + rng.uniform(-0.05, 0.05), sat, val + shift),
            period=float(rng.uniform(16.0, 30.0)), angle=float(rng.uniform(0, math.pi)),
            param=0.3, angle_jitter=0.4,
        ))

    bodies = []
    hue0 = rng.random()
    for i in range(config.num_body_textures):
        hue = hue0 + i * golden
        sat = rng.uniform(0.25, 0.6)
        bodies.append(TextureSpec(
            kind=_BODY_KINDS[i % len(_BODY_KINDS)],
            color_a=_hsv(hue, sat, rng.uniform(0.62, 0.88)),
            color_b=_hsv(hue + rng.uniform(-0.08, 0.08), sat, rng.uniform(0.18, 0.42)),
            period=float(rng.uniform(6.5, 11.0)), angle=float(rng.uniform(0, math.pi)),
            param=float(rng.uniform(0.25, 0.35)), angle_jitter=0.25,
        ))

    badges = []
    hue0 = rng.random()
    for c in range(config.num_classes):
        second = (0.97, 0.97, 0.95) if c % 2 == 0 else (0.06, 0.06, 0.08)
        badges.append(TextureSpec(
            kind=_BADGE_KINDS[c % len(_BADGE_KINDS)],
            color_a=_hsv(hue0 + c / config.num_classes, 0.92, 0.95), color_b=second,
            period=float(rng.uniform(4.0, 5.0)), angle=float(rng.uniform(0, math.pi)),
            param=0.32, angle_jitter=math.pi,
        ))

    class_bodies = _assign_bodies(rng, config.num_classes, config.num_body_textures,
                                  config.body_textures_per_class)
    typical = rng.permutation(config.num_scenes)[: config.num_classes]
    return SyntheticWorld(tuple(scenes), tuple(bodies), tuple(badges), class_bodies,
                          tuple(int(s) for s in typical))


# --------------------------------------------------------------------------------------------------------
# rasterisation: shapes and textures (vectorised numpy)
# --------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(x, y)``, each ``(size, size)`` float32, read-only."""
    axis = np.arange(size, dtype=np.float32) + 0.5
    x, y = np.meshgrid(axis, axis)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _bbox(mask: np.ndarray) -> tuple[slice, slice]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _sharp(z: np.ndarray) -> np.ndarray:
    """Map a wave in [-1, 1] to a crisp but not aliased [0, 1] pattern."""
    return np.clip(0.5 + 1.6 * z, 0.0, 1.0)


def _pattern(spec: TextureSpec, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, scale: float,
             origin: tuple[float, float]) -> np.ndarray:
    """Texture mix weight in [0, 1] at the pixels ``(x, y)``: 0 gives ``color_a``, 1 ``color_b``."""
    period = spec.period * scale * rng.uniform(0.9, 1.1)
    angle = spec.angle + rng.uniform(-spec.angle_jitter, spec.angle_jitter)
    ca, sa = math.cos(angle), math.sin(angle)
    u = (x * ca + y * sa) / period + rng.random()
    v = (y * ca - x * sa) / period + rng.random()
    kind = spec.kind
    if kind == "stripes":
        return _sharp(np.sin(2 * np.pi * u))
    if kind == "waves":
        return _sharp(np.sin(2 * np.pi * (u + spec.param * np.sin(np.pi * v))))
    if kind == "checker":
        return ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    if kind == "dots":
        fu, fv = u - np.floor(u) - 0.5, v - np.floor(v) - 0.5
        return (fu * fu + fv * fv < spec.param**2).astype(np.float32)
    if kind == "hatch":
        return ((u - np.floor(u) < spec.param) | (v - np.floor(v) < spec.param)).astype(np.float32)
    if kind == "mosaic":
        table = rng.choice(np.array([0.0, 0.5, 1.0], dtype=np.float32), size=(16, 16))
        return table[np.floor(u).astype(np.int64) % 16, np.floor(v).astype(np.int64) % 16]
    if kind == "rings":
        rho = np.hypot(x - origin[0], y - origin[1]) / period
        return _sharp(np.cos(2 * np.pi * rho))
    if kind in ("blotches", "gradient"):
        field = np.zeros_like(x)
        for _ in range(4):
            theta = rng.uniform(0, 2 * np.pi)
            wavelength = period * rng.uniform(1.2, 2.5)
            field += np.sin((x * math.cos(theta) + y * math.sin(theta)) * (2 * np.pi / wavelength)
                            + rng.uniform(0, 2 * np.pi))
        if kind == "blotches":
            return 1.0 / (1.0 + np.exp(-1.5 * field))
        ramp = (x * ca + y * sa) / (_REFERENCE_SIZE * scale)
        ramp = ramp - ramp.min()
        return np.clip(ramp / max(float(ramp.max()), 1e-6) + 0.12 * field, 0.0, 1.0)
    raise ValueError(f"unknown texture kind {kind!r}")


def _paint(canvas: np.ndarray, region: np.ndarray, spec: TextureSpec, rng: np.random.Generator,
           config: SyntheticConfig, origin: tuple[float, float] = (0.0, 0.0)) -> None:
    """Fill ``region`` of the float RGB ``canvas`` with one jittered instance of ``spec``."""
    if not region.any():
        return
    rows, cols = _bbox(region)
    xg, yg = _grid(config.image_size)
    t = _pattern(spec, xg[rows, cols], yg[rows, cols], rng, config.image_size / _REFERENCE_SIZE, origin)
    gain = (1.0 + rng.uniform(-config.brightness_jitter, config.brightness_jitter)) * (
        1.0 + rng.uniform(-config.color_jitter, config.color_jitter, size=3))
    a = np.clip(np.asarray(spec.color_a) * gain, 0.0, 1.0).astype(np.float32)
    b = np.clip(np.asarray(spec.color_b) * gain, 0.0, 1.0).astype(np.float32)
    texture = a + (b - a) * t[..., None]
    sub_region = region[rows, cols]
    canvas[rows, cols][sub_region] = texture[sub_region]


def _random_outline(rng: np.random.Generator) -> tuple[str, np.ndarray, np.ndarray]:
    """A class-independent outline: a smooth Fourier blob or a star polygon, as a radial function.

    Returns ``(kind, a, b)``: blob harmonics amplitudes/phases, or polygon vertex angles/radii.
    """
    if rng.random() < 0.5:
        amplitudes = rng.uniform(0.0, 0.17, size=3)
        phases = rng.uniform(0, 2 * np.pi, size=3)
        theta = np.linspace(0, 2 * np.pi, 256, endpoint=False)
        peak = float(np.max(1.0 + (amplitudes[:, None] * np.cos(np.arange(2, 5)[:, None] * theta + phases[:, None]))
                            .sum(axis=0)))
        return "blob", amplitudes / peak, np.concatenate([phases, [1.0 / peak]])
    n = int(rng.integers(5, 10))
    angles = (np.arange(n) + rng.uniform(-0.3, 0.3, size=n)) * (2 * np.pi / n) + rng.uniform(0, 2 * np.pi)
    angles = np.sort(angles % (2 * np.pi))
    radii = rng.uniform(0.6, 1.0, size=n)
    return "polygon", angles, radii / radii.max()


def _radial(outline: tuple[str, np.ndarray, np.ndarray], theta: np.ndarray) -> np.ndarray:
    """Outline radius (max 1) at the angles ``theta``."""
    kind, a, b = outline
    if kind == "blob":
        r = np.full_like(theta, b[3])
        for k in range(3):
            r += a[k] * np.cos((k + 2) * theta + b[k])
        return r
    angles = np.concatenate([[a[-1] - 2 * np.pi], a, [a[0] + 2 * np.pi]])
    radii = np.concatenate([[b[-1]], b, [b[0]]])
    th = theta % (2 * np.pi)
    idx = np.clip(np.searchsorted(angles, th, side="right") - 1, 0, len(angles) - 2)
    t1, t2, r1, r2 = angles[idx], angles[idx + 1], radii[idx], radii[idx + 1]
    # straight edge between two vertices, in polar form
    return r1 * r2 * np.sin(t2 - t1) / (r1 * np.sin(th - t1) + r2 * np.sin(t2 - th))


def _shape(outline: tuple[str, np.ndarray, np.ndarray], centre: tuple[float, float], radius: float,
           aspect: float, angle: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise an outline; returns the bool mask and the normalised radius (0 centre, 1 outline)."""
    mask = np.zeros((size, size), dtype=bool)
    depth = np.full((size, size), np.inf, dtype=np.float32)
    cx, cy = centre
    r0, r1 = max(int(cy - radius) - 1, 0), min(int(cy + radius) + 2, size)
    c0, c1 = max(int(cx - radius) - 1, 0), min(int(cx + radius) + 2, size)
    if r0 >= r1 or c0 >= c1:
        return mask, depth
    xg, yg = _grid(size)
    dx, dy = xg[r0:r1, c0:c1] - cx, yg[r0:r1, c0:c1] - cy
    ca, sa = math.cos(angle), math.sin(angle)
    u = (dx * ca + dy * sa) / radius
    v = (dy * ca - dx * sa) * (aspect / radius)
    rel = np.hypot(u, v) / _radial(outline, np.arctan2(v, u))
    mask[r0:r1, c0:c1] = rel <= 1.0
    depth[r0:r1, c0:c1] = rel
    return mask, depth


def _split(mask: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """The part of ``mask`` on one side of a random straight cut that holds ``fraction`` of its pixels."""
    ys, xs = np.nonzero(mask)
    theta = rng.uniform(0, 2 * np.pi)
    proj = xs * math.cos(theta) + ys * math.sin(theta)
    keep = max(1, int(round(fraction * len(proj))))
    chosen = np.argpartition(proj, keep - 1)[:keep] if keep < len(proj) else np.arange(len(proj))
    part = np.zeros_like(mask)
    part[ys[chosen], xs[chosen]] = True
    return part


def _badge(mask: np.ndarray, depth: np.ndarray, rng: np.random.Generator, fraction: float,
           bounds: tuple[float, float]) -> tuple[np.ndarray, tuple[float, float]]:
    """The ``fraction * area`` object pixels nearest a random interior point (an elliptic badge clipped by the
    outline), the count kept within ``bounds`` (fractions of the area); returns the mask and its centre."""
    ys, xs = np.nonzero(mask)
    inner = np.flatnonzero(depth[ys, xs] <= 0.45)
    pick = int(rng.choice(inner)) if len(inner) else int(rng.integers(len(ys)))
    cx, cy = xs[pick] + 0.5, ys[pick] + 0.5
    theta, aspect = rng.uniform(0, np.pi), rng.uniform(1.0, 1.6)
    du, dv = xs + 0.5 - cx, ys + 0.5 - cy
    a = (du * math.cos(theta) + dv * math.sin(theta)) / aspect
    b = dv * math.cos(theta) - du * math.sin(theta)
    dist = a * a + b * b + rng.random(len(xs)) * 1e-3  # random tie break
    area = len(xs)
    keep = int(np.clip(round(fraction * area), math.ceil(bounds[0] * area), math.floor(bounds[1] * area)))
    keep = min(max(keep, 1), area)
    chosen = np.argpartition(dist, keep - 1)[:keep]
    badge = np.zeros_like(mask)
    badge[ys[chosen], xs[chosen]] = True
    return badge, (float(cx), float(cy))


def outline_ring(instances: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within ``radius`` (Chebyshev) of a change of instance id: a ``2 * radius`` px ring along every
    outline, on both sides. Image edges are not outlines."""
    if radius <= 0:
        return np.zeros(instances.shape, dtype=bool)
    padded = np.pad(instances, radius, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * radius + 1, 2 * radius + 1))
    return windows.max(axis=(-1, -2)) != windows.min(axis=(-1, -2))


# --------------------------------------------------------------------------------------------------------
# samples
# --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ObjectInfo:
    """One placed object. Areas are pixel counts inside the image; ``visible_*`` after occlusion."""

    class_index: int                   # 1..num_classes
    torso_texture: int                 # index into the body pool, from the class's allowed subset
    limb_texture: int                  # index into the body pool, any
    area: int
    part_area: int                     # badge pixels before occlusion
    visible_area: int
    visible_part_area: int


@dataclass(frozen=True)
class SyntheticSample:
    """A rendered image with its mask and what the generator knows about it."""

    image: np.ndarray                  # (H, W, 3) uint8 RGB
    mask: np.ndarray                   # (H, W) uint8: 0 background, 1..C classes, 255 outline ring
    part_mask: np.ndarray              # (H, W) bool: visible badge (discriminative part) pixels
    instances: np.ndarray              # (H, W) uint8: 0 background, k = k-th object (before borders)
    classes: tuple[int, ...]           # sorted foreground classes present in ``mask``
    objects: tuple[ObjectInfo, ...]    # in drawing order, back to front; objects[0] is the primary
    scene: int                         # background scene index
    primary_class: int                 # class of the largest object; decides the scene
    scene_is_typical: bool             # scene is the primary class's typical scene
    num_clutter: int


def sample_id(split: str, index: int) -> str:
    """Image id of the ``index``-th (1-based) image of ``split``, e.g. ``syn_train_00001``."""
    return f"syn_{split}_{index:05d}"


def sample_rng(config: SyntheticConfig, split: str, index: int) -> np.random.Generator:
    """The RNG of one image, derived from (seed, split, index) only, so any image is reproducible alone."""
    if split not in _SPLIT_CODES:
        raise ConfigError(f"split={split!r}: expected one of {sorted(_SPLIT_CODES)}")
    return np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(_SPLIT_CODES[split], index)))


def render_indexed(config: SyntheticConfig, split: str, index: int) -> SyntheticSample:
    """The sample that :func:`materialise` writes as ``sample_id(split, index)`` (before JPEG coding)."""
    return render_sample(config, sample_rng(config, split, index))


def render_sample(config: SyntheticConfig, rng: np.random.Generator) -> SyntheticSample:
    """Render one image: scene, clutter, then 1..n textured objects with badges, noise; plus its mask."""
    world = build_world(config)
    for _ in range(32):
        sample = _render_once(config, world, rng)
        if sample.classes:
            return sample
    raise RuntimeError("synthetic generator could not place a visible object in 32 attempts; "
                       "object sizes are too small for the image size")


def _draw_object_shape(config: SyntheticConfig, rng: np.random.Generator, size_frac: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Outline, pose and position of one object or clutter shape, rasterised."""
    side = config.image_size
    radius = size_frac * side / 2
    margin = min(0.6 * radius, side / 2)
    centre = (float(rng.uniform(margin, side - margin)), float(rng.uniform(margin, side - margin)))
    aspect = float(rng.uniform(1.0, config.object_aspect_max))
    outline = _random_outline(rng)
    return _shape(outline, centre, radius, aspect, float(rng.uniform(0, 2 * np.pi)), side)


def _paint_body(canvas: np.ndarray, mask: np.ndarray, world: SyntheticWorld, torso: int, limb: int,
                rng: np.random.Generator, config: SyntheticConfig) -> None:
    """Torso and limb textures on either side of a random cut through the shape."""
    torso_region = _split(mask, rng, rng.uniform(config.torso_fraction_min, config.torso_fraction_max))
    _paint(canvas, torso_region, world.bodies[torso], rng, config)
    _paint(canvas, mask & ~torso_region, world.bodies[limb], rng, config)


def _render_once(config: SyntheticConfig, world: SyntheticWorld, rng: np.random.Generator) -> SyntheticSample:
    side = config.image_size
    num_objects = int(rng.integers(config.objects_min, config.objects_max + 1))
    object_classes = rng.integers(1, config.num_classes + 1, size=num_objects)
    sizes = np.sort(rng.uniform(config.object_size_min, config.object_size_max, size=num_objects))[::-1]
    primary = int(object_classes[0])
    typical = world.typical_scene[primary - 1]
    if rng.random() < config.cooccurrence:
        scene = typical
    else:
        others = [s for s in range(config.num_scenes) if s != typical]
        scene = int(others[int(rng.integers(len(others)))])

    canvas = np.empty((side, side, 3), dtype=np.float32)
    _paint(canvas, np.ones((side, side), dtype=bool), world.scenes[scene], rng, config)

    num_clutter = int(rng.integers(config.clutter_min, config.clutter_max + 1))
    pool = len(world.bodies)
    for _ in range(num_clutter):
        mask, _depth = _draw_object_shape(config, rng, rng.uniform(config.clutter_size_min, config.clutter_size_max))
        if mask.any():
            _paint_body(canvas, mask, world, int(rng.integers(pool)), int(rng.integers(pool)), rng, config)

    instances = np.zeros((side, side), dtype=np.uint8)
    placed: list[tuple[int, int, int, np.ndarray, int]] = []  # class, torso, limb, badge, area
    for cls, size_frac in zip(object_classes, sizes, strict=True):
        for _attempt in range(12):
            mask, depth = _draw_object_shape(config, rng, float(size_frac))
            area = int(mask.sum())
            if area < 16:
                continue
            if all(int(((instances == k + 1) & ~mask).sum()) >= config.min_visible_fraction * item[4]
                   for k, item in enumerate(placed)):
                break
        else:
            continue  # no room for this object: the image gets fewer objects
        torso = int(world.class_bodies[int(cls) - 1][int(rng.integers(config.body_textures_per_class))])
        limb = int(rng.integers(pool))
        _paint_body(canvas, mask, world, torso, limb, rng, config)
        bounds = (config.part_fraction_min, config.part_fraction_max)
        badge, centre = _badge(mask, depth, rng, rng.uniform(*bounds), bounds)
        _paint(canvas, badge, world.badges[int(cls) - 1], rng, config, origin=centre)
        instances[mask] = len(placed) + 1
        placed.append((int(cls), torso, limb, badge, area))

    image = canvas * 255.0
    if config.noise_std > 0:
        image += rng.standard_normal(image.shape, dtype=np.float32) * config.noise_std
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    lut = np.array([0] + [p[0] for p in placed], dtype=np.uint8)
    label = lut[instances]
    label[outline_ring(instances, config.border_radius)] = IGNORE_INDEX

    part_mask = np.zeros((side, side), dtype=bool)
    objects = []
    for k, (cls, torso, limb, badge, area) in enumerate(placed):
        visible = instances == k + 1
        visible_badge = badge & visible
        part_mask |= visible_badge
        objects.append(ObjectInfo(cls, torso, limb, area, int(badge.sum()), int(visible.sum()),
                                  int(visible_badge.sum())))
    present = tuple(int(v) for v in np.unique(label) if 0 < v <= config.num_classes)
    return SyntheticSample(
        image=image, mask=label, part_mask=part_mask, instances=instances, classes=present,
        objects=tuple(objects), scene=scene, primary_class=primary, scene_is_typical=scene == typical,
        num_clutter=num_clutter,
    )


# --------------------------------------------------------------------------------------------------------
# materialising the data set on disk
# --------------------------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """``$VWL_CACHE_DIR`` if set, else ``~/.cache/vwl_lightning``."""
    env = os.environ.get("VWL_CACHE_DIR")
    return Path(env).expanduser() if env else Path("~/.cache/vwl_lightning").expanduser()


def dataset_root(config: SyntheticConfig, cache_dir: str | os.PathLike) -> Path:
    """Where :func:`materialise` puts the data set of ``config``."""
    return Path(cache_dir).expanduser() / f"synthetic-{config.fingerprint()}"


def is_complete(root: Path) -> bool:
    """A data set folder is complete once its ``dataset.json`` (written last) parses."""
    try:
        blob = read_json(root / DATASET_JSON)
    except DataError:
        return False
    return isinstance(blob, dict) and blob.get("name") == "synthetic"


def materialise(config: SyntheticConfig, cache_dir: str | os.PathLike) -> Path:
    """Return ``<cache_dir>/synthetic-<fingerprint>``, generating it first if it is not there complete.

    Generation goes into a fresh temporary sibling folder that is renamed into place at the end, so a crash
    never leaves a half-made data set under the final name; a leftover temporary folder is ignored. If
    another process finishes first, its copy is kept.
    """
    root = dataset_root(config, cache_dir)
    if is_complete(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{root.name}-", dir=root.parent))
    start = time.perf_counter()
    log.info("generating the synthetic data set into %s", root)
    try:
        _write_dataset(config, tmp)
        if root.exists() and not is_complete(root):
            shutil.rmtree(root)  # an incomplete folder under the final name (not made by this code)
        try:
            os.replace(tmp, root)
        except OSError:
            if not is_complete(root):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent run finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("synthetic data set ready in %.1f s: %s", time.perf_counter() - start, root)
    return root


def _split_stats(samples: list[SyntheticSample], config: SyntheticConfig) -> dict[str, Any]:
    """Summary numbers of one split, stored in ``dataset.json`` for diagnostics."""
    names = class_names(config.num_classes)
    pixels = config.image_size**2
    counts = np.zeros(config.num_classes + 1, dtype=np.int64)
    for s in samples:
        counts[list(s.classes)] += 1
    objects = [o for s in samples for o in s.objects]
    visible = sum(o.visible_area for o in objects)
    return {
        "num_images": len(samples),
        "class_image_counts": {names[c]: int(counts[c]) for c in range(1, config.num_classes + 1)},
        "mean_objects_per_image": round(len(objects) / len(samples), 4),
        "mean_object_fraction": round(float(np.mean([o.visible_area / pixels for o in objects])), 4),
        "mean_foreground_fraction": round(
            float(np.mean([((s.mask > 0) & (s.mask != IGNORE_INDEX)).mean() for s in samples])), 4),
        "ignore_fraction": round(float(np.mean([(s.mask == IGNORE_INDEX).mean() for s in samples])), 4),
        "part_fraction_of_objects": round(sum(o.visible_part_area for o in objects) / max(visible, 1), 4),
        "typical_scene_rate": round(float(np.mean([s.scene_is_typical for s in samples])), 4),
    }


def _write_dataset(config: SyntheticConfig, root: Path) -> None:
    """Write every split into ``root`` (VOC layout); ``dataset.json`` last."""
    image_dir, mask_dir = root / "JPEGImages", root / "SegmentationClassAug"
    image_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    stats: dict[str, Any] = {}
    expected: dict[str, list[int]] = {}
    all_ids: list[str] = []
    for split, count in (("train", config.num_train), ("val", config.num_val)):
        ids, samples = [], []
        for index in range(1, count + 1):
            image_id = sample_id(split, index)
            sample = render_indexed(config, split, index)
            Image.fromarray(sample.image).save(image_dir / f"{image_id}.jpg", format="JPEG",
                                               quality=config.jpeg_quality, subsampling=0)
            write_label_png(mask_dir / f"{image_id}.png", sample.mask)
            expected[image_id] = list(sample.classes)
            ids.append(image_id)
            samples.append(sample)
        write_text_atomic(root / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(ids) + "\n")
        stats[split] = _split_stats(samples, config)
        all_ids += ids
    labels = derive_image_labels(mask_dir, all_ids, config.num_labels)
    if labels != expected:
        raise RuntimeError("synthetic generator bug: labels read back from the masks differ from the rendered ones")
    save_image_labels(root / "cls_labels.json", labels, config.num_labels)
    world = build_world(config)
    write_json_atomic(root / DATASET_JSON, {
        "name": "synthetic",
        "class_names": list(class_names(config.num_classes)),
        "num_classes": config.num_labels,
        "generator": asdict(config),
        "version": GENERATOR_VERSION,
        "fingerprint": config.fingerprint(),
        "splits": {"train": config.num_train, "val": config.num_val},
        "world": {"typical_scene": list(world.typical_scene),
                  "class_body_textures": [list(b) for b in world.class_bodies]},
        "stats": stats,
    })


# --------------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------------

def sample_grid(config: SyntheticConfig, rows: int, cols: int, out: str | os.PathLike) -> Path:
    """Save a figure of ``rows * cols`` training samples, each image beside its VOC-coloured mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = class_names(config.num_classes)
    palette = voc_palette()
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2 * cols * 1.45, rows * 1.85 + 0.6), squeeze=False)
    for i in range(rows * cols):
        sample = render_indexed(config, "train", i + 1)
        ax_img, ax_mask = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        ax_img.imshow(sample.image, interpolation="nearest")
        ax_mask.imshow(palette[sample.mask], interpolation="nearest")
        scene = "typical" if sample.scene_is_typical else "other"
        ax_img.set_title(f"{sample_id('train', i + 1)}\n{scene} scene", fontsize=6)
        ax_mask.set_title(",".join(names[c] for c in sample.classes), fontsize=6)
        for ax in (ax_img, ax_mask):
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [Patch(color=palette[c] / 255.0, label=names[c]) for c in range(config.num_classes + 1)]
    handles.append(Patch(color=palette[IGNORE_INDEX] / 255.0, label="ignore (255)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10), fontsize=6, frameon=False)
    fig.suptitle(f"synthetic WSSS benchmark (seed {config.seed}): image | mask", fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``grid``: save a figure of samples; ``materialise``: build the default data set and print its root."""
    parser = argparse.ArgumentParser(prog="python -m vwl_lightning.data.synthetic",
                                     description=(__doc__ or "").split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    grid = sub.add_parser("grid", help="save a grid of sample images beside their colour masks")
    grid.add_argument("--out", required=True, help="output image file (PNG)")
    grid.add_argument("--rows", type=int, default=4)
    grid.add_argument("--cols", type=int, default=4)
    grid.add_argument("--seed", type=int, default=0)
    mat = sub.add_parser("materialise", help="generate the data set (if needed) and print its root folder")
    mat.add_argument("--cache-dir", default=None, help="default: $VWL_CACHE_DIR or ~/.cache/vwl_lightning")
    mat.add_argument("--seed", type=int, default=0)
    mat.add_argument("--num-train", type=int, default=SyntheticConfig.num_train)
    mat.add_argument("--num-val", type=int, default=SyntheticConfig.num_val)
    args = parser.parse_args(argv)
    try:
        if args.command == "grid":
            if args.rows < 1 or args.cols < 1:
                raise ConfigError(f"--rows {args.rows} --cols {args.cols}: expected at least 1 each")
            print(sample_grid(SyntheticConfig(seed=args.seed), args.rows, args.cols, args.out))
        else:
            config = SyntheticConfig(seed=args.seed, num_train=args.num_train, num_val=args.num_val)
            cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
            print(materialise(config, cache))
    except (ConfigError, DataError) as exc:
        parser.exit(2, f"error: {exc}\n")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
