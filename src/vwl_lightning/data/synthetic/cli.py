"""Command line of the embedded benchmark: ``grid`` (a figure of samples) and ``materialise``."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from vwl_lightning.data.meta import IGNORE_INDEX, voc_palette
from vwl_lightning.data.synthetic.cache import default_cache_dir, materialise
from vwl_lightning.data.synthetic.config import SyntheticConfig, class_names
from vwl_lightning.data.synthetic.generator import render_indexed, sample_id
from vwl_lightning.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------------

def sample_grid(config: SyntheticConfig, rows: int, cols: int, out: str | os.PathLike) -> Path:
    """Save a figure of ``rows * cols`` training samples, each image beside its VOC-coloured mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = class_names(config.num_classes)
    palette = voc_palette()
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2 * cols * 1.45, rows * 1.85 + 0.6), squeeze=False)
    for i in range(rows * cols):
        sample = render_indexed(config, "train", i + 1)
        ax_img, ax_mask = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        ax_img.imshow(sample.image, interpolation="nearest")
        ax_mask.imshow(palette[sample.mask], interpolation="nearest")
        scene = "typical" if sample.scene_is_typical else "other"
        ax_img.set_title(f"{sample_id('train', i + 1)}\n{scene} scene", fontsize=6)
        ax_mask.set_title(",".join(names[c] for c in sample.classes), fontsize=6)
        for ax in (ax_img, ax_mask):
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [Patch(color=palette[c] / 255.0, label=names[c]) for c in range(config.num_classes + 1)]
    handles.append(Patch(color=palette[IGNORE_INDEX] / 255.0, label="ignore (255)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10), fontsize=6, frameon=False)
    fig.suptitle(f"synthetic WSSS benchmark (seed {config.seed}): image | mask", fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``grid``: save a figure of samples; ``materialise``: build the default data set and print its root."""
    parser = argparse.ArgumentParser(prog="python -m vwl_lightning.data.synthetic",
                                     description="The embedded, procedurally generated WSSS benchmark.")
    sub = parser.add_subparsers(dest="command", required=True)
    grid = sub.add_parser("grid", help="save a grid of sample images beside their colour masks")
    grid.add_argument("--out", required=True, help="output image file (PNG)")
    grid.add_argument("--rows", type=int, default=4)
    grid.add_argument("--cols", type=int, default=4)
    grid.add_argument("--seed", type=int, default=0)
    mat = sub.add_parser("materialise", help="generate the data set (if needed) and print its root folder")
    mat.add_argument("--cache-dir", default=None, help="default: $VWL_CACHE_DIR or ~/.cache/vwl_lightning")
    mat.add_argument("--seed", type=int, default=0)
    mat.add_argument("--num-train", type=int, default=SyntheticConfig.num_train)
    mat.add_argument("--num-val", type=int, default=SyntheticConfig.num_val)
    args = parser.parse_args(argv)
    try:
        if args.command == "grid":
            if args.rows < 1 or args.cols < 1:
                raise ConfigError(f"--rows {args.rows} --cols {args.cols}: expected at least 1 each")
            print(sample_grid(SyntheticConfig(seed=args.seed), args.rows, args.cols, args.out))
        else:
            config = SyntheticConfig(seed=args.seed, num_train=args.num_train, num_val=args.num_val)
            cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
            print(materialise(config, cache))
    except (ConfigError, DataError) as exc:
        parser.exit(2, f"error: {exc}\n")
    return 0
