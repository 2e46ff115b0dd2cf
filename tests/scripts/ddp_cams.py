"""Make the CAM files of a split under DDP on 2 CPU processes (gloo), recording which rank wrote which image.

Run as ``python ddp_cams.py OUT_DIR CACHE_DIR [--trainer=NAME] [--sleep=SECONDS] [HYDRA_OVERRIDE ...]``
(Lightning's ddp re-launches this same command for rank 1, so this must be a script, not code inside the
pytest process). The overrides must name the checkpoint (``cam.checkpoint=...``); the CAM files go to
``OUT_DIR/cams`` and every rank appends the ids it wrote, one per line, to ``OUT_DIR/written_rank<R>.txt``.
``--trainer`` picks the trainer config (default ``ddp_cpu``); ``--sleep`` pauses after each written batch,
so that a test can kill the process in the middle of a run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from vwl_lightning.stages import make_cams as stage
from vwl_lightning.utils.config import config_dir


def record_writes(out_dir: Path, sleep: float) -> None:
    """Wrap the CAM writer so that each rank logs the ids of the files it wrote (then sleeps ``sleep`` s)."""
    original = stage.CamFileWriter.write_on_batch_end

    def write_on_batch_end(self: stage.CamFileWriter, trainer: Any, pl_module: Any, prediction: Any,
                           *args: Any) -> None:
        original(self, trainer, pl_module, prediction, *args)
        with open(out_dir / f"written_rank{trainer.global_rank}.txt", "a") as handle:
            handle.writelines(f"{item['id']}\n" for item in prediction)
        time.sleep(sleep)

    stage.CamFileWriter.write_on_batch_end = write_on_batch_end  # type: ignore[method-assign]


def main(out_dir: Path, cache_dir: Path, args: list[str]) -> None:
    options = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.startswith("--")}
    overrides = [a for a in args if not a.startswith("--")]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            *overrides, f"trainer={options.get('--trainer', 'ddp_cpu')}", f"paths.cache_dir={cache_dir}",
            f"cam.out_dir={out_dir / 'cams'}",
        ])
    with open_dict(cfg):
        cfg.run_dir = str(out_dir)
    record_writes(out_dir, float(options.get("--sleep", 0)))
    stage.make_cams(cfg)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
