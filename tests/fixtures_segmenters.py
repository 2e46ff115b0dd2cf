"""Segmenter and IRN networks and modules from plain arguments: the ``_target_`` nodes of conf/segmenter and
conf/irn filled in, for tests that build them without composing a config."""

from __future__ import annotations

from typing import Any

from vwl_lightning.models.deeplab import DeepLabV2
from vwl_lightning.models.emanet import EMANet
from vwl_lightning.utils.instantiate import build

BACKBONE = "vwl_lightning.models.backbone.Backbone"
CAFFE = "vwl_lightning.models.caffe_deeplab.CaffeResNet"
ASPP = "vwl_lightning.models.deeplab.ASPP"
MSC = "vwl_lightning.models.deeplab.MSC"
TRUNK = "vwl_lightning.models.emanet.emanet_trunk"
HEAD = "vwl_lightning.models.emanet.EMANet"
SGD = {"_target_": "torch.optim.SGD", "_partial_": True}
POLY = {"_target_": "vwl_lightning.modules.optim.PolyLR", "_partial_": True}
STEPPED = {"_target_": "vwl_lightning.modules.optim.SteppedPolyLR", "_partial_": True}


def deeplab_trunk(backbone: dict[str, Any]) -> dict[str, Any]:
    """A ``segmenter.backbone`` node: the caffe trunk by name, else a dilated Backbone."""
    if backbone.get("name") == "caffe_resnet101":
        return {"_target_": CAFFE, **backbone}
    return {"_target_": BACKBONE, "dilate": True, **backbone}


def deeplab_nodes(backbone: dict, aspp: dict | None = None, msc: dict | None = None, resolution: str = "labels",
                  optimizer: dict | None = None, groups: dict | None = None, power: float = 0.9) -> dict[str, Any]:
    """The node arguments of :class:`SegmenterModule`."""
    return {"backbone": deeplab_trunk(backbone), "aspp": {"_target_": ASPP, **(aspp or {})},
            "msc": {"_target_": MSC, **(msc or {"enabled": False})},
            "loss": {"_target_": "vwl_lightning.modules.segmenter.SegmentationLoss", "resolution": resolution},
            "optimizer": {**SGD, "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4, **(optimizer or {})},
            "scheduler": {**POLY, "power": power},
            "groups": {"_target_": "vwl_lightning.modules.segmenter.DeepLabParamGroups", **(groups or {})}}


def build_deeplab(num_classes: int, backbone: dict, aspp: dict, msc: dict) -> DeepLabV2:
    """DeepLabV2 as :class:`SegmenterModule` puts it together."""
    trunk = build(deeplab_trunk(backbone), "segmenter.backbone")
    head = build({"_target_": ASPP, **aspp}, "segmenter.aspp", in_channels=trunk.out_channels, num_classes=num_classes)
    inputs = build({"_target_": MSC, **msc}, "segmenter.msc")
    return DeepLabV2(trunk, head, inputs.scales, inputs.resize)


def emanet_nodes(backbone: dict, head: dict, normalise: str = "pixels", optimizer: dict | None = None,
                 every: int = 10, bias_lr_mult: float = 2.0) -> dict[str, Any]:
    """The node arguments of :class:`EMANetModule`."""
    return {"backbone": {"_target_": TRUNK, "bn_momentum": head.get("bn_momentum", 3e-4), **backbone},
            "head": {"_target_": HEAD, **head},
            "loss": {"_target_": "vwl_lightning.modules.emanet.EMANetLoss", "normalise": normalise},
            "optimizer": {**SGD, "lr": 0.009, "momentum": 0.9, "weight_decay": 1e-4, **(optimizer or {})},
            "scheduler": {**STEPPED, "power": 0.9, "every": every},
            "groups": {"_target_": "vwl_lightning.modules.emanet.EMANetParamGroups", "bias_lr_mult": bias_lr_mult}}


def build_emanet(num_classes: int, backbone: dict, head: dict) -> EMANet:
    """EMANet as :class:`EMANetModule` puts it together."""
    nodes = emanet_nodes(backbone, head)
    trunk = build(nodes["backbone"], "segmenter.backbone")
    return build(nodes["head"], "segmenter.head", extractor=trunk, num_classes=num_classes)


def irn_nodes(backbone: dict, lr: float = 0.1, momentum: float = 1e-4) -> dict[str, Any]:
    """The node arguments of :class:`IRNModule`."""
    return {"backbone": {"_target_": BACKBONE, **backbone}, "net": {"_target_": "vwl_lightning.models.irnet.IRNet"},
            "optimizer": {**SGD, "lr": lr, "momentum": momentum, "weight_decay": 1e-4}, "scheduler": {**POLY}}
