"""The refinement study (CRF vs IRN masks, IRN's trunks, DeepLabV2 vs EMANet): each run's Hydra overrides read
the default run's CAMs and classifier, and the summary is read from the runs' manifests, a run not yet made
leaving its cells empty."""

from __future__ import annotations

import json
from pathlib import Path

from vwl_lightning.studies.refinement import RUN_NAMES, collect, commands, main


def test_irn_and_emanet_runs_read_the_default_runs_folders(tmp_path: Path) -> None:
    runs = commands(2, tmp_path, ["trainer.max_epochs=1"])
    assert list(runs) == RUN_NAMES
    crf = tmp_path / "s2" / "crf"
    assert runs["crf"][:2] == ["seed=2", f"run_dir={crf}"] and runs["crf"][-1] == "trainer.max_epochs=1"
    assert f"irn.cam_dir={crf}/cams" in runs["irn_scratch"] and "irn.backbone_source=scratch" in runs["irn_scratch"]
    assert f"segmenter.pseudo_dir={crf}/pseudo" in runs["emanet"] and "segmenter=emanet_synthetic" in runs["emanet"]


def test_collect_only_summarises_the_manifests_there_are(tmp_path: Path, capsys) -> None:
    seeds = tmp_path / "s1" / "crf" / "seeds"
    seeds.mkdir(parents=True)
    (seeds / "manifest.json").write_text(json.dumps({"metrics": {"best_miou": 0.5, "miou_at_configured": 0.25}}))
    assert collect(1, tmp_path) == {"seed": 1, "seed_miou_best": 0.5, "seed_miou_configured": 0.25}
    assert main(["--seeds", "1", "--out", str(tmp_path), "--collect-only"]) == 0
    text = (tmp_path / "summary.md").read_text()
    assert "| CAM seed mIoU (best bg / bg 0.13) | 50.00 / 25.00 | 50.00 (n=1) / 25.00 (n=1) |" in text
    assert "| CRF pseudo-mask mIoU | — |" in text
    assert json.loads((tmp_path / "summary.json").read_text())["seeds"][0]["seed_miou_best"] == 0.5
