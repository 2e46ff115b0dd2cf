"""CAM folders in the IRN / official-VWL format, out and in (spec §5, §10).

IRN's ``make_cam`` step and the official VWL code write one ``<image_id>.npy`` per image holding a pickled
Python dict (``np.save`` of a dict, so the file is an object array of shape ``()``)::

    {"keys": (K,) int, 0-based foreground class indices (class c of the label map is key c-1),
     "cam": (K, h, w) float32 stride-4 CAMs,
     "high_res": (K, H, W) float32 full-size CAMs}

Our own files (:mod:`vwl_lightning.cam.files`) are ``.npz`` with **1-based** keys (label-map indices) and
float16 by default: a tool that reads IRN files would read every class of ours off by one.  This module
converts both ways.

**The format is pickle-based.**  ``np.load(..., allow_pickle=True)`` would run whatever code a file's
pickle asks for, so :func:`load_irn_file` never calls it: it reads the ``.npy`` header itself and unpickles
the payload with a restricted unpickler that can build only NumPy arrays, dtypes and plain containers
(dict, list, tuple, numbers, strings).  Anything else is refused with a one-line DataError naming the file.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from vwl_lightning.cam.files import (
    CAM_MANIFEST,
    CAM_SUFFIX,
    cam_path,
    load_cam_file,
    read_cam_manifest,
    save_cam_file,
    stride4_shape,
)
from vwl_lightning.errors import DataError
from vwl_lightning.utils.io import atomic_path, write_json_atomic

IRN_SUFFIX = ".npy"
IRN_FIELDS = ("keys", "cam", "high_res")

# (module, name) pairs the restricted unpickler may build: NumPy's own array / dtype / scalar reconstructors
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds NumPy arrays and plain containers only; any other global is refused (module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_npy_object(path: Path) -> Any:
    """The pickled object inside a ``.npy`` file of dtype object, unpickled with the restricted unpickler."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"unknown .npy version {version}")
        if dtype != np.dtype(object) or tuple(shape) != ():
            raise DataError(f"{path}: not an IRN CAM file (expected a pickled dict, found a {dtype} array of "
                            f"shape {tuple(shape)})")
        obj = _NumpyOnlyUnpickler(io.BytesIO(handle.read())).load()
    # np.save pickles the 0-d object array that wraps the dict
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    return obj


def load_irn_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read one IRN-format CAM file safely: a dict with ``keys`` (0-based), ``cam`` and ``high_res`` arrays.

    Returns the three arrays (keys int64, CAMs float32).  DataError naming the file when it is not a dict of
    NumPy arrays with those fields, when it asks the unpickler for anything but NumPy objects, or when the
    shapes disagree (``cam`` must be the stride-4 size of ``high_res``, as in IRN).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: IRN CAM file not found")
    try:
        obj = _read_npy_object(p)
    except DataError:
        raise
    except (pickle.UnpicklingError, ValueError, EOFError, OSError, AttributeError, TypeError) as exc:
        raise DataError(f"{p}: not a safe IRN CAM file ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{p}: an IRN CAM file holds a dict, found {type(obj).__name__}")
    missing = [k for k in IRN_FIELDS if k not in obj]
    if missing:
        raise DataError(f"{p}: IRN CAM file lacks {missing} (has {sorted(map(str, obj))})")
    bad = [k for k in IRN_FIELDS if not isinstance(obj[k], np.ndarray)]
    if bad:
        raise DataError(f"{p}: '{bad[0]}' is a {type(obj[bad[0]]).__name__}, expected a NumPy array")
    keys = obj["keys"]
    if keys.ndim != 1 or not np.issubdtype(keys.dtype, np.integer) or (keys.size and keys.min() < 0):
        raise DataError(f"{p}: 'keys' must be a 1-D array of 0-based class indices, got {keys.dtype} {keys.tolist()}")
    return {"keys": keys.astype(np.int64), "cam": np.asarray(obj["cam"], dtype=np.float32),
            "high_res": np.asarray(obj["high_res"], dtype=np.float32)}


def save_irn_file(path: str | os.PathLike, keys0: np.ndarray, cam: np.ndarray, high_res: np.ndarray) -> Path:
    """Write one IRN-format file (``np.save`` of the dict, atomic): 0-based ``keys``, float32 CAMs."""
    record = {"keys": np.asarray(keys0, dtype=np.int64).reshape(-1), "cam": np.asarray(cam, dtype=np.float32),
              "high_res": np.asarray(high_res, dtype=np.float32)}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, record, allow_pickle=True)
    return Path(path)


def export_irn(cam_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[str]:
    """Convert every ``<id>.npz`` of our CAM folder into ``<out_dir>/<id>.npy`` (keys − 1, float32).

    The folder's manifest (if any) is copied with ``"format": "irn"`` and ``"keys": "0-based"`` added.
    Returns the converted ids.
    """
    source, target = Path(cam_dir), Path(out_dir)
    files = sorted(p for p in source.glob(f"*{CAM_SUFFIX}") if not p.name.startswith(".tmp-"))
    if not files:
        raise DataError(f"{source}: no CAM files (*{CAM_SUFFIX}) to export")
    target.mkdir(parents=True, exist_ok=True)
    for path in files:
        record = load_cam_file(path)
        save_irn_file(target / f"{path.stem}{IRN_SUFFIX}", record.keys - 1, record.cam, record.high_res)
    manifest = read_cam_manifest(source) or {}
    write_json_atomic(target / CAM_MANIFEST, {**manifest, "format": "irn", "keys": "0-based", "dtype": "float32",
                                             "exported_from": str(source)})
    return [p.stem for p in files]


def import_irn(irn_dir: str | os.PathLike, out_dir: str | os.PathLike, dtype: Any = np.float32,
               class_names: list[str] | None = None) -> list[str]:
    """Convert every ``<id>.npy`` IRN-format file into our ``<out_dir>/<id>.npz`` (keys + 1).

    A missing stride-4 ``cam`` of the wrong size is refused (ours must be ``ceil(H/4) x ceil(W/4)``).
    ``class_names`` (background first), when given, are written to the new folder's manifest so the seed and
    pseudo stages can check the keys against them.  Returns the converted ids.
    """
    source, target = Path(irn_dir), Path(out_dir)
    files = sorted(p for p in source.glob(f"*{IRN_SUFFIX}") if not p.name.startswith(".tmp-"))
    if not files:
        raise DataError(f"{source}: no IRN CAM files (*{IRN_SUFFIX}) to import")
    target.mkdir(parents=True, exist_ok=True)
    for path in files:
        record = load_irn_file(path)
        high = record["high_res"]
        if high.ndim == 3 and tuple(record["cam"].shape[1:]) != stride4_shape(*high.shape[1:]):
            raise DataError(f"{path}: 'cam' is {record['cam'].shape[1:]} but 'high_res' {high.shape[1:]} needs "
                            f"the stride-4 size {stride4_shape(*high.shape[1:])}")
        save_cam_file(cam_path(target, path.stem), record["keys"] + 1, high, record["cam"], dtype=dtype)
    manifest: dict[str, Any] = {"stage": "cams", "imported_from": str(source), "format": "irn",
                                "dtype": np.dtype(dtype).name}
    if class_names is not None:
        manifest.update(class_names=list(class_names), num_classes=len(class_names))
    write_json_atomic(target / CAM_MANIFEST, manifest)
    return [p.stem for p in files]


def main(argv: list[str] | None = None) -> int:
    """``python -m vwl_lightning.cam.irn_format {export,import} SRC DST``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m vwl_lightning.cam.irn_format",
                                     description="Convert CAM folders between our .npz format (1-based keys, "
                                                 "float16) and the IRN / official-VWL .npy dict (0-based keys, "
                                                 "float32; pickle-based, read here with a NumPy-only unpickler).")
    parser.add_argument("direction", choices=("export", "import"), help="export: ours -> IRN; import: IRN -> ours")
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args(argv)
    try:
        ids = export_irn(args.source, args.target) if args.direction == "export" else \
            import_irn(args.source, args.target)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(ids)} CAM files -> {args.target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
