"""Where a data set lives: resolve ``data.source`` of the config into a VOC layout and its class names.

``kind``:
* ``synthetic`` — the embedded benchmark, materialised on first use into ``cache_dir``;
* ``voc`` — PASCAL VOC 2012 (+SBD ``SegmentationClassAug``) at ``root`` (``VOCdevkit/VOC2012``);
* ``coco`` — MS COCO 2014 converted to the VOC layout at ``root``.

A ``dataset.json`` in the root (written by the synthetic generator and the converters) carries the class
names; otherwise the kind's standard names are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vwl_lightning.data.layout import VOCLayout
from vwl_lightning.data.meta import COCO_META, VOC_META, DatasetMeta
from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.utils.io import read_json

DATASET_INFO = "dataset.json"
KINDS = ("synthetic", "voc", "coco")


@dataclass(frozen=True)
class ResolvedData:
    layout: VOCLayout
    meta: DatasetMeta


def resolve_data(source: Any) -> ResolvedData:
    """Turn the ``data.source`` mapping into a checked layout and metadata (materialising the benchmark)."""
    kind = source.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"data.source.kind must be one of {KINDS}, got {kind!r}")
    if kind == "synthetic":
        from vwl_lightning.data.synthetic import SyntheticConfig, default_cache_dir, materialise

        generator = dict(source.get("generator") or {})
        try:
            config = SyntheticConfig(**generator)
        except TypeError as exc:
            raise ConfigError(f"data.source.generator: {exc}") from None
        root = materialise(config, source.get("cache_dir") or default_cache_dir())
    else:
        if not source.get("root"):
            raise ConfigError(f"data.source.root must name the {kind.upper()} folder that holds JPEGImages/")
        root = Path(str(source["root"])).expanduser()
        if not root.exists():
            raise DataError(f"data root {root} does not exist (data.source.root)")
    layout = VOCLayout.at(root, mask_dir=source.get("mask_dir", "SegmentationClassAug"))
    return ResolvedData(layout=layout, meta=read_meta(root, kind))


def read_meta(root: Path, kind: str) -> DatasetMeta:
    """Class names from ``<root>/dataset.json`` when present, else the standard VOC/COCO names."""
    info_path = Path(root) / DATASET_INFO
    if info_path.is_file():
        info = read_json(info_path)
        names = info.get("class_names")
        if not isinstance(names, list) or len(names) < 2:
            raise DataError(f"{info_path}: 'class_names' must list background and at least one class")
        return DatasetMeta(str(info.get("name", kind)), tuple(str(n) for n in names))
    if kind == "coco":
        return COCO_META
    if kind == "voc":
        return VOC_META
    raise DataError(f"{info_path} not found; the synthetic data set writes it last, so the folder is incomplete")
