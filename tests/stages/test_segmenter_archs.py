"""The segmenter stage with its second architecture and the caffe init: the paper-row experiments compose with the
spec's values, a checkpoint reloads as the right module, a caffe-init run trains and evaluates end to end on tiny
data, and the embedded benchmark's whole pipeline runs with ``segmenter=emanet_synthetic`` (slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY, compose_config
from fixtures_models import kind_of
from vwl_lightning.errors import ConfigError
from vwl_lightning.modules.emanet import EMANetModule
from vwl_lightning.modules.segmenter import SegmenterModule
from vwl_lightning.stages.train_segmenter import build_module, load_segmenter
from vwl_lightning.utils.manifest import read_manifest

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_EMANET = ["segmenter=emanet_synthetic", "segmenter.backbone.model_kwargs.channels=[8,16,32,64]",
               "segmenter.head.mid_channels=16", "segmenter.head.head_channels=8", "segmenter.head.bases=4"]


def test_paper_row_experiments_compose(make_config) -> None:
    coco_l = make_config("+experiment=voc_vwl_l_coco_init", "segmenter.backbone.weights_path=/w/coco.pth", tiny=False)
    coco_m = make_config("+experiment=voc_vwl_m_coco_init", "segmenter.backbone.weights_path=/w/coco.pth", tiny=False)
    for cfg, codebook in ((coco_l, "learned"), (coco_m, "memory")):
        s = cfg.segmenter
        assert kind_of(cfg.model.codebook) == codebook and s.arch == "deeplabv2"
        assert s.backbone.name == "caffe_resnet101" and s.backbone.pretrained == "file" and s.backbone.fixed_bn
        assert s.optimizer.lr == 1e-3 and s.batch_size == 10 and s.max_steps == 20000 and s.msc.enabled
        assert s.groups.lr_grouping in ("corrected", "faithful") and s.groups.train_bn is False
        assert list(s.aspp.rates) == [6, 12, 18, 24] and s.train_transform.crop_size == 321
    ema = make_config("+experiment=voc_vwl_l_emanet", "segmenter.backbone.weights_path=/w/r101.pth", tiny=False)
    s = ema.segmenter
    assert s.arch == "emanet" and s.backbone.kind == "deep_resnet" and not s.backbone.canonical_rates
    assert (s.head.mid_channels, s.head.bases, s.head.iterations, s.head.em_momentum) == (512, 64, 3, 0.9)
    assert s.optimizer.lr == 9e-3 and s.groups.bias_lr_mult == 2.0 and s.scheduler.every == 10
    assert s.batch_size == 16 and s.max_steps == 30000 and s.train_transform.crop_size == 513
    assert list(s.train_transform.scales) == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert s.loss.normalise == "pixels" and s.eval.pad_8k1 and ema.trainer.sync_batchnorm is True
    assert kind_of(ema.model.codebook) == "learned"


def test_bad_arch_and_backbone_init_are_refused(make_config) -> None:
    with pytest.raises(ConfigError, match=r"segmenter\.arch must be one of"):
        build_module(make_config("segmenter.arch=pspnet", "segmenter.backbone_init=null"), 5, ["x"] * 5)
    with pytest.raises(ConfigError, match=r"segmenter\.backbone_init .*kind=timm"):
        build_module(make_config("segmenter=emanet", "segmenter.backbone.pretrained=none",
                                 "++segmenter.backbone.model_kwargs.layers=[1,1,1,1]",
                                 "++segmenter.backbone.model_kwargs.base_width=4",
                                 "segmenter.backbone_init=/nowhere"), 5, ["x"] * 5)


def _gt_pseudo(cfg, folder: Path) -> None:
    from vwl_lightning.data.label_png import read_label_png, write_label_png
    from vwl_lightning.data.source import resolve_data

    data = resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True))
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for image_id in data.layout.split_ids("train"):
        mask = read_label_png(data.layout.mask_path(image_id)).copy()
        mask[mask == 255] = 0
        write_label_png(folder / "masks" / f"{image_id}.png", mask)


def test_caffe_init_run_trains_and_reloads(make_config, tmp_path: Path) -> None:
    import importlib.util

    from vwl_lightning.stages.train_segmenter import train_segmenter

    # the fabricated caffe file of tests/models/test_caffe_deeplab.py (its real key layout)
    spec = importlib.util.spec_from_file_location("caffe_fixtures",
                                                  Path(__file__).parents[1] / "models" / "test_caffe_deeplab.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    SMALL, fabricate_caffe_state = fixtures.SMALL, fixtures.fabricate_caffe_state

    torch.save(fabricate_caffe_state(SMALL["layers"], SMALL["base_width"]), tmp_path / "coco.pth")
    cfg = make_config("segmenter=deeplabv2_caffe", f"segmenter.backbone.weights_path={tmp_path}/coco.pth",
                      f"++segmenter.backbone.model_kwargs.layers={SMALL['layers']}".replace(" ", ""),
                      f"++segmenter.backbone.model_kwargs.base_width={SMALL['base_width']}",
                      "segmenter.msc.enabled=false", "segmenter.max_steps=2", "segmenter.batch_size=4",
                      "segmenter.num_workers=0", "segmenter.checkpoint_every_n_steps=null",
                      "segmenter.train_transform.crop_size=48", "segmenter.val.enabled=false",
                      "segmenter.eval.crf=false", f"segmenter.pseudo_dir={tmp_path}/pseudo",
                      run_dir=tmp_path / "run")
    _gt_pseudo(cfg, tmp_path / "pseudo")
    summary = train_segmenter(cfg)
    manifest = read_manifest(tmp_path / "run" / "segmenter")
    assert manifest is not None and 0.0 <= summary["miou"] <= 1.0
    module = load_segmenter(Path(summary["checkpoint"]))
    assert isinstance(module, SegmenterModule) and module.model.backbone.maxpool.ceil_mode


@pytest.mark.slow
def test_embedded_pipeline_with_emanet(cache_dir: Path, tmp_path: Path) -> None:
    """The whole embedded pipeline (classifier → CAMs → seeds → pseudo masks → EMANet) on tiny data."""
    from vwl_lightning.stages.pipeline import run

    cfg = compose_config([TINY, "cam.scales=[1.0]", *TINY_EMANET], tmp_path / "run", cache_dir)
    assert cfg.segmenter.arch == "emanet"
    run(cfg)
    manifest = read_manifest(tmp_path / "run" / "segmenter")
    assert manifest is not None and manifest["config"]["segmenter"]["arch"] == "emanet"
    scores = manifest["eval"]
    assert 0.0 < scores["eval"]["miou"] <= 1.0 and 0.0 < scores["eval_crf"]["miou"] <= 1.0
    module = load_segmenter(Path(manifest["checkpoint"]))
    assert isinstance(module, EMANetModule)
    # the trained bases moved away from their unit-norm initialisation and were saved in the checkpoint
    norms = module.model.emau.mu.norm(dim=1).numpy()
    assert not np.allclose(norms, 1.0, atol=1e-4)
    predictions = sorted((tmp_path / "run" / "segmenter" / "eval" / "predictions").glob("*.png"))
    assert len(predictions) == 16
