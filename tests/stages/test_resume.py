"""A classifier run killed during training continues from its last checkpoint when started again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import compose_config, logged, wait_for
from vwl_lightning.stages.train_classifier import train_classifier
from vwl_lightning.utils.manifest import read_manifest

TINY = ["debug=tiny", "model.codebook.size=8"]


def test_killed_classifier_resumes_from_its_last_checkpoint(tmp_path: Path, cache_dir: Path) -> None:
    run_dir = tmp_path / "run"
    stage = run_dir / "classifier"
    last = stage / "checkpoints" / "last.ckpt"
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vwl_lightning", "stage=classifier", f"run_dir={run_dir}",
             f"paths.runs_dir={tmp_path}/hydra", f"paths.cache_dir={cache_dir}", *TINY, "model.max_epochs=200"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:  # kill it once the log says it trains and its first epoch has left the resume point (written
            # atomically: a last.ckpt under its final name is complete); the kill lands in a later epoch
            wait_for(logged(log, "classifier: training, outputs in"), proc, log, what="the classifier's start")
            wait_for(last.is_file, proc, log, what="classifier/checkpoints/last.ckpt")
        finally:
            proc.kill()
            proc.wait()
    assert last.is_file(), log.read_text()[-3000:]
    assert read_manifest(stage) is None and not (stage / "classifier.ckpt").exists()
    killed_at = torch.load(last, map_location="cpu", weights_only=False)
    steps_per_epoch = 48 // 8
    assert killed_at["global_step"] == (killed_at["epoch"] + 1) * steps_per_epoch  # saved at an epoch's end
    epochs = killed_at["epoch"] + 3
    cfg = compose_config([*TINY, f"model.max_epochs={epochs}"], run_dir, cache_dir)
    train_classifier(cfg)
    manifest = read_manifest(stage)
    assert manifest["resumed_from"] == str(last)
    assert manifest["global_step"] == epochs * steps_per_epoch  # no epoch trained twice, none skipped
    assert (stage / "classifier.ckpt").is_file()


def test_truncated_last_checkpoint_is_named_set_aside_and_not_resumed_from(tmp_path: Path, cache_dir: Path,
                                                                          caplog) -> None:
    """A last.ckpt cut short by a full disk is named and set aside, not resumed from (resuming from it dies
    inside Lightning with `PytorchStreamReader failed reading zip archive`, naming no file)."""
    import logging

    run_dir = tmp_path / "run"
    stage = run_dir / "classifier"
    cfg = compose_config([*TINY, "model.max_epochs=1"], run_dir, cache_dir)
    train_classifier(cfg)
    last = stage / "checkpoints" / "last.ckpt"
    (stage / "manifest.json").unlink()  # as if killed before the end
    (stage / "classifier.ckpt").unlink()
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        train_classifier(cfg)
    assert f"{last}: truncated or unreadable checkpoint" in caplog.text
    assert (stage / "checkpoints" / "last.ckpt.corrupt").is_file()
    manifest = read_manifest(stage)
    assert manifest["resumed_from"] is None and manifest["global_step"] == 48 // 8  # trained afresh, one epoch
    reloaded = torch.load(last, map_location="cpu", weights_only=True)  # the new resume point is whole
    assert reloaded["global_step"] == 48 // 8
