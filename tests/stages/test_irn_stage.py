"""pseudo.mode=irn on a tiny embedded benchmark: seeds → boundary training → walk → masks, resume, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import open_dict

from conftest import compose_config
from vwl_lightning.data.label_png import read_label_png
from vwl_lightning.errors import DataError
from vwl_lightning.stages.pipeline import run
from vwl_lightning.utils.manifest import read_manifest

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_IRN = [
    "debug=tiny", "cam.scales=[1.0]",
    "pseudo.mode=irn", "irn=synthetic", "irn.max_epochs=2", "irn.batch_size=8", "irn.crop_size=64", "irn.radius=5",
    "irn.walk.exp_times=5",
    "pipeline=[classifier,cams,pseudo]",
]


@pytest.fixture(scope="module")
def irn_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> SimpleNamespace:
    run_dir = tmp_path_factory.mktemp("irn") / "run"
    cfg = compose_config(TINY_IRN, run_dir, cache_dir)
    headline = run(cfg)
    return SimpleNamespace(cfg=cfg, run_dir=run_dir, headline=headline, cache=cache_dir)


def ids_of(cfg, split: str) -> list[str]:
    from omegaconf import OmegaConf

    from vwl_lightning.data.source import resolve_data

    return resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True)).layout.split_ids(split)


def test_irn_mode_writes_seeds_boundary_checkpoint_and_masks(irn_run: SimpleNamespace) -> None:
    run_dir, cfg = irn_run.run_dir, irn_run.cfg
    ids = ids_of(cfg, str(cfg.pseudo.split))
    seeds = read_manifest(run_dir / "irn" / "seeds")
    assert seeds["mode"] == "confident" and seeds["fg_thres"] == 0.30 and seeds["bg_thres"] == 0.05
    trained = read_manifest(run_dir / "irn" / "train")
    assert Path(trained["checkpoint"]).is_file() and len(trained["run_id"]) == 32
    assert np.isfinite(trained["metrics"]["train/loss"])
    pseudo = read_manifest(run_dir / "pseudo")
    assert pseudo["mode"] == "irn" and pseudo["irn_run_id"] == trained["run_id"]
    assert pseudo["counts"]["images"] == len(ids) == pseudo["counts"]["written"]
    masks = [read_label_png(run_dir / "pseudo" / "masks" / f"{i}.png") for i in ids]
    values = set(np.unique(np.concatenate([m.ravel() for m in masks])).tolist())
    assert 255 not in values and 0 in values and len(values) > 1  # full masks: background and classes
    assert 0.0 < pseudo["metrics"]["miou"] <= 1.0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["pseudo_mask_miou"] == pytest.approx(pseudo["metrics"]["miou"])


def test_killed_walk_and_training_resume(irn_run: SimpleNamespace, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(irn_run.run_dir, run_dir)
    cfg = compose_config([*TINY_IRN, "pipeline=[pseudo]"], run_dir, irn_run.cache)
    with open_dict(cfg):  # the copied folders: CAMs and classifier of the copy
        cfg.run_dir = str(run_dir)
    before = {p.name: read_label_png(p) for p in (run_dir / "pseudo" / "masks").glob("*.png")}
    # a walk killed after some masks: its manifest still says "running" (written when the walk starts),
    # three masks gone, a stale temporary left behind
    manifest_file = run_dir / "pseudo" / "manifest.json"
    manifest_file.write_text(json.dumps({**json.loads(manifest_file.read_text()), "status": "running",
                                         "cam_dir": str(run_dir / "cams")}))
    gone = sorted(before)[:3]
    for name in gone:
        (run_dir / "pseudo" / "masks" / name).unlink()
    (run_dir / "pseudo" / "masks" / ".tmp-x-123.png").write_bytes(b"partial")
    # a training killed after its last epoch checkpoint: final checkpoint and manifest gone
    (run_dir / "irn" / "train" / "manifest.json").unlink()
    (run_dir / "irn" / "train" / "irn.ckpt").unlink()
    run(cfg)
    trained = read_manifest(run_dir / "irn" / "train")
    assert trained["resumed_from"].endswith("last.ckpt")
    assert trained["run_id"] == read_manifest(irn_run.run_dir / "irn" / "train")["run_id"]
    pseudo = read_manifest(run_dir / "pseudo")
    assert pseudo["counts"]["written"] == 3 and pseudo["counts"]["stale_temporaries_removed"] == 1
    for name, mask in before.items():
        np.testing.assert_array_equal(read_label_png(run_dir / "pseudo" / "masks" / name), mask)


def test_walk_refuses_a_checkpoint_of_other_cams(irn_run: SimpleNamespace, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(irn_run.run_dir / "cams", other / "cams")
    cfg = compose_config([*TINY_IRN, "pipeline=[pseudo]", f"irn.cam_dir={other}/cams",
                          f"irn.checkpoint={irn_run.run_dir}/irn/train/irn.ckpt"], other, irn_run.cache)
    with pytest.raises(DataError, match=r"irn\.checkpoint .*trained on the CAMs in .*, not ") as info:
        run(cfg)
    assert "\n" not in str(info.value)


def test_walk_refuses_cams_of_another_split(irn_run: SimpleNamespace, tmp_path: Path) -> None:
    cams = tmp_path / "cams"
    shutil.copytree(irn_run.run_dir / "cams", cams)
    manifest = json.loads((cams / "manifest.json").read_text())
    manifest["split"] = "val"
    (cams / "manifest.json").write_text(json.dumps(manifest))
    cfg = compose_config([*TINY_IRN, "pipeline=[pseudo]", f"irn.cam_dir={cams}", f"pseudo.cam_dir={cams}"],
                         tmp_path / "run", irn_run.cache)
    with pytest.raises(DataError, match=r"CAMs were made for split 'val', not 'train'") as info:
        run(cfg)
    assert "\n" not in str(info.value)


def test_walk_logs_boundary_maps_and_refined_masks_to_wandb(irn_run: SimpleNamespace, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    source = irn_run.run_dir
    cfg = compose_config([*TINY_IRN, "pipeline=[pseudo]", "logger=wandb", "logger.max_images=2",
                          f"irn.cam_dir={source}/cams", f"pseudo.cam_dir={source}/cams",
                          f"irn.checkpoint={source}/irn/train/irn.ckpt"], tmp_path / "run", irn_run.cache)
    run(cfg)
    assert wandb.run is None
    media = tmp_path / "run" / "pseudo"
    boundary = sorted(media.glob("wandb/offline-run-*/files/media/images/irn/boundary_maps_*.png"))
    refined = sorted(media.glob("wandb/offline-run-*/files/media/images/mask/irn/refined_masks_*.mask.png"))
    assert len(boundary) == 2 and len(refined) == 2
    assert len(sorted(media.glob("wandb/offline-run-*/files/media/images/mask/pseudo/masks_*.mask.png"))) == 2 * 2
