"""W&B logging, offline: one run per stage with group/job type from config, and the media that each stage
writes (CAM overlays, masks as wandb.Image, per-class IoU tables, the background-score curve)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import wandb

from vwl_lightning.stages.pipeline import run_stages
from vwl_lightning.tracking.wandb_runs import wandb_mode


def media(stage_dir: Path, pattern: str) -> list[Path]:
    return sorted(stage_dir.glob(f"wandb/offline-run-*/files/media/{pattern}"))


def test_every_stage_logs_its_own_offline_run(make_config, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    inits: list[dict] = []
    real_init = wandb.init

    def spy(*args, **kwargs):
        inits.append(kwargs)
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", spy)
    cfg = make_config("logger=wandb", "logger.max_images=2", "logger.tags=[ablation]", "name=wb_test",
                      "model.codebook.size=8", "cam.scales=[1.0]")
    run_stages(cfg, ("classifier", "cams", "seeds", "pseudo", "segmenter"))
    run_dir = Path(cfg.run_dir)
    assert [(i["job_type"], i["group"], i["mode"], i["tags"]) for i in inits] == [
        (stage, "wb_test", "offline", ["ablation"]) for stage in ("classifier", "cams", "seeds", "pseudo", "segmenter")]
    assert wandb.run is None  # every stage finished its run
    # classifier: CAM overlays and seed-vs-truth masks of the first validation batch, 2 per epoch
    overlays = media(run_dir / "classifier", "images/val/cam_overlay_*.png")
    assert len(overlays) == 2
    masks = media(run_dir / "classifier", "images/mask/val/seed_masks_*.mask.png")
    assert len(masks) == 2 * 2  # prediction and ground-truth layers
    # cams: its own run with the grid of captioned CAM overlays that the stage also writes to its folder
    assert len(media(run_dir / "cams", "images/cams/overlays_*.png")) == 1
    assert (run_dir / "cams" / "overlays.png").is_file()
    # seeds: per-class IoU table with one row per class and the background-score curve
    table = json.loads(media(run_dir / "seeds", "table/seeds/per_class_iou_*.table.json")[0].read_text())
    assert table["columns"] == ["class", "iou", "precision", "recall"]
    assert [row[0] for row in table["data"]] == list(cfg_class_names(run_dir))
    curve = json.loads(media(run_dir / "seeds", "table/seeds/bg_score_curve_table_*.table.json")[0].read_text())
    assert len(curve["data"]) == len(json.loads((run_dir / "seeds" / "metrics.json").read_text())["curve"])
    # pseudo masks and segmenter predictions as masked images, and their tables
    assert len(media(run_dir / "pseudo", "images/mask/pseudo/masks_*.mask.png")) == 2 * 2
    assert media(run_dir / "segmenter", "table/segmenter/eval/per_class_iou_*.table.json")
    assert media(run_dir / "segmenter", "table/segmenter/eval_crf/per_class_iou_*.table.json")


def cfg_class_names(run_dir: Path) -> list[str]:
    return json.loads((run_dir / "cams" / "manifest.json").read_text())["class_names"]


def test_mode_falls_back_to_offline_without_a_key(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert wandb_mode({"mode": "online"}) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode({"mode": "online"}) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode({"mode": "online"}) == "disabled"
    from vwl_lightning.errors import ConfigError

    monkeypatch.delenv("WANDB_MODE")
    with pytest.raises(ConfigError, match="logger.mode"):
        wandb_mode({"mode": "sometimes"})
