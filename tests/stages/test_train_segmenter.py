"""The segmenter stage (spec §7): DeepLabV2 shapes and ASPP rates, the two LR groupings, the loss, the
stage's outputs against a NumPy reference, the CRF variant, resume and skip, and bad pseudo-mask folders."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

from conftest import TINY, compose_config
from fixtures_segmenters import deeplab_nodes
from vwl_lightning.data.label_png import read_label_png, write_label_png
from vwl_lightning.data.meta import voc_palette
from vwl_lightning.data.pseudo_mask_data import SegmenterDataModule
from vwl_lightning.data.source import ResolvedData, resolve_data
from vwl_lightning.data.voc import SegmentationDataset
from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.models.backbone import Backbone
from vwl_lightning.models.deeplab import ASPP, DeepLabV2
from vwl_lightning.modules.segmenter import segmentation_loss
from vwl_lightning.stages.train_segmenter import (
    EVAL_CRF_DIR,
    EVAL_DIR,
    build_datamodule,
    build_module,
    load_segmenter,
    train_segmenter,
)
from vwl_lightning.utils.manifest import read_manifest

pytestmark = pytest.mark.usefixtures("one_thread")


# a narrow trunk trained from scratch (the default initialises from the run's classifier)
TINY_NET = ["segmenter.backbone.model_kwargs={channels:[8,16,32,64]}", "segmenter.backbone_init=null"]


def tiny_backbone(output_stride: int = 8) -> Backbone:
    return Backbone("resnet18", output_stride=output_stride, dilate=True, fixed_bn=False, frozen=[],
                    model_kwargs={"channels": [8, 16, 32, 64]})


# ------------------------------------------------------------------------------------------------ network


@pytest.mark.parametrize("output_stride", [8, 16])
def test_deeplab_output_shapes_and_dilated_trunk(output_stride: int) -> None:
    trunk = tiny_backbone(output_stride)
    net = DeepLabV2(trunk, ASPP(trunk.out_channels, 5), msc_scales=())
    x = torch.randn(2, 3, 64, 80)
    assert net(x).shape == (2, 5, 64 // output_stride, 80 // output_stride)
    assert len(net.outputs(x)) == 1
    # DeepLab-style dilation instead of stride: layer4 dilated by 4 (os 8) or 2 (os 16)
    assert max(m.dilation[0] for m in net.backbone.layer4.modules() if isinstance(m, torch.nn.Conv2d)) \
        == 32 // output_stride


def test_aspp_is_the_sum_of_four_dilated_3x3_convs() -> None:
    aspp = ASPP(in_channels=6, num_classes=4)
    assert aspp.rates == (6, 12, 18, 24)
    for conv, rate in zip(aspp.branches, (6, 12, 18, 24), strict=True):
        assert conv.kernel_size == (3, 3) and conv.dilation == (rate, rate) and conv.padding == (rate, rate)
        assert conv.bias is not None and torch.all(conv.bias == 0)
    for conv in aspp.branches:
        torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, 6, 30, 30)
    expected = sum(F.conv2d(x, c.weight, c.bias, padding=r, dilation=r)
                   for c, r in zip(aspp.branches, (6, 12, 18, 24), strict=True))
    torch.testing.assert_close(aspp(x), expected)
    with pytest.raises(ConfigError, match=r"^rates=\[\]: expected a non-empty list of integers >= 1$"):
        ASPP(6, 4, rates=[])


def test_msc_outputs_and_max_fusion() -> None:
    torch.manual_seed(0)
    trunk = tiny_backbone(8)
    net = DeepLabV2(trunk, ASPP(trunk.out_channels, 3), msc_scales=(0.5, 0.75)).eval()
    x = torch.randn(1, 3, 64, 64)
    outs = net.outputs(x)
    assert [tuple(o.shape[-2:]) for o in outs] == [(8, 8), (4, 4), (6, 6), (8, 8)]
    with torch.no_grad():
        full = net.single_scale(x)
        half = net.single_scale(F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False))
        three = net.single_scale(F.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False))
        up = [F.interpolate(t, size=(8, 8), mode="bilinear", align_corners=False) for t in (half, three)]
        torch.testing.assert_close(net(x), torch.maximum(full, torch.maximum(*up)))
    # the training loss averages cross-entropy over the four outputs
    y = torch.randint(0, 3, (1, 64, 64))
    y[0, :4] = 255
    per_output = [segmentation_loss([o], y) for o in outs]
    torch.testing.assert_close(segmentation_loss(outs, y), sum(per_output) / 4)
    logits = F.interpolate(outs[0], size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(per_output[0], F.cross_entropy(logits, y, ignore_index=255))
    small = F.interpolate(y[:, None].float(), size=(8, 8), mode="nearest")[:, 0].long()
    torch.testing.assert_close(segmentation_loss([outs[0]], y, "logits"),
                               F.cross_entropy(outs[0], small, ignore_index=255))
    assert segmentation_loss([outs[0]], torch.full_like(y, 255)).item() == 0.0  # all ignored: 0, not NaN


def test_configs_compose_and_build(make_config) -> None:
    cfg = make_config()
    assert cfg.segmenter.pseudo_dir == f"{cfg.run_dir}/pseudo"
    assert cfg.segmenter.groups.lr_grouping == "corrected" and cfg.segmenter.msc.enabled is False
    assert cfg.segmenter.backbone_init == f"{cfg.run_dir}/classifier" and list(cfg.segmenter.aspp.rates) == [2, 4, 6, 8]
    voc = make_config("segmenter=deeplabv2", "segmenter.backbone.pretrained=none")
    s = voc.segmenter
    assert (s.backbone.name, s.backbone.output_stride, s.train_transform.crop_size, s.batch_size, s.max_steps) \
        == ("resnet101", 8, 321, 10, 20000)
    assert (s.optimizer.lr, s.optimizer.momentum, s.optimizer.weight_decay, s.scheduler.power) == (1e-3, 0.9, 5e-4, 0.9)
    assert list(s.msc.scales) == [0.5, 0.75] and list(s.aspp.rates) == [6, 12, 18, 24]
    assert s.backbone_init is None and s.eval.crf_preset == "deeplab_test"
    assert list(s.train_transform.scales) == [0.5, 0.75, 1.0, 1.25, 1.5]
    module = build_module(voc, 21, [str(i) for i in range(21)])
    assert module.model.msc_scales == (0.5, 0.75) and module.model.backbone.name == "resnet101"
    assert s.msc.resize == "scale_factor" and module.model.msc_resize == "scale_factor"  # the official MSC's
    norms = [m for m in module.model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(p.requires_grad for m in norms for p in m.parameters())  # DeepLab: BN frozen
    with pytest.raises(ConfigError, match=r"^segmenter\.groups\.lr_grouping='conv8': expected one of"):
        build_module(make_config("segmenter.groups.lr_grouping=conv8", *TINY_NET), 9, [str(i) for i in range(9)])
    with pytest.raises(ConfigError, match=r"^segmenter\.backbone\.weights_path=None: expected a local .* since "
                                          r"pretrained=file$"):
        build_module(make_config("segmenter=deeplabv2"), 21, [str(i) for i in range(21)])


def test_backbone_init_copies_the_classifier_trunk(make_config, tmp_path: Path) -> None:
    from vwl_lightning.modules.classifier import build_classifier
    from vwl_lightning.utils.manifest import write_manifest

    trunk = {"name": "resnet18", "output_stride": 8, "fixed_bn": False, "frozen": [], "detach_after": None,
             "model_kwargs": {"channels": [8, 16, 32, 64]}}
    classifier = build_classifier(8, {"_target_": "vwl_lightning.models.backbone.Backbone", **trunk},
                                  {"_target_": "vwl_lightning.models.pooling.GlobalAveragePooling"}, None)
    checkpoint = tmp_path / "classifier" / "classifier.ckpt"
    checkpoint.parent.mkdir()
    torch.save({"state_dict": {f"model.{k}": v for k, v in classifier.state_dict().items()}}, checkpoint)
    write_manifest(checkpoint.parent, "classifier", checkpoint=str(checkpoint))
    cfg = make_config(*TINY_NET, f"segmenter.backbone_init={checkpoint.parent}")
    module = build_module(cfg, 9, [str(i) for i in range(9)])
    for key, value in module.model.backbone.state_dict().items():
        torch.testing.assert_close(value, classifier.backbone.state_dict()[key])
    wider = make_config("segmenter.backbone.model_kwargs={channels:[16,32,64,128]}",
                        f"segmenter.backbone_init={checkpoint}")
    with pytest.raises(DataError, match=r"classifier\.ckpt: its classifier trunk does not match segmenter\.backbone"):
        build_module(wider, 9, [str(i) for i in range(9)])
    with pytest.raises(DataError, match=r"segmenter\.backbone_init .*/nowhere: classifier checkpoint not found"):
        build_module(make_config(*TINY_NET, f"segmenter.backbone_init={tmp_path}/nowhere"), 9, ["x"] * 9)


# ---------------------------------------------------------------------------------------- parameter groups


def optimizer_of(module) -> torch.optim.Optimizer:
    module.trainer = SimpleNamespace(estimated_stepping_batches=100)
    return module.configure_optimizers()["optimizer"]


def test_corrected_grouping_puts_aspp_at_10x_and_20x(make_config) -> None:
    cfg = make_config(*TINY_NET)
    module = build_module(cfg, 9, [str(i) for i in range(9)])
    optimizer = optimizer_of(module)
    groups = {g["name"]: g for g in optimizer.param_groups}
    lr = cfg.segmenter.optimizer.lr
    assert list(groups) == ["backbone", "aspp_weight", "aspp_bias"]
    assert [groups[n]["lr"] for n in groups] == pytest.approx([lr, 10 * lr, 20 * lr])
    assert groups["aspp_bias"]["weight_decay"] == 0.0
    assert groups["backbone"]["weight_decay"] == groups["aspp_weight"]["weight_decay"] == 1e-4
    aspp = module.model.aspp.branches
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["aspp_weight"] == {id(c.weight) for c in aspp} and ids["aspp_bias"] == {id(c.bias) for c in aspp}
    assert ids["backbone"] == {id(p) for p in module.model.backbone.parameters()}  # BN trains here (synthetic)
    assert sum(len(v) for v in ids.values()) == len(list(module.model.parameters()))


def test_faithful_grouping_leaves_aspp_biases_out(make_config) -> None:
    cfg = make_config(*TINY_NET, "segmenter.groups.lr_grouping=faithful", "segmenter.groups.train_bn=false")
    module = build_module(cfg, 9, [str(i) for i in range(9)])
    optimizer = optimizer_of(module)
    assert [g["name"] for g in optimizer.param_groups] == ["conv_1x"]
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(cfg.segmenter.optimizer.lr)
    in_group = {id(p) for p in group["params"]}
    convs = [m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert in_group == {id(m.weight) for m in convs}  # every conv weight at 1x, nothing else
    assert not any(id(c.bias) in in_group for c in module.model.aspp.branches)
    # a real step: ASPP weights move, the biases stay at their initial 0
    before = [c.weight.detach().clone() for c in module.model.aspp.branches]
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 9, (2, 32, 32))
    module.compute_loss(x, y).backward()
    optimizer.step()
    for conv, old in zip(module.model.aspp.branches, before, strict=True):
        assert torch.all(conv.bias == 0) and not torch.equal(conv.weight, old)


# -------------------------------------------------------------------------------------- stage and outputs


def make_pseudo_folder(data: ResolvedData, folder: Path, split: str = "train") -> Path:
    """A pseudo stage folder whose masks are the ground truth with 255 turned into background."""
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for image_id in data.layout.split_ids(split):
        mask = read_label_png(data.layout.mask_path(image_id)).copy()
        mask[mask == 255] = 0
        write_label_png(folder / "masks" / f"{image_id}.png", mask)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> SimpleNamespace:
    """One tiny segmenter run (1 epoch, flip + 2 scales at test time, CRF on), shared by several tests."""
    root = tmp_path_factory.mktemp("segmenter")
    run = root / "run"
    cfg = compose_config([TINY, *TINY_NET,
                          f"segmenter.pseudo_dir={root}/pseudo", "segmenter.eval.scales=[1.0,0.75]"], run, cache_dir)
    data = resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True))
    make_pseudo_folder(data, root / "pseudo")
    summary = train_segmenter(cfg, data)
    return SimpleNamespace(cfg=cfg, data=data, summary=summary, stage=run / "segmenter", root=root)


def numpy_miou(pred_dir: Path, data: ResolvedData, ids: list[str]) -> float:
    """mIoU over the classes that occur, 255 in the ground truth ignored, from the PNG files alone."""
    c = data.meta.num_classes
    conf = np.zeros((c, c), dtype=np.int64)
    for image_id in ids:
        gt = np.asarray(Image.open(data.layout.mask_path(image_id)), dtype=np.int64)
        pred = np.asarray(Image.open(pred_dir / f"{image_id}.png"), dtype=np.int64)
        valid = gt != 255
        conf += np.bincount(gt[valid] * c + pred[valid], minlength=c * c).reshape(c, c)
    tp = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


def test_stage_writes_every_output_and_scores_match_numpy(trained: SimpleNamespace) -> None:
    stage, data = trained.stage, trained.data
    manifest = read_manifest(stage)
    assert manifest is not None and manifest["stage"] == "segmenter"
    assert (stage / "checkpoints" / "last.ckpt").is_file() and (stage / "segmenter.ckpt").is_file()
    val_ids = data.layout.split_ids("val")
    for sub in (EVAL_DIR, EVAL_CRF_DIR):
        folder = stage / sub
        for name in ("metrics.json", "metrics.md", "per_class_iou.png"):
            assert (folder / name).is_file()
            assert (folder / name).stat().st_mtime_ns <= (stage / "manifest.json").stat().st_mtime_ns
        pngs = sorted(p.stem for p in (folder / "predictions").glob("*.png"))
        assert pngs == sorted(val_ids) and not list((folder / "predictions").glob(".tmp-*"))
        with Image.open(folder / "predictions" / f"{val_ids[0]}.png") as image:
            assert image.mode == "P" and image.size == (64, 64)
            assert np.array_equal(np.asarray(image.getpalette()[:30]).reshape(-1, 3), voc_palette()[:10])
        metrics = OmegaConf.to_container(OmegaConf.load(folder / "metrics.json"))
        reference = numpy_miou(folder / "predictions", data, val_ids)
        assert metrics["miou"] == pytest.approx(reference, abs=1e-12)
        assert manifest["eval"][sub]["miou"] == pytest.approx(reference, abs=1e-12)
        assert metrics["scales"] == [1.0, 0.75] and metrics["flip"] is True
    assert trained.summary["miou"] == manifest["eval"][EVAL_DIR]["miou"]
    assert trained.summary["miou_crf"] == manifest["eval"][EVAL_CRF_DIR]["miou"]
    crf = OmegaConf.to_container(OmegaConf.load(stage / EVAL_CRF_DIR / "metrics.json"))["crf"]
    assert crf == {"iterations": 10, "gaussian_sxy": 1.0, "gaussian_compat": 3.0, "bilateral_sxy": 67.0,
                   "bilateral_srgb": 3.0, "bilateral_compat": 4.0}  # spec §7 deeplab_test
    assert manifest["num_pseudo_masks"] == 48 and manifest["training"]["epochs"] == 1
    assert manifest["training"]["resumed_from"] is None
    assert "val/mIoU" in manifest["training"]["metrics"]


def test_completed_stage_is_skipped_and_eval_only_rerun(trained: SimpleNamespace) -> None:
    stage = trained.stage
    watched = [stage / "segmenter.ckpt", stage / "manifest.json", stage / EVAL_DIR / "metrics.json"]
    mtimes = [p.stat().st_mtime_ns for p in watched]
    assert train_segmenter(trained.cfg, trained.data) == trained.summary
    assert [p.stat().st_mtime_ns for p in watched] == mtimes
    # killed during the evaluation: the final checkpoint exists, no manifest -> only the evaluation reruns
    (stage / "manifest.json").unlink()
    shutil.rmtree(stage / EVAL_CRF_DIR)
    again = train_segmenter(trained.cfg, trained.data)
    assert (stage / "segmenter.ckpt").stat().st_mtime_ns == mtimes[0]
    assert again["miou"] == pytest.approx(trained.summary["miou"])
    assert again["miou_crf"] == pytest.approx(trained.summary["miou_crf"])
    assert read_manifest(stage)["training"]["resumed_from"] == str(stage / "segmenter.ckpt")


def test_final_checkpoint_reloads_without_the_initial_weights(trained: SimpleNamespace, tmp_path: Path) -> None:
    """The eval-only path rebuilds the network from segmenter.ckpt: ImageNet file and classifier may be gone."""
    blob = torch.load(trained.stage / "segmenter.ckpt", map_location="cpu", weights_only=False)
    hparams = blob["hyper_parameters"]
    hparams["backbone"] = {**hparams["backbone"], "pretrained": "file", "weights_path": str(tmp_path / "gone.pth")}
    hparams["backbone_init"] = str(tmp_path / "gone" / "classifier")
    torch.save(blob, tmp_path / "moved.ckpt")
    module = load_segmenter(tmp_path / "moved.ckpt")
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, blob["state_dict"][key])


def test_loss_falls_on_tiny_data(trained: SimpleNamespace, make_config) -> None:
    """Twenty SGD steps of the module's own training step and optimiser on augmented pseudo-mask batches."""
    cfg = make_config(*TINY_NET, f"segmenter.pseudo_dir={trained.root}/pseudo")
    data = trained.data
    datamodule = build_datamodule(cfg, data, trained.root / "pseudo" / "masks")
    datamodule.setup()
    module = build_module(cfg, data.meta.num_classes, list(data.meta.class_names))
    fixed = SegmentationDataset(data.layout, "train", datamodule.eval_transform, trained.root / "pseudo" / "masks")
    items = [fixed[i] for i in range(16)]
    images, masks = torch.stack([it["image"] for it in items]), torch.stack([it["mask"] for it in items])

    def loss() -> float:
        module.eval()
        with torch.no_grad():
            return module.compute_loss(images, masks).item()

    before = loss()
    module.train()
    module.trainer = SimpleNamespace(estimated_stepping_batches=20)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    module.log = lambda *args, **kwargs: None  # no trainer to log to
    torch.manual_seed(0)
    step = 0
    while step < 20:
        for batch in datamodule.train_dataloader():
            optimizer.zero_grad()
            module.training_step(batch, step).backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step == 20:
                break
    after = loss()
    print(f"segmenter loss {before:.4f} -> {after:.4f}")
    assert after < 0.7 * before
    assert scheduler.get_last_lr()[0] == 0.0  # poly schedule ran to its end


# ---------------------------------------------------------------------------------------- bad pseudo masks


def _missing(folder: Path, ids: list[str]) -> None:
    shutil.rmtree(folder)


def _empty(folder: Path, ids: list[str]) -> None:
    for path in (folder / "masks").glob("*.png"):
        path.unlink()


def _renamed(folder: Path, ids: list[str]) -> None:
    (folder / "masks" / f"{ids[3]}.png").rename(folder / "masks" / "2007_000032.png")


def _resized(folder: Path, ids: list[str]) -> None:
    write_label_png(folder / "masks" / f"{ids[5]}.png", np.zeros((40, 50), np.uint8))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_missing, r"segmenter\.pseudo_dir .*/pseudo: pseudo-mask folder not found"),
        (_empty, r"/pseudo/masks: pseudo-mask folder is empty"),
        (_renamed, r"/masks/syn_train_00004\.png: no pseudo mask for image 'syn_train_00004' of split 'train' "
                   r"\(1 of 48 images have none\); the folder holds e\.g\. '2007_000032\.png'"),
        (_resized, r"/masks/syn_train_00006\.png: pseudo mask size 50x40 differs from its image's 64x64"),
    ],
    ids=["missing", "empty", "name-mismatch", "size-mismatch"],
)
def test_bad_pseudo_masks_are_refused_before_training(damage, message: str, trained: SimpleNamespace,
                                                      make_config, tmp_path: Path) -> None:
    pseudo = make_pseudo_folder(trained.data, tmp_path / "pseudo")
    damage(pseudo, trained.data.layout.split_ids("train"))
    cfg = make_config(*TINY_NET, f"segmenter.pseudo_dir={pseudo}")
    with pytest.raises(DataError, match=message):
        train_segmenter(cfg, trained.data)
    assert not (Path(cfg.run_dir) / "segmenter" / "checkpoints").exists()  # nothing trained


def test_pseudo_mask_values_outside_the_classes_name_the_file(trained: SimpleNamespace, tmp_path: Path) -> None:
    pseudo = make_pseudo_folder(trained.data, tmp_path / "pseudo")
    ids = trained.data.layout.split_ids("train")
    write_label_png(pseudo / "masks" / f"{ids[0]}.png", np.full((64, 64), 40, np.uint8))
    datamodule = SegmenterDataModule(trained.data.layout, pseudo / "masks", 9, "train", "val", 8, 8, 0,
                                     {"scales": [1.0], "crop_size": 64}, 64)
    datamodule.setup()
    with pytest.raises(DataError, match=rf"{ids[0]}\.png: pseudo-mask values \[40\] are outside 0\.\.8 and 255"):
        datamodule.train_set[0]


def test_segmenter_builder_rejects_bad_settings() -> None:
    from vwl_lightning.modules.segmenter import SegmenterModule

    with pytest.raises(ConfigError, match=r"^segmenter\.backbone\.dilate=False: expected true"):
        SegmenterModule(3, **deeplab_nodes({"name": "resnet18", "dilate": False}))
    with pytest.raises(ConfigError, match=r"^segmenter\.backbone\.output_stride=32: expected 8 or 16"):
        SegmenterModule(3, **deeplab_nodes({"name": "resnet18", "output_stride": 32}))


@pytest.mark.parametrize(("override", "line"), [
    ("segmenter.aspp.rates=[0]", "segmenter.aspp.rates=[0]: expected a non-empty list of integers >= 1"),
    ("segmenter.aspp.rates=[]", "segmenter.aspp.rates=[]: expected a non-empty list of integers >= 1"),
    ("segmenter.aspp.init_std=0", "segmenter.aspp.init_std=0: expected a number > 0"),
    ("segmenter.msc.enabled=true", None),
    ("segmenter.msc.scales=[-0.5]", "segmenter.msc.scales=[-0.5]: expected a non-empty list of positive numbers"),
    ("segmenter.msc.resize=size", "segmenter.msc.resize='size': expected one of scale_factor, rounded_size"),
    ("segmenter.loss.resolution=pixels", "segmenter.loss.resolution='pixels': expected one of labels, logits"),
    ("segmenter.scheduler.power=-1", "segmenter.scheduler.power=-1: expected a number >= 0"),
    ("segmenter.groups.lr_mults.aspp_bias=0", "segmenter.groups.lr_mults.aspp_bias=0: expected a number > 0"),
    ("segmenter.optimizer.lr=-1", "segmenter.optimizer: Invalid learning rate: -1"),
])
def test_a_bad_value_is_one_line_naming_the_key(make_config, override: str, line: str | None) -> None:
    """Start-up (check_segmenter) and the module give the same one line, read from the classes."""
    from vwl_lightning.stages.train_segmenter import check_segmenter

    cfg = make_config(*TINY_NET, override)
    if line is None:
        check_segmenter(cfg)
        return
    for action in (lambda: check_segmenter(cfg), lambda: build_module(cfg, 9, ["x"] * 9)):
        with pytest.raises(ConfigError) as info:
            action()
        assert str(info.value).startswith(line) and "\n" not in str(info.value)


def test_load_from_checkpoint_needs_no_arguments(make_config, tmp_path: Path) -> None:
    """The module's nodes are its hyper-parameters: a saved SegmenterModule loads back as it was."""
    from vwl_lightning.modules.segmenter import SegmenterModule

    module = build_module(make_config(*TINY_NET), 9, [str(i) for i in range(9)])
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(module)
    path = tmp_path / "segmenter.ckpt"
    trainer.save_checkpoint(path, weights_only=True)
    loaded = SegmenterModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert loaded.hparams.aspp == module.hparams.aspp and loaded.groups.lr_grouping == "corrected"
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert load_segmenter(path).hparams.optimizer["lr"] == module.hparams.optimizer["lr"]
