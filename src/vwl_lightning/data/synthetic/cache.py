"""Writes the embedded benchmark to a cache folder in the VOC layout, atomically (temporary folder, rename)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vwl_lightning.data.image_labels import derive_image_labels, save_image_labels
from vwl_lightning.data.label_png import write_label_png
from vwl_lightning.data.meta import IGNORE_INDEX
from vwl_lightning.data.synthetic.config import DATASET_JSON, GENERATOR_VERSION, SyntheticConfig, class_names
from vwl_lightning.data.synthetic.generator import SyntheticSample, build_world, render_indexed, sample_id
from vwl_lightning.errors import DataError
from vwl_lightning.utils.io import read_json, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

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
        # only with class-specific bodies, so the version-1 dataset.json stays byte-identical
        **({"own_fraction_of_bodies": round(sum(o.visible_own_area for o in objects) / max(
            sum(o.visible_area - o.visible_part_area for o in objects), 1), 4)} if config.part_sharing < 1 else {}),
    }


def write_sample(sample: SyntheticSample, image_dir: Path, mask_dir: Path, image_id: str, jpeg_quality: int) -> None:
    """The image as ``<image_id>.jpg`` (4:4:4 JPEG) and the mask as a VOC-palette ``<image_id>.png``."""
    Image.fromarray(sample.image).save(image_dir / f"{image_id}.jpg", format="JPEG", quality=jpeg_quality,
                                       subsampling=0)
    write_label_png(mask_dir / f"{image_id}.png", sample.mask)


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
            write_sample(sample, image_dir, mask_dir, image_id, config.jpeg_quality)
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
        "generator": config.to_dict(),
        "version": GENERATOR_VERSION,
        "fingerprint": config.fingerprint(),
        "splits": {"train": config.num_train, "val": config.num_val},
        "world": {"typical_scene": list(world.typical_scene),
                  "class_body_textures": [list(b) for b in world.class_bodies]},
        "stats": stats,
    })
