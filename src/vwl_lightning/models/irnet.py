"""IRNet's boundary branch over the five levels of a ResNet trunk (spec §10.4).

Levels: ``S1`` = stem (conv1, BN, ReLU, max-pool; stride 4), ``S2..S5`` = layer1..layer4.  For each level
``E_k = ReLU(Up_k(GN(Conv1×1(S_k → 32, no bias))))`` with GroupNorm(4, 32) and a bilinear
(align_corners=False) upsampling by ``stride_k / stride_2``, cropped top-left to the size of ``S2``; the
five maps are concatenated (160 channels) and ``Conv1×1(160 → 1)`` with bias gives the boundary logits
``Z`` at stride 4; the boundary map is ``B = σ(Z)``.

The trunk is a :class:`~vwl_lightning.models.backbone.Backbone`: a ResNet as in IRN, or (this project, for
the embedded benchmark's ImageNet choice) a timm EfficientNet, whose five levels are the outputs of its
stages 0, 1, 2, 4 and 6 (strides 2, 4, 8, 16, 16 at output stride 16: the last block of each resolution and
the last of all, as ResNet's stem and layer1..4 are).  A level finer than ``S2`` (EfficientNet's stride-2
stage 0) is average-pooled to ``S2``'s grid after its 1×1 conv and GroupNorm, where a coarser one is
upsampled.  ``frozen=True`` is IRN's
setting (spec §10.4): every level is detached, the trunk's parameters get no gradient, and it stays in eval
mode.  The displacement (instance) branch shares only the trunk (spec §10.4) and is not built; it would be
a second head reading the same ``levels(x)`` (``IRNet.displacement`` is the slot for it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vwl_lightning.errors import ConfigError
from vwl_lightning.models.backbone import RESNET_STAGES, Backbone
from vwl_lightning.utils.instantiate import ArgumentError, require_number

EFFICIENTNET_LEVELS = (0, 1, 2, 4, 6)  # timm EfficientNet stages whose outputs are S1..S5
BRANCH_CHANNELS = 32
GN_GROUPS = 4


class IRNet(nn.Module):
    """Boundary branch on a ResNet or EfficientNet :class:`Backbone`; ``forward`` returns the logits ``Z``
    ``(N, 1, h4, w4)``.

    Args:
        trunk: the :class:`Backbone` (``irn.backbone``, given by the module).
        frozen: IRN's frozen trunk (spec §10.4); the module sets it from ``irn.backbone_source``.
        branch_channels: channels of each level's 1×1 conv (spec §10.4: 32).
        gn_groups: GroupNorm groups (spec §10.4: 4); must divide ``branch_channels``.
    """

    def __init__(self, trunk: Backbone, frozen: bool = True, branch_channels: int = BRANCH_CHANNELS,
                 gn_groups: int = GN_GROUPS) -> None:
        self.check_arguments(branch_channels, gn_groups)
        super().__init__()
        blocks = getattr(getattr(trunk, "net", None), "blocks", None)
        if not trunk.is_resnet and not (isinstance(blocks, nn.Sequential) and len(blocks) == 7):
            raise ConfigError(f"irn.backbone: IRNet reads five levels of a ResNet (stem, layer1-4) or of a timm "
                              f"EfficientNet (stages {', '.join(map(str, EFFICIENTNET_LEVELS))}); {trunk.name} is "
                              f"neither")
        self.trunk = trunk
        self.frozen = frozen
        if frozen:
            for p in self.trunk.parameters():
                p.requires_grad_(False)
        channels, strides = self._probe()
        if strides[1] != 4:
            raise ConfigError(f"irn.backbone: layer1 of {trunk.name} has stride {strides[1]}, IRNet needs 4")
        self.level_strides = strides
        self.edge = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, branch_channels, 1, bias=False), nn.GroupNorm(gn_groups, branch_channels))
            for c in channels)
        self.edge_out = nn.Conv2d(branch_channels * len(channels), 1, 1, bias=True)
        self.displacement: nn.Module | None = None  # the instance path's branch (spec §10.4), not built

    @classmethod
    def check_arguments(cls, branch_channels: int, gn_groups: int) -> None:
        require_number("branch_channels", branch_channels, 1, integer=True)
        require_number("gn_groups", gn_groups, 1, integer=True)
        if branch_channels % gn_groups:
            raise ArgumentError("gn_groups", gn_groups, f"a divisor of branch_channels={branch_channels}")

    @torch.no_grad()
    def _probe(self) -> tuple[list[int], list[int]]:
        was = self.trunk.training
        self.trunk.eval()
        levels = self._levels(torch.zeros(1, 3, 64, 64))
        self.trunk.train(was)
        return [int(f.shape[1]) for f in levels], [64 // int(f.shape[-1]) for f in levels]

    def _levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        t = self.trunk
        if t.renorm is not None:
            x = t.renorm(x)
        if not t.is_resnet:
            net = t.net
            x = net.bn1(net.conv_stem(x))
            levels = []
            for index, stage in enumerate(net.blocks):
                x = stage(x)
                if index in EFFICIENTNET_LEVELS:
                    levels.append(x)
            return levels
        out = [t.stem(x)]
        for stage in RESNET_STAGES:
            out.append(getattr(t, stage)(out[-1]))
        return out

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``S1..S5``; detached when the trunk is frozen (spec §10.4)."""
        if self.frozen:
            with torch.no_grad():
                return [f.detach() for f in self._levels(x)]
        return self._levels(x)

    def train(self, mode: bool = True) -> IRNet:
        """A frozen trunk stays in eval mode (its BN uses stored statistics), as in IRN."""
        super().train(mode)
        if self.frozen:
            self.trunk.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = self.levels(x)
        size = levels[1].shape[-2:]
        maps = []
        for feat, head, stride in zip(levels, self.edge, self.level_strides, strict=True):
            e = head(feat)
            if stride > self.level_strides[1]:
                e = F.interpolate(e, scale_factor=stride // self.level_strides[1], mode="bilinear",
                                  align_corners=False)
            elif stride < self.level_strides[1]:
                e = F.avg_pool2d(e, self.level_strides[1] // stride, ceil_mode=True)
            maps.append(torch.relu(e)[..., : size[0], : size[1]])
        return self.edge_out(torch.cat(maps, 1))


def boundary_map(model: IRNet, images: torch.Tensor, pad_to: int | None = None) -> torch.Tensor:
    """Inference boundary ``B = σ((Z₀ + flip_W(Z₁))/2)`` on ``(⌈H/4⌉, ⌈W/4⌉)`` (spec §10.6 steps 1-2).

    In the spec's order: the normalised images ``(N, 3, H, W)`` are stacked with their horizontal flips, the
    stack is zero-padded right and bottom to ``pad_to`` (IRN: the 512 training crop; ``None``: no padding),
    the logits ``Z`` are cropped top-left to ``(h, w)``, and only then is the mirrored half flipped back.  So
    the mirrored image, like the image, starts at the canvas's left edge and meets its padding on the right.
    (Until issue 29 the padded canvas was flipped instead, putting the mirrored pass's padding on the left and
    shifting its stride-16/32 phase: up to 0.1 off in B wherever ``pad_to`` was set; without ``pad_to`` the
    two orders are the same.)  Returns ``(N, h, w)``.
    """
    n, _, height, width = images.shape
    x = torch.cat([images, images.flip(-1)], 0)  # step 1: the image stacked with its flip, ...
    if pad_to is not None:
        if height > pad_to or width > pad_to:
            raise ConfigError(f"irn.infer_pad: {height}x{width} images exceed the {pad_to} px padding size")
        x = F.pad(x, (0, pad_to - width, 0, pad_to - height))  # ... then padded right and bottom
    h, w = -(-height // 4), -(-width // 4)
    z = model(x)[:, 0, :h, :w]  # step 2: crop the logits to (h, w), then flip the mirrored half back
    return torch.sigmoid((z[:n] + z[n:].flip(-1)) / 2)
