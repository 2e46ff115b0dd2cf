"""The one-command pipeline on a tiny embedded benchmark (the session's ``tiny_pipeline``, conftest.py):
classifier → CAMs → seeds → CRF pseudo masks → segmenter, every stage's outputs and manifest, results.json/md,
resume after an interrupted segmenter, and each stage run alone from another run's folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import TINY, compose_config, logged, wait_for
from vwl_lightning.cam.files import cam_path
from vwl_lightning.data.label_png import read_label_png
from vwl_lightning.errors import DataError
from vwl_lightning.stages.pipeline import PIPELINE, run
from vwl_lightning.utils.manifest import read_manifest

pytestmark = pytest.mark.usefixtures("one_thread")


def ids_of(cfg, split: str) -> list[str]:
    from omegaconf import OmegaConf

    from vwl_lightning.data.source import resolve_data

    return resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True)).layout.split_ids(split)


def test_pipeline_writes_every_stage_and_the_results(tiny_pipeline: SimpleNamespace) -> None:
    run_dir, cfg = tiny_pipeline.run_dir, tiny_pipeline.cfg
    assert PIPELINE == ("classifier", "cams", "seeds", "pseudo", "segmenter")
    train_ids, val_ids = ids_of(cfg, "train"), ids_of(cfg, "val")
    manifests = {name: read_manifest(run_dir / name) for name in PIPELINE}
    assert all(m is not None and m["status"] == "complete" for m in manifests.values()), manifests
    # classifier
    assert manifests["classifier"]["checkpoint"] == str(run_dir / "classifier" / "classifier.ckpt")
    assert (run_dir / "classifier" / "classifier.ckpt").is_file()
    assert (run_dir / "classifier" / "checkpoints" / "last.ckpt").is_file()
    # CAMs: one file per training image
    assert manifests["cams"]["scales"] == [1.0, 0.5] and manifests["cams"]["counts"]["images"] == 48
    assert all(cam_path(run_dir / "cams", i).is_file() for i in train_ids)
    # seeds: the sweep report
    for name in ("metrics.json", "metrics.md", "per_class_iou.png", "miou_vs_bg_score.png"):
        assert (run_dir / "seeds" / name).is_file()
    assert 0.0 <= manifests["seeds"]["metrics"]["miou_at_configured"] <= 1.0
    # pseudo masks: one PNG per training image, scored
    assert sorted(p.stem for p in (run_dir / "pseudo" / "masks").glob("*.png")) == sorted(train_ids)
    assert 0.0 < manifests["pseudo"]["metrics"]["miou"] <= 1.0
    # segmenter: trained on those masks, evaluated on val without and with CRF
    seg = run_dir / "segmenter"
    assert manifests["segmenter"]["mask_dir"] == str(run_dir / "pseudo" / "masks")
    assert manifests["segmenter"]["num_pseudo_masks"] == 48
    assert manifests["segmenter"]["config"]["segmenter"]["backbone_init"] == str(run_dir / "classifier")
    for path in ("segmenter.ckpt", "checkpoints/last.ckpt", "eval/metrics.json", "eval/metrics.md",
                 "eval/per_class_iou.png", "eval_crf/metrics.json", "eval_crf/metrics.md",
                 "eval_crf/per_class_iou.png"):
        assert (seg / path).is_file(), path
    for sub in ("eval", "eval_crf"):
        assert sorted(p.stem for p in (seg / sub / "predictions").glob("*.png")) == sorted(val_ids)
    # results
    results = json.loads((run_dir / "results.json").read_text())
    assert results == json.loads(json.dumps(tiny_pipeline.headline))
    assert results["pseudo_mask_miou"] == manifests["pseudo"]["metrics"]["miou"]
    assert results["segmenter_val_miou"] == manifests["segmenter"]["eval"]["eval"]["miou"]
    assert results["segmenter_val_miou_crf"] == manifests["segmenter"]["eval"]["eval_crf"]["miou"]
    assert set(results["stage_seconds"]) == set(PIPELINE)
    assert all(v > 0 for v in results["stage_seconds"].values())
    text = (run_dir / "results.md").read_text()
    assert "segmenter_val_miou_crf" in text and "| segmenter |" in text


def test_killed_segmenter_resumes_and_earlier_stages_are_skipped(tiny_pipeline: SimpleNamespace,
                                                                 tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_pipeline.run_dir, run_dir)  # keeps mtimes
    seg = run_dir / "segmenter"
    shutil.rmtree(seg)  # the copy's segmenter starts from scratch
    first_id = ids_of(tiny_pipeline.cfg, "train")[0]
    watched = [run_dir / "classifier" / "classifier.ckpt", run_dir / "classifier" / "manifest.json",
               cam_path(run_dir / "cams", first_id), run_dir / "seeds" / "manifest.json",
               run_dir / "seeds" / "metrics.json", run_dir / "pseudo" / "manifest.json",
               run_dir / "pseudo" / "masks" / f"{first_id}.png"]
    before = {p: p.stat().st_mtime_ns for p in watched}
    # `python -m vwl_lightning` in that folder, killed (SIGKILL) once the segmenter has a resume point; the
    # resumed run has the same settings (a changed segmenter.max_epochs would be refused: another LR schedule)
    epochs = 6
    last = seg / "checkpoints" / "last.ckpt"
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vwl_lightning", f"run_dir={run_dir}", f"paths.runs_dir={tmp_path}/hydra",
             f"paths.cache_dir={tiny_pipeline.cache}", TINY, f"segmenter.max_epochs={epochs}"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:  # the stage log says the segmenter trains; its first epoch's end leaves the resume point
            wait_for(logged(log, "segmenter: training on"), proc, log, what="the segmenter's start")
            wait_for(last.is_file, proc, log, what="segmenter/checkpoints/last.ckpt")
        finally:
            proc.kill()
            proc.wait()
    assert last.is_file(), log.read_text()[-3000:]
    assert read_manifest(seg) is None and not (seg / "segmenter.ckpt").exists()
    killed_at = torch.load(last, map_location="cpu", weights_only=False)
    steps_per_epoch = 48 // 8
    assert killed_at["global_step"] == killed_at["epoch"] * steps_per_epoch + steps_per_epoch  # an epoch's end
    assert killed_at["epoch"] < epochs - 1
    # run the pipeline again: earlier stages are skipped, the segmenter resumes and completes
    headline = run(compose_config([TINY, f"segmenter.max_epochs={epochs}"], run_dir, tiny_pipeline.cache))
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    manifest = read_manifest(seg)
    assert manifest["training"]["resumed_from"] == str(last)
    assert manifest["training"]["epochs"] == epochs
    assert manifest["training"]["global_step"] == epochs * steps_per_epoch
    assert headline["segmenter_val_miou"] == manifest["eval"]["eval"]["miou"]
    assert headline["segmenter_val_miou_crf"] == manifest["eval"]["eval_crf"]["miou"]
    assert (seg / "eval_crf" / "metrics.json").is_file() and (seg / "segmenter.ckpt").is_file()


def test_each_stage_runs_alone_from_another_runs_folders(tiny_pipeline: SimpleNamespace, tmp_path: Path) -> None:
    source = tiny_pipeline.run_dir
    run_dir = tmp_path / "alone"

    def stage(*overrides: str, where: Path = run_dir):
        return run(compose_config([TINY, *overrides], where, tiny_pipeline.cache))

    stage("stage=cams", f"cam.classifier_dir={source}/classifier")
    stage("stage=seeds")  # reads this run's cams (seeds.cam_dir defaults to cam.out_dir)
    stage("stage=pseudo", f"pseudo.cam_dir={source}/cams")
    assert not (run_dir / "classifier").exists()
    for name in ("cams", "seeds", "pseudo"):
        assert read_manifest(run_dir / name) is not None, name
    first_id = ids_of(tiny_pipeline.cfg, "train")[0]
    same_cams = np.load(cam_path(run_dir / "cams", first_id))["high_res"]
    np.testing.assert_allclose(same_cams, np.load(cam_path(source / "cams", first_id))["high_res"], atol=1e-3)
    np.testing.assert_array_equal(read_label_png(run_dir / "pseudo" / "masks" / f"{first_id}.png"),
                                  read_label_png(source / "pseudo" / "masks" / f"{first_id}.png"))
    # the segmenter from the command line, on the other run's pseudo masks, as README shows it: the classifier
    # that initialises its backbone is the one behind those masks (pseudo -> cams -> classifier manifests)
    env = {**os.environ, "VWL_CACHE_DIR": str(tiny_pipeline.cache), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "vwl_lightning", "stage=segmenter", f"segmenter.pseudo_dir={source}/pseudo",
         f"run_dir={run_dir}", f"paths.runs_dir={tmp_path}/hydra", f"paths.cache_dir={tiny_pipeline.cache}",
         TINY],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = read_manifest(run_dir / "segmenter")
    assert manifest["mask_dir"] == str(source / "pseudo" / "masks")
    assert manifest["config"]["segmenter"]["backbone_init"] == str(source / "classifier")
    assert f"segmenter (val): mIoU {100 * manifest['eval']['eval']['miou']:.2f} %" in result.stdout
    # a pseudo folder that does not exist is refused, naming the key and the folder
    with pytest.raises(DataError, match=rf"segmenter\.pseudo_dir={tmp_path}/nothing: no completed pseudo stage there"):
        stage("stage=segmenter", f"segmenter.pseudo_dir={tmp_path}/nothing", where=tmp_path / "other")
