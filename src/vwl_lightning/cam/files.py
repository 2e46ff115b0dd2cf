"""Per-image CAM files: the hand-off between the CAM generator and the seed / pseudo-label stages (spec §5).

One ``<cam_dir>/<image_id>.npz`` per image (IRN's ``.npy`` dictionary, as an ``.npz``) holding

* ``keys``: int64 ``(K,)``, the image's labelled foreground classes in label space (1..C-1), sorted;
* ``high_res``: ``(K, H, W)`` float16/float32 CAMs at full image size, each channel max-normalised to [0, 1];
* ``cam``: ``(K, ceil(H/4), ceil(W/4))`` stride-4 CAMs, same dtype (for IRN's random walk).

``<cam_dir>/manifest.json``, written by the generator, may name the data set, split and class names.

The background rule (spec §5, "Background"): a constant background score is padded in front of the CAMs
and the argmax is taken; index ``i > 0`` maps to ``keys[i-1]``.  The comparison runs in float32 (the CAMs
are promoted to float32 and the score is rounded to float32, as ``np.pad`` into a float32 array does in the
original), and ties go to background because argmax picks the first maximum.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vwl_lightning.errors import DataError
from vwl_lightning.utils.io import atomic_path, read_json

CAM_SUFFIX = ".npz"
CAM_MANIFEST = "manifest.json"
CAM_FIELDS = ("keys", "high_res", "cam")


@dataclass
class CamRecord:
    """The CAMs of one image: ``keys`` (K,), ``high_res`` (K, H, W) and stride-4 ``cam`` (K, h, w)."""

    keys: np.ndarray
    high_res: np.ndarray
    cam: np.ndarray

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the image the CAMs belong to."""
        return int(self.high_res.shape[1]), int(self.high_res.shape[2])


def cam_path(cam_dir: str | os.PathLike, image_id: str) -> Path:
    """Path of the CAM file of ``image_id`` in ``cam_dir``."""
    return Path(cam_dir) / f"{image_id}{CAM_SUFFIX}"


def stride4_shape(height: int, width: int) -> tuple[int, int]:
    """Size of the stride-4 CAM of an ``height x width`` image: ``(ceil(H/4), ceil(W/4))``."""
    return -(-height // 4), -(-width // 4)


def _check_arrays(where: str, keys: np.ndarray, high_res: np.ndarray, cam: np.ndarray,
                  num_classes: int | None = None) -> None:
    """Raise DataError (prefixed with ``where``) unless the three arrays follow the CAM file contract."""
    if keys.ndim != 1 or not np.issubdtype(keys.dtype, np.integer):
        raise DataError(f"{where}: 'keys' must be a 1-D integer array, got {keys.dtype} "
                        f"of shape {keys.shape}")
    if keys.size and (keys.min() < 1 or np.any(np.diff(keys) <= 0)):
        raise DataError(f"{where}: 'keys' must be sorted, distinct foreground classes >= 1, "
                        f"got {keys.tolist()}")
    if num_classes is not None and keys.size and keys.max() >= num_classes:
        raise DataError(f"{where}: 'keys' {keys.tolist()} exceed the {num_classes} classes of the data set")
    for name, array in (("high_res", high_res), ("cam", cam)):
        if array.ndim != 3 or not np.issubdtype(array.dtype, np.floating):
            raise DataError(f"{where}: '{name}' must be a (K, H, W) float array, got {array.dtype} "
                            f"of shape {array.shape}")
        if array.shape[0] != keys.shape[0]:
            raise DataError(f"{where}: '{name}' has {array.shape[0]} channels but 'keys' has {keys.shape[0]}")
    expected = stride4_shape(high_res.shape[1], high_res.shape[2])
    if tuple(cam.shape[1:]) != expected:
        raise DataError(f"{where}: 'cam' is {cam.shape[2]}x{cam.shape[1]} but 'high_res' "
                        f"{high_res.shape[2]}x{high_res.shape[1]} needs the stride-4 size "
                        f"{expected[1]}x{expected[0]}")


def save_cam_file(
    path: str | os.PathLike,
    keys: np.ndarray,
    high_res: np.ndarray,
    cam: np.ndarray,
    dtype: Any = np.float16,
) -> Path:
    """Write one image's CAMs atomically (temporary file + rename) in the contract's format."""
    keys_arr = np.asarray(keys, dtype=np.int64).reshape(-1)
    high = np.asarray(high_res, dtype=dtype)
    low = np.asarray(cam, dtype=dtype)
    _check_arrays(str(path), keys_arr, high, low)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, keys=keys_arr, high_res=high, cam=low)
    return Path(path)


def load_cam_file(path: str | os.PathLike, num_classes: int | None = None) -> CamRecord:
    """Read and check one CAM file; DataError naming the file if it is missing, unreadable or inconsistent."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: CAM file not found")
    try:
        with np.load(p, allow_pickle=False) as data:
            missing = [name for name in CAM_FIELDS if name not in data.files]
            if missing:
                raise DataError(f"{p}: CAM file lacks {missing} (has {sorted(data.files)})")
            keys, high_res, cam = (np.asarray(data[name]) for name in CAM_FIELDS)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{p}: cannot read CAM file ({type(exc).__name__}: {exc})") from None
    _check_arrays(str(p), keys, high_res, cam, num_classes)
    return CamRecord(keys=keys.astype(np.int64), high_res=high_res, cam=cam)


def is_complete_cam_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a CAM file that reads completely and passes the contract checks."""
    try:
        load_cam_file(path)
    except DataError:
        return False
    return True


def read_cam_manifest(cam_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The generator's ``manifest.json`` of ``cam_dir`` as a dict, or None when there is none."""
    path = Path(cam_dir) / CAM_MANIFEST
    if not path.is_file():
        return None
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: expected a JSON object")
    return manifest


def check_cam_manifest(
    cam_dir: str | os.PathLike,
    split: str,
    data_root: str | os.PathLike | None = None,
    dataset: str | None = None,
) -> dict[str, Any] | None:
    """Check that the CAM manifest (if any) was made for this split / data root / data set.

    Only keys present in the manifest are compared: ``split``, ``data_root`` (or ``root``; compared as
    resolved paths) and ``dataset``.  A mismatch raises DataError naming the manifest.
    """
    manifest = read_cam_manifest(cam_dir)
    if manifest is None:
        return None
    path = Path(cam_dir) / CAM_MANIFEST
    if "split" in manifest and str(manifest["split"]) != split:
        if not _is_subset_split(data_root, split, str(manifest["split"])):
            raise DataError(f"{path}: CAMs were made for split '{manifest['split']}', not '{split}' (nor a "
                            f"split that contains it)")
    root = manifest.get("data_root", manifest.get("root"))
    if root is not None and data_root is not None:
        if Path(str(root)).expanduser().resolve() != Path(data_root).expanduser().resolve():
            raise DataError(f"{path}: CAMs were made from data root {root}, not {data_root}")
    if "dataset" in manifest and dataset is not None and str(manifest["dataset"]) != dataset:
        raise DataError(f"{path}: CAMs were made for data set '{manifest['dataset']}', not '{dataset}'")
    return manifest


def _is_subset_split(data_root: str | os.PathLike | None, split: str, cam_split: str) -> bool:
    """True when every id of ``split`` is listed in ``cam_split`` (e.g. VOC train within train_aug)."""
    if data_root is None:
        return False
    folder = Path(data_root) / "ImageSets" / "Segmentation"
    wanted, made = folder / f"{split}.txt", folder / f"{cam_split}.txt"
    if not (wanted.is_file() and made.is_file()):
        return False
    return set(wanted.read_text().split()) <= set(made.read_text().split())


def resolve_class_names(
    cam_dir: str | os.PathLike, class_names: list[str] | tuple[str, ...] | None
) -> tuple[str, ...]:
    """Class names (background first): the CAM manifest's ``class_names`` if present, else the argument.

    If both are given they must agree in number (else DataError naming the manifest); a manifest that gives
    only ``num_classes`` is checked against the argument the same way.
    """
    manifest = read_cam_manifest(cam_dir) or {}
    path = Path(cam_dir) / CAM_MANIFEST
    names = manifest.get("class_names")
    if names is not None:
        names = tuple(str(n) for n in names)
        if class_names is not None and len(class_names) != len(names):
            raise DataError(f"{path}: lists {len(names)} classes but the configuration gives "
                            f"{len(class_names)}")
        return names
    if class_names is None:
        raise DataError(f"{path}: gives no class_names; set the data set's class names in the configuration")
    if "num_classes" in manifest and int(manifest["num_classes"]) != len(class_names):
        raise DataError(f"{path}: num_classes {manifest['num_classes']} differs from the configuration's "
                        f"{len(class_names)} class names")
    return tuple(class_names)


def cams_to_label(high_res: np.ndarray, keys: np.ndarray, bg_score: float) -> np.ndarray:
    """Seed label map: ``argmax([bg_score, cams])`` with index ``i > 0`` mapped to ``keys[i-1]`` (spec §5).

    Computed in float32; ties go to background (argmax picks the first).  Returns ``(H, W)`` uint8.
    """
    cams = np.asarray(high_res, dtype=np.float32)
    keys_arr = np.asarray(keys, dtype=np.int64).reshape(-1)
    if cams.ndim != 3 or cams.shape[0] != keys_arr.shape[0]:
        raise ValueError(f"high_res shape {cams.shape} does not match {keys_arr.shape[0]} keys")
    background = np.full((1, *cams.shape[1:]), np.float32(bg_score), dtype=np.float32)
    index = np.argmax(np.concatenate([background, cams], axis=0), axis=0)
    lookup = np.concatenate([[0], keys_arr]).astype(np.uint8)
    return lookup[index]
