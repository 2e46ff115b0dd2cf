"""The caffe-converted DeepLab init (spec §12.7) on fabricated files in the real deeplab-pytorch key layout:
the 626-tensor ResNet-101 file (random values, float64 running stats, int64 num_batches_tracked, the 91-way
fc), the old prefixes, the geometry read from the modules, frozen BN through a Lightning step, the input
convention (mean colour → 0, conv1 flipped exactly once), the LR groups, MSC, and the name round trip."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fixtures_segmenters import build_deeplab, deeplab_nodes
from vwl_lightning.data.transforms import normalise
from vwl_lightning.errors import DataError
from vwl_lightning.models.caffe_deeplab import (
    CAFFE_MEAN_RGB,
    build_caffe_trunk,
    caffe_input_norm,
    caffe_to_torchvision,
    load_caffe_deeplab,
    torchvision_to_caffe,
)
from vwl_lightning.models.deeplab import ASPP, DeepLabV2, resize_by_scale
from vwl_lightning.models.dilated_resnet import block_dilations

pytestmark = pytest.mark.usefixtures("one_thread")

R101 = (3, 4, 23, 3)
SMALL = {"layers": [1, 2, 2, 1], "base_width": 8}
BRANCH_CH = (("reduce", "mid", "in"), ("conv3x3", "mid", "mid"), ("increase", "out", "mid"))


def fabricate_caffe_state(layers=R101, width: int = 64, num_fc: int = 91, seed: int = 0,
                          empty: bool = False) -> dict[str, torch.Tensor]:
    """A state dict in deeplab-pytorch's ``DeepLabV1_ResNet101`` layout (spec §12.3), built from the names
    and shapes written out here (not from our model): conv weights float32, BN weight/bias float32, running
    stats float64, num_batches_tracked int64 0."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, dtype=torch.float32) -> torch.Tensor:
        if empty:
            return torch.empty(shape, dtype=dtype).uniform_(0.5, 1.5, generator=gen)
        return torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype) + 0.5

    sd: dict[str, torch.Tensor] = {}

    def conv_bn(prefix: str, out_ch: int, in_ch: int, k: int) -> None:
        sd[f"{prefix}.conv.weight"] = rand(out_ch, in_ch, k, k)
        sd[f"{prefix}.bn.weight"] = rand(out_ch)
        sd[f"{prefix}.bn.bias"] = rand(out_ch)
        sd[f"{prefix}.bn.running_mean"] = rand(out_ch, dtype=torch.float64)
        sd[f"{prefix}.bn.running_var"] = rand(out_ch, dtype=torch.float64)
        sd[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.int64)

    conv_bn("layer1.conv1", width, 3, 7)
    in_ch = width
    for stage, n in enumerate(layers, start=2):
        mid = width * 2 ** (stage - 2)
        out = mid * 4
        for block in range(1, n + 1):
            chans = {"in": in_ch, "mid": mid, "out": out}
            for branch, o, i in BRANCH_CH:
                conv_bn(f"layer{stage}.block{block}.{branch}", chans[o], chans[i], 3 if branch == "conv3x3" else 1)
            if block == 1:
                conv_bn(f"layer{stage}.block1.shortcut", out, in_ch, 1)
            in_ch = out
    sd["fc.weight"] = rand(num_fc, in_ch, 1, 1)
    sd["fc.bias"] = rand(num_fc)
    return sd


def caffe_deeplab(layers=R101, width: int = 64, num_classes: int = 21) -> DeepLabV2:
    """DeepLabV2 on the caffe trunk; built on the meta device and materialised uninitialised (the loader
    overwrites every trunk tensor and initialises the ASPP), so ResNet-101 costs no random init."""
    with torch.device("meta"):
        trunk = build_caffe_trunk(8, True, layers, width)
        model = DeepLabV2(trunk, ASPP(trunk.out_channels, num_classes), msc_scales=())
    return model.to_empty(device="cpu")


@pytest.fixture(scope="module")
def r101_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = fabricate_caffe_state(empty=True)
    path = tmp_path_factory.mktemp("caffe") / "deeplabv1_resnet101-coco.pth"
    torch.save(state, path)
    return path, state


def check_copied(model: DeepLabV2, state: dict[str, torch.Tensor]) -> None:
    own = model.backbone.state_dict()
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        target = own[caffe_to_torchvision(key)]
        expected = value.to(target.dtype)
        if key == "layer1.conv1.conv.weight":
            expected = expected[:, [2, 1, 0]]
        assert torch.equal(target, expected), key


# --------------------------------------------------------------------------------------------- loading


def test_626_tensor_file_fills_every_trunk_tensor(r101_file, caplog: pytest.LogCaptureFixture) -> None:
    path, state = r101_file
    assert len(state) == 626
    assert state["layer4.block23.increase.bn.running_var"].dtype == torch.float64
    assert state["layer3.block1.reduce.conv.weight"].shape == (128, 256, 1, 1)
    assert state["layer5.block3.increase.conv.weight"].shape == (2048, 512, 1, 1)
    model = caffe_deeplab()
    with caplog.at_level(logging.INFO, logger="vwl_lightning.models.caffe_deeplab"):
        report = load_caffe_deeplab(model, path)
    assert len(report.loaded) == 624 == len(model.backbone.state_dict())
    assert sorted(report.ignored) == ["fc.bias", "fc.weight"]
    assert sorted(report.initialised) == sorted(f"aspp.branches.{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    check_copied(model, state)
    for conv in model.aspp.branches:
        assert conv.weight.shape == (21, 2048, 3, 3)
        assert torch.all(conv.bias == 0)
        assert abs(conv.weight.std().item() - 0.01) < 5e-4 and abs(conv.weight.mean().item()) < 5e-4
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "loaded 624" in lines[0] and "ignored 2" in lines[0] and "initialised 8" in lines[0]
    assert report.sha256 in lines[0] and len(report.sha256) == 64


@pytest.mark.parametrize("variant", ["base.", "module.", "scale.", "module.base.", "proj"])
def test_old_prefixes_and_proj_load_identically(variant: str, tmp_path: Path) -> None:
    state = fabricate_caffe_state(SMALL["layers"], SMALL["base_width"], seed=3)
    if variant == "proj":
        renamed = {k.replace(".shortcut.", ".proj."): v for k, v in state.items()}
        assert any(".proj." in k for k in renamed)
    else:
        renamed = {variant + k: v for k, v in state.items()}
    if variant == "scale.":  # the Jan 2019 snapshot: scale. prefix, proj and no fc
        renamed = {"scale." + k.replace(".shortcut.", ".proj."): v for k, v in state.items() if not k.startswith("fc.")}
    plain, old = tmp_path / "plain.pth", tmp_path / "old.pth"
    torch.save(state, plain)
    torch.save(renamed, old)
    a, b = caffe_deeplab(SMALL["layers"], SMALL["base_width"]), caffe_deeplab(SMALL["layers"], SMALL["base_width"])
    load_caffe_deeplab(a, plain)
    load_caffe_deeplab(b, old)
    for (key, x), y in zip(a.backbone.state_dict().items(), b.backbone.state_dict().values(), strict=True):
        assert torch.equal(x, y), key
    check_copied(b, state)


def test_mismatch_names_the_file_and_the_key(tmp_path: Path) -> None:
    state = fabricate_caffe_state(SMALL["layers"], SMALL["base_width"])
    model = caffe_deeplab(SMALL["layers"], SMALL["base_width"])
    broken = dict(state)
    del broken["layer3.block2.conv3x3.bn.running_var"]
    torch.save(broken, tmp_path / "missing.pth")
    with pytest.raises(DataError, match=r"missing\.pth: missing key 'layer3\.block2\.conv3x3\.bn\.running_var'"):
        load_caffe_deeplab(model, tmp_path / "missing.pth")
    shaped = dict(state)
    shaped["layer2.block1.reduce.conv.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(shaped, tmp_path / "shape.pth")
    with pytest.raises(DataError, match=r"shape\.pth: key 'layer2\.block1\.reduce\.conv\.weight' has shape"):
        load_caffe_deeplab(model, tmp_path / "shape.pth")
    extra = {**state, "layer6.block1.reduce.conv.weight": torch.zeros(1)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(DataError, match=r"extra\.pth: unexpected key 'layer6\.block1\.reduce\.conv\.weight'"):
        load_caffe_deeplab(model, tmp_path / "extra.pth")


# -------------------------------------------------------------------------------------------- geometry


def test_geometry_read_from_the_modules() -> None:
    with torch.device("meta"):
        trunk = build_caffe_trunk()
    first = trunk.layer2[0]  # deeplab-pytorch layer3.block1
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1) and first.downsample[0].stride == (2, 2)
    assert block_dilations(trunk.layer3) == [2] * 23 and block_dilations(trunk.layer4) == [4] * 3
    for block in [*trunk.layer3, *trunk.layer4]:
        assert block.conv2.padding == block.conv2.dilation
        assert block.conv1.stride == (1, 1) and block.conv2.stride == (1, 1)
    assert trunk.maxpool.ceil_mode is True and trunk.maxpool.padding == 1 and trunk.maxpool.kernel_size == 3
    assert trunk.conv1.kernel_size == (7, 7) and trunk.conv1.stride == (2, 2) and trunk.conv1.padding == (3, 3)
    small = build_caffe_trunk(8, True, SMALL["layers"], SMALL["base_width"]).eval()
    with torch.no_grad():
        assert small(torch.zeros(1, 3, 321, 321)).shape[-2:] == (41, 41)
        assert small(torch.zeros(1, 3, 513, 513)).shape[-2:] == (65, 65)


def test_name_round_trip_is_lossless_and_stride_sits_on_the_1x1() -> None:
    names = [k for k in fabricate_caffe_state(empty=True) if not k.startswith("fc.")]
    assert len(names) == 624
    mapped = [caffe_to_torchvision(k) for k in names]
    assert len(set(mapped)) == 624 and all(m is not None for m in mapped)
    assert [torchvision_to_caffe(m) for m in mapped] == names
    with torch.device("meta"):
        trunk = build_caffe_trunk()
    assert set(mapped) == set(trunk.state_dict())
    assert caffe_to_torchvision("layer4.block23.increase.bn.running_var") == "layer3.22.bn3.running_var"
    assert caffe_to_torchvision("layer2.block1.shortcut.conv.weight") == "layer1.0.downsample.0.weight"
    assert trunk.get_submodule(caffe_to_torchvision("layer3.block1.reduce.conv.weight")[:-7]).stride == (2, 2)


# ------------------------------------------------------------------------------------- training behaviour


class OneStep(pl.LightningDataModule):
    def __init__(self, size: int = 33) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.items = [{"image": torch.randn(3, size, size, generator=gen) * 50,
                       "mask": torch.randint(0, 21, (size, size), generator=gen)} for _ in range(2)]

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.items, batch_size=2)


def small_caffe_module(tmp_path: Path):
    from vwl_lightning.modules.segmenter import SegmenterModule

    state = fabricate_caffe_state(SMALL["layers"], SMALL["base_width"], seed=5)
    torch.save(state, tmp_path / "coco.pth")
    backbone = {"name": "caffe_resnet101", "output_stride": 8, "fixed_bn": True, "pretrained": "file",
                "weights_path": str(tmp_path / "coco.pth"), "model_kwargs": SMALL}
    groups = {"lr_grouping": "corrected", "lr_mults": {"backbone": 1.0, "aspp_weight": 10.0, "aspp_bias": 20.0},
              "aspp_bias_weight_decay": 0.0, "train_bn": False}
    module = SegmenterModule(21, **deeplab_nodes(backbone, {"rates": [6, 12, 18, 24], "init_std": 0.01},
                                                 {"enabled": True}, "logits", groups=groups))
    return module, state


def test_frozen_bn_survives_a_lightning_training_step(tmp_path: Path) -> None:
    module, state = small_caffe_module(tmp_path)
    before = {k: v.clone() for k, v in module.model.backbone.state_dict().items()}
    conv_before = module.model.backbone.layer1[0].conv1.weight.detach().clone()
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=OneStep())
    assert trainer.global_step == 1
    bns = [m for m in module.model.backbone.modules() if isinstance(m, _BatchNorm)]
    assert len(bns) == 1 + 3 * 6 + 4 and all(not m.training for m in bns)
    after = module.model.backbone.state_dict()
    for key, value in before.items():
        if ".bn" in key or key.startswith("bn1") or "downsample.1" in key:
            assert torch.equal(after[key], value), key
    assert not torch.equal(module.model.backbone.layer1[0].conv1.weight, conv_before)  # the convs did train
    in_optimizer = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for m in bns for p in m.parameters())
    check_copied_bn = {k: v for k, v in state.items() if ".bn." in k}
    own = module.model.backbone.state_dict()
    for key, value in check_copied_bn.items():
        assert torch.equal(own[caffe_to_torchvision(key)], value.to(own[caffe_to_torchvision(key)].dtype)), key


def test_param_groups_trunk_1x_aspp_10x_and_20x(tmp_path: Path) -> None:
    from vwl_lightning.modules.optim import make_optimizer
    from vwl_lightning.utils.instantiate import build

    module, _ = small_caffe_module(tmp_path)
    optimizer = make_optimizer(build(module.hparams.optimizer, "segmenter.optimizer"), module.groups(module.model))
    groups = {g["name"]: g for g in optimizer.param_groups}
    trunk_convs = [m.weight for m in module.model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert {id(p) for p in groups["backbone"]["params"]} == {id(p) for p in trunk_convs}
    assert groups["backbone"]["lr"] == pytest.approx(1e-3) and groups["backbone"]["weight_decay"] == 5e-4
    assert groups["aspp_weight"]["lr"] == pytest.approx(1e-2) and groups["aspp_weight"]["weight_decay"] == 5e-4
    assert groups["aspp_bias"]["lr"] == pytest.approx(2e-2) and groups["aspp_bias"]["weight_decay"] == 0.0
    assert len(groups["aspp_weight"]["params"]) == len(groups["aspp_bias"]["params"]) == 4


# --------------------------------------------------------------------------------------- input convention


def test_mean_colour_becomes_zero_and_conv1_is_flipped_exactly_once(tmp_path: Path) -> None:
    norm = caffe_input_norm()
    image = np.broadcast_to(np.asarray(CAFFE_MEAN_RGB, np.float32), (5, 7, 3)).copy()
    np.testing.assert_allclose(normalise(image, norm["mean"], norm["std"]), 0.0, atol=2e-5)
    pixel = np.asarray([[[10.0, 200.0, 30.0]]], np.float32)  # RGB, 0-255
    np.testing.assert_allclose(normalise(pixel, norm["mean"], norm["std"])[0, 0],
                               np.asarray([10.0, 200.0, 30.0]) - np.asarray(CAFFE_MEAN_RGB), atol=1e-3)
    state = fabricate_caffe_state(SMALL["layers"], SMALL["base_width"], seed=7)
    torch.save(state, tmp_path / "w.pth")
    model = caffe_deeplab(SMALL["layers"], SMALL["base_width"])
    bgr_weight = state["layer1.conv1.conv.weight"]
    for _ in range(2):  # loading twice must not flip twice
        load_caffe_deeplab(model, tmp_path / "w.pth")
        assert torch.equal(model.backbone.conv1.weight, bgr_weight[:, [2, 1, 0]])
    rgb = torch.randn(1, 3, 9, 9)
    torch.testing.assert_close(model.backbone.conv1(rgb), F.conv2d(rgb[:, [2, 1, 0]], bgr_weight, stride=2, padding=3))


def test_stage_uses_the_weight_files_convention(make_config) -> None:
    from vwl_lightning.stages.train_segmenter import input_norm

    caffe = make_config("segmenter=deeplabv2_caffe", "segmenter.backbone.pretrained=none")
    assert input_norm(caffe) == caffe_input_norm()
    imagenet = make_config("segmenter=deeplabv2", "segmenter.backbone.pretrained=none")
    assert input_norm(imagenet) == {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def test_msc_returns_four_maps_and_eval_fuses_by_max() -> None:
    model = build_deeplab(5, {"name": "caffe_resnet101", "pretrained": "none", "model_kwargs": SMALL},
                          {"rates": [1, 2, 3, 4]}, {"enabled": True, "scales": [0.5, 0.75]}).eval()
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        outs = model.outputs(x)
        assert [tuple(o.shape[-2:]) for o in outs] == [(9, 9), (5, 5), (7, 7), (9, 9)]
        ups = [F.interpolate(o, size=(9, 9), mode="bilinear", align_corners=False) for o in outs[1:3]]
        torch.testing.assert_close(model(x), torch.maximum(outs[0], torch.maximum(*ups)))


def official_msc_resize(x: np.ndarray, scale: float) -> np.ndarray:
    """The official MSC's input resize, ``F.interpolate(x, scale_factor=s, mode="bilinear",
    align_corners=False)`` (deeplab-pytorch ``libs/models/msc.py``), written out in float64 from PyTorch's rule
    for a given, not recomputed, scale factor: the output is ``floor(n·s)`` pixels, output pixel i reads the
    source at ``(i + 0.5)/s − 0.5`` clamped below at 0, between pixels ``floor`` and ``floor + 1`` (the last
    pixel repeated)."""

    def axis(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(int(np.floor(n * scale))) + 0.5) / scale - 0.5, 0.0)
        low = np.floor(src).astype(int)
        high = np.minimum(low + 1, n - 1)
        return low, high, src - low

    y0, y1, wy = axis(x.shape[-2])
    x0, x1, wx = axis(x.shape[-1])
    rows = x[..., y0, :] * (1 - wy)[:, None] + x[..., y1, :] * wy[:, None]
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx


def test_msc_branches_at_321_have_the_official_sizes_and_grid() -> None:
    """321 → 160² and 240² (not 241²), sampled on the official grid (0.5: source 2i + 0.5, not 321/160·(i + 0.5)
    − 0.5).  Tolerance: PyTorch works out the source coordinate in float32 (1/0.75 is not exact, and near 320
    the coordinate's ulp is 3e-5), so with pixels in [0, 1) a weight error of ~4e-5 is float rounding; the
    former rule is off by > 0.3."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 321, 321)
    for scale, side in ((0.5, 160), (0.75, 240)):
        ours = resize_by_scale(x, scale)
        assert tuple(ours.shape[-2:]) == (side, side)
        official = official_msc_resize(x.double().numpy(), scale)
        np.testing.assert_allclose(ours.double().numpy(), official, rtol=0, atol=1e-4)
        former = resize_by_scale(x, scale, "rounded_size").double().numpy()
        assert np.abs(former[..., :side, :side] - official).max() > 0.3
    assert tuple(resize_by_scale(x, 0.75, "rounded_size").shape[-2:]) == (241, 241)
    assert tuple(resize_by_scale(x, 0.5, "rounded_size").shape[-2:]) == (160, 160)  # same size, another grid


def test_msc_output_at_321_equals_the_official_formula() -> None:
    """The network's MSC outputs are the official MSC's: bit for bit the official call (same trunk and ASPP on
    ``F.interpolate(x, scale_factor=s)``), and to float rounding the float64 formula above (measured 9e-8 on
    logits of size ~0.01)."""
    torch.manual_seed(0)
    model = build_deeplab(5, {"name": "caffe_resnet101", "pretrained": "none", "model_kwargs": SMALL},
                          {"rates": [6, 12, 18, 24]}, {"enabled": True, "scales": [0.5, 0.75]}).eval()
    x = torch.rand(1, 3, 321, 321)
    with torch.no_grad():
        outs = model.outputs(x)
        assert [tuple(o.shape[-2:]) for o in outs] == [(41, 41), (21, 21), (31, 31), (41, 41)]
        for ours, scale in zip(outs[1:3], (0.5, 0.75), strict=True):
            call = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            assert torch.equal(ours, model.single_scale(call))
        branches = [model.single_scale(torch.from_numpy(official_msc_resize(x.double().numpy(), s)).float())
                    for s in (0.5, 0.75)]
        for ours, official in zip(outs[1:3], branches, strict=True):
            torch.testing.assert_close(ours, official, rtol=1e-4, atol=1e-6)
        ups = [F.interpolate(b, size=(41, 41), mode="bilinear", align_corners=False) for b in branches]
        official_max = torch.maximum(outs[0], torch.maximum(*ups))
        torch.testing.assert_close(outs[3], official_max, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(model(x), official_max, rtol=1e-4, atol=1e-6)


def test_the_two_rules_agree_where_the_sizes_are_whole() -> None:
    """The embedded benchmark's 112 px crops and val images at MSC's and the test-time scales: H·s is whole, so
    the former rule gave the very same tensors (docs/studies/segmenter.md); 113 px does not."""
    x = torch.rand(2, 3, 112, 112)
    for scale in (0.5, 0.75, 1.25, 1.5):
        assert torch.equal(resize_by_scale(x, scale), resize_by_scale(x, scale, "rounded_size"))
    odd = torch.rand(1, 3, 113, 113)
    assert not torch.equal(resize_by_scale(odd, 0.5), resize_by_scale(odd, 0.5, "rounded_size"))
