"""Backbones from timm with the spec's output stride, frozen BatchNorm and frozen stages (spec §1).

The classification network of the spec is a ResNet whose last stage has stride 1 and **no dilation**
(output stride 16, "strides (2,2,2,1)"); the stride sits in the first block's 3×3 conv, as in timm's and
torchvision's ResNet. ``dilate=True`` gives the DeepLab-style dilated variant instead (timm's own
``output_stride``). BatchNorm may be *fixed*: running statistics never update (``F.batch_norm`` with
``training=False``) while γ/β still learn, as the original ``FixedBatchNorm``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from vwl_lightning.errors import ConfigError, DataError

log = logging.getLogger(__name__)

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
STRIDE_ONE_STAGES = {32: (), 16: ("layer4",), 8: ("layer3", "layer4")}


class FixedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose running statistics are frozen; the affine γ/β still receive gradients (spec §1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, momentum=0.0, eps=self.eps)


def fix_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` under ``module`` by a :class:`FixedBatchNorm2d` with the same state."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, FixedBatchNorm2d):
            fixed = FixedBatchNorm2d(child.num_features, eps=child.eps, affine=child.affine,
                                     track_running_stats=child.track_running_stats)
            fixed.load_state_dict(child.state_dict())
            setattr(module, name, fixed)
        else:
            fix_batch_norm(child)
    return module


def remove_stage_stride(stage: nn.Sequential) -> None:
    """Make a ResNet stage keep its input resolution without dilation: stride 1 in its first block."""
    first = stage[0]
    for module in first.modules():
        if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
            module.stride = (1, 1)
        elif isinstance(module, nn.AvgPool2d) and module.stride not in (1, (1, 1)):
            # avg-down shortcut (ResNet-D / -T): the pool only downsampled, so it becomes the identity
            module.kernel_size, module.stride = 1, 1


def sha256_of(path: str | os.PathLike) -> str:
    """SHA-256 of a file, logged with every loaded weight file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint with ``weights_only=True``; accepts a bare state dict or one under
    ``state_dict`` / ``model``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"backbone weights file {path} not found (model.backbone.weights_path)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the file's fault
        raise DataError(f"{path}: cannot read as a PyTorch state dict ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(blob, dict) and key in blob and isinstance(blob[key], dict):
            blob = blob[key]
    if not isinstance(blob, dict):
        raise DataError(f"{path}: expected a state dict, got {type(blob).__name__}")
    return blob


class Backbone(nn.Module):
    """A timm ResNet trunk returning the last stage's feature map.

    Args:
        name: timm model name (``resnet101``, ``resnet50``, ``resnet18``, ...).
        output_stride: 8, 16 or 32.
        dilate: dilate the stride-1 stages (DeepLab) instead of plain stride 1 (the classifier, spec §1).
        fixed_bn: freeze BatchNorm statistics (spec §1; for pretrained weights).
        frozen: names of modules whose parameters get ``requires_grad=False`` (spec: ``conv1``, ``bn1``).
        detach_after: a stage whose output is detached, so it and everything before it get no
            gradient (spec §1: ``layer2`` for VWL-L), or ``None``.
        pretrained: ``none`` (random init), ``hub`` (timm hub, needs network) or ``file``.
        weights_path: the weight file for ``pretrained=file`` (timm or torchvision ResNet keys).
        model_kwargs: extra timm constructor arguments (e.g. ``channels`` for a narrow CPU ResNet).
    """

    def __init__(
        self,
        name: str = "resnet101",
        output_stride: int = 16,
        dilate: bool = False,
        fixed_bn: bool = True,
        frozen: Sequence[str] = ("conv1", "bn1"),
        detach_after: str | None = None,
        pretrained: str = "none",
        weights_path: str | None = None,
        model_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if output_stride not in STRIDE_ONE_STAGES:
            raise ConfigError(f"model.backbone.output_stride must be 8, 16 or 32, got {output_stride}")
        if pretrained not in ("none", "hub", "file"):
            raise ConfigError(f"model.backbone.pretrained must be none, hub or file, got {pretrained!r}")
        if detach_after is not None and detach_after not in RESNET_STAGES:
            raise ConfigError(f"model.backbone.detach_after must be one of {RESNET_STAGES} or null, "
                              f"got {detach_after!r}")
        if not name.startswith("resnet") or name not in timm.list_models():
            known = ", ".join(m for m in timm.list_models("resnet*") if m.count("_") == 0)
            raise ConfigError(f"model.backbone.name: unknown ResNet backbone {name!r}; expected a timm ResNet, "
                              f"one of: {known}")
        kwargs = dict(model_kwargs or {})
        if "channels" in kwargs:
            kwargs["channels"] = tuple(kwargs["channels"])
        if "layers" in kwargs:
            kwargs["layers"] = tuple(kwargs["layers"])
        if dilate:
            kwargs["output_stride"] = output_stride
        try:
            net = timm.create_model(name, pretrained=pretrained == "hub", num_classes=0, global_pool="",
                                    **kwargs)
        except Exception as exc:  # noqa: BLE001 - hub failures are reported as a config problem
            if pretrained == "hub":
                raise ConfigError(
                    f"model.backbone.pretrained=hub: could not fetch {name} weights from the timm hub "
                    f"({type(exc).__name__}); offline, set model.backbone.pretrained=file and "
                    "model.backbone.weights_path to a local timm/torchvision checkpoint"
                ) from None
            raise ConfigError(f"model.backbone: cannot build {name} with {kwargs}: {exc}") from None
        self.weights_sha256: str | None = None
        if pretrained == "file":
            if not weights_path:
                raise ConfigError("model.backbone.pretrained=file needs model.backbone.weights_path: a local "
                                  "timm or torchvision ResNet checkpoint (e.g. resnet101-5d3b4d8f.pth)")
            self.load_weights(net, weights_path)
        if not dilate:
            for stage in STRIDE_ONE_STAGES[output_stride]:
                remove_stage_stride(getattr(net, stage))
        if fixed_bn:
            fix_batch_norm(net)
        for module_name in frozen:
            module = getattr(net, module_name, None)
            if module is None:
                raise ConfigError(f"model.backbone.frozen: {name} has no module {module_name!r}")
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        if detach_after is not None:
            # everything up to the detached stage gets no gradient; marking it frozen keeps DDP from
            # waiting for gradients that never come and the optimiser from holding dead parameters
            for module_name in ("conv1", "bn1", *RESNET_STAGES[: RESNET_STAGES.index(detach_after) + 1]):
                for parameter in getattr(net, module_name).parameters():
                    parameter.requires_grad_(False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.act1, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.name = name
        self.output_stride = output_stride
        self.detach_after = detach_after
        self.out_channels: int = net.num_features

    def load_weights(self, net: nn.Module, weights_path: str) -> None:
        """Load a timm- or torchvision-format ResNet state dict (same key names), ignoring the fc head."""
        state = load_state_dict_file(weights_path)
        state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith(("fc.", "module.fc."))}
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches: a checkpoint of another architecture
            first = str(exc).strip().splitlines()[1:2] or [str(exc)[:200]]
            raise DataError(f"{weights_path}: does not match {self.__class__.__name__} "
                            f"({first[0].strip()})") from None
        if missing or unexpected:
            raise DataError(f"{weights_path}: does not match {net.__class__.__name__} "
                            f"(missing {missing[:3]}..., unexpected {unexpected[:3]}...)")
        self.weights_sha256 = sha256_of(weights_path)
        log.info("loaded backbone weights %s (sha256 %s)", weights_path, self.weights_sha256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in RESNET_STAGES:
            x = getattr(self, stage)(x)
            if stage == self.detach_after:
                x = x.detach()
        return x
