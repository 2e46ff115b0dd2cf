"""The generator of the embedded benchmark: the seed's world (textures, badges, scenes) and one rendered sample.

Every sample comes from its own RNG stream (:func:`sample_rng`), so any image can be rendered alone."""

from __future__ import annotations

import colorsys
import functools
import logging
import math
from dataclasses import dataclass

import numpy as np

from vwl_lightning.data.meta import IGNORE_INDEX
from vwl_lightning.data.synthetic.config import _REFERENCE_SIZE, _SPLIT_CODES, _WORLD_CODE, SyntheticConfig
from vwl_lightning.errors import ConfigError

log = logging.getLogger(__name__)

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
    own_bodies: tuple[TextureSpec, ...] = ()   # class-specific body texture per class (part_sharing < 1)


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
                          tuple(int(s) for s in typical), _own_bodies(config))


def _own_bodies(config: SyntheticConfig) -> tuple[TextureSpec, ...]:
    """One class-specific body texture per class, from a stream of its own (so the rest of the world does
    not depend on it): body-like colours and periods, hues spread evenly over the classes."""
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(_WORLD_CODE, 1)))
    hue0 = rng.random()
    out = []
    for c in range(config.num_classes):
        sat = rng.uniform(0.35, 0.6)
        out.append(TextureSpec(
            kind=_BODY_KINDS[c % len(_BODY_KINDS)],
            color_a=_hsv(hue0 + c / config.num_classes, sat, rng.uniform(0.62, 0.88)),
            color_b=_hsv(hue0 + c / config.num_classes + rng.uniform(-0.04, 0.04), sat, rng.uniform(0.18, 0.42)),
            period=float(rng.uniform(6.5, 11.0)), angle=float(rng.uniform(0, math.pi)),
            param=float(rng.uniform(0.25, 0.35)), angle_jitter=0.25,
        ))
    return tuple(out)


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
    own_area: int = 0                  # class-specific body pixels before occlusion (part_sharing < 1)
    visible_own_area: int = 0


@dataclass(frozen=True)
class SyntheticSample:
    """A rendered image with its mask and what the generator knows about it."""

    image: np.ndarray                  # (H, W, 3) uint8 RGB
    mask: np.ndarray                   # (H, W) uint8: 0 background, 1..C classes, 255 outline ring
    part_mask: np.ndarray              # (H, W) bool: visible badge (discriminative part) pixels
    own_mask: np.ndarray               # (H, W) bool: visible class-specific body pixels (part_sharing < 1)
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
    """Render one image: scene, clutter, then 1..n textured objects with badges, noise; plus its mask.

    The class-specific body regions (``part_sharing < 1``) draw from a child stream of ``rng``
    (``rng.spawn``, which leaves ``rng``'s own draws unchanged), so every other pixel, the mask and the
    scene are those of ``part_sharing = 1``; at 1 nothing is spawned and the version-1 image results."""
    world = build_world(config)
    own_rng = rng.spawn(1)[0] if config.part_sharing < 1.0 else None
    for _ in range(32):
        sample = _render_once(config, world, rng, own_rng)
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


def _render_once(config: SyntheticConfig, world: SyntheticWorld, rng: np.random.Generator,
                 own_rng: np.random.Generator | None = None) -> SyntheticSample:
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
    placed: list[tuple[int, int, int, np.ndarray, int, np.ndarray]] = []  # class, torso, limb, badge, area, own
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
        own = np.zeros_like(mask)
        if own_rng is not None and (mask & ~badge).any():
            own = _split(mask & ~badge, own_rng, 1.0 - config.part_sharing)
            _paint(canvas, own, world.own_bodies[int(cls) - 1], own_rng, config)
        _paint(canvas, badge, world.badges[int(cls) - 1], rng, config, origin=centre)
        instances[mask] = len(placed) + 1
        placed.append((int(cls), torso, limb, badge, area, own))

    image = canvas * 255.0
    if config.noise_std > 0:
        image += rng.standard_normal(image.shape, dtype=np.float32) * config.noise_std
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    lut = np.array([0] + [p[0] for p in placed], dtype=np.uint8)
    label = lut[instances]
    label[outline_ring(instances, config.border_radius)] = IGNORE_INDEX

    part_mask = np.zeros((side, side), dtype=bool)
    own_mask = np.zeros((side, side), dtype=bool)
    objects = []
    for k, (cls, torso, limb, badge, area, own) in enumerate(placed):
        visible = instances == k + 1
        visible_badge = badge & visible
        part_mask |= visible_badge
        own_mask |= own & visible
        objects.append(ObjectInfo(cls, torso, limb, area, int(badge.sum()), int(visible.sum()),
                                  int(visible_badge.sum()), int(own.sum()), int((own & visible).sum())))
    present = tuple(int(v) for v in np.unique(label) if 0 < v <= config.num_classes)
    return SyntheticSample(
        image=image, mask=label, part_mask=part_mask, own_mask=own_mask, instances=instances, classes=present,
        objects=tuple(objects), scene=scene, primary_class=primary, scene_is_typical=scene == typical,
        num_clutter=num_clutter,
    )
