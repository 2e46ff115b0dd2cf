"""Every knob of the embedded benchmark's generator (:class:`SyntheticConfig`), its class names and version."""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any

from vwl_lightning.data.meta import DatasetMeta
from vwl_lightning.errors import ConfigError

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

#: Knobs added after GENERATOR_VERSION 1, with the default that reproduces version 1's pixels; at that value
#: they are left out of the fingerprint and of ``dataset.json`` (:meth:`SyntheticConfig.to_dict`).
_LATER_KNOBS: dict[str, float] = {"part_sharing": 1.0}

@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the generator. Equal configs give byte-identical data sets.

    ``num_classes`` counts *foreground* classes; masks and the VOC readers use ``num_classes + 1``
    labels (0 is background), see :attr:`num_labels`.

    The two dials of the CAM failure modes (README, "The two dials"), each in [0, 1]:

    * ``part_sharing`` = s (partial activation). Each object's *body* is its pixels outside the badge.
      At s = 1 (default) the whole body wears the shared pool textures (torso from the class's allowed
      subset, limb from the whole pool): only the badge is class evidence. At s < 1 a random straight cut
      through the body (before occlusion) takes ``max(1, round((1 - s) * |body|))`` of its pixels and paints
      them with the class's own body texture (one per class, used by no other class and no clutter);
      the other pixels keep the shared textures. s = 0: the whole object is class-specific.
    * ``cooccurrence`` = p (background co-occurrence): P(scene = typical scene of the primary object's
      class); otherwise one of the other ``num_scenes - 1`` scenes, uniformly. p = 1 / num_scenes (0.1 by
      default) makes the scene independent of the class (no co-occurrence); p > 1 / num_scenes is
      co-occurrence (0.8 default), p < 1 / num_scenes anti-co-occurrence (the class avoids its scene).
    """

    seed: int = 0
    num_train: int = 1600
    num_val: int = 320
    image_size: int = 112
    num_classes: int = 8
    cooccurrence: float = 0.8          # P(scene = the primary class's typical scene); 1 / num_scenes: none
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
    # fraction of each object's body (its non-badge pixels) painted with the shared pool textures; the rest,
    # 1 - part_sharing, gets the class's own body texture (1.0: fully shared bodies, the original benchmark)
    part_sharing: float = 1.0

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
        need(0.0 <= self.part_sharing <= 1.0, "part_sharing", "a fraction in [0, 1] (1: fully shared bodies)")

    @property
    def num_labels(self) -> int:
        """Number of labels including background: what ``ClassificationDataset`` calls ``num_classes``."""
        return self.num_classes + 1

    @property
    def num_scenes(self) -> int:
        """Number of background scenes: one typical scene per class plus ``extra_scenes``."""
        return self.num_classes + self.extra_scenes

    def to_dict(self) -> dict[str, Any]:
        """Every field, except the knobs added after version 1 while they sit at their default.

        Those defaults reproduce the version-1 pixels exactly, so leaving them out keeps the fingerprint
        and ``dataset.json`` of every earlier config unchanged (same cache folder, same bytes);
        ``SyntheticConfig(**config.to_dict()) == config`` holds either way.
        """
        blob = asdict(self)
        for name, default in _LATER_KNOBS.items():
            if blob[name] == default:
                del blob[name]
        return blob

    def fingerprint(self) -> str:
        """Short hash of every field (:meth:`to_dict`) and the generator version; names the cache folder."""
        blob = json.dumps({"version": GENERATOR_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def synthetic_meta(config: SyntheticConfig) -> DatasetMeta:
    """Class names and palette of the data set that ``config`` generates."""
    return DatasetMeta("synthetic", class_names(config.num_classes))
