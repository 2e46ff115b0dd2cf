"""Atomic writes: permissions follow the umask, an OSError such as ENOSPC becomes one line naming the path,
and nothing partial is left under the final or a temporary name."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vwl_lightning.cam.files import save_cam_file
from vwl_lightning.data.label_png import write_label_png
from vwl_lightning.errors import DataError
from vwl_lightning.utils.io import atomic_path, write_json_atomic, write_text_atomic


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600), (0o000, 0o666)])
def test_written_files_get_the_mode_the_umask_gives(mask: int, mode: int, umask, tmp_path: Path) -> None:
    umask(mask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives a new file under this umask: the reference
    assert stat.S_IMODE(plain.stat().st_mode) == mode
    for path in (write_text_atomic(tmp_path / "a.txt", "x"), write_json_atomic(tmp_path / "b.json", {"a": 1}),
                 write_label_png(tmp_path / "m.png", np.zeros((3, 4), np.uint8)),
                 save_cam_file(tmp_path / "c.npz", np.array([1]), np.zeros((1, 4, 4)), np.zeros((1, 1, 1)))):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def enospc(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_a_cam_file_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "cams" / "2007_000032.npz"
    monkeypatch.setattr(np, "savez", enospc)
    with pytest.raises(DataError) as info:
        save_cam_file(target, np.array([1]), np.zeros((1, 4, 4)), np.zeros((1, 1, 1)))
    message = str(info.value)
    assert message == (f"{target}: cannot write (No space left on device, ENOSPC); free space or fix permissions "
                       "and run again")
    assert "\n" not in message and not list(target.parent.iterdir())  # no partial file, no temporary


def test_disk_full_while_writing_a_crf_mask_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "pseudo" / "masks" / "2007_000032.png"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"old")  # an earlier mask survives a failed rewrite
    monkeypatch.setattr(Image.Image, "save", enospc)
    with pytest.raises(DataError, match=rf"^{target}: cannot write \(No space left on device, ENOSPC\)"):
        write_label_png(target, np.zeros((3, 4), np.uint8))
    assert target.read_bytes() == b"old" and sorted(p.name for p in target.parent.iterdir()) == [target.name]


def test_a_failed_rename_is_named_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "replace", lambda *a: enospc())
    with pytest.raises(DataError, match=r"out\.json: cannot write \(No space left"):
        write_json_atomic(tmp_path / "out.json", {})
    assert not list(tmp_path.iterdir())


def test_the_temporary_lies_beside_the_target(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "sub" / "f.bin") as tmp:
        assert tmp.parent == tmp_path / "sub" and tmp.name.startswith(".tmp-f-") and tmp.suffix == ".bin"
        tmp.write_bytes(b"abc")
    assert (tmp_path / "sub" / "f.bin").read_bytes() == b"abc"
