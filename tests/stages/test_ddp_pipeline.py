"""The whole pipeline under ``trainer=ddp_cpu`` (2 gloo processes): every stage completes, every CAM file
is written, and the validation mIoU of the classifier and the segmenter, synchronised over the two
ranks with an odd number of val images (no padding), equals a single-process validation of the same
checkpoint.  The post-CAM stages shard their images over the two ranks: each rank writes its share of the
pseudo masks (each once), and the seed scores and the pseudo masks and their mIoU equal one process's on the
same CAMs; with ``pseudo.mode=irn`` the same holds for IRN's confident seeds and the walk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from omegaconf import OmegaConf, open_dict

from conftest import compose_config
from vwl_lightning.cam.files import cam_path, is_complete_cam_file
from vwl_lightning.data.label_png import read_label_png
from vwl_lightning.data.pseudo_mask_data import resolve_mask_dir
from vwl_lightning.data.source import resolve_data
from vwl_lightning.modules.classifier import load_classifier
from vwl_lightning.stages import train_classifier, train_segmenter
from vwl_lightning.stages.pipeline import PIPELINE, run, run_pseudo, run_seeds
from vwl_lightning.utils.manifest import read_manifest

TINY = ["debug=tiny", "data.source.generator.num_val=15", "model.codebook.size=8", "cam.scales=[1.0]",
        "cam.batch_size=16"]


def run_ddp(run_dir: Path, tmp_path: Path, cache_dir: Path, overrides: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vwl_lightning", "trainer=ddp_cpu", f"run_dir={run_dir}",
         f"paths.runs_dir={tmp_path}/hydra", f"paths.cache_dir={cache_dir}", *overrides],
        capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]


def assert_written_once_per_rank(manifest: dict, count: int) -> None:
    per_rank = manifest["counts"]["written_per_rank"]
    assert len(per_rank) == 2 and min(per_rank) > 0 and sum(per_rank) == count == manifest["counts"]["written"]


def assert_same_masks(a: Path, b: Path, ids: list[str]) -> None:
    for image_id in ids:
        np.testing.assert_array_equal(read_label_png(a / f"{image_id}.png"), read_label_png(b / f"{image_id}.png"))


def validate(module: pl.LightningModule, datamodule: pl.LightningDataModule) -> dict[str, float]:
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    return {k: float(v) for k, v in trainer.validate(module, datamodule=datamodule, verbose=False)[0].items()}


def test_pipeline_under_ddp_cpu_matches_single_process_validation(tmp_path: Path, cache_dir: Path) -> None:
    run_dir = tmp_path / "run"
    run_ddp(run_dir, tmp_path, cache_dir, TINY)
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

    # seeds and CRF masks, sharded over the 2 ranks, against one process on the same CAMs
    assert_written_once_per_rank(read_manifest(run_dir / "pseudo"), len(train_ids))
    with open_dict(cfg):
        cfg.seeds.out_dir, cfg.pseudo.out_dir = str(tmp_path / "seeds_1p"), str(tmp_path / "pseudo_1p")
    one = run_seeds(cfg, data)
    two = read_manifest(run_dir / "seeds")["metrics"]
    assert two["best_miou"] == one["best_miou"] and two["miou_at_configured"] == one["miou_at_configured"]
    confusion = [json.loads((d / "metrics.json").read_text())["confusion_at_configured"]
                 for d in (run_dir / "seeds", tmp_path / "seeds_1p")]
    assert confusion[0] == confusion[1] and sum(map(sum, confusion[0])) > 0
    one = run_pseudo(cfg, data)
    assert read_manifest(run_dir / "pseudo")["metrics"]["miou"] == one["metrics"]["miou"]
    assert_same_masks(run_dir / "pseudo" / "masks", tmp_path / "pseudo_1p" / "masks", train_ids)

    # a stage run alone under DDP starts its ranks itself and shards too
    alone = tmp_path / "alone"
    run_ddp(alone, tmp_path, cache_dir, [*TINY, "stage=pseudo", f"pseudo.cam_dir={run_dir}/cams"])
    assert_written_once_per_rank(read_manifest(alone / "pseudo"), len(train_ids))
    assert_same_masks(alone / "pseudo" / "masks", tmp_path / "pseudo_1p" / "masks", train_ids)


TINY_IRN = [*TINY, "pseudo.mode=irn", "irn=synthetic", "irn.max_epochs=1", "irn.batch_size=8", "irn.crop_size=64",
            "irn.radius=5", "irn.walk.exp_times=5", "irn.seeds.num_workers=0", "pipeline=[classifier,cams,pseudo]"]


def test_irn_seeds_and_walk_shard_over_two_ranks_with_one_process_numbers(tmp_path: Path, cache_dir: Path) -> None:
    run_dir = tmp_path / "run"
    run_ddp(run_dir, tmp_path, cache_dir, TINY_IRN)
    cfg = compose_config(TINY_IRN, run_dir, cache_dir)
    ids = resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True)).layout.split_ids("train")
    seeds, trained, walked = (read_manifest(run_dir / "irn" / "seeds"), read_manifest(run_dir / "irn" / "train"),
                              read_manifest(run_dir / "pseudo"))
    assert_written_once_per_rank(seeds, len(ids))
    assert_written_once_per_rank(walked, len(ids))
    assert trained["ranks"] == 2 and walked["ranks"] == 2

    # one process, the same CAMs and boundary checkpoint: the same confident seeds, walk masks and mIoU
    one_dir = tmp_path / "one"
    single = compose_config([*TINY_IRN, "pipeline=[pseudo]", f"irn.cam_dir={run_dir}/cams",
                             f"pseudo.cam_dir={run_dir}/cams", f"irn.checkpoint={trained['checkpoint']}"],
                            one_dir, cache_dir)
    run(single)
    assert read_manifest(one_dir / "pseudo")["metrics"]["miou"] == walked["metrics"]["miou"]
    assert_same_masks(run_dir / "pseudo" / "masks", one_dir / "pseudo" / "masks", ids)
    with open_dict(single):
        single.irn.out_dir, single.irn.checkpoint = str(one_dir / "irn"), None
    from vwl_lightning.stages.irn import make_irn_seeds

    one_seeds = make_irn_seeds(single, resolve_data(OmegaConf.to_container(single.data.source, resolve=True)))
    assert one_seeds["metrics"] == seeds["metrics"]
    assert_same_masks(run_dir / "irn" / "seeds" / "masks", one_dir / "irn" / "seeds" / "masks", ids)
