"""Classifier-step speed, in one run on the same data and model (issue: foundation).

1. A training step of ``ClassifierModule`` under the Lightning Trainer against a plain PyTorch loop doing
   the same work (same module, batches, optimiser and schedule); target ratio Lightning / plain ≤ 1.05.
2. A VWL-L step and a VWL-M step against the plain-CAM baseline step (both under Lightning);
   target ratio ≤ 1.10.

Usage: ``python -m bench.bench_classifier [--steps 60] [--repeats 3]``. Prints a markdown table of
seconds per step and the ratios. Each measurement drops warm-up steps and takes the median of repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from vwl_lightning.stages.train_classifier import build_datamodule, build_module
from vwl_lightning.utils.config import config_dir

WARMUP = 5


def make_cfg(experiment: str, cache: str, run_dir: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+experiment={experiment}", f"paths.cache_dir={cache}",
                                                       "logger=none", "data.num_workers=0"])
    with open_dict(cfg):
        cfg.run_dir = run_dir
    return cfg


def fixed_batches(cfg, count: int) -> tuple[list[dict], int, list[str]]:
    """``count`` training batches drawn once, so every contender sees identical inputs."""
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    loader = iter(datamodule.train_dataloader())
    batches = [next(loader) for _ in range(count)]
    meta = datamodule.data.meta
    return batches, meta.num_foreground, list(meta.class_names)


class StepTimer(pl.Callback):
    """Wall time from the start of step WARMUP to the end of the last step: everything Lightning does
    between steps (fetching, logging, hooks) is included."""

    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == WARMUP:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()
        self.steps = batch_idx + 1 - WARMUP


def lightning_step_time(cfg, batches, num_fg, names) -> float:
    """Seconds per step inside ``Trainer.fit`` after the warm-up steps."""
    torch.manual_seed(0)
    module = build_module(cfg, num_fg, names)
    timer = StepTimer()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                         limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return (timer.end - timer.start) / timer.steps


def plain_step_time(cfg, batches, num_fg, names) -> float:
    """The same work in a hand-written loop: forward, losses, backward, SGD step, poly step, bank update."""
    torch.manual_seed(0)
    module = build_module(cfg, num_fg, names)

    class _Stub:
        estimated_stepping_batches = len(batches)

    module.trainer = None
    module._trainer = _Stub()  # configure_optimizers reads the step count from the trainer
    setup = module.configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    module.train()
    for index, batch in enumerate(batches):
        if index == WARMUP:
            start = time.perf_counter()
        losses, out = module.compute_losses(batch["image"], batch["label"])
        total = sum(module.loss_weights.get(k, 1.0) * v for k, v in losses.items())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        scheduler.step()
        if module.model.memory_bank is not None:
            module.model.memory_bank.update(out.features)
    return (time.perf_counter() - start) / (len(batches) - WARMUP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "vwl_lightning"))
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    run_dir = "/tmp/vwl_bench_classifier"
    base_cfg = make_cfg("synthetic_baseline", args.cache_dir, run_dir)
    batches, num_fg, names = fixed_batches(base_cfg, args.steps)
    results: dict[str, list[float]] = {}
    for _ in range(args.repeats):  # interleave contenders so drifts in machine load hit all alike
        for experiment in ("synthetic_baseline", "synthetic_vwl_l", "synthetic_vwl_m"):
            cfg = make_cfg(experiment, args.cache_dir, run_dir)
            results.setdefault(f"{experiment} lightning", []).append(lightning_step_time(cfg, batches, num_fg, names))
            if experiment == "synthetic_vwl_l":
                results.setdefault(f"{experiment} plain", []).append(plain_step_time(cfg, batches, num_fg, names))
    median = {k: statistics.median(v) for k, v in results.items()}
    print(f"torch threads {torch.get_num_threads()}, {args.steps} steps (first {WARMUP} dropped), "
          f"median of {args.repeats} repeats, batch {batches[0]['image'].shape[0]} x "
          f"{tuple(batches[0]['image'].shape[1:])}\n")
    print("| contender | s/step |\n|---|---|")
    for key, value in median.items():
        print(f"| {key} | {value:.4f} |")
    print("\n| ratio | value | target |\n|---|---|---|")
    print(f"| Lightning / plain loop (VWL-L) | "
          f"{median['synthetic_vwl_l lightning'] / median['synthetic_vwl_l plain']:.3f} | <= 1.05 |")
    for experiment in ("synthetic_vwl_l", "synthetic_vwl_m"):
        ratio = median[f"{experiment} lightning"] / median["synthetic_baseline lightning"]
        print(f"| {experiment} / baseline step | {ratio:.3f} | <= 1.10 |")


if __name__ == "__main__":
    main()
