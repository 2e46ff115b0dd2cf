"""Train VWL-M for a few steps under DDP on 2 CPU processes (gloo) and save each rank's memory bank.

Run as ``python ddp_memory_bank.py OUT_DIR CACHE_DIR`` (Lightning's ddp re-launches this same command
for rank 1, so this must be a script, not code inside the pytest process).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from vwl_lightning.stages.train_classifier import build_datamodule, build_module, build_trainer
from vwl_lightning.utils.config import config_dir


class SaveBank(pl.Callback):
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bank = pl_module.model.codebook
        torch.save({"bank": bank.bank.clone(), "initialised": bool(bank.initialised),
                    "steps": trainer.global_step, "world_size": trainer.world_size},
                   self.out_dir / f"bank_rank{trainer.global_rank}.pt")


def main(out_dir: Path, cache_dir: Path) -> None:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "+experiment=synthetic_vwl_m", "trainer=ddp_cpu", "logger=none", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false", "trainer.limit_val_batches=0",
            f"paths.cache_dir={cache_dir}", "data.source.generator.num_train=48",
            "data.source.generator.num_val=8", "data.source.generator.image_size=64",
            "data.train_transform.resize_long=[56,72]", "data.train_transform.crop_size=64",
            "data.eval_size=64", "data.batch_size=8", "data.num_workers=0",
            "model.codebook.size=16", "model.codebook.ema_rate=0.2", "model.max_epochs=1",
        ])
    with open_dict(cfg):
        cfg.run_dir = str(out_dir)
    pl.seed_everything(0, workers=True)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule.data.meta.num_foreground, list(datamodule.data.meta.class_names))
    trainer = build_trainer(cfg, out_dir, "classifier", 1, [SaveBank(out_dir)])
    trainer.fit(module, datamodule=datamodule)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
