"""Checkpoints: written to a temporary name in their own folder and renamed (never staged in /tmp); a
truncated resume point is named, set aside as *.corrupt and not resumed from."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
import torch

import vwl_lightning.utils.checkpoints as checkpoints
from vwl_lightning.errors import DataError
from vwl_lightning.utils.checkpoints import AtomicCheckpointIO, checkpoint_problem, usable_resume_checkpoint

STATE = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "global_step": 18}


def test_save_goes_through_a_temporary_beside_the_target_and_loads_weights_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renames: list[tuple[Path, Path]] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append((Path(a), Path(b))), real_replace(a, b)))
    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(STATE, target)
    assert renames == [(renames[0][0], target)] and renames[0][0].parent == target.parent
    loaded = AtomicCheckpointIO().load_checkpoint(target)
    assert torch.equal(loaded["state_dict"]["w"], STATE["state_dict"]["w"]) and loaded["global_step"] == 18
    assert checkpoint_problem(target) is None


def test_disk_full_during_a_checkpoint_save_keeps_the_previous_one(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(STATE, target)
    good = target.read_bytes()

    def half_then_enospc(obj: object, path: Path) -> None:
        Path(path).write_bytes(good[: len(good) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoints.torch, "save", half_then_enospc)
    with pytest.raises(DataError, match=rf"^{target}: cannot write \(No space left on device, ENOSPC\)"):
        AtomicCheckpointIO().save_checkpoint({**STATE, "epoch": 4}, target)
    assert target.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_truncated_resume_checkpoint_is_named_and_set_aside(tmp_path: Path, caplog) -> None:
    target = tmp_path / "last.ckpt"
    torch.save(STATE, target)
    assert usable_resume_checkpoint(target) == target
    target.write_bytes(target.read_bytes()[:-200])  # as a full disk left it
    problem = checkpoint_problem(target)
    assert problem is not None
    with caplog.at_level(logging.WARNING):
        assert usable_resume_checkpoint(target) is None
    assert not target.exists() and (tmp_path / "last.ckpt.corrupt").is_file()
    assert f"{target}: truncated or unreadable checkpoint" in caplog.text and "not resumed from" in caplog.text
    assert usable_resume_checkpoint(target) is None  # nothing there any more


def test_a_corrupt_member_fails_the_crc(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    torch.save(STATE, target)
    blob = bytearray(target.read_bytes())
    data_at = blob.find(b"data/0") + 200  # inside the stored tensor bytes of the zip
    blob[data_at] ^= 0xFF
    target.write_bytes(bytes(blob))
    assert checkpoint_problem(target) is not None
