"""Diagnostic: how fast each segmenter fits one fixed batch.

40 SGD steps (each config's lr, momentum 0.9, wd 1e-4, its own parameter groups) on 8 tiny images (64 px, the
data of ``debug=tiny``) with ground-truth masks; every 10 steps the eval-mode mIoU on that batch and the share of
pixels predicted as foreground.  ``segmenter=synthetic`` (DeepLabV2) vs ``segmenter=emanet_synthetic``.

Usage (from the repository root): ``python -m bench.overfit_segmenters MASKS CACHE`` with MASKS a folder holding
``masks/<id>.png`` for the tiny train split and CACHE the synthetic-data cache folder.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bench.common import compose_cfg
from vwl_lightning.data.source import resolve_data
from vwl_lightning.evaluation.metrics import SegmentationConfusion
from vwl_lightning.modules.optim import make_optimizer
from vwl_lightning.stages.train_segmenter import build_datamodule, build_module
from vwl_lightning.utils.instantiate import build

# the tiny data of conf/debug/tiny.yaml with the embedded benchmark's classifier width (conf/model/synthetic.yaml,
# which DeepLabV2's trunk follows), as measured for BENCHMARKS.md
TINY = ["debug=tiny", "model.backbone.model_kwargs.channels=[32,64,128,256]"]


def main(masks: Path, cache: Path, steps: int = 40) -> None:
    torch.manual_seed(0)
    for group in ("synthetic", "emanet_synthetic"):
        cfg = compose_cfg([*TINY, f"paths.cache_dir={cache}", f"segmenter={group}", "segmenter.backbone_init=null",
                           f"segmenter.pseudo_dir={masks}"], Path("/tmp/overfit_segmenters") / group)
        data = resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True))
        datamodule = build_datamodule(cfg, data, masks / "masks")
        datamodule.setup()
        batch = next(iter(torch.utils.data.DataLoader(datamodule.train_set, batch_size=8)))
        module = build_module(cfg, data.meta.num_classes, list(data.meta.class_names)).train()
        emanet = group.startswith("emanet")
        sgd = {**module.hparams.optimizer, "momentum": 0.9, "weight_decay": 1e-4}  # the config's lr
        optimizer = make_optimizer(build(sgd, "segmenter.optimizer"), module.groups(module.model))
        start = time.time()
        for step in range(steps):
            optimizer.zero_grad()
            if emanet:
                logits, mu = module.model.outputs(batch["image"])
                module.model.update_bases(mu)
                loss = module.loss(logits, batch["mask"])
            else:
                loss = module.compute_loss(batch["image"], batch["mask"])
            loss.backward()
            optimizer.step()
            if step % 10 == 9:
                module.eval()
                conf = SegmentationConfusion(data.meta.num_classes, sync_on_compute=False)
                with torch.no_grad():
                    prediction = module.predict_logits(batch["image"]).argmax(1)
                conf.update(prediction, batch["mask"])
                module.train()
                print(f"{group} step {step + 1}: loss {loss.item():.3f}, batch mIoU {conf.scores()['miou']:.3f}, "
                      f"foreground share {(prediction > 0).float().mean().item():.3f}, {time.time() - start:.0f} s",
                      flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
