"""The IRN walk stage on 1 process vs 2 DDP ranks (gloo, CPU), from one run: images/s of each, the ratio, and
whether the two sets of masks are identical.

Both runs walk the same CAMs with the same trained boundary branch (``stage=pseudo pseudo.mode=irn
irn.checkpoint=...``), each into a fresh folder under ``--out``: ``trainer=cpu`` (one process, all cores)
and ``trainer=ddp_cpu`` (2 ranks, each with ``torch`` threads = cores / 2, each walking its strided share).
The walk's own time comes from the manifests (``walk_seconds``, measured on rank 0 after every rank is done;
start-up, model loading and scoring excluded); the wall time of each command is printed too.

Usage: ``python -m bench.bench_walk_ranks RUN_DIR [--out runs/bench_walk_ranks]`` where ``RUN_DIR`` holds
``cams/`` and ``irn/train/irn.ckpt`` (e.g. a ``pseudo.mode=irn`` run, or ``runs/refinement_study/s1/irn``
with its CAMs in ``../crf/cams``: pass ``--cams``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def walk(label: str, trainer: str, threads: int, run: Path, cams: Path, out: Path) -> tuple[dict, float]:
    target = out / label
    shutil.rmtree(target, ignore_errors=True)
    cmd = [sys.executable, "-m", "vwl_lightning", "stage=pseudo", "pseudo.mode=irn", f"trainer={trainer}",
           f"run_dir={target}", f"pseudo.cam_dir={cams}", f"irn.cam_dir={cams}",
           f"irn.checkpoint={run / 'irn' / 'train' / 'irn.ckpt'}", "logger=csv", "trainer.enable_progress_bar=false"]
    print("$", " ".join(cmd), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    return json.loads((target / "pseudo" / "manifest.json").read_text()), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--cams", type=Path, default=None, help="CAM folder (default: RUN/cams)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_walk_ranks"))
    args = parser.parse_args()
    run, out = args.run.resolve(), args.out.resolve()
    cams = (args.cams or run / "cams").resolve()
    cores = os.cpu_count() or 2
    one, wall1 = walk("one_process", "cpu", cores, run, cams, out)
    two, wall2 = walk("two_ranks", "ddp_cpu", max(1, cores // 2), run, cams, out)
    masks = sorted((out / "one_process" / "pseudo" / "masks").glob("*.png"))
    same = all(np.array_equal(np.asarray(Image.open(m)), np.asarray(Image.open(out / "two_ranks" / "pseudo" / "masks"
                                                                                / m.name))) for m in masks)
    print(f"images: {one['counts']['images']}; two ranks wrote {two['counts']['written_per_rank']}")
    print(f"walk, 1 process : {one['walk_seconds']:.1f} s, {one['walk_images_per_second']:.2f} img/s "
          f"(command {wall1:.1f} s)")
    print(f"walk, 2 ranks   : {two['walk_seconds']:.1f} s, {two['walk_images_per_second']:.2f} img/s "
          f"(command {wall2:.1f} s)")
    print(f"speed-up 2 ranks / 1 process: walk {one['walk_seconds'] / two['walk_seconds']:.2f}x, "
          f"command {wall1 / wall2:.2f}x; masks identical: {same}; mIoU {one['metrics']['miou']:.4f} vs "
          f"{two['metrics']['miou']:.4f}")


if __name__ == "__main__":
    main()
