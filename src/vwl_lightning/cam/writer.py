"""Writes CAM files from Lightning's predict loop (one ``.npz`` per image, atomic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pytorch_lightning.callbacks import BasePredictionWriter

from vwl_lightning.cam.files import cam_path, save_cam_file

DTYPES = {"float16": np.float16, "float32": np.float32}


class CamFileWriter(BasePredictionWriter):
    """Writes each predicted image's CAMs to ``<out_dir>/<id>.npz`` (atomic rename)."""

    def __init__(self, out_dir: Path, dtype: str) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = out_dir
        self.dtype = DTYPES[dtype]
        self.written = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx) -> None:
        for item in prediction:
            save_cam_file(cam_path(self.out_dir, item["id"]), item["keys"], item["high_res"], item["cam"],
                          dtype=self.dtype)
            self.written += 1
