"""Write the ground truth of the tiny synthetic train split (``debug=tiny``; 255 → background) as a mask folder,
the identical masks of the tiny DeepLabV2 vs EMANet comparison: ``python -m bench.tiny_gt_masks OUT_DIR CACHE_DIR``."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from bench.common import compose_cfg
from vwl_lightning.data.label_png import read_label_png, write_label_png
from vwl_lightning.data.source import resolve_data

if __name__ == "__main__":
    out, cache = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = compose_cfg(["debug=tiny", f"paths.cache_dir={cache}"], out / "cfgrun")  # the tiny data set
    data = resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True))
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for image_id in data.layout.split_ids("train"):
        mask = read_label_png(data.layout.mask_path(image_id)).copy()
        mask[mask == 255] = 0
        write_label_png(out / "masks" / f"{image_id}.png", mask)
    print(len(list((out / "masks").glob("*.png"))), "masks in", out / "masks")
