"""BatchNorm folding for CAM inference (models/fold_batchnorm.py, docs/method.md §5.1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch import nn

from conftest import compose_config
from vwl_lightning.errors import ConfigError
from vwl_lightning.models.dilated_resnet import DilatedResNet, emanet_rates
from vwl_lightning.models.fold_batchnorm import fold_batchnorm
from vwl_lightning.modules.cam_predictor import CamPredictor
from vwl_lightning.stages.train_classifier import build_module


def randomise_batchnorms(model: nn.Module, seed: int) -> int:
    """Give every BatchNorm non-trivial statistics and affine parameters (a fresh one is the identity)."""
    g = torch.Generator().manual_seed(seed)
    count = 0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)
            count += 1
    return count


def test_folded_conv_matches_hand_formula() -> None:
    """W' = W·s, b' = (b − μ)·s + β with s = γ/√(σ²+ε), checked against NumPy on a conv with a bias."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=True), nn.BatchNorm2d(3, eps=1e-3))
    randomise_batchnorms(net, 1)
    folded, count = fold_batchnorm(net, lambda m, x: m(x), torch.randn(1, 2, 8, 8))
    assert count == 1 and isinstance(folded[1], nn.Identity)
    w, b = net[0].weight.detach().numpy().astype(np.float64), net[0].bias.detach().numpy().astype(np.float64)
    bn = net[1]
    mu, var = bn.running_mean.numpy().astype(np.float64), bn.running_var.numpy().astype(np.float64)
    gamma, beta = bn.weight.detach().numpy().astype(np.float64), bn.bias.detach().numpy().astype(np.float64)
    s = gamma / np.sqrt(var + 1e-3)
    np.testing.assert_allclose(folded[0].weight.detach().numpy(), w * s[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(folded[0].bias.detach().numpy(), (b - mu) * s + beta, rtol=1e-5, atol=1e-6)
    # the original is untouched (CAMs of other stages still see the trained network)
    assert isinstance(net[1], nn.BatchNorm2d)


def synthetic_classifier(tmp: Path) -> nn.Module:
    cfg = compose_config([], tmp / "run", tmp / "cache")
    torch.manual_seed(0)
    return build_module(cfg, 5, ["background", "a", "b", "c", "d", "e"]).model


@pytest.mark.parametrize("which", ["synthetic_classifier", "timm_resnet50", "deep_stem_dilated_resnet"])
def test_folding_keeps_outputs_and_folds_every_batchnorm(which: str, tmp_path: Path) -> None:
    """Every BatchNorm2d of the networks we run CAMs on folds, and the outputs agree to float32 rounding."""
    layers = (1, 2, 1, 2)
    net = {"synthetic_classifier": lambda: synthetic_classifier(tmp_path),
           "timm_resnet50": lambda: timm.create_model("resnet50", pretrained=False, num_classes=0),
           "deep_stem_dilated_resnet": lambda: DilatedResNet("deep", "3x3", emanet_rates(layers), layers=layers,
                                                             base_width=8, fixed_bn=True)}[which]()

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m.cam(x) if which == "synthetic_classifier" else m(x)

    total = randomise_batchnorms(net, 2)
    probe = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(3))
    folded, count = fold_batchnorm(net, forward, probe)
    assert count == total > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.inference_mode():
        ref, out = forward(net, probe), forward(folded, probe)
    assert float((ref - out).abs().max()) <= 1e-4 * float(ref.abs().max())


class MisnamedBlock(nn.Module):
    """``bn1`` normalises the block's input, not ``conv1``'s output: the naming rule would fold it wrongly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.bn1(x))


def test_a_wrong_pairing_is_refused_in_one_line() -> None:
    net = MisnamedBlock()
    randomise_batchnorms(net, 4)
    with pytest.raises(ConfigError, match="cam.fold_batchnorm=false"):
        fold_batchnorm(net, lambda m, x: m(x), torch.randn(1, 4, 8, 8))


def test_cam_predictor_with_folding_gives_the_same_cams(tmp_path: Path) -> None:
    net = synthetic_classifier(tmp_path)
    randomise_batchnorms(net, 5)
    images = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(6))
    plain = CamPredictor(net, [1.0, 0.5], True, "max", False, "tensor_bicubic")
    folded = CamPredictor(net, [1.0, 0.5], True, "max", False, "tensor_bicubic", fold_batchnorm=True)
    assert plain.folded_batchnorms == 0 and folded.folded_batchnorms > 0
    with torch.inference_mode():
        a, b = plain._cam(images), folded._cam(images)
    assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())
