"""The rolling resume checkpoint shared by the training stages (classifier, segmenter), written atomically.

Lightning's own ``TorchCheckpointIO`` writes through an fsspec transaction, which stages the file in the
system temporary folder and then copies it across file systems: a full disk there leaves a truncated
``last.ckpt`` under its final name.  :class:`AtomicCheckpointIO` writes to a temporary name in the final
folder, flushes it and renames it (:func:`vwl_lightning.utils.io.atomic_path`), and loads with
``weights_only=True``.  :func:`usable_resume_checkpoint` checks a resume point before it is used and sets a
truncated or unreadable one aside as ``*.corrupt``.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from vwl_lightning.utils.io import atomic_path

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.tmp-*`` beside the target, fsync, rename; loads with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def checkpoint_problem(path: Path) -> str | None:
    """None when ``path`` is a complete torch zip checkpoint (every member's CRC checks), else why not."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return f"member {bad} fails its CRC" if bad is not None else None


def usable_resume_checkpoint(path: Path) -> Path | None:
    """``path`` if it exists and reads completely; a damaged one is renamed ``<name>.corrupt`` (logged with
    the reason) and None is returned, so training starts afresh instead of dying inside Lightning."""
    if not path.is_file():
        return None
    problem = checkpoint_problem(path)
    if problem is None:
        return path
    aside = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, aside)
    except FileNotFoundError:  # another DDP rank set it aside first
        pass
    log.warning("%s: truncated or unreadable checkpoint (%s); set aside as %s, not resumed from",
                path, problem, aside)
    return None

