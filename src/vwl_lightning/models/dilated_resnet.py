"""The two dilated ResNet trunks of the paper's best segmenter rows, built from their weight files' geometry.

Both have torchvision-style attribute names (``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1..4``; blocks
``conv1/bn1/conv2/bn2/conv3/bn3`` and ``downsample.{0,1}``) so that a state dict in either file's layout maps
onto them name for name:

* ``caffe`` (spec §12.3, the DeepLab caffe ResNet-101 of ``deeplabv1_resnet101-coco.pth``): a 7×7/2 stem conv,
  max-pool 3×3/2 with **padding 1 and ceil mode**, the stride of a stage on its first block's **1×1 reduce**
  conv (and the shortcut), dilation ``r`` = padding in **every** block of a dilated stage (layer3: 2,
  layer4: 4 at output stride 8).
* ``deep`` (spec §11.1, EMANet's PyTorch-Encoding ResNet-101): a deep stem of three 3×3 convs (3→w stride 2,
  w→w, w→2w; BN+ReLU after the first two, ``bn1`` + ReLU after the third), max-pool 3×3/2/1 in floor mode,
  the stride on the **3×3** conv, and the per-block rates of :func:`emanet_rates`.

Widths scale with ``base_width`` (64 in both files) and ``layers`` (3, 4, 23, 3 for ResNet-101), so the
embedded benchmark and the tests can build small trunks of the same geometry.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from vwl_lightning.errors import ConfigError
from vwl_lightning.models.frozen_bn import batchnorm_to_eval

STEMS = ("caffe", "deep")
STRIDE_ON = ("1x1", "3x3")
EXPANSION = 4


def caffe_rates(layers: Sequence[int], output_stride: int = 8) -> list[list[int]]:
    """Per-block dilation of the caffe DeepLab trunk (spec §12.3): one rate per dilated stage, every block.

    OS 8: layer3 = 2, layer4 = 4; OS 16: layer4 = 2."""
    stage = {8: (1, 1, 2, 4), 16: (1, 1, 1, 2)}[output_stride]
    return [[stage[i]] * n for i, n in enumerate(layers)]


def emanet_rates(layers: Sequence[int], output_stride: int = 8, grids: Sequence[int] = (1, 2, 4),
                 canonical: bool = False) -> list[list[int]]:
    """Per-block dilation of EMANet's trunk (spec §11.1).

    Official quirk: the first block of a stage of rate d uses 1 for d ∈ {1, 2} and 2 for d = 4; later blocks
    use d·grid[i] in the multi-grid stage (layer4) and d elsewhere.  OS 8 gives layer3 = (1, 2, 2, ...) and
    layer4 = (2, 8, 16); ``canonical=True`` gives layer3 = (2, ..., 2) and layer4 = (4, 8, 16).
    """
    stage = {8: (1, 1, 2, 4), 16: (1, 1, 1, 2)}[output_stride]
    out = []
    for i, (n, rate) in enumerate(zip(layers, stage, strict=True)):
        multi = list(grids) if i == 3 else [1] * n
        if len(multi) < n:
            multi = multi + [multi[-1]] * (n - len(multi))
        rates = [rate * multi[j] for j in range(n)]
        if not canonical:
            rates[0] = 1 if rate in (1, 2) else 2
        out.append(rates)
    return out


class Bottleneck(nn.Module):
    """1×1 → 3×3 (dilation d, padding d) → 1×1 (×4 channels), BN after each, ReLU after the first two and after
    the residual sum; the stride sits on the 1×1 (caffe) or the 3×3 (deep) conv."""

    def __init__(self, in_ch: int, mid: int, stride: int, dilation: int, stride_on: str,
                 bn_momentum: float) -> None:
        super().__init__()
        s1, s3 = (stride, 1) if stride_on == "1x1" else (1, stride)
        self.conv1 = nn.Conv2d(in_ch, mid, 1, stride=s1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=s3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(mid, momentum=bn_momentum)
        self.conv3 = nn.Conv2d(mid, mid * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid * EXPANSION, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != mid * EXPANSION:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, mid * EXPANSION, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(mid * EXPANSION, momentum=bn_momentum))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class DilatedResNet(nn.Module):
    """A bottleneck ResNet at output stride 8 or 16 with the geometry of one weight file (module docstring).

    Args:
        stem: ``caffe`` (7×7 conv, ceil-mode pad-1 pool) or ``deep`` (three 3×3 convs, floor pool).
        stride_on: ``1x1`` or ``3x3``: which conv of a stage's first block carries its stride.
        rates: per-stage lists of per-block dilations (:func:`caffe_rates`, :func:`emanet_rates`).
        layers: blocks per stage.
        base_width: channels of layer1's bottleneck (64); the stem of ``deep`` ends at 2·base_width.
        fixed_bn: every BatchNorm stays in eval mode through ``train()`` calls (spec §12.4).
        bn_momentum: PyTorch-convention BN momentum (caffe 0.001, EMANet 3e-4).
    """

    def __init__(self, stem: str, stride_on: str, rates: Sequence[Sequence[int]],
                 layers: Sequence[int] = (3, 4, 23, 3), base_width: int = 64, fixed_bn: bool = False,
                 bn_momentum: float = 0.1, output_stride: int = 8) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ConfigError(f"segmenter.backbone.stem must be one of {STEMS}, got {stem!r}")
        if stride_on not in STRIDE_ON:
            raise ConfigError(f"segmenter.backbone.stride_on must be one of {STRIDE_ON}, got {stride_on!r}")
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ConfigError(f"segmenter.backbone.layers must be 4 positive block counts, got {list(layers)}")
        if output_stride not in (8, 16):
            raise ConfigError(f"segmenter.backbone.output_stride must be 8 or 16, got {output_stride}")
        w = int(base_width)
        if stem == "caffe":
            self.conv1: nn.Module = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(w, momentum=bn_momentum)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
            in_ch = w
        else:
            self.conv1 = nn.Sequential(
                nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w, momentum=bn_momentum),
                nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w, momentum=bn_momentum),
                nn.ReLU(inplace=True),
                nn.Conv2d(w, 2 * w, 3, padding=1, bias=False))
            self.bn1 = nn.BatchNorm2d(2 * w, momentum=bn_momentum)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            in_ch = 2 * w
        self.relu = nn.ReLU(inplace=True)
        strides = (1, 2, 1, 1) if output_stride == 8 else (1, 2, 2, 1)
        for index, (n, stride) in enumerate(zip(layers, strides, strict=True)):
            mid = w * 2 ** index
            stage_rates = list(rates[index])
            if len(stage_rates) != int(n):
                raise ConfigError(f"segmenter.backbone: layer{index + 1} has {n} blocks but {len(stage_rates)} "
                                  f"dilation rates {stage_rates}")
            blocks = []
            for j in range(int(n)):
                blocks.append(Bottleneck(in_ch, mid, stride if j == 0 else 1, stage_rates[j], stride_on,
                                         bn_momentum))
                in_ch = mid * EXPANSION
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.out_channels = in_ch
        self.output_stride = output_stride
        self.fixed_bn = fixed_bn
        if fixed_bn:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    for parameter in module.parameters():
                        parameter.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> DilatedResNet:
        """Train/eval mode; with ``fixed_bn`` every BatchNorm stays in eval mode (spec §12.4)."""
        super().train(mode)
        if getattr(self, "fixed_bn", False):
            batchnorm_to_eval(self)
        return self

    def stages(self) -> list[nn.Module]:
        """``[conv1, bn1, relu, maxpool, layer1, ..., layer4]``: the forward order (EMANet's ``extractor``)."""
        return [self.conv1, self.bn1, self.relu, self.maxpool, self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x):
        for module in self.stages():
            x = module(x)
        return x


def block_dilations(stage: nn.Sequential) -> list[int]:
    """The dilation of each block's 3×3 conv, read from the modules."""
    return [int(block.conv2.dilation[0]) for block in stage]
