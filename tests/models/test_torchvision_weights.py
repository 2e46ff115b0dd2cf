"""A torchvision ResNet-50 checkpoint loads into :class:`Backbone` (``pretrained=file``) and gives torchvision's
own features (spec §1: the reference code starts from torchvision's ImageNet ResNet weights).

No weights can be downloaded here, so the checkpoint is a seeded random initialisation with randomised
BatchNorm statistics and affine parameters (fresh BN is the identity, which would hide a BN mix-up).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet50

from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.models.backbone import Backbone

SEED = 0
ATOL = 1e-5


def torchvision_trunk(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's ResNet forward up to layer4 (no pooling, no fc)."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    torch.manual_seed(SEED)
    model = resnet50(weights=None)
    generator = torch.Generator().manual_seed(SEED + 1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    path = tmp_path_factory.mktemp("weights") / "resnet50-random.pth"
    torch.save(model.state_dict(), path)
    return path, model.eval()


def make_backbone(path: Path | None, output_stride: int = 32) -> Backbone:
    return Backbone(name="resnet50", output_stride=output_stride, fixed_bn=True, frozen=[], pretrained="file",
                    weights_path=None if path is None else str(path)).eval()


@pytest.fixture(scope="module")
def backbone32(checkpoint) -> Backbone:
    """One output-stride-32 backbone loaded from the checkpoint, shared (loading 100 MB takes a while)."""
    return make_backbone(checkpoint[0], 32)


def test_features_equal_torchvision_os32(checkpoint, backbone32) -> None:
    _, model = checkpoint
    backbone = backbone32.eval()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(SEED + 2))
    with torch.no_grad():
        ours, theirs = backbone(x), torchvision_trunk(model, x)
    assert ours.shape == theirs.shape == (1, 2048, 2, 3)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_features_equal_torchvision_os16_without_dilation(checkpoint) -> None:
    """Output stride 16 as the spec's network: layer4 keeps stride 1 and no dilation. torchvision puts a
    Bottleneck's stride in the 3×3 ``conv2`` and the 1×1 ``downsample`` conv of the stage's first block
    (ResNet v1.5, like timm), so setting those two strides to 1 by hand gives exactly that network;
    torchvision's ``replace_stride_with_dilation`` would dilate the 3×3 convs instead, which is not it."""
    path, _ = checkpoint
    reference = resnet50(weights=None)
    reference.load_state_dict(torch.load(path, weights_only=True))
    reference.eval()
    first = reference.layer4[0]
    first.conv2.stride = (1, 1)
    first.downsample[0].stride = (1, 1)
    assert all(m.dilation == (1, 1) for m in reference.modules() if isinstance(m, nn.Conv2d))
    backbone = make_backbone(path, 16)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(SEED + 3))
    with torch.no_grad():
        ours, theirs = backbone(x), torchvision_trunk(reference, x)
    assert ours.shape == theirs.shape == (1, 2048, 4, 4)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_fixed_bn_ignores_train_mode(checkpoint, backbone32) -> None:
    """FixedBatchNorm uses the checkpoint's running statistics even in train mode (spec §1)."""
    _, model = checkpoint
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(SEED + 4))
    try:
        with torch.no_grad():
            ours = backbone32.train()(x)
    finally:
        backbone32.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours, torchvision_trunk(model, x), atol=ATOL, rtol=0)


def test_sha256_of_the_weights(checkpoint, backbone32) -> None:
    path, _ = checkpoint
    assert backbone32.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_missing_and_bad_weight_files(tmp_path: Path) -> None:
    missing = tmp_path / "resnet50-0676ba61.pth"
    with pytest.raises(DataError, match=str(missing)):
        make_backbone(missing)
    bad = tmp_path / "not-a-checkpoint.pth"
    bad.write_text("<html>403 Forbidden</html>")  # what a failed download often leaves
    with pytest.raises(DataError, match=f"{bad}: cannot read as a PyTorch state dict"):
        make_backbone(bad)
    unrelated = tmp_path / "detector.pth"
    torch.save({"model": {"backbone.body.conv1.weight": torch.zeros(1)}}, unrelated)
    with pytest.raises(DataError, match=f"{unrelated}: does not match"):
        make_backbone(unrelated)


def test_checkpoint_of_another_depth_names_the_file(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    other = tmp_path / "resnet18-f37072fd.pth"
    torch.save(resnet18(weights=None).state_dict(), other)
    with pytest.raises(DataError, match=str(other)):
        make_backbone(other)


def test_file_without_path_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="weights_path"):
        make_backbone(None)
