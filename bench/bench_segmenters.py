"""Training-step time of the embedded benchmark's two segmenters, DeepLabV2 and EMANet, relative to each other.

Both are built from the real configs (``segmenter=synthetic`` and ``segmenter=emanet_synthetic``: the same
half-width ResNet-18 trunk at output stride 8, 112 px crops, batch 16, channels-last), without the classifier
init (weights do not change the cost).  One step = forward, loss, (EMANet: bases update), backward, SGD step
with each module's own parameter groups, on the same pre-made batch.  The contenders alternate in
``--repeats`` rounds of ``--steps`` steps (the first ``--warmup`` of each round dropped); the median s/step of
each and the ratio EMANet / DeepLabV2 come from this one run.  The 1-minute load average before and after is
printed: on a shared machine the absolute times move, the interleaved ratio much less.

Usage: ``python -m bench.bench_segmenters [--steps 12] [--warmup 2] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import compose_cfg  # noqa: E402
from vwl_lightning.modules.optim import make_optimizer  # noqa: E402
from vwl_lightning.stages.train_segmenter import build_module  # noqa: E402
from vwl_lightning.utils.instantiate import build  # noqa: E402


def contenders(work: Path) -> dict[str, tuple[torch.nn.Module, torch.optim.Optimizer, object]]:
    out = {}
    for name, group in (("DeepLabV2", "synthetic"), ("EMANet", "emanet_synthetic")):
        cfg = compose_cfg([f"segmenter={group}", "segmenter.backbone_init=null", f"paths.cache_dir={work}"],
                          work / name)
        module = build_module(cfg, 21, [str(i) for i in range(21)]).train()
        if name == "EMANet":
            def step(m, images, masks):
                logits, mu = m.model.outputs(m._prepare(images))
                m.model.update_bases(mu)
                return m.loss(logits, masks)
        else:
            def step(m, images, masks):
                return m.compute_loss(images, masks)
        # each module's own parameter groups and the config's optimiser (segmenter.groups, segmenter.optimizer)
        optimizer = make_optimizer(build(module.hparams.optimizer, "segmenter.optimizer"), module.groups(module.model))
        out[name] = (module, optimizer, step)
    return out


def time_steps(module, optimizer, step, images, masks, steps: int, warmup: int) -> float:
    times = []
    for i in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = step(module, images, masks)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    args = parser.parse_args()
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        nets = contenders(Path(tmp))
    images = torch.randn(args.batch, 3, args.size, args.size)
    masks = torch.randint(0, 21, (args.batch, args.size, args.size))
    masks[:, :, : args.size // 4] = 255
    results: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(args.repeats):
        for name, (module, optimizer, step) in nets.items():
            results[name].append(time_steps(module, optimizer, step, images, masks, args.steps, args.warmup))
    load_after = os.getloadavg()[0]
    print(f"| contender | s/step (median of {args.repeats} rounds of {args.steps - args.warmup} steps) | rounds |")
    print("|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.4f} | {', '.join(f'{v:.4f}' for v in values)} |")
    ratio = statistics.median(results["EMANet"]) / statistics.median(results["DeepLabV2"])
    per_round = [e / d for e, d in zip(results["EMANet"], results["DeepLabV2"], strict=True)]
    print(f"\nEMANet / DeepLabV2 step time: {ratio:.3f} (per round: {', '.join(f'{r:.3f}' for r in per_round)}); "
          f"load average {load_before:.1f} before, {load_after:.1f} after; threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
