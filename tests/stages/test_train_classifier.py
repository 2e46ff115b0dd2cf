"""The classifier stage: configs compose and build, the loss falls on the embedded benchmark, the stage
writes its checkpoint and manifest and skips when done, and bad input gives one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fixtures_models import kind_of
from vwl_lightning.data.label_png import write_label_png
from vwl_lightning.data.voc import ClassificationDataset, VOCLayout
from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.models.codebook import LearnedCodebook, MemoryBankCodebook
from vwl_lightning.models.pooling import GlobalAveragePooling, HybridPooling
from vwl_lightning.stages.train_classifier import build_datamodule, build_module, train_classifier
from vwl_lightning.utils.manifest import read_manifest

EXPERIMENT_DIR = Path(__file__).parents[2] / "conf" / "experiment"
EXPERIMENTS = sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment: str, make_config) -> None:
    cfg = make_config(f"+experiment={experiment}", "model.backbone.pretrained=none", tiny=False)
    OmegaConf.to_container(cfg.model, resolve=True)  # every interpolation resolves
    module = build_module(cfg, num_foreground=5, class_names=[f"c{i}" for i in range(6)])
    kind = kind_of(cfg.model.codebook)
    expected = {"none": type(None), "learned": LearnedCodebook, "memory": MemoryBankCodebook}[kind]
    assert isinstance(module.model.codebook, expected)
    pool = {"gap": GlobalAveragePooling, "hybrid": HybridPooling}[kind_of(cfg.model.pool)]
    assert isinstance(module.model.pooling, pool)
    assert cfg.name == experiment


def test_experiment_switches(make_config) -> None:
    base = make_config("+experiment=synthetic_baseline")
    assert (kind_of(base.model.pool), kind_of(base.model.codebook)) == ("gap", "none")
    vwl_m = make_config("+experiment=synthetic_vwl_m", "model.codebook.size=16", "model.pool.gamma=0")
    assert (kind_of(vwl_m.model.codebook), vwl_m.model.codebook.size, vwl_m.model.pool.gamma) == ("memory", 16, 0)


def fixed_batches(datamodule, count: int) -> list[dict]:
    """Un-augmented training images and labels, for a before/after loss comparison."""
    data = datamodule.data
    dataset = ClassificationDataset(data.layout, "train", data.meta.num_classes, datamodule.eval_transform)
    items = [dataset[i] for i in range(count)]
    return [{"image": torch.stack([it["image"] for it in items]),
             "label": torch.as_tensor(np.stack([it["label"] for it in items]))}]


@pytest.mark.parametrize("experiment", ["synthetic_vwl_l", "synthetic_vwl_m", "synthetic_baseline"])
def test_loss_falls_on_the_embedded_benchmark(experiment: str, make_config) -> None:
    small_codebook = [] if experiment == "synthetic_baseline" else ["model.codebook.size=32"]
    cfg = make_config(f"+experiment={experiment}", "model.max_epochs=4", *small_codebook,
                      "model.backbone.model_kwargs.channels=[32,64,128,256]")  # the benchmark's width
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule.data.meta.num_foreground, list(datamodule.data.meta.class_names))
    batches = fixed_batches(datamodule, 32)

    def total_loss() -> float:
        module.eval()
        with torch.no_grad():
            losses, _ = module.compute_losses(batches[0]["image"], batches[0]["label"])
        return sum(module.loss_weights[k] * v.item() for k, v in losses.items())

    before = total_loss()
    module.train()
    from vwl_lightning.stages.train_classifier import build_trainer

    trainer = build_trainer(cfg, Path(cfg.run_dir), "classifier", 4, [])
    trainer.fit(module, datamodule=datamodule)
    after = total_loss()
    print(f"{experiment}: loss {before:.4f} -> {after:.4f}")
    assert after < 0.9 * before


def test_stage_writes_checkpoint_and_manifest_and_skips_when_done(make_config, capsys) -> None:
    cfg = make_config("model.max_epochs=1", "model.codebook.size=16")
    checkpoint = train_classifier(cfg)
    manifest = read_manifest(Path(cfg.run_dir) / "classifier")
    assert checkpoint.is_file() and manifest is not None
    assert manifest["checkpoint"] == str(checkpoint)
    assert manifest["dataset"] == "synthetic" and len(manifest["class_names"]) == 9
    assert {"val/mAP", "val/cam_mIoU", "train/loss"} <= set(manifest["metrics"])
    assert 0.0 <= manifest["metrics"]["val/cam_mIoU"] <= 1.0
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert any(k.startswith("model.codebook.codebook") for k in state["state_dict"])
    mtime = checkpoint.stat().st_mtime_ns
    assert train_classifier(cfg) == checkpoint  # second run: skipped, nothing rewritten
    assert checkpoint.stat().st_mtime_ns == mtime


def test_memory_bank_is_saved_in_the_checkpoint(make_config) -> None:
    cfg = make_config("+experiment=synthetic_vwl_m", "model.max_epochs=1", "model.codebook.size=8")
    state = torch.load(train_classifier(cfg), map_location="cpu", weights_only=True)["state_dict"]
    assert state["model.codebook.initialised"].item() is True
    assert state["model.codebook.bank"].shape == (8, 64)  # 64: the narrow trunk's features (debug=tiny)


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ("model.codebook.size=0", ConfigError, r"^model\.codebook\.size=0: expected an integer >= 1$"),
        ("model.pool.gamma=-1", ConfigError, r"^model\.pool\.gamma=-1: expected a number >= 0$"),
        ("model.backbone.name=resnet999", ConfigError, r"^model\.backbone\.name='resnet999': expected a timm model"),
        ("model.loss.word=-1", ConfigError, r"^model\.loss\.word=-1: expected a number >= 0$"),
    ],
)
def test_bad_model_settings_name_the_key(override: str, error, message: str, make_config) -> None:
    cfg = make_config(override)
    with pytest.raises(error, match=message):
        build_module(cfg, num_foreground=8, class_names=[str(i) for i in range(9)])


def test_missing_data_root_names_the_folder(make_config, tmp_path: Path) -> None:
    cfg = make_config("data=voc", f"data.source.root={tmp_path}/nowhere", tiny=False)
    with pytest.raises(DataError, match=rf"data root {tmp_path}/nowhere does not exist"):
        build_datamodule(cfg).data  # noqa: B018


def test_image_without_any_label_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    from PIL import Image

    for name, value in (("a", 3), ("b", 0)):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        mask = np.zeros((8, 8), np.uint8)
        mask[2:5, 2:5] = value
        write_label_png(root / "SegmentationClassAug" / f"{name}.png", mask)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match=r"SegmentationClassAug/b\.png: image 'b' of split 'train' has no foreground"):
        ClassificationDataset(VOCLayout.at(root), "train", num_classes=21)


def test_command_line_prints_one_line_errors(tmp_path: Path, cache_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vwl_lightning", "stage=classifier", "model.codebook.size=-4",
         f"paths.cache_dir={cache_dir}", f"paths.runs_dir={tmp_path}", "logger=none",
         "data.source.generator.num_train=8", "data.source.generator.num_val=4"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: model.codebook.size=-4: expected an integer >= 1" in result.stderr  # the class's own check
