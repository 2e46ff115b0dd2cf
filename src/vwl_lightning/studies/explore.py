"""Reading a finished run directory for exploration (``notebooks/explore_cams.ipynb``).

:class:`RunView` finds each stage's outputs through its manifest and returns numpy arrays and matplotlib
figures: CAM overlays with ground truth, seed and pseudo mask (train), val images with the segmenter's
prediction, each with a colour legend, the background-score curve and per-class IoU of every scored stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vwl_lightning.cam.files import cam_path, cams_to_label, load_cam_file
from vwl_lightning.data.label_png import read_label_png
from vwl_lightning.data.layout import VOCLayout, load_rgb
from vwl_lightning.data.meta import voc_palette
from vwl_lightning.errors import DataError
from vwl_lightning.utils.io import read_json

SCORED_STAGES = {"seeds": "seeds/metrics.json", "pseudo": "pseudo/metrics.json",
                 "segmenter": "segmenter/eval/metrics.json", "segmenter + CRF": "segmenter/eval_crf/metrics.json"}


@dataclass
class RunView:
    """A run directory made by ``python -m vwl_lightning`` (any subset of its stages)."""

    run_dir: Path

    @classmethod
    def open(cls, run_dir: str | Path) -> RunView:
        run_dir = Path(run_dir).expanduser()
        if not (run_dir / "cams" / "manifest.json").is_file():
            raise DataError(f"{run_dir}: no cams/manifest.json; point VWL_RUN_DIR at a run that made CAMs")
        return cls(run_dir)

    @property
    def cam_manifest(self) -> dict[str, Any]:
        return read_json(self.run_dir / "cams" / "manifest.json")

    @property
    def class_names(self) -> list[str]:
        return list(self.cam_manifest["class_names"])

    @property
    def layout(self) -> VOCLayout:
        return VOCLayout.at(self.cam_manifest["data_root"])

    def results(self) -> dict[str, Any]:
        path = self.run_dir / "results.json"
        return read_json(path) if path.is_file() else {}

    def example_ids(self, count: int) -> list[str]:
        """The first ``count`` images that have a CAM file."""
        return sorted(p.stem for p in (self.run_dir / "cams").glob("*.npz"))[:count]

    def image(self, image_id: str) -> np.ndarray:
        return load_rgb(self.layout.image_path(image_id))

    def ground_truth(self, image_id: str) -> np.ndarray | None:
        path = self.layout.mask_path(image_id)
        return read_label_png(path) if path.is_file() else None

    def seed(self, image_id: str, bg_score: float) -> np.ndarray:
        record = load_cam_file(cam_path(self.run_dir / "cams", image_id))
        return cams_to_label(record.high_res, record.keys, bg_score)

    def strongest_cam(self, image_id: str) -> np.ndarray:
        """Max over the labelled classes' normalised CAMs, (H, W) in [0, 1]."""
        record = load_cam_file(cam_path(self.run_dir / "cams", image_id))
        return np.asarray(record.high_res, dtype=np.float32).max(axis=0)

    def pseudo(self, image_id: str) -> np.ndarray | None:
        path = self.run_dir / "pseudo" / "masks" / f"{image_id}.png"
        return read_label_png(path) if path.is_file() else None

    def prediction(self, image_id: str) -> np.ndarray | None:
        path = self.run_dir / "segmenter" / "eval" / "predictions" / f"{image_id}.png"
        return read_label_png(path) if path.is_file() else None

    def scored(self) -> dict[str, dict[str, Any]]:
        """metrics.json of every stage that was scored, by stage."""
        return {name: read_json(self.run_dir / rel) for name, rel in SCORED_STAGES.items()
                if (self.run_dir / rel).is_file()}


def colour(mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """A label mask in VOC colours (grey when absent)."""
    if mask is None:
        return np.full((*shape, 3), 128, np.uint8)
    return voc_palette()[mask]


def add_legend(fig: Any, masks: list[np.ndarray | None], class_names: list[str]) -> None:
    """A colour legend (VOC palette swatch + class name) of every class present in ``masks``, below the grid."""
    from matplotlib.patches import Patch

    present = sorted({int(v) for m in masks if m is not None for v in np.unique(m) if int(v) != 255})
    palette = voc_palette()
    handles = [Patch(facecolor=palette[c] / 255.0, edgecolor="black",
                     label=class_names[c] if c < len(class_names) else str(c)) for c in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)


def _grid(fig: Any, rows: list[list[np.ndarray]], columns: list[str], labels: list[str]) -> None:
    for row, panels in enumerate(rows):
        for col, panel in enumerate(panels):
            ax = fig.add_subplot(len(rows), len(columns), row * len(columns) + col + 1)
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=9)
            if col == 0:
                ax.set_ylabel(labels[row], fontsize=7)


def figure_examples(view: RunView, ids: list[str], bg_score: float) -> Any:
    """Train images: image | CAM overlay | ground truth | seed | pseudo mask, with a colour legend."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    columns = ["image", "CAM", "ground truth", f"seed (bg {bg_score})", "pseudo mask"]
    fig = Figure(figsize=(2.2 * len(columns), 2.2 * len(ids) + 0.6))
    rows, masks = [], []
    for image_id in ids:
        image = view.image(image_id)
        heat = (colormaps["jet"](view.strongest_cam(image_id))[..., :3] * 255).astype(np.float32)
        layers = [view.ground_truth(image_id), view.seed(image_id, bg_score), view.pseudo(image_id)]
        masks += layers
        rows.append([image, (0.5 * image + 0.5 * heat).astype(np.uint8),
                     *(colour(m, image.shape[:2]) for m in layers)])
    _grid(fig, rows, columns, ids)
    add_legend(fig, masks, view.class_names)
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))
    return fig


def val_ids(view: RunView, count: int) -> list[str]:
    """The first ``count`` images the segmenter predicted (its evaluation split, val by default)."""
    folder = view.run_dir / "segmenter" / "eval" / "predictions"
    return sorted(p.stem for p in folder.glob("*.png") if not p.name.startswith(".tmp-"))[:count]


def figure_predictions(view: RunView, ids: list[str]) -> Any:
    """Val images: image | ground truth | segmenter prediction (| with CRF), with a colour legend."""
    from matplotlib.figure import Figure

    crf_dir = view.run_dir / "segmenter" / "eval_crf" / "predictions"
    with_crf = crf_dir.is_dir()
    columns = ["image", "ground truth", "prediction"] + (["prediction + CRF"] if with_crf else [])
    fig = Figure(figsize=(2.2 * len(columns), 2.2 * max(1, len(ids)) + 0.6))
    rows, masks = [], []
    for image_id in ids:
        image = view.image(image_id)
        layers = [view.ground_truth(image_id), view.prediction(image_id)]
        if with_crf:
            layers.append(read_label_png(crf_dir / f"{image_id}.png") if (crf_dir / f"{image_id}.png").is_file()
                          else None)
        masks += layers
        rows.append([image, *(colour(m, image.shape[:2]) for m in layers)])
    _grid(fig, rows, columns, ids)
    add_legend(fig, masks, view.class_names)
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))
    return fig


def figure_bg_curve(view: RunView) -> Any:
    """Seed mIoU against the background score, with the best and the configured score."""
    from matplotlib.figure import Figure

    seeds = view.scored()["seeds"]
    xs = [c["bg_score"] for c in seeds["curve"]]
    ys = [np.nan if c["miou"] is None else 100 * c["miou"] for c in seeds["curve"]]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(xs, ys, marker=".")
    ax.axvline(seeds["best_bg_score"], color="green", linestyle="--", label=f"best {seeds['best_bg_score']:.2f}")
    ax.set_xlabel("background score")
    ax.set_ylabel("seed mIoU (%)")
    ax.legend()
    fig.tight_layout()
    return fig


def figure_per_class(view: RunView) -> Any:
    """Per-class IoU of each scored stage side by side."""
    from matplotlib.figure import Figure

    scored = view.scored()
    names = view.class_names
    fig = Figure(figsize=(max(6, 0.6 * len(names) * max(1, len(scored))), 3.8))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(scored))
    for k, (stage, metrics) in enumerate(scored.items()):
        values = [np.nan if (metrics["per_class"].get(n) or {}).get("iou") is None
                  else 100 * metrics["per_class"][n]["iou"] for n in names]
        ax.bar(np.arange(len(names)) + k * width, values, width=width, label=stage)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.legend()
    fig.tight_layout()
    return fig


def to_png(fig: Any) -> bytes:
    """Render a matplotlib figure to PNG bytes (for ``IPython.display.Image``)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()
