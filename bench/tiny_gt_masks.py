"""Write the tests' tiny synthetic train split's ground truth (255 → background) as a mask folder, the identical
masks of the tiny DeepLabV2 vs EMANet comparison: ``python bench/tiny_gt_masks.py OUT_DIR CACHE_DIR``."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, "tests")  # the tests' tiny-data overrides
from conftest import TINY_DATA, compose_config  # noqa: E402
from vwl_lightning.data.label_png import read_label_png, write_label_png  # noqa: E402
from vwl_lightning.data.source import resolve_data  # noqa: E402

if __name__ == "__main__":
    out, cache = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = compose_config([*TINY_DATA], out / "cfgrun", cache)
    data = resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True))
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for image_id in data.layout.split_ids("train"):
        mask = read_label_png(data.layout.mask_path(image_id)).copy()
        mask[mask == 255] = 0
        write_label_png(out / "masks" / f"{image_id}.png", mask)
    print(len(list((out / "masks").glob("*.png"))), "masks in", out / "masks")
