"""notebooks/explore_cams.ipynb runs top to bottom (nbclient) against a tiny run and shows its figures."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from vwl_lightning.stages.pipeline import run_stages

NOTEBOOK = Path(__file__).parents[2] / "notebooks" / "explore_cams.ipynb"


def test_explore_notebook_executes_against_a_tiny_run(make_config, tmp_path: Path, monkeypatch) -> None:
    cfg = make_config("model.max_epochs=1", "model.codebook.size=8", "cam.scales=[1.0]", "pseudo.num_workers=0")
    run_stages(cfg, ("classifier", "cams", "seeds", "pseudo"))
    monkeypatch.setenv("VWL_RUN_DIR", str(cfg.run_dir))
    monkeypatch.setenv("VWL_NUM_EXAMPLES", "3")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute(env=dict(os.environ))
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # examples grid, background-score curve, per-class IoU
    text = "".join(o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "'seeds'" in text and "'pseudo'" in text  # the per-stage mIoU summary names both scored stages
