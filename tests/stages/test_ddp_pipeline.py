"""The whole pipeline under ``trainer=ddp_cpu`` (2 gloo processes): every stage completes, every CAM file
is written, and the validation mIoU of the classifier and the segmenter, synchronised over the two
ranks with an odd number of val images (no padding), equals a single-process validation of the same
checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
from omegaconf import OmegaConf

from conftest import QUIET_TRAINER, TINY_DATA, compose_config
from vwl_lightning.cam.files import cam_path, is_complete_cam_file
from vwl_lightning.data.pseudo_mask_data import resolve_mask_dir
from vwl_lightning.data.source import resolve_data
from vwl_lightning.modules.classifier import load_classifier
from vwl_lightning.stages import train_classifier, train_segmenter
from vwl_lightning.stages.pipeline import PIPELINE
from vwl_lightning.utils.manifest import read_manifest

TINY = [*TINY_DATA, *QUIET_TRAINER, "data.source.generator.num_val=15", "model.max_epochs=1",
        "model.codebook.size=8", "model.backbone.model_kwargs.channels=[8,16,32,64]", "cam.scales=[1.0]",
        "cam.num_workers=0", "pseudo.num_workers=0", "segmenter.max_epochs=1", "segmenter.num_workers=0",
        "segmenter.backbone.model_kwargs={channels:[8,16,32,64]}"]


def validate(module: pl.LightningModule, datamodule: pl.LightningDataModule) -> dict[str, float]:
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    return {k: float(v) for k, v in trainer.validate(module, datamodule=datamodule, verbose=False)[0].items()}


def test_pipeline_under_ddp_cpu_matches_single_process_validation(tmp_path: Path, cache_dir: Path) -> None:
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "vwl_lightning", "trainer=ddp_cpu", f"run_dir={run_dir}",
         f"paths.runs_dir={tmp_path}/hydra", f"paths.cache_dir={cache_dir}", *TINY],
        capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in PIPELINE:
        assert (run_dir / stage if stage != "cams" else run_dir / "cams").is_dir()
    cfg = compose_config(TINY, run_dir, cache_dir)
    data = resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True))
    train_ids = data.layout.split_ids("train")
    assert all(is_complete_cam_file(cam_path(run_dir / "cams", i)) for i in train_ids)
    assert len(list((run_dir / "pseudo" / "masks").glob("*.png"))) == len(train_ids)
    assert len(data.layout.split_ids("val")) == 15  # odd: a padded sampler would count an image twice

    classifier = read_manifest(run_dir / "classifier")
    module = load_classifier(Path(classifier["checkpoint"]))
    single = validate(module, train_classifier.build_datamodule(cfg))
    assert classifier["metrics"]["val/cam_mIoU"] == pytest.approx(single["val/cam_mIoU"], abs=1e-6)
    assert classifier["metrics"]["val/mAP"] == pytest.approx(single["val/mAP"], abs=1e-6)

    segmenter = read_manifest(run_dir / "segmenter")
    module = train_segmenter.load_segmenter(Path(segmenter["checkpoint"]))
    datamodule = train_segmenter.build_datamodule(cfg, data, resolve_mask_dir(run_dir / "pseudo"))
    single = validate(module, datamodule)
    assert segmenter["training"]["metrics"]["val/mIoU"] == pytest.approx(single["val/mIoU"], abs=1e-6)
