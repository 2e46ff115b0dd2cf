"""notebooks/explore_cams.ipynb runs top to bottom (nbclient) against a tiny run and shows its figures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[2] / "notebooks" / "explore_cams.ipynb"


def test_explore_notebook_executes_against_a_tiny_run(tiny_pipeline, tmp_path: Path, monkeypatch) -> None:
    run_dir = tmp_path / "run"  # the session's tiny run without its segmenter
    shutil.copytree(tiny_pipeline.run_dir, run_dir)
    shutil.rmtree(run_dir / "segmenter")
    monkeypatch.setenv("VWL_RUN_DIR", str(run_dir))
    monkeypatch.setenv("VWL_NUM_EXAMPLES", "3")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute(env=dict(os.environ))
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # train examples, cams/overlays.png, background-score curve, per-class IoU (no segmenter: no val figure)
    assert len(images) == 4
    assert "no segmenter predictions in this run" in "".join(o.get("text", "") for o in outputs)
    text = "".join(o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "'seeds'" in text and "'pseudo'" in text  # the per-stage mIoU summary names both scored stages


def test_val_figure_shows_predictions_with_a_legend_of_the_classes_present(make_config, tmp_path: Path) -> None:
    """A run whose segmenter 'predicted' the ground truth: the figure has image | truth | prediction (+ CRF)
    per val image and a legend naming exactly the classes in those masks."""
    import numpy as np
    from omegaconf import OmegaConf

    from vwl_lightning.data.label_png import read_label_png, write_label_png
    from vwl_lightning.data.source import resolve_data
    from vwl_lightning.studies.explore import RunView, figure_predictions, to_png, val_ids
    from vwl_lightning.utils.io import write_json_atomic

    cfg = make_config()
    data = resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True))
    run = tmp_path / "run"
    write_json_atomic(run / "cams" / "manifest.json", {"class_names": list(data.meta.class_names),
                                                       "data_root": str(data.layout.root)})
    ids = data.layout.split_ids("val")[:3]
    present = set()
    for image_id in ids:
        gt = read_label_png(data.layout.mask_path(image_id)).copy()
        gt[gt == 255] = 0
        present |= {int(v) for v in np.unique(gt)}
        for sub in ("eval", "eval_crf"):
            write_label_png(run / "segmenter" / sub / "predictions" / f"{image_id}.png", gt)
    view = RunView.open(run)
    assert val_ids(view, 5) == sorted(ids)
    fig = figure_predictions(view, val_ids(view, 5))
    assert len(fig.axes) == 3 * 4
    assert [ax.get_title() for ax in fig.axes[:4]] == ["image", "ground truth", "prediction", "prediction + CRF"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == [data.meta.class_names[c] for c in sorted(present)]
    assert to_png(fig)[:4] == b"\x89PNG"
