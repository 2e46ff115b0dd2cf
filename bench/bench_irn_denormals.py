"""Do IRN's walk and boundary training meet float32 denormals on real CAMs, and does flushing them pay?

From a finished ``pseudo.mode=irn`` run (``RUN_DIR`` with ``.hydra/config.yaml``, the CAMs, the seeds and
``irn/train/irn.ckpt``), e.g. ``python -m vwl_lightning debug=tiny pseudo.mode=irn hydra.run.dir=/tmp/h5run``:

* **walk**: every image of ``pseudo.split`` through the stage's own ``walk_batch`` (boundary map + sparse walk,
  the run's ``irn.walk`` settings), timed with ``torch.set_flush_denormal`` off (IEEE) and on, interleaved
  ``--repeats`` times; the share of subnormal float32 values in the walk's weight planes, its seeds
  ``X₀ = cam ⊙ (1 − B)`` and its result (counted with flushing off); labels compared between the two modes.
* **boundary training**: ``IRNModule.losses`` forward + backward on batches of the seeds' images and masks
  (whole images as ``irn/synthetic.yaml`` crops them; to 128 px when smaller), timed off and on; subnormal
  shares of the boundary map, the affinities and the branch's gradients.

Prints the load average before and after each timing. Usage: ``python -m bench.bench_irn_denormals RUN_DIR
[--repeats 3] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from bench.bench_walk import subnormal_share
from vwl_lightning.data.source import resolve_data
from vwl_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalise
from vwl_lightning.pseudo import random_walk as rw
from vwl_lightning.stages import irn as irn_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = OmegaConf.load(args.run / ".hydra" / "config.yaml")
    data = resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True))
    cam_dir = args.run / "cams"
    walk = OmegaConf.to_container(cfg.irn.walk, resolve=False)
    module = irn_stage.load_irn(args.run / "irn" / "train" / "irn.ckpt", cam_dir)
    names = irn_stage.resolve_class_names(cam_dir, list(data.meta.class_names))
    ids = data.layout.split_ids(str(cfg.pseudo.split))
    batches = irn_stage._batches(data.layout, ids, int(walk["batch_size"]))
    print(f"{len(ids)} images, {len(batches)} batches; walk {walk}; torch threads {args.threads}; "
          f"CPU {os.cpu_count()} cores")

    # subnormal shares, flushing off
    torch.set_flush_denormal(False)
    shares: dict[str, list[float]] = {"weights": [], "x0": [], "result": []}
    real = rw.random_walk

    def recording(cams, boundary, beta, exp_times, radius, sizes=None, flush_denormal=False):
        w = rw.transition_weights(boundary.to(cams.dtype), float(beta), radius, sizes)
        shares["weights"].append(subnormal_share(w))
        shares["x0"].append(subnormal_share(cams * (1 - boundary).unsqueeze(1)))
        out = real(cams, boundary, beta, exp_times, radius, sizes, flush_denormal=False)
        shares["result"].append(subnormal_share(out))
        return out

    irn_stage.random_walk = recording
    labels = {}
    for batch in batches:
        labels.update(zip(batch, irn_stage.walk_batch(module, data.layout, cam_dir, batch, len(names), walk,
                                                      torch.device("cpu"))[0], strict=True))
    irn_stage.random_walk = real
    print("walk subnormal share (mean over batches / max): "
          + ", ".join(f"{k} {np.mean(v):.2e} / {np.max(v):.2e}" for k, v in shares.items()))

    def time_walk(flush: bool) -> tuple[float, int]:
        torch.set_flush_denormal(flush)  # for the boundary map; the walk gets it as an argument
        irn_stage.random_walk = lambda *a, **k: real(*a, **{**k, "flush_denormal": flush})
        start, differ = time.perf_counter(), 0
        for batch in batches:
            out = irn_stage.walk_batch(module, data.layout, cam_dir, batch, len(names), walk, torch.device("cpu"))[0]
            differ += sum(int((a != labels[i]).sum()) for i, a in zip(batch, out, strict=True))
        irn_stage.random_walk = real
        return time.perf_counter() - start, differ

    # boundary training on the seeds (whole images)
    seed_dir = args.run / "irn" / "seeds"
    seed_files = sorted(seed_dir.rglob("*.png"))[:16]
    rgb = [np.asarray(Image.open(data.layout.image_path(p.stem)).convert("RGB")) for p in seed_files]
    images = torch.from_numpy(np.stack([normalise(a, IMAGENET_MEAN, IMAGENET_STD) for a in rgb])).permute(0, 3, 1, 2)
    masks = torch.from_numpy(np.stack([np.asarray(Image.open(p)) for p in seed_files]).astype(np.int64))
    side = max(images.shape[-1], 128)  # the radius-10 pairs need a grid of at least 10 x 19: tiny runs are upscaled
    if side != images.shape[-1]:
        images = torch.nn.functional.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)
        masks = torch.nn.functional.interpolate(masks[:, None].float(), size=(side, side), mode="nearest")[:, 0].long()
    module.train()

    def train_step() -> dict[str, float]:
        module.zero_grad(set_to_none=True)
        out = module.losses(images, masks)
        out["total"].backward()
        grads = torch.cat([p.grad.flatten() for p in module.model.trainable_parameters() if p.grad is not None])
        return {"grads": subnormal_share(grads.detach()), "loss": float(out["total"])}

    torch.set_flush_denormal(False)
    with torch.no_grad():
        b = torch.sigmoid(module.model(images))[:, 0]
    grads = train_step()["grads"]
    print(f"training batch {tuple(images.shape)} from {seed_dir}: subnormal share boundary {subnormal_share(b):.2e}, "
          f"affinities {subnormal_share(rw.pair_weights(b, 1.0, 10)):.2e}, 1 - B {subnormal_share(1 - b):.2e}; "
          f"branch gradients {grads:.2e}; B in [{float(b.min()):.3g}, {float(b.max()):.6g}]")

    def time_train(flush: bool, steps: int = 3) -> float:
        torch.set_flush_denormal(flush)
        start = time.perf_counter()
        for _ in range(steps):
            train_step()
        return (time.perf_counter() - start) / steps

    results: dict[str, list[float]] = {k: [] for k in ("walk_keep", "walk_flush", "train_keep", "train_flush")}
    for r in range(args.repeats):  # interleaved
        for flush in (False, True):
            mode = "flush" if flush else "keep"
            load = os.getloadavg()[0]
            seconds, differ = time_walk(flush)
            results[f"walk_{mode}"].append(seconds)
            t = time_train(flush)
            results[f"train_{mode}"].append(t)
            print(f"repeat {r} {mode:5s}: walk {seconds:.2f} s ({len(ids) / seconds:.1f} img/s, {differ} label pixels "
                  f"differ from the IEEE run), training step {t:.3f} s; load {load:.2f} -> {os.getloadavg()[0]:.2f}",
                  flush=True)
    for k, v in results.items():
        print(f"{k}: median {statistics.median(v):.3f} s  (runs: {', '.join(f'{x:.3f}' for x in v)})")


if __name__ == "__main__":
    main()
