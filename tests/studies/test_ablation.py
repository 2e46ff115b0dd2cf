"""The ablation task end to end on a tiny setting: every run, the aggregate table and the chart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY
from fixtures_models import kind_of
from vwl_lightning.evaluation.reports import TIMINGS
from vwl_lightning.stages.config_checks import validate_config
from vwl_lightning.studies.ablation import (
    IRN_RUN,
    MEASURES,
    aggregate,
    bar_values,
    main,
    seed_miou_vs_val_map,
    shown_measures,
    variant_config,
)
from vwl_lightning.utils.instantiate import build

# (pooling, codebook) of each variant of the ablation (studies.ablation.VARIANTS)
VARIANT_SWITCHES = {"plain CAM": ("gap", "none"), "+ hybrid pooling": ("hybrid", "none"), "+ VWL-L": ("gap", "learned"),
                    "+ VWL-M": ("gap", "memory"), "VWL-L + hybrid pooling": ("hybrid", "learned"),
                    "VWL-M + hybrid pooling": ("hybrid", "memory")}


def test_aggregate_mean_and_sample_std() -> None:
    rows = [{"variant": "a", "seed": s, **{m: v for m in MEASURES}} for s, v in ((1, 0.2), (2, 0.4), (3, 0.9))]
    table = aggregate(rows)
    assert table["a"]["seed_miou_best"]["mean"] == pytest.approx(0.5)
    assert table["a"]["seed_miou_best"]["std"] == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1))


def test_a_measure_without_a_value_gets_no_bar() -> None:
    """IRN ran for one variant only: the other variant's bars skip the IRN column instead of drawing 0."""
    rows = [{"variant": "a", "seed": 1, **{m: 0.5 for m in MEASURES}, "irn_pseudo_miou": 0.25,
             "classifier_val_map": 0.8},
            {"variant": "a", "seed": 2, **{m: 0.7 for m in MEASURES}, "irn_pseudo_miou": 0.35,
             "classifier_val_map": 0.9},
            {"variant": "b", "seed": 1, **{m: 0.4 for m in MEASURES}, "irn_pseudo_miou": None,
             "classifier_val_map": 0.6}]
    table = aggregate(rows)
    shown = shown_measures(table)
    assert shown[3] == "irn_pseudo_miou" and shown[-1] == "classifier_val_map"
    x, means, stds = bar_values(table["a"], shown)
    assert x.tolist() == [0, 1, 2, 3, 4, 5, 6] and means[6] == pytest.approx(85.0)
    assert means[3] == pytest.approx(30.0) and stds[3] == pytest.approx(100 * np.std([0.25, 0.35], ddof=1))
    assert means[0] == pytest.approx(60.0)
    x, means, stds = bar_values(table["b"], shown)
    assert x.tolist() == [0, 1, 2, 4, 5, 6] and means.tolist() == pytest.approx([40.0] * 5 + [60.0])
    assert stds.tolist() == [0.0] * 6


def test_seed_miou_against_val_map_correlation() -> None:
    """Pearson r by hand: x = (0.4, 0.5, 0.9), y = (0.6, 0.8, 0.9): deviations (-0.2, -0.1, 0.3) and
    (-1/6, 1/30, 2/15); cross sum 0.07, squares 0.14 and 0.14 / 3; r = 0.07 / sqrt(0.14² / 3) = sqrt(3) / 2."""
    rows = [{"seed_miou_best": x, "classifier_val_map": y} for x, y in ((0.4, 0.6), (0.5, 0.8), (0.9, 0.9))]
    assert seed_miou_vs_val_map(rows) == pytest.approx(np.sqrt(3) / 2, abs=1e-12)
    assert seed_miou_vs_val_map(rows[:2]) is None  # fewer than 3 runs
    no_map = {"seed_miou_best": 0.7, "classifier_val_map": None}  # a run without a mAP is left out
    assert seed_miou_vs_val_map([*rows, no_map]) == pytest.approx(np.sqrt(3) / 2, abs=1e-12)


def test_ablation_runs_end_to_end_on_a_tiny_setting(tmp_path: Path, cache_dir: Path, capsys) -> None:
    out = tmp_path / "ablation"
    overrides = [TINY, f"paths.cache_dir={cache_dir}", "cam.scales=[1.0]"]  # plain CAM has no codebook to size
    assert main(["--seeds", "1", "2", "--out", str(out), "--variants", "plain CAM", "VWL-L + hybrid pooling", "--",
                 *overrides]) == 0
    blob = json.loads((out / "ablation.json").read_text())
    assert len(blob["runs"]) == 4 and set(blob["variants"]) == {"plain CAM", "VWL-L + hybrid pooling"}
    # seed-major order: a study stopped after seed 1 holds seed 1 of every variant
    assert [(r["seed"], r["variant"]) for r in blob["runs"]] == [
        (1, "plain CAM"), (1, "VWL-L + hybrid pooling"), (2, "plain CAM"), (2, "VWL-L + hybrid pooling")]
    for run in blob["runs"]:
        for measure in MEASURES:
            assert 0.0 <= run[measure] <= 1.0
        assert run["badge_activation"] >= 0 and run["body_activation"] >= 0 and run["spill_typical_scene"] >= 0
        assert (Path(run["run_dir"]) / "seeds" / "manifest.json").is_file()
        assert (Path(run["run_dir"]) / "pseudo" / "manifest.json").is_file()
        if run["variant"] == "plain CAM":
            assert run["words_used"] is None
        else:  # K = 256 words (the default); at least one is the nearest somewhere
            assert 1 <= run["words_used"] <= 256 and 1.0 <= run["word_perplexity"] <= run["words_used"] + 1e-9
    assert "| VWL-L + hybrid pooling |" in (out / "ablation.md").read_text().split("Codebook use")[1]
    vwl = [r["seed_miou_best"] for r in blob["runs"] if r["variant"] == "VWL-L + hybrid pooling"]
    assert blob["variants"]["VWL-L + hybrid pooling"]["seed_miou_best"]["mean"] == pytest.approx(np.mean(vwl))
    assert (out / "ablation_bars.png").stat().st_size > 1000
    assert "| VWL-L + hybrid pooling |" in (out / "ablation.md").read_text()
    assert "plain CAM" in capsys.readouterr().out
    assert all(run["stage_seconds"] > 0 for run in blob["runs"])
    for run in blob["runs"]:  # the classifier's last validation mAP, from its manifest
        manifest = json.loads((Path(run["run_dir"]) / "classifier" / "manifest.json").read_text())
        assert run["classifier_val_map"] == manifest["metrics"]["val/mAP"] and 0 < run["classifier_val_map"] <= 1
    assert blob["seed_miou_vs_val_map_r"] == pytest.approx(np.corrcoef(
        [r["seed_miou_best"] for r in blob["runs"]], [r["classifier_val_map"] for r in blob["runs"]])[0, 1])
    assert "classifier val mAP" in (out / "ablation.md").read_text().splitlines()[0]
    assert blob["compute_seconds"] == pytest.approx(sum(run["stage_seconds"] for run in blob["runs"]))

    # a second invocation resumes: every stage is skipped, the results and the recorded stage times stay
    assert main(["--seeds", "1", "2", "--out", str(out), "--variants", "plain CAM", "VWL-L + hybrid pooling", "--",
                 *overrides]) == 0
    again = json.loads((out / "ablation.json").read_text())
    for before, after in zip(blob["runs"], again["runs"], strict=True):
        assert after["seed_miou_best"] == before["seed_miou_best"]
        assert after["stage_seconds"] == before["stage_seconds"]
    assert again["seconds"] < blob["seconds"]


def test_irn_masks_for_the_named_variants(tmp_path: Path, cache_dir: Path) -> None:
    """``--irn VARIANT``: IRN pseudo masks from that variant's CAMs in ``<run>/irn_run``, their mIoU in the row
    and the table (the manifest's), IRN's stage time in the run's compute; a variant not named has none."""
    out = tmp_path / "ablation"
    overrides = [TINY, f"paths.cache_dir={cache_dir}", "cam.scales=[1.0]", "irn=synthetic", "irn.max_epochs=1",
                 "irn.batch_size=8", "irn.crop_size=64",
                 "irn.radius=5", "irn.walk.exp_times=5"]
    assert main(["--seeds", "1", "--out", str(out), "--variants", "plain CAM", "+ hybrid pooling",
                 "--irn", "plain CAM", "--", *overrides]) == 0
    rows = {r["variant"]: r for r in json.loads((out / "ablation.json").read_text())["runs"]}
    plain, hybrid = rows["plain CAM"], rows["+ hybrid pooling"]
    irn_dir = Path(plain["run_dir"]) / IRN_RUN
    manifest = json.loads((irn_dir / "pseudo" / "manifest.json").read_text())
    assert manifest["settings"]["pseudo.mode"] == "irn"
    assert plain["irn_pseudo_miou"] == manifest["metrics"]["miou"] and 0.0 <= plain["irn_pseudo_miou"] <= 1.0
    assert hybrid["irn_pseudo_miou"] is None and not (Path(hybrid["run_dir"]) / IRN_RUN).exists()
    own = sum(json.loads((Path(plain["run_dir"]) / TIMINGS).read_text()).values())
    irn_seconds = sum(json.loads((irn_dir / TIMINGS).read_text()).values())
    assert plain["stage_seconds"] == pytest.approx(own + irn_seconds, abs=0.11)
    table = (out / "ablation.md").read_text()
    assert "| pseudo mIoU (IRN) |" in table.splitlines()[0]
    assert f"| {100 * plain['irn_pseudo_miou']:.1f} ± 0.0 |" in table.splitlines()[2]


@pytest.mark.parametrize("variant", ["plain CAM", "+ hybrid pooling", "+ VWL-L", "+ VWL-M", "VWL-L + hybrid pooling",
                                     "VWL-M + hybrid pooling"])
def test_the_pretrained_ablation_config(variant: str, tmp_path: Path) -> None:
    """``model=efficientnet_lite0_synthetic`` on top of every variant: the ImageNet EfficientNet-Lite0 with the
    spec's recipe, the variant's pooling and codebook, a 112 px image reaching the trunk at 224 px (a 14 x 14
    map at output stride 16), IRN's own trunk at scale 1; start-up checks pass, with pseudo.mode=irn too."""
    cfg = variant_config(variant, 1, tmp_path, ["model=efficientnet_lite0_synthetic", "pseudo.mode=irn"])
    validate_config(cfg)
    expected = {k: v for k, v in zip(("pool", "codebook"), VARIANT_SWITCHES[variant], strict=True)}
    assert kind_of(cfg.model.pool) == expected["pool"] and kind_of(cfg.model.codebook) == expected["codebook"]
    assert cfg.model.backbone.name == "tf_efficientnet_lite0" and cfg.model.backbone.input_scale == 2.0
    assert cfg.model.optimizer.lr == 0.01 and cfg.model.optimizer.momentum == 1.0e-4 and cfg.model.backbone.fixed_bn
    assert cfg.irn.backbone.input_scale == 1.0 and cfg.irn.backbone_source == "imagenet"
    if variant == "plain CAM":  # the network itself once: 224 px reach the trunk
        backbone = build(cfg.model.backbone, "model.backbone").eval()
        with torch.no_grad():
            assert backbone(torch.zeros(1, 3, 112, 112)).shape == (1, 1280, 14, 14)
