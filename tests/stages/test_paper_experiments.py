"""The paper's experiments (``conf/experiment/{voc,coco}_*.yaml``): they compose and build, hold the spec's
settings value by value (spec §1-7; COCO choices where the paper is silent, §9.6), keep the global batch at
16 whatever the world size, fail clearly when ImageNet weights cannot be had offline, and ``voc_vwl_l``
runs through every stage of the pipeline on a VOC-layout fixture with a small backbone."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from omegaconf import OmegaConf

from fixtures_models import kind_of
from fixtures_real import make_voc_fixture
from vwl_lightning.data.datamodule import per_device_batch
from vwl_lightning.errors import ConfigError
from vwl_lightning.models.backbone import Backbone
from vwl_lightning.models.codebook import LearnedCodebook, MemoryBankCodebook
from vwl_lightning.models.pooling import GlobalAveragePooling, HybridPooling
from vwl_lightning.stages.train_classifier import build_datamodule, build_module, build_trainer
from vwl_lightning.utils.instantiate import build
from vwl_lightning.utils.io import read_json
from vwl_lightning.utils.manifest import read_manifest

PAPER_EXPERIMENTS = ("voc_vwl_l", "voc_vwl_m", "voc_baseline", "coco_vwl_l", "coco_vwl_m")
NO_WEIGHTS = ("model.backbone.pretrained=none", "segmenter.backbone.pretrained=none")
SMALL_RESNET = "[32,64,128,256]"  # half-width ResNet-18 (timm `channels`), as model/synthetic.yaml


def paper_config(make_config, experiment: str, *overrides: str):
    return make_config(f"+experiment={experiment}", *NO_WEIGHTS, *overrides, tiny=False)


def test_the_paper_experiments_exist() -> None:
    folder = Path(__file__).parents[2] / "conf" / "experiment"
    for name in PAPER_EXPERIMENTS:
        text = (folder / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_"), name


@pytest.mark.parametrize("experiment", PAPER_EXPERIMENTS)
def test_experiment_composes_and_builds(experiment: str, make_config) -> None:
    """The whole config resolves and the classifier module builds (ResNet-101, random init)."""
    cfg = paper_config(make_config, experiment)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["name"] == experiment
    dataset = experiment.split("_")[0]
    assert cfg.data.source.kind == dataset
    num_foreground = {"voc": 20, "coco": 80}[dataset]
    module = build_module(cfg, num_foreground, [f"c{i}" for i in range(num_foreground + 1)])
    net = module.model
    assert net.backbone.name == "resnet101" and net.backbone.out_channels == 2048
    assert net.classifier.weight.shape == (num_foreground, 2048, 1, 1)
    codebook = {"vwl_l": LearnedCodebook, "vwl_m": MemoryBankCodebook, "baseline": type(None)}
    assert isinstance(net.codebook, codebook[experiment.split("_", 1)[1]])
    pool = GlobalAveragePooling if experiment.endswith("baseline") else HybridPooling
    assert isinstance(net.pooling, pool)
    with torch.no_grad():  # output stride 16 without dilation: a 64 px input gives a 4x4 map
        assert net.backbone.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 2048, 4, 4)
    assert all(m.dilation == (1, 1) for m in net.backbone.modules() if isinstance(m, torch.nn.Conv2d))


def check_common_spec_values(cfg) -> None:
    """Settings every paper experiment shares (spec §1, §3-7)."""
    m, b = cfg.model, cfg.model.backbone
    # spec §1: ResNet-101, torchvision ImageNet weights, OS 16 without dilation, fixed BN, conv1/bn1 frozen
    assert b.name == "resnet101"
    assert (b.pretrained, b.hub_tag) == ("hub", "tv_in1k")
    assert timm.get_pretrained_cfg(f"{b.name}.{b.hub_tag}").origin_url == "https://github.com/pytorch/vision"
    assert (b.output_stride, b.dilate, b.fixed_bn) == (16, False, True)
    assert list(b.frozen) == ["conv1", "bn1"]
    assert b.input_norm is None  # torchvision weights: ImageNet mean/std, as the data gives
    # spec §4: crop 512, long side 320-640, flip, global batch 16, 6 epochs, SGD 0.01 / 0.1, wd 1e-4,
    # faithful momentum 1e-4, poly 0.9
    t = cfg.data.train_transform
    assert (list(t.resize_long), t.crop_size, t.hflip) == ([320, 640], 512, True)
    assert cfg.data.batch_size == 16
    assert m.max_epochs == 6
    assert m.optimizer.lr == 0.01 and m.optimizer.lr * m.new_layer_lr_mult == pytest.approx(0.1)
    assert (m.optimizer.weight_decay, m.optimizer.momentum, m.scheduler.power) == (1e-4, 1e-4, 0.9)
    # spec §2.1: K = 256, tau = 1; spec §3: hybrid pooling gamma = 2 over levels 1, 2, 4
    if m.codebook is not None:
        assert (m.codebook.size, m.codebook.tau) == (256, 1.0)
    if m.pool._target_.endswith("HybridPooling"):
        assert (m.pool.gamma, list(m.pool.levels)) == (2.0, [1, 2, 4])
    # spec §5: scales 1, 0.5, 1.5, 2 with flips fused by max; seeds at background 0.13
    assert list(cfg.cam.scales) == [1.0, 0.5, 1.5, 2.0]
    assert (cfg.cam.flip, cfg.cam.flip_fusion) == (True, "max")
    assert cfg.cam.split == cfg.data.train_split
    assert cfg.seeds.bg_score == 0.13 and cfg.seeds.split == cfg.data.seed_split
    # spec §10: IRN pseudo labels (the paper's); pseudo.mode=crf keeps crf.py's (bg 0.15, iter 10,
    # Gaussian 1/3, bilateral 64/3/4) on the train split
    assert (cfg.pseudo.mode, cfg.pseudo.bg_score, cfg.pseudo.crf_preset) == ("irn", 0.15, "vwl_cam")
    i = cfg.irn
    assert (i.backbone_source, i.backbone.name, i.backbone.output_stride, i.backbone.dilate) == \
        ("imagenet", "resnet50", 16, False)
    assert (i.seeds.fg_thres, i.seeds.bg_thres, i.seeds.crf_preset) == (0.30, 0.05, "irn_label")
    assert (i.radius, i.crop_size, i.batch_size, i.max_epochs) == (10, 512, 32, 3)
    assert (i.optimizer.lr, i.optimizer.weight_decay, i.optimizer.momentum, i.scheduler.power) == (0.1, 1e-4, 1e-4, 0.9)
    assert (i.walk.radius, i.walk.beta, i.walk.exp_times, i.walk.bg_thres, i.walk.pad_to) == (5, 10.0, 8, 0.25, 512)
    assert i.train_split == cfg.data.train_split
    assert cfg.pseudo.split == cfg.data.train_split
    from vwl_lightning.pseudo.dense_crf import CRF_PRESETS, CRFParams

    assert CRF_PRESETS["vwl_cam"] == CRFParams(10, 1.0, 3.0, 64.0, 3.0, 4.0)
    # spec §7: DeepLabV2-ResNet101, ASPP 6/12/18/24, MSC 0.5/0.75, crop 321, scales 0.5-1.5, batch 10,
    # SGD 1e-3 momentum 0.9 wd 5e-4 poly 0.9, BN frozen, test CRF deeplab_test
    s = cfg.segmenter
    assert (s.backbone.name, s.backbone.dilate, s.backbone.fixed_bn) == ("resnet101", True, True)
    assert list(s.aspp.rates) == [6, 12, 18, 24]
    assert s.msc.enabled and list(s.msc.scales) == [0.5, 0.75]
    assert s.train_transform.crop_size == 321 and list(s.train_transform.scales) == [0.5, 0.75, 1.0, 1.25, 1.5]
    assert (s.batch_size, s.optimizer.lr, s.optimizer.momentum, s.optimizer.weight_decay, s.scheduler.power) == \
        (10, 1e-3, 0.9, 5e-4, 0.9)
    assert s.groups.train_bn is False
    assert s.train_split == cfg.data.train_split
    assert (s.eval.scales[0], s.eval.flip, s.eval.crf, s.eval.crf_preset) == (1.0, False, True, "deeplab_test")


def check_vwl_l(cfg) -> None:
    """spec §1, §2.2: layer2 detached; learned codebook; all four losses with weight 1."""
    assert cfg.model.backbone.detach_after == "layer2"
    assert (kind_of(cfg.model.pool), kind_of(cfg.model.codebook)) == ("hybrid", "learned")
    assert dict(cfg.model.loss) == {"img": 1.0, "w2i": 1.0, "word": 1.0, "decov": 1.0}


def check_vwl_m(cfg) -> None:
    """spec §1, §2.3: no detach (layer1-2 train); memory bank with rho = 1e-3; img + word losses only."""
    assert cfg.model.backbone.detach_after is None
    assert (kind_of(cfg.model.pool), kind_of(cfg.model.codebook)) == ("hybrid", "memory")
    assert cfg.model.codebook.ema_rate == 1e-3
    assert dict(cfg.model.loss) == {"img": 1.0, "w2i": 0.0, "word": 1.0, "decov": 0.0}


def test_voc_experiments_hold_the_spec_values(make_config) -> None:
    for experiment in ("voc_vwl_l", "voc_vwl_m", "voc_baseline"):
        cfg = make_config(f"+experiment={experiment}", tiny=False)
        check_common_spec_values(cfg)
        # spec §4-5: train_aug (10,582) for training, seeds on train (1,464), VOC 2012 + SBD masks
        assert (cfg.data.source.kind, cfg.data.source.mask_dir) == ("voc", "SegmentationClassAug")
        assert (cfg.data.train_split, cfg.data.seed_split, cfg.data.val_split) == ("train_aug", "train", "val")
        assert cfg.segmenter.max_steps == 20000  # spec §7: 20k iterations
    check_vwl_l(make_config("+experiment=voc_vwl_l", tiny=False))
    check_vwl_m(make_config("+experiment=voc_vwl_m", tiny=False))
    base = make_config("+experiment=voc_baseline", tiny=False)
    assert (kind_of(base.model.pool), kind_of(base.model.codebook)) == ("gap", "none")
    assert base.model.loss.img == 1.0 and base.model.loss.word == 0.0
    assert base.model.backbone.detach_after == "layer2"  # IRN's CAM network, which VWL-L follows (spec §1)


def test_coco_experiments_hold_the_spec_values_and_our_choices(make_config) -> None:
    for experiment, check in (("coco_vwl_l", check_vwl_l), ("coco_vwl_m", check_vwl_m)):
        cfg = make_config(f"+experiment={experiment}", tiny=False)
        check_common_spec_values(cfg)
        check(cfg)
        assert (cfg.data.source.kind, cfg.data.train_split, cfg.data.val_split) == ("coco", "train", "val")
        # choices where the paper is silent (spec §9.6), documented in the experiment file
        assert cfg.data.seed_split == "train"
        assert cfg.segmenter.max_steps == 100000
        assert cfg.trainer.limit_val_batches == 0.05 and "limit_batches" not in cfg.segmenter.val


def test_global_batch_stays_16_whatever_the_world_size(make_config, tmp_path: Path) -> None:
    """data.batch_size is the global batch (spec §4): 2 DDP processes get 8 each, read from the trainer."""
    voc = make_voc_fixture(tmp_path / "data", with_aug=True)
    cfg = paper_config(make_config, "voc_vwl_l", f"data.source.root={voc.root}", "trainer=ddp_cpu", "logger=none",
                       "data.num_workers=0")
    trainer = build_trainer(cfg, tmp_path / "run", "classifier", 1, [])
    assert trainer.world_size == 2
    datamodule = build_datamodule(cfg)
    datamodule.trainer = trainer
    datamodule.setup("fit")
    assert datamodule.device_batch == 8
    assert datamodule.train_dataloader().batch_size == 8
    assert per_device_batch(16, 1) == 16 and per_device_batch(16, 4) == 4
    with pytest.raises(ConfigError, match=r"data\.batch_size=16 is the global batch .* world size 3"):
        per_device_batch(16, 3)


def test_hub_unreachable_says_how_to_use_a_local_file(make_config, monkeypatch) -> None:
    """Offline (HF_HUB_OFFLINE), pretrained=hub is a ConfigError naming pretrained=file and weights_path."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = make_config("+experiment=voc_vwl_l", tiny=False)
    assert cfg.model.backbone.pretrained == "hub"
    backbone = OmegaConf.to_container(cfg.model.backbone, resolve=True)
    with pytest.raises(ConfigError, match=r"^model\.backbone\.pretrained='hub': expected file with weights_path .*"
                                          r"resnet101\.tv_in1k could not be fetched from the timm hub"):
        build(backbone, "model.backbone")
    with pytest.raises(ConfigError, match=r"^model\.backbone\.hub_tag='nope': expected a timm weights tag of "):
        build({**backbone, "hub_tag": "nope"}, "model.backbone")


def test_unreachable_hub_fails_at_once_without_offline_mode(monkeypatch) -> None:
    """No HF_HUB_OFFLINE, but the hub cannot be reached: the probe (one connection attempt) switches Hugging
    Face to offline mode for the call only, so the weights are looked up in the local cache and the error comes
    at once instead of after a minute of download retries."""
    import socket

    import timm

    probes, offline_at_fetch = [], []
    create_model = timm.create_model

    def refuse(*args, **kwargs):
        probes.append(args[0])
        raise OSError("network unreachable (test)")

    def spy(*args, pretrained: bool = False, **kwargs):
        if pretrained:
            offline_at_fetch.append(huggingface_hub.constants.HF_HUB_OFFLINE)
        return create_model(*args, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for variable in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(timm, "create_model", spy)
    with pytest.raises(ConfigError, match=r"resnet18\.tv_in1k could not be fetched from the timm hub"):
        Backbone("resnet18", output_stride=32, pretrained="hub", hub_tag="tv_in1k")
    assert len(probes) == 1  # one probe of the hub, no retries
    assert offline_at_fetch == [True]  # the weights were fetched in offline mode: no download was tried
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # restored after the call


def test_rebuilding_from_a_checkpoint_needs_no_weights(make_config, monkeypatch, tmp_path: Path) -> None:
    """Inside weights_from_checkpoint() (for load_from_checkpoint in later stages) neither the hub nor the
    original weight file is needed: the checkpoint holds every tensor."""
    from vwl_lightning.models.backbone import weights_from_checkpoint

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = make_config("+experiment=voc_vwl_l", "model.backbone.name=resnet18", tiny=False)
    backbone = OmegaConf.to_container(cfg.model.backbone, resolve=True)
    backbone.pop("_target_")
    with weights_from_checkpoint():
        assert Backbone(**backbone).weights_sha256 is None
        Backbone(**{**backbone, "pretrained": "file", "weights_path": str(tmp_path / "gone.pth")})
    with pytest.raises(ConfigError, match="could not be fetched"):
        Backbone(**backbone)


def test_offline_timm_resnet_checkpoint_loads(tmp_path: Path) -> None:
    """pretrained=file with a timm-format ResNet checkpoint (head included): same features as timm's model;
    the SHA-256 is kept (torchvision files: tests/test_torchvision_weights.py)."""
    torch.manual_seed(0)
    reference = timm.create_model("resnet18", pretrained=False).eval()
    for module in reference.modules():  # non-trivial BN statistics, so a BN mix-up would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "resnet18-timm.pth"
    torch.save(reference.state_dict(), path)
    x = torch.randn(1, 3, 64, 64)
    for fmt in ("timm", "auto", "torchvision"):
        backbone = Backbone("resnet18", output_stride=32, frozen=[], pretrained="file", weights_path=str(path),
                            weights_format=fmt).eval()
        with torch.no_grad():
            torch.testing.assert_close(backbone(x), reference.forward_features(x), rtol=0, atol=1e-5)
        assert backbone.weights_sha256 is not None and len(backbone.weights_sha256) == 64


def test_voc_vwl_l_runs_every_stage_on_the_voc_fixture(make_config, tmp_path: Path) -> None:
    """``stage=pipeline`` of voc_vwl_l with a small backbone, tiny crops, 2 training steps and one CAM scale:
    every stage of the pipeline writes its manifest, and results.json has the headline numbers."""
    from vwl_lightning.stages.pipeline import PIPELINE, run

    voc = make_voc_fixture(tmp_path / "data", n_train=4, n_val=2, n_extra=0, with_aug=True)
    overrides = [
        f"data.source.root={voc.root}", "stage=pipeline", "logger=none", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "data.num_workers=0", "data.pin_memory=false", "data.batch_size=2", "data.eval_batch_size=2",
        "data.train_transform.resize_long=[64,80]", "data.train_transform.crop_size=64", "data.eval_size=64",
        "model.backbone.name=resnet18", f"+model.backbone.model_kwargs.channels={SMALL_RESNET}",
        "model.codebook.size=8", "model.max_epochs=1", "trainer.limit_train_batches=2",
        "cam.scales=[1.0]", "cam.num_workers=0", "cam.batch_size=4", "cam.channels_last=false",
        "pseudo.num_workers=0",
        # IRN on the fixture: the classifier's small trunk instead of an ImageNet ResNet-50, tiny crops
        "irn.backbone_source=classifier", "irn.backbone=${model.backbone}", "irn.crop_size=64", "irn.radius=5",
        "irn.batch_size=2", "irn.max_epochs=1", "irn.num_workers=0", "irn.walk.pad_to=null", "irn.walk.exp_times=3",
    ]
    if "segmenter" in PIPELINE:
        overrides += [
            "segmenter.backbone.name=resnet18", f"+segmenter.backbone.model_kwargs.channels={SMALL_RESNET}",
            "segmenter.max_steps=2", "segmenter.batch_size=2", "segmenter.num_workers=0",
            "segmenter.checkpoint_every_n_steps=null", "segmenter.train_transform.crop_size=32",
            "segmenter.val.batch_size=2", "segmenter.val.eval_size=48", "segmenter.eval.crf_workers=0",
        ]
    cfg = paper_config(make_config, "voc_vwl_l", *overrides)
    assert cfg.model.backbone.detach_after == "layer2" and kind_of(cfg.model.codebook) == "learned"
    headline = run(cfg)
    run_dir = Path(cfg.run_dir)

    classifier = read_manifest(run_dir / "classifier")
    assert classifier is not None and classifier["dataset"] == "voc" and len(classifier["class_names"]) == 21
    assert classifier["config"]["name"] == "voc_vwl_l"
    assert Path(classifier["checkpoint"]).is_file()
    cams = read_manifest(run_dir / "cams")
    assert cams is not None and cams["split"] == "train_aug" and cams["scales"] == [1.0]
    assert cams["flip_fusion"] == "max" and cams["counts"]["images"] == len(voc.train_ids)
    seeds = read_manifest(run_dir / "seeds")
    assert seeds is not None and seeds["split"] == "train" and seeds["metrics"]["configured_bg_score"] == 0.13
    assert 0.0 <= seeds["metrics"]["miou_at_configured"] <= 1.0
    pseudo = read_json(run_dir / "pseudo" / "manifest.json")
    masks = sorted(Path(pseudo["mask_dir"]).glob("*.png"))
    assert [p.stem for p in masks] == sorted(voc.train_ids)
    results = read_json(run_dir / "results.json")
    assert results == headline
    assert 0.0 <= results["cam_seed_miou_configured"] <= 1.0 and 0.0 <= results["pseudo_mask_miou"] <= 1.0
    assert set(PIPELINE) <= set(results["stage_seconds"])
    if "segmenter" in PIPELINE:
        segmenter = read_manifest(run_dir / "segmenter")
        assert segmenter is not None
        assert 0.0 <= results["segmenter_val_miou"] <= 1.0
