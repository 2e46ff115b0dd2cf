"""Tiny untrained segmenter and classifier saved as a run folder (checkpoints + stage manifests), for the
predict and export tests: no training, a few seconds on one CPU thread."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from vwl_lightning.data.meta import DatasetMeta
from vwl_lightning.stages.train_classifier import build_module as build_classifier_module
from vwl_lightning.stages.train_segmenter import build_module as build_segmenter_module
from vwl_lightning.utils.manifest import write_manifest

NAMES = ["background", "disc", "square", "triangle"]
# a normalisation other than ImageNet's, so a test can tell that the manifest's is used
MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
TINY_MODELS = [
    "model.codebook.size=8", "model.backbone.model_kwargs.channels=[8,16,32,64]",
    "segmenter.backbone.model_kwargs={channels:[8,16,32,64]}", "segmenter.backbone_init=null",
    "model.channels_last=false", "segmenter.channels_last=false",
    f"data.normalise.mean={MEAN}", f"data.normalise.std={STD}",
]


def save_checkpoint(module: pl.LightningModule, path: Path) -> Path:
    """What Lightning's ``load_from_checkpoint`` needs: weights, hyper-parameters, version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": pl.__version__}, path)
    return path


def tiny_run(make_config: Callable[..., DictConfig], run_dir: Path, seed: int = 0,
             names: Sequence[str] = tuple(NAMES)) -> DictConfig:
    """``run_dir/{classifier,segmenter}/`` with a checkpoint and a completed manifest each."""
    cfg = make_config(*TINY_MODELS, run_dir=run_dir)
    torch.manual_seed(seed)
    meta = DatasetMeta("toy", tuple(names))
    config = OmegaConf.to_container(cfg, resolve=True)
    classifier = build_classifier_module(cfg, meta.num_foreground, list(meta.class_names)).eval()
    ckpt = save_checkpoint(classifier, run_dir / "classifier" / "classifier.ckpt")
    write_manifest(run_dir / "classifier", "classifier", checkpoint=str(ckpt), config=config,
                   class_names=list(names))
    segmenter = build_segmenter_module(cfg, meta.num_classes, list(meta.class_names)).eval()
    ckpt = save_checkpoint(segmenter, run_dir / "segmenter" / "segmenter.ckpt")
    write_manifest(run_dir / "segmenter", "segmenter", checkpoint=str(ckpt), config=config,
                   class_names=list(names))
    return cfg


KINDS = {"HybridPooling": "hybrid", "GlobalAveragePooling": "gap", "LearnedCodebook": "learned",
         "MemoryBankCodebook": "memory"}


def kind_of(node: DictConfig | None) -> str:
    """The ablation switch a ``model.pool`` / ``model.codebook`` node selects: hybrid | gap, learned | memory | none."""
    return "none" if node is None else KINDS[str(node._target_).rsplit(".", 1)[-1]]
