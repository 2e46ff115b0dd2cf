"""Start-up value checks: bad values are one line naming the key, before any data or
training; every shipped experiment passes them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import LITE0
from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.stages.config_checks import RULES, Rule, check_value, validate_config
from vwl_lightning.stages.make_cams import resolve_checkpoint
from vwl_lightning.utils.config import config_dir
from vwl_lightning.utils.manifest import write_manifest


@pytest.mark.parametrize(("override", "message"), [
    ("model.codebook.size=abc", "model.codebook.size='abc': expected an integer >= 1"),
    ("model.codebook.size=2.5", "model.codebook.size=2.5: expected an integer >= 1"),
    ("model.codebook.size=0", "model.codebook.size=0: expected an integer >= 1"),
    ("model.pool.gamma=abc", "model.pool.gamma='abc': expected a number >= 0"),
    ("model.pool.gamma=-1", "model.pool.gamma=-1: expected a number >= 0"),
    ("model.pool.gamma=true", "model.pool.gamma=True: expected a number >= 0"),
    ("model.pool._target_=vwl_lightning.models.pooling.Lse",
     "model.pool._target_='vwl_lightning.models.pooling.Lse': expected an importable class or function (module.Name)"),
    ("+model.pool.kind=lse", "model.pool.kind: vwl_lightning.models.pooling.HybridPooling has no argument 'kind'; "
                             "expected one of gamma, levels"),
    ("model.optimizer.lr=-0.1", "model.optimizer: Invalid learning rate: -0.1"),
    ("model.scheduler.power=-1", "model.scheduler.power=-1: expected a number >= 0"),
    ("+trainer.max_epochs=3", "trainer.max_epochs=3: each stage has its own schedule; set model.max_epochs, "
                              "segmenter.max_epochs and irn.max_epochs instead"),
    ("cam.scales=[1.0,0]", "cam.scales=[1.0, 0]: expected a non-empty list of positive numbers"),
    ("seeds.bg_score=1.5", "seeds.bg_score=1.5: expected a value >= 0 and <= 1"),
    ("pseudo.bg_score=x", "pseudo.bg_score='x': expected a number >= 0 and <= 1"),
    ("segmenter.batch_size=4.0", "segmenter.batch_size=4.0: expected an integer >= 1"),
    ("data.source.generator.num_train=many", "data.source.generator.num_train='many': expected an integer >= 1"),
    ("model.backbone.input_scale=0", "model.backbone.input_scale=0: expected a number > 0 and < 16"),
    ("model.backbone.input_scale=16", "model.backbone.input_scale=16: expected a number > 0 and < 16"),
])
def test_bad_values_are_one_line_naming_the_key(override: str, message: str, make_config) -> None:
    cfg = make_config(override)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert str(info.value) == message


def test_irn_on_a_rescaled_classifier_trunk_is_refused(make_config) -> None:
    """IRNet reads its trunk's levels directly, so irn=synthetic (which follows model.backbone) at
    input_scale 2 is refused in one line; irn=efficientnet_lite0 keeps its own trunk at scale 1 and passes."""
    with pytest.raises(ConfigError, match=r"^irn\.backbone\.input_scale=2\.0: IRNet reads"):
        validate_config(make_config("pseudo.mode=irn", "irn=synthetic", "model.backbone.input_scale=2.0"))
    cfg = make_config("pseudo.mode=irn", *LITE0, "model.backbone.input_scale=2.0")
    validate_config(cfg)
    assert cfg.irn.backbone.input_scale == 1.0 and cfg.model.backbone.input_scale == 2.0


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml")))
def test_every_shipped_experiment_passes(experiment: str, make_config) -> None:
    cfg = make_config(f"+experiment={experiment}", tiny=False)
    backbone = cfg.segmenter.backbone
    if backbone.get("pretrained") == "file" and not backbone.get("weights_path"):  # a local file the user must name
        with pytest.raises(ConfigError, match=r"^segmenter\.backbone\.weights_path=None: expected "):
            validate_config(cfg)
        cfg = make_config(f"+experiment={experiment}", "segmenter.backbone.weights_path=/w/init.pth", tiny=False)
    validate_config(cfg)


def test_rule_kinds_hand_worked() -> None:
    assert check_value(Rule("k", "int", 1), 3) is None
    assert check_value(Rule("k", "int", 1), True) == "k=True: expected an integer >= 1"
    assert check_value(Rule("k", "float", 0, low_open=True), 0) == "k=0: expected a value > 0"
    assert check_value(Rule("k", "float", 0, 1), float("nan")) == "k=nan: expected a number >= 0 and <= 1"
    assert check_value(Rule("k", "int", 1, nullable=True), None) is None
    assert check_value(Rule("k", "int_list", 1), [1, 2]) is None
    assert check_value(Rule("k", "int_list", 1), [1, 2.0]) == "k=[1, 2.0]: expected a non-empty list of integers >= 1"
    assert len({rule.key for rule in RULES}) == len(RULES)


def test_command_line_prints_one_line_and_exits_2_before_any_work(tmp_path: Path) -> None:
    env = {**os.environ, "VWL_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "vwl_lightning", "model.codebook.size=abc", "logger=none",
                             f"paths.runs_dir={tmp_path}/runs"], capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: model.codebook.size='abc': expected an integer >= 1"
    assert "Traceback" not in result.stderr and not (tmp_path / "cache").exists()  # no data generated
    assert (tmp_path / "runs" / "synthetic_vwl_l" / "model.codebook.size=abc").is_dir()  # its own run folder


def test_cam_classifier_dir_at_another_stage_is_named(tmp_path: Path) -> None:
    """`cam.classifier_dir` pointed at the seeds folder used to raise KeyError: 'checkpoint'."""
    seeds = tmp_path / "seeds"
    write_manifest(seeds, "seeds", metrics={})
    with pytest.raises(DataError, match=rf"{seeds}/manifest.json: is the manifest of stage 'seeds', not of a "
                                        r"classifier"):
        resolve_checkpoint(OmegaConf.create({"checkpoint": None, "classifier_dir": str(seeds)}))
