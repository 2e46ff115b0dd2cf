"""Hydra sweeps in a subprocess: a K x gamma grid with a failing job, and a 2-trial Optuna search."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

SHORT = ["debug=tiny", "cam.scales=[1.0]", "pipeline=[classifier,cams,seeds]"]


def run_cli(args: list[str], tmp_path: Path, cache_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vwl_lightning", "-m", *args, *SHORT,
                           f"paths.cache_dir={cache_dir}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"})


def test_grid_sweep_writes_summary_and_survives_a_failed_job(tmp_path: Path, cache_dir: Path) -> None:
    # gamma = -1 is invalid: those two jobs fail, are recorded, and the other two still run
    result = run_cli(["model.codebook.size=8,16", "model.pool.gamma=-1,2"], tmp_path, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweep"
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert len(rows) == 4
    status = {(r["model.codebook.size"], r["model.pool.gamma"]): r["status"] for r in rows}
    assert status == {("8", "-1"): "failed", ("16", "-1"): "failed", ("8", "2"): "ok", ("16", "2"): "ok"}
    for row in rows:
        if row["status"] == "ok":
            assert 0.0 <= float(row["cam_seed_miou_best"]) <= 1.0
        else:
            assert "model.pool.gamma=-1: expected a number >= 0" in row["error"]  # HybridPooling's own check
    assert (sweep / "sweep_heatmap.png").stat().st_size > 1000
    assert (sweep / "sweep_sensitivity.png").stat().st_size > 1000  # K varies among the jobs that ran
    assert "failed" in (sweep / "sweep_summary.md").read_text()


def test_optuna_search_runs_two_trials(tmp_path: Path, cache_dir: Path) -> None:
    result = run_cli(["+hparams_search=optuna_seeds", "hydra.sweeper.n_trials=2",
                      "hydra.sweeper.sampler.n_startup_trials=2"], tmp_path, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweep"
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"model.codebook.size", "model.pool.gamma"}
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert abs(best["best_value"] - max(float(r["cam_seed_miou_best"]) for r in rows)) < 1e-9


def test_sensitivity_curves_follow_each_knob(tmp_path: Path) -> None:
    from vwl_lightning.tracking.sweep_summary import heatmap_grid, sensitivity_curves

    rows = [{"model.codebook.size": k, "model.pool.gamma": g, "cam_seed_miou_best": 0.1 * i}
            for i, (k, g) in enumerate([("16", "2"), ("64", "2"), ("256", "2"), ("256", "0"), ("256", "4")])]
    row_key, column_key, ks, gammas, grid = heatmap_grid(rows)
    assert (row_key, column_key) == ("model.codebook.size", "model.pool.gamma")
    assert ks == [16.0, 64.0, 256.0] and gammas == [0.0, 2.0, 4.0]
    assert grid[2, 0] == pytest.approx(0.3) and grid[0, 1] == 0.0 and np.isnan(grid[0, 0])
    assert sensitivity_curves(tmp_path / "curves.png", rows)
    assert heatmap_grid([{**r, "seed": "1"} for r in rows[:3]]) is None  # one knob varies: no heat map
    assert not sensitivity_curves(tmp_path / "none.png", rows[:1])
    assert not (tmp_path / "none.png").exists()


def test_slurm_launcher_config_composes() -> None:
    from hydra import compose, initialize_config_dir

    from vwl_lightning.utils.config import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["hydra/launcher=slurm", "+experiment=voc_vwl_l", "trainer=ddp", "trainer.devices=4",
                                 "trainer.num_nodes=2", "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=4",
                                 "hydra.launcher.gpus_per_node=4", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node, launcher.partition) == (2, 4, 4, "gpu")
    assert (cfg.trainer.strategy, cfg.trainer.num_nodes, cfg.trainer.devices) == ("ddp", 2, 4)
    assert launcher.max_num_timeout == 2
