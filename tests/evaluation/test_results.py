"""results.md: mIoU in %, stages in pipeline order, the sweep-edge warning; the seed report's edge flag."""

from __future__ import annotations

import json
from pathlib import Path

from vwl_lightning.evaluation.reports import sweep_edge, write_results
from vwl_lightning.stages.pipeline import PIPELINE


def test_results_md_is_in_percent_and_pipeline_order(tmp_path: Path) -> None:
    # timings written alphabetically (as sort_keys JSON does); the report must follow the pipeline
    (tmp_path / "timings.json").write_text(json.dumps(
        {"cams": 2.0, "classifier": 10.0, "pseudo": 3.0, "seeds": 1.0, "segmenter": 20.0}, sort_keys=True))
    results = {"seeds": {"best_miou": 0.5562, "best_bg_score": 0.6, "miou_at_configured": 0.1834,
                         "configured_bg_score": 0.13, "best_at_sweep_edge": "high"},
               "pseudo": {"metrics": {"miou": 0.55}}, "segmenter": {"miou": 0.524, "miou_crf": None}}
    headline = write_results(tmp_path, results, PIPELINE)
    assert headline["cam_seed_miou_configured"] == 0.1834  # results.json keeps fractions
    assert list(headline["stage_seconds"]) == ["classifier", "cams", "seeds", "pseudo", "segmenter"]
    text = (tmp_path / "results.md").read_text()
    assert "| 18.34 % |" in text and "| 55.62 % |" in text and "| 52.40 % |" in text
    assert "0.1834" not in text and "val mIoU with CRF" not in text  # None rows are left out
    assert "| 0.13 |" in text and "| 0.60 |" in text
    assert "high end of the sweep" in text
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "seconds" not in line
            and not line.startswith("| stage")]
    timing_rows = rows[-5:]
    assert timing_rows == ["classifier", "cams", "seeds", "pseudo", "segmenter"]
    assert [r for r in rows[:-5]] == ["seeds"] * 4 + ["pseudo", "segmenter"]


def test_sweep_edge() -> None:
    curve = [{"bg_score": s} for s in (0.05, 0.10, 0.15, 0.60)]
    assert sweep_edge(curve, 0.60) == "high"
    assert sweep_edge(curve, 0.05) == "low"
    assert sweep_edge(curve, 0.10) is None
    assert sweep_edge(curve[:2], 0.05) is None  # too short a sweep to speak of an edge
