"""Settings that cannot work together are refused at start-up, before any training; the embedded segmenter
follows the classifier's trunk, so model=efficientnet_lite0 runs the whole pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import LITE0
from fixtures_models import save_checkpoint
from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.stages.pipeline import check_settings, run_stages
from vwl_lightning.stages.train_classifier import build_module as build_classifier_module
from vwl_lightning.stages.train_segmenter import build_module as build_segmenter_module

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_segmenter_trunk_other_than_the_classifiers_is_refused_before_training(make_config) -> None:
    cfg = make_config("segmenter.backbone.name=resnet34")
    with pytest.raises(ConfigError, match=r"segmenter\.backbone\.name=resnet34 differs from "
                                          r"model\.backbone\.name=resnet18"):
        run_stages(cfg, tuple(cfg.pipeline))
    assert not (Path(cfg.run_dir) / "classifier").exists()  # nothing was trained
    check_settings(make_config("segmenter.backbone.name=resnet34", "segmenter.backbone_init=null"),
                   tuple(cfg.pipeline))  # without the copy the trunks may differ


@pytest.mark.parametrize(("overrides", "names", "message"), [
    ((), ("segmenter",), r"segmenter\.pseudo_dir=.*/run/pseudo: no completed pseudo stage there"),
    (("segmenter.pseudo_dir=PSEUDO",), ("segmenter",),
     r"segmenter\.backbone_init=.*/run/classifier: no completed classifier stage .*backbone_init=null"),
    ((), ("seeds",), r"seeds\.cam_dir=.*/run/cams: no completed cams stage"),
    ((), ("cams", "seeds"), r"cam\.classifier_dir=.*/run/classifier: no completed classifier stage"),
    (("cam.checkpoint=/no/such.ckpt",), ("cams",), r"cam\.checkpoint=/no/such\.ckpt: classifier checkpoint not found"),
])
def test_a_stage_without_its_input_is_refused_at_start_up(make_config, tmp_path: Path, overrides: tuple[str, ...],
                                                          names: tuple[str, ...], message: str) -> None:
    pseudo = tmp_path / "masks"
    pseudo.mkdir()
    (pseudo / "x.png").write_bytes(b"")
    cfg = make_config(*(o.replace("PSEUDO", str(pseudo)) for o in overrides))
    with pytest.raises(DataError, match=message):
        check_settings(cfg, names)


def test_stages_made_earlier_in_the_same_run_count_as_present(make_config) -> None:
    cfg = make_config()
    check_settings(cfg, ("classifier", "cams", "seeds", "pseudo", "segmenter"))
    with pytest.raises(DataError, match="no completed classifier stage"):
        check_settings(cfg, ("cams", "classifier"))  # the order matters


def test_lite0_segmenter_follows_the_classifier_trunk(make_config, tmp_path: Path) -> None:
    cfg = make_config(*LITE0)
    assert cfg.segmenter.backbone.name == "tf_efficientnet_lite0"
    assert OmegaConf.to_container(cfg.segmenter.backbone.input_norm) == {"mean": [0.5] * 3, "std": [0.5] * 3}
    check_settings(cfg, tuple(cfg.pipeline))
    classifier = build_classifier_module(cfg, 8, [str(i) for i in range(9)])
    ckpt = save_checkpoint(classifier, tmp_path / "classifier.ckpt")
    cfg = make_config(*LITE0, f"segmenter.backbone_init={ckpt}")
    segmenter = build_segmenter_module(cfg, 9, [str(i) for i in range(9)])
    own = segmenter.model.backbone.state_dict()
    trunk = classifier.model.backbone.state_dict()
    assert len(own) > 200 and set(own) == set(trunk)
    for key in own:
        torch.testing.assert_close(own[key], trunk[key], rtol=0, atol=0)
    with torch.no_grad():
        logits = segmenter.predict_logits(torch.zeros(1, 3, 64, 48))
    assert logits.shape == (1, 9, 64, 48)


@pytest.mark.slow
def test_lite0_runs_the_whole_pipeline(make_config) -> None:
    """model=efficientnet_lite0 through every stage on tiny data (classifier, CAMs, seeds, CRF, segmenter)."""
    cfg = make_config(*LITE0, "cam.scales=[1.0]", "segmenter.eval.crf=false")
    results = run_stages(cfg, tuple(cfg.pipeline))
    assert 0.0 <= results["segmenter"]["miou"] <= 1.0
    assert 0.0 <= results["seeds"]["best_miou"] <= 1.0
