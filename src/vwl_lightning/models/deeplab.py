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
  :meth:`DeepLabV2.outputs`); at test time only ``logits_max`` is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vwl_lightning.errors import ConfigError
from vwl_lightning.models.backbone import Backbone
from vwl_lightning.models.caffe_deeplab import CAFFE_BACKBONE, build_caffe_trunk, check_caffe_kwargs, load_caffe_deeplab

ASPP_RATES = (6, 12, 18, 24)
MSC_SCALES = (0.5, 0.75)


class ASPP(nn.Module):
    """DeepLabV2 atrous spatial pyramid pooling: ``Σ_r conv3x3(F; dilation=r, padding=r)`` (spec §7).

    Each branch maps ``in_channels`` → ``num_classes`` directly; padding = rate keeps the spatial size.
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = ASPP_RATES,
                 init_std: float = 0.01) -> None:
        super().__init__()
        rates = tuple(int(r) for r in rates)
        if not rates or any(r < 1 for r in rates):
            raise ConfigError(f"segmenter.aspp.rates must be a non-empty list of positive integers, got {list(rates)}")
        if init_std <= 0:
            raise ConfigError(f"segmenter.aspp.init_std must be > 0, got {init_std}")
        self.rates = rates
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=r, dilation=r, bias=True) for r in rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, mean=0.0, std=init_std)
            nn.init.zeros_(conv.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](features)
        for conv in self.branches[1:]:
            out = out + conv(features)
        return out


class DeepLabV2(nn.Module):
    """Dilated ResNet + ASPP, with optional MSC (module docstring; spec §7).

    Args:
        backbone: a dilated :class:`Backbone` (``dilate=True``).
        num_classes: classes including background.
        rates: ASPP dilation rates (spec: 6, 12, 18, 24).
        init_std: std of the ASPP weight initialisation.
        msc_scales: extra input scales of MSC (spec: 0.5, 0.75); empty or ``None`` turns MSC off.
    """

    def __init__(self, backbone: Backbone, num_classes: int, rates: Sequence[int] = ASPP_RATES,
                 init_std: float = 0.01, msc_scales: Sequence[float] | None = MSC_SCALES) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"DeepLabV2 needs at least 2 classes (background + 1), got {num_classes}")
        scales = tuple(float(s) for s in (msc_scales or ()))
        if any(s <= 0 for s in scales):
            raise ConfigError(f"segmenter.msc.scales must be positive, got {list(scales)}")
        self.backbone = backbone
        self.aspp = ASPP(backbone.out_channels, num_classes, rates, init_std)
        self.num_classes = num_classes
        self.msc_scales = scales

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def single_scale(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, ⌈H/os⌉, ⌈W/os⌉)`` of one input scale: ``ASPP(trunk(x))``."""
        return self.aspp(self.backbone(images))

    def outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every output the training loss averages over.

        Without MSC: ``[l_1]``.  With MSC: ``[l_1, l_s1, l_s2, ..., max(l_1, up(l_s1), ...)]`` where ``l_s``
        are the logits of the input resized by ``s`` (bilinear) at their own resolution and ``up`` resizes
        them to the size of ``l_1``.
        """
        full = self.single_scale(images)
        if not self.msc_scales:
            return [full]
        height, width = images.shape[-2:]
        pyramid = []
        for scale in self.msc_scales:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            pyramid.append(self.single_scale(scaled))
        resized = [F.interpolate(p, size=full.shape[-2:], mode="bilinear", align_corners=False) for p in pyramid]
        fused = torch.stack([full, *resized]).amax(dim=0)
        return [full, *pyramid, fused]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Test-time logits at the output stride: ``l_1`` without MSC, the max-fused ``logits_max`` with."""
        return self.outputs(images)[-1]


def build_deeplab(num_classes: int, backbone: dict, aspp: dict, msc: dict) -> DeepLabV2:
    """DeepLabV2 from the ``segmenter`` config (``backbone`` is passed to :class:`Backbone` with
    ``dilate=True``, or names :data:`CAFFE_BACKBONE`, the caffe DeepLab trunk (spec §12); ``aspp``: ``rates``,
    ``init_std``; ``msc``: ``enabled``, ``scales``)."""
    kwargs = dict(backbone)
    if kwargs.get("name") == CAFFE_BACKBONE:
        return build_caffe_deeplab(num_classes, kwargs, aspp, msc)
    if kwargs.pop("dilate", True) is not True:
        raise ConfigError("segmenter.backbone.dilate must be true: DeepLabV2 uses the dilated trunk (spec §7)")
    kwargs.setdefault("detach_after", None)
    if kwargs.get("pretrained") == "file" and not kwargs.get("weights_path"):
        raise ConfigError("segmenter.backbone.pretrained=file needs segmenter.backbone.weights_path: a local "
                          "timm/torchvision ResNet checkpoint (ImageNet init), or set pretrained=none")
    if kwargs.get("output_stride", 8) not in (8, 16):
        raise ConfigError(f"segmenter.backbone.output_stride must be 8 or 16 (DeepLab), got {kwargs['output_stride']}")
    trunk = Backbone(dilate=True, **kwargs)
    scales = tuple(msc.get("scales", MSC_SCALES)) if bool(msc.get("enabled", False)) else ()
    return DeepLabV2(trunk, num_classes, rates=tuple(aspp.get("rates", ASPP_RATES)),
                     init_std=float(aspp.get("init_std", 0.01)), msc_scales=scales)


def build_caffe_deeplab(num_classes: int, backbone: dict, aspp: dict, msc: dict) -> DeepLabV2:
    """DeepLabV2 on the caffe DeepLab ResNet trunk (spec §12.3), its BN frozen (spec §12.4), initialised from
    ``backbone.weights_path`` when ``backbone.pretrained=file`` (not inside ``weights_from_checkpoint``)."""
    from vwl_lightning.models import backbone as backbone_module

    geometry = check_caffe_kwargs(backbone)
    if backbone.get("output_stride", 8) not in (8, 16):
        raise ConfigError(f"segmenter.backbone.output_stride must be 8 or 16 (DeepLab), "
                          f"got {backbone['output_stride']}")
    if backbone.get("fixed_bn", True) is not True:
        raise ConfigError(f"segmenter.backbone.fixed_bn must be true for {CAFFE_BACKBONE}: DeepLab freezes BN "
                          f"(spec §12.4)")
    trunk = build_caffe_trunk(int(backbone.get("output_stride", 8)), fixed_bn=True, **geometry)
    scales = tuple(msc.get("scales", MSC_SCALES)) if bool(msc.get("enabled", False)) else ()
    init_std = float(aspp.get("init_std", 0.01))
    model = DeepLabV2(trunk, num_classes, rates=tuple(aspp.get("rates", ASPP_RATES)), init_std=init_std,  # type: ignore[arg-type]
                      msc_scales=scales)
    if backbone.get("pretrained") == "file" and not backbone_module._CHECKPOINT_REBUILDS:
        load_caffe_deeplab(model, str(backbone["weights_path"]), init_std=init_std)
    return model
