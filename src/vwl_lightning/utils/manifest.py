"""Stage manifests: a small JSON file that a stage writes **last**, so its presence marks the stage done.

A manifest records what the stage consumed (config, inputs, checkpoint) and produced (paths, counts,
metrics). The pipeline skips a stage whose manifest is complete and matches; a stage folder without a
manifest is an interrupted stage, which resumes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from vwl_lightning.utils.io import read_json, write_json_atomic

MANIFEST = "manifest.json"


def manifest_path(stage_dir: str | Path) -> Path:
    return Path(stage_dir) / MANIFEST


def write_manifest(stage_dir: str | Path, stage: str, **fields: Any) -> Path:
    """Write ``<stage_dir>/manifest.json`` atomically with ``status: complete``."""
    blob = {"stage": stage, "status": "complete", "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}
    return write_json_atomic(manifest_path(stage_dir), blob)


def read_manifest(stage_dir: str | Path) -> dict[str, Any] | None:
    """The stage's manifest, or ``None`` when the stage has not completed."""
    path = manifest_path(stage_dir)
    if not path.is_file():
        return None
    blob = read_json(path)
    return blob if blob.get("status") == "complete" else None
