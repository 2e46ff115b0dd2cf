"""DeepLabV2: a dilated ResNet with an ASPP head and optional multi-scale inputs (spec §7).

* Trunk: :class:`~vwl_lightning.models.backbone.Backbone` with ``dilate=True`` (DeepLab-style dilated
  layer3/layer4; output stride 8 or 16).
* ASPP (DeepLabV2, not V3): four parallel 3×3 convolutions with dilation rates r ∈ {6, 12, 18, 24}, each
  mapping the trunk features F straight to class scores, **summed**:
  ``logits = Σ_r conv3x3_r(F)`` (each conv has its own bias; weights ~ N(0, init_std²), biases 0).
* MSC (multi-scale inputs, spec §7): the image x and its bilinear resizes ``x_s`` (s ∈ {0.5, 0.75}) go
  through the same network; the outputs are resized (bilinear) to the size of the full-scale output and
  fused by an element-wise **max**: ``logits_max = max(l_1, up(l_0.5), up(l_0.75))``.  In training the
  loss is averaged over ``[l_1, l_0.5, l_0.75, logits_max]`` (each at its own resolution, see
  :meth:`DeepLabV2.outputs`); at test time only ``logits_max`` is used.  ``x_s`` is made as the official
  deeplab-pytorch MSC makes it (:func:`resize_by_scale`): ``F.interpolate(x, scale_factor=s)``, bilinear,
  align_corners=False, so its size is ``floor(H·s) × floor(W·s)`` (321 → 160 and 240) and the sampling grid
  uses s itself (source coordinate ``(i + 0.5)/s − 0.5``).  ``MSC.resize=rounded_size`` keeps the former rule
  (``size=round(H·s)``, grid ``H/round(H·s)``) for before/after comparisons only.

Config (``segmenter.backbone`` / ``segmenter.aspp`` / ``segmenter.msc``, conf/segmenter/deeplabv2.yaml): the
trunk, :class:`ASPP` and :class:`MSC` are ``_target_`` nodes built by the module
(:class:`~vwl_lightning.modules.segmenter.SegmenterModule`), which puts them together as :class:`DeepLabV2`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vwl_lightning.models.caffe_deeplab import CaffeResNet, load_caffe_deeplab
from vwl_lightning.utils.instantiate import (
    ArgumentError,
    require_choice,
    require_int_list,
    require_number,
    require_positive_list,
)

ASPP_RATES = (6, 12, 18, 24)
MSC_SCALES = (0.5, 0.75)
MSC_RESIZES = ("scale_factor", "rounded_size")
OUTPUT_STRIDES = (8, 16)


class ASPP(nn.Module):
    """DeepLabV2 atrous spatial pyramid pooling: ``Σ_r conv3x3(F; dilation=r, padding=r)`` (spec §7).

    Each branch maps ``in_channels`` → ``num_classes`` directly; padding = rate keeps the spatial size.

    Args:
        in_channels: channels of the trunk's feature map (given by the module).
        num_classes: classes including background (given by the module).
        rates: dilation rates (spec: 6, 12, 18, 24).
        init_std: std of the weight initialisation N(0, init_std²); biases 0.
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = ASPP_RATES,
                 init_std: float = 0.01) -> None:
        require_number("num_classes", num_classes, 2, integer=True)
        self.check_arguments(rates, init_std)
        super().__init__()
        self.rates = tuple(int(r) for r in rates)
        self.init_std = float(init_std)
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=r, dilation=r, bias=True) for r in self.rates
        )
        self.reset_parameters()

    @classmethod
    def check_arguments(cls, rates: Sequence[int], init_std: float) -> None:
        require_int_list("rates", list(rates) if isinstance(rates, tuple) else rates, 1)
        require_number("init_std", init_std, 0, low_open=True)

    def reset_parameters(self) -> None:
        """Weights ~ N(0, init_std²), biases 0."""
        for conv in self.branches:
            nn.init.normal_(conv.weight, mean=0.0, std=self.init_std)
            nn.init.zeros_(conv.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](features)
        for conv in self.branches[1:]:
            out = out + conv(features)
        return out


def resize_by_scale(images: torch.Tensor, scale: float, rule: str = "scale_factor") -> torch.Tensor:
    """``images`` resized by ``scale`` (bilinear, align_corners=False), by one of :data:`MSC_RESIZES`.

    * ``scale_factor`` (the official deeplab-pytorch MSC, ``libs/models/msc.py``):
      ``F.interpolate(x, scale_factor=s)`` with ``recompute_scale_factor`` left at its default, so the output
      is ``floor(H·s) × floor(W·s)`` and output pixel i samples the source at ``(i + 0.5)/s − 0.5`` (clamped).
    * ``rounded_size`` (this package before issue 31): ``size=(round(H·s), round(W·s))`` (at least 1), sampled
      at ``(i + 0.5)·H/round(H·s) − 0.5``.  Kept only to measure the difference.

    Both give the same tensor whenever ``H·s`` and ``W·s`` are whole numbers (e.g. 112-pixel images at
    0.5 / 0.75 / 1.25 / 1.5).
    """
    require_choice("resize", rule, MSC_RESIZES)
    if rule == "scale_factor":
        return F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
    height, width = images.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


class MSC:
    """Multi-scale inputs (spec §7): the extra input scales of :meth:`DeepLabV2.outputs`.

    Args:
        enabled: MSC on (spec §7) or off (one input scale).
        scales: the extra input scales (spec: 0.5, 0.75).
        resize: how each input is resized (:func:`resize_by_scale`): ``scale_factor`` (the official code) |
            ``rounded_size`` (the former rule, for before/after comparisons).
    """

    def __init__(self, enabled: bool = True, scales: Sequence[float] = MSC_SCALES,
                 resize: str = "scale_factor") -> None:
        self.check_arguments(enabled, scales, resize)
        self.scales: tuple[float, ...] = tuple(float(s) for s in scales) if enabled else ()
        self.resize = resize

    @classmethod
    def check_arguments(cls, enabled: bool, scales: Sequence[float], resize: str = "scale_factor") -> None:
        if not isinstance(enabled, bool):
            raise ArgumentError("enabled", enabled, "true or false")
        require_positive_list("scales", list(scales) if isinstance(scales, tuple) else scales)
        require_choice("resize", resize, MSC_RESIZES)


class DeepLabV2(nn.Module):
    """Dilated trunk + ASPP, with optional MSC (module docstring; spec §7).

    Args:
        backbone: a dilated trunk (:class:`~vwl_lightning.models.backbone.Backbone` with ``dilate=True``, or
            :class:`~vwl_lightning.models.caffe_deeplab.CaffeResNet`) at output stride 8 or 16.
        aspp: the :class:`ASPP` head over ``backbone.out_channels``.
        msc_scales: extra input scales of MSC (spec: 0.5, 0.75); empty turns MSC off.
        msc_resize: how MSC resizes the input (:func:`resize_by_scale`; default: the official ``scale_factor``).

    A :class:`CaffeResNet` with a weight file is loaded here, after the ASPP exists: the caffe DeepLab file
    initialises the trunk and re-initialises the ASPP (spec §12.4, :func:`load_caffe_deeplab`).
    """

    def __init__(self, backbone: nn.Module, aspp: ASPP, msc_scales: Sequence[float] = (),
                 msc_resize: str = "scale_factor") -> None:
        super().__init__()
        output_stride = getattr(backbone, "output_stride", None)
        if output_stride not in OUTPUT_STRIDES:
            raise ArgumentError("output_stride", output_stride, "8 or 16 (DeepLab)")
        self.backbone = backbone
        self.aspp = aspp
        self.num_classes = aspp.branches[0].out_channels
        self.msc_scales = tuple(float(s) for s in msc_scales)
        require_choice("msc_resize", msc_resize, MSC_RESIZES)
        self.msc_resize = msc_resize
        if isinstance(backbone, CaffeResNet) and backbone.weights_to_load:
            load_caffe_deeplab(self, backbone.weights_to_load, init_std=aspp.init_std)

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def single_scale(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, ⌈H/os⌉, ⌈W/os⌉)`` of one input scale: ``ASPP(trunk(x))``."""
        return self.aspp(self.backbone(images))

    def outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every output the training loss averages over.

        Without MSC: ``[l_1]``.  With MSC: ``[l_1, l_s1, l_s2, ..., max(l_1, up(l_s1), ...)]`` where ``l_s``
        are the logits of the input resized by ``s`` (:func:`resize_by_scale`, bilinear) at their own
        resolution and ``up`` resizes them (bilinear, to a size) to the size of ``l_1``.
        """
        full = self.single_scale(images)
        if not self.msc_scales:
            return [full]
        pyramid = [self.single_scale(resize_by_scale(images, scale, self.msc_resize)) for scale in self.msc_scales]
        resized = [F.interpolate(p, size=full.shape[-2:], mode="bilinear", align_corners=False) for p in pyramid]
        fused = torch.stack([full, *resized]).amax(dim=0)
        return [full, *pyramid, fused]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Test-time logits at the output stride: ``l_1`` without MSC, the max-fused ``logits_max`` with."""
        return self.outputs(images)[-1]
