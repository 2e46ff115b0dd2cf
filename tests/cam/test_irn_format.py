"""IRN / official-VWL CAM files (spec §5): our .npz folder out to IRN .npy dicts and back, a hand-built IRN
file read in, and the pickle-based format read without running foreign code."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from vwl_lightning.cam.files import CAM_MANIFEST, cams_to_label, load_cam_file, save_cam_file
from vwl_lightning.cam.irn_format import export_irn, import_irn, load_irn_file, main
from vwl_lightning.errors import DataError
from vwl_lightning.utils.io import read_json


def ours(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Two images: one with classes 2 and 5 (1-based) at 10 x 7, one with class 1 at 8 x 8."""
    rng = np.random.default_rng(0)
    made = {"a": (np.array([2, 5]), rng.random((2, 10, 7)), rng.random((2, 3, 2))),
            "b": (np.array([1]), rng.random((1, 8, 8)), rng.random((1, 2, 2)))}
    for image_id, (keys, high, low) in made.items():
        save_cam_file(folder / f"{image_id}.npz", keys, high, low, dtype=np.float16)
    (folder / CAM_MANIFEST).write_text('{"split": "train", "class_names": ["background", "a", "b", "c", "d", "e"]}')
    return made


def test_export_writes_zero_based_float32_dicts_that_numpy_reads(tmp_path: Path) -> None:
    made = ours(tmp_path / "cams")
    assert export_irn(tmp_path / "cams", tmp_path / "irn") == ["a", "b"]
    # what an IRN user does: np.load(allow_pickle=True).item()
    record = np.load(tmp_path / "irn" / "a.npy", allow_pickle=True).item()
    assert sorted(record) == ["cam", "high_res", "keys"]
    assert record["keys"].tolist() == [1, 4]                       # 1-based 2, 5 -> 0-based 1, 4
    assert record["cam"].dtype == np.float32 and record["high_res"].dtype == np.float32
    assert record["high_res"].shape == (2, 10, 7) and record["cam"].shape == (2, 3, 2)
    # the values are our float16 ones, exactly (float16 -> float32 is lossless)
    np.testing.assert_array_equal(record["high_res"], made["a"][1].astype(np.float16).astype(np.float32))
    manifest = read_json(tmp_path / "irn" / CAM_MANIFEST)
    assert manifest["keys"] == "0-based" and manifest["split"] == "train"


def test_round_trip_gives_back_the_same_files(tmp_path: Path) -> None:
    ours(tmp_path / "cams")
    export_irn(tmp_path / "cams", tmp_path / "irn")
    import_irn(tmp_path / "irn", tmp_path / "back", dtype=np.float16)
    for image_id in ("a", "b"):
        first, second = load_cam_file(tmp_path / "cams" / f"{image_id}.npz"), load_cam_file(
            tmp_path / "back" / f"{image_id}.npz")
        np.testing.assert_array_equal(first.keys, second.keys)
        np.testing.assert_array_equal(first.high_res, second.high_res)
        np.testing.assert_array_equal(first.cam, second.cam)


def test_hand_built_irn_file_gives_the_right_seed_classes(tmp_path: Path) -> None:
    """An IRN make_cam-style file for an image with VOC classes 'cat' (label 8) and 'dog' (label 12):
    IRN's 0-based keys 7 and 11.  The left half is cat, the right half dog; the imported seed must say 8/12."""
    high = np.zeros((2, 4, 8), dtype=np.float32)
    high[0, :, :4] = 0.9
    high[1, :, 4:] = 0.8
    cam = np.zeros((2, 1, 2), dtype=np.float32)
    (tmp_path / "irn").mkdir()
    np.save(tmp_path / "irn" / "2007_000001.npy", {"keys": np.array([7, 11]), "cam": cam, "high_res": high})
    import_irn(tmp_path / "irn", tmp_path / "cams")
    record = load_cam_file(tmp_path / "cams" / "2007_000001.npz", num_classes=21)
    assert record.keys.tolist() == [8, 12]
    seed = cams_to_label(record.high_res, record.keys, 0.13)
    assert seed[:, :4].tolist() == [[8] * 4] * 4 and seed[:, 4:].tolist() == [[12] * 4] * 4


class Exploit:
    """A pickle that would create a file when loaded (what allow_pickle=True would run)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_foreign_pickles_are_refused_without_running_them(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array({"keys": np.array([0]), "cam": Exploit(marker)}, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"bad\.npy: not a safe IRN CAM file .*refusing to load pathlib"):
        load_irn_file(bad)
    assert not marker.exists()
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros((2, 3)))
    with pytest.raises(DataError, match=r"plain\.npy: not an IRN CAM file \(expected a pickled dict"):
        load_irn_file(plain)
    listed = tmp_path / "list.npy"
    np.save(listed, np.array([1, 2, 3, {"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"list\.npy: not an IRN CAM file"):
        load_irn_file(listed)
    short = tmp_path / "short.npy"
    with open(short, "wb") as handle:
        np.save(handle, {"keys": np.array([0]), "cam": np.zeros((1, 1, 1))}, allow_pickle=True)
    with pytest.raises(DataError, match=r"short\.npy: IRN CAM file lacks \['high_res'\]"):
        load_irn_file(short)
    assert pickle.HIGHEST_PROTOCOL >= 3


def test_cli_exports_and_names_a_bad_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ours(tmp_path / "cams")
    assert main(["export", str(tmp_path / "cams"), str(tmp_path / "irn")]) == 0
    assert "2 CAM files" in capsys.readouterr().out
    assert main(["import", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    assert "nothing: no IRN CAM files" in capsys.readouterr().err
