"""DeepLabV2 on the caffe-converted DeepLab ResNet-101 (``deeplabv1_resnet101-coco.pth``, spec §12).

**The file** (spec §12.2-§12.3): a plain state dict of 626 tensors — the 624 of the trunk in deeplab-pytorch's
layout (``layer1`` = the stem, ``layer2..5`` = torchvision's ``layer1..4``; blocks ``block{j}`` with
``reduce`` / ``conv3x3`` / ``increase`` / ``shortcut``, each ``.conv.weight`` or ``.bn.*``; running statistics
float64, ``num_batches_tracked`` int64) plus the 91-way classifier ``fc.{weight,bias}``.  Older snapshots carry
a ``scale.`` or ``base.`` prefix and name the shortcut ``proj``; a DataParallel save adds ``module.``:
:func:`normalise_caffe_key` strips these and maps ``proj`` → ``shortcut``.

**Mapping** (spec §12.3, :func:`caffe_to_torchvision`, inverse :func:`torchvision_to_caffe`):
``layer1.conv1.conv`` → ``conv1``, ``layer1.conv1.bn`` → ``bn1``, ``layer{S}.block{j}.{reduce, conv3x3,
increase}.{conv, bn}`` → ``layer{S-1}.{j-1}.{conv1, conv2, conv3}`` / ``{bn1, bn2, bn3}``,
``shortcut.{conv, bn}`` → ``downsample.{0, 1}``.  The trunk is
:class:`~vwl_lightning.models.dilated_resnet.DilatedResNet` with the caffe geometry (stride on the 1×1 reduce,
ceil-mode pad-1 max-pool, dilation 2/4 in every block of layer3/layer4).

**Loading** (:func:`load_caffe_deeplab`, spec §12.4): ``fc.*`` is ignored (its 91 COCO classes are not ours),
the ASPP is (re-)initialised N(0, 0.01²) with zero biases, every trunk tensor must be present with its shape
(a DataError names the file and the key otherwise) and is copied cast to float32; one log line reports the
loaded / ignored / initialised counts and the file's SHA-256.

**Input convention** (spec §12.6): the weights expect BGR, 0-255, minus the per-channel mean
(B 104.008, G 116.669, R 122.675), no std.  The data pipeline emits RGB: the loader flips conv1's input
channels once (``W[:, [2, 1, 0]]``, read from the file every time, so loading twice never flips twice) and
:func:`caffe_input_norm` gives the data transform's mean/std (in units of the /255 image) that make
``(x/255 − mean)/std = x − mean_RGB``, so the padding (0) is the mean colour.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vwl_lightning.errors import DataError
from vwl_lightning.models.dilated_resnet import DilatedResNet, caffe_rates
from vwl_lightning.utils.instantiate import ArgumentError, require_choice, require_number

log = logging.getLogger(__name__)

CAFFE_BACKBONE = "caffe_resnet101"
CAFFE_MEAN_RGB = (122.675, 116.669, 104.008)  # spec §12.6 (B 104.008, G 116.669, R 122.675)
CAFFE_BN_MOMENTUM = 0.001  # spec §12.4 (frozen anyway)
OLD_PREFIXES = ("module.", "base.", "scale.")
IGNORED_PREFIXES = ("fc.",)
BRANCHES = {"reduce": "1", "conv3x3": "2", "increase": "3"}
_BLOCK = re.compile(r"^layer(\d+)\.block(\d+)\.(reduce|conv3x3|increase|shortcut)\.(conv|bn)\.(.+)$")
_TV_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(conv[123]|bn[123]|downsample\.[01])\.(.+)$")


def caffe_input_norm() -> dict[str, tuple[float, float, float]]:
    """Mean/std for the data transforms' ``(x/255 − mean)/std`` that yield ``x − mean_RGB`` (spec §12.6)."""
    return {"mean": tuple(m / 255.0 for m in CAFFE_MEAN_RGB), "std": (1 / 255.0,) * 3}


def normalise_caffe_key(key: str) -> str:
    """Strip ``module.`` / ``base.`` / ``scale.`` (any order, repeated) and map ``proj`` → ``shortcut``."""
    changed = True
    while changed:
        changed = False
        for prefix in OLD_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key.replace(".proj.", ".shortcut.")


def caffe_to_torchvision(key: str) -> str | None:
    """deeplab-pytorch trunk name → our torchvision-style name (module docstring); None if not a trunk key."""
    if key.startswith("layer1.conv1.conv."):
        return "conv1." + key[len("layer1.conv1.conv."):]
    if key.startswith("layer1.conv1.bn."):
        return "bn1." + key[len("layer1.conv1.bn."):]
    match = _BLOCK.match(key)
    if match is None:
        return None
    stage, block, branch, kind, rest = match.groups()
    if int(stage) < 2 or int(block) < 1:
        return None
    if branch == "shortcut":
        module = "downsample.0" if kind == "conv" else "downsample.1"
    else:
        module = ("conv" if kind == "conv" else "bn") + BRANCHES[branch]
    return f"layer{int(stage) - 1}.{int(block) - 1}.{module}.{rest}"


def torchvision_to_caffe(key: str) -> str | None:
    """Inverse of :func:`caffe_to_torchvision`."""
    if key.startswith("conv1."):
        return "layer1.conv1.conv." + key[len("conv1."):]
    if key.startswith("bn1."):
        return "layer1.conv1.bn." + key[len("bn1."):]
    match = _TV_BLOCK.match(key)
    if match is None:
        return None
    stage, block, module, rest = match.groups()
    if module.startswith("downsample"):
        branch, kind = "shortcut", "conv" if module.endswith("0") else "bn"
    else:
        branch = {v: k for k, v in BRANCHES.items()}[module[-1]]
        kind = "conv" if module.startswith("conv") else "bn"
    return f"layer{int(stage) + 1}.block{int(block) + 1}.{branch}.{kind}.{rest}"


CAFFE_LAYERS = (3, 4, 23, 3)
CAFFE_PRETRAINED = ("none", "file")


class CaffeResNet(DilatedResNet):
    """The caffe DeepLab ResNet trunk (spec §12.3) as ``segmenter.backbone`` of DeepLabV2, BN frozen (spec §12.4).

    Its weight file (``pretrained=file``) is a DeepLab file: :class:`~vwl_lightning.models.deeplab.DeepLabV2`
    loads it once its ASPP exists (:func:`load_caffe_deeplab`; not inside ``weights_from_checkpoint``).

    Args:
        name: ``caffe_resnet101`` (the name the data transforms read for the caffe input convention).
        output_stride: 8 or 16.
        fixed_bn: must be true (spec §12.4).
        pretrained: ``none`` | ``file``.
        weights_path: the local ``deeplabv1_resnet101-*.pth`` for ``pretrained=file``.
        model_kwargs: ``layers`` (default 3, 4, 23, 3) and ``base_width`` (64): only for small test trunks.
        dilate, frozen, hub_tag: :class:`~vwl_lightning.models.backbone.Backbone` settings the caffe trunk fixes
            (dilated, nothing frozen, no hub); accepted at those values only, so this node can replace a
            Backbone node (conf/segmenter/deeplabv2.yaml's, an experiment's) key for key.
    """

    def __init__(self, name: str = CAFFE_BACKBONE, output_stride: int = 8, fixed_bn: bool = True,
                 pretrained: str = "none", weights_path: str | None = None, model_kwargs: Mapping | None = None,
                 dilate: bool = True, frozen: Sequence[str] = (), hub_tag: str | None = None) -> None:
        self.check_arguments(name, output_stride, fixed_bn, pretrained, weights_path, model_kwargs, dilate, frozen,
                             hub_tag)
        from vwl_lightning.models import backbone as backbone_module

        geometry = dict(model_kwargs or {})
        layers = tuple(int(n) for n in geometry.get("layers", CAFFE_LAYERS))
        super().__init__("caffe", "1x1", caffe_rates(layers, output_stride), layers=layers,
                         base_width=int(geometry.get("base_width", 64)), fixed_bn=True,
                         bn_momentum=CAFFE_BN_MOMENTUM, output_stride=output_stride)
        self.name = name
        loads = pretrained == "file" and not backbone_module._CHECKPOINT_REBUILDS
        self.weights_to_load: str | None = str(weights_path) if loads else None

    @classmethod
    def check_arguments(cls, name: str, output_stride: int, fixed_bn: bool, pretrained: str,
                        weights_path: str | None, model_kwargs: Mapping | None, dilate: bool, frozen: Sequence[str],
                        hub_tag: str | None) -> None:
        require_choice("name", name, (CAFFE_BACKBONE,))
        require_choice("output_stride", output_stride, (8, 16))
        if fixed_bn is not True:
            raise ArgumentError("fixed_bn", fixed_bn, f"true for {CAFFE_BACKBONE}: DeepLab freezes BN (spec §12.4)")
        require_choice("pretrained", pretrained, CAFFE_PRETRAINED)
        if pretrained == "file" and not weights_path:
            raise ArgumentError("weights_path", weights_path, "the local caffe-converted deeplabv1_resnet101-coco.pth "
                                "(or -imagenet.pth) for pretrained=file")
        geometry = model_kwargs if model_kwargs is not None else {}
        if not isinstance(geometry, Mapping) or set(geometry) - {"layers", "base_width"}:
            raise ArgumentError("model_kwargs", model_kwargs, f"{{layers, base_width}} for {CAFFE_BACKBONE}")
        layers = geometry.get("layers", CAFFE_LAYERS)
        if not isinstance(layers, Sequence) or len(layers) != 4 or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in layers):
            raise ArgumentError("model_kwargs", dict(geometry), "layers: 4 positive block counts")
        require_number("model_kwargs.base_width", geometry.get("base_width", 64), 1, integer=True)
        if dilate is not True:
            raise ArgumentError("dilate", dilate, "true: the caffe DeepLab trunk is dilated")
        if frozen:
            raise ArgumentError("frozen", frozen, f"[] for {CAFFE_BACKBONE} (BN is frozen, every conv trains)")
        if hub_tag is not None:
            raise ArgumentError("hub_tag", hub_tag, f"null: {CAFFE_BACKBONE} loads a local file (weights_path)")


def build_caffe_trunk(output_stride: int = 8, fixed_bn: bool = True, layers: Sequence[int] = (3, 4, 23, 3),
                      base_width: int = 64) -> DilatedResNet:
    """The caffe DeepLab ResNet geometry (spec §12.3; ResNet-101 by default)."""
    return DilatedResNet("caffe", "1x1", caffe_rates(layers, output_stride), layers=layers, base_width=base_width,
                         fixed_bn=fixed_bn, bn_momentum=CAFFE_BN_MOMENTUM, output_stride=output_stride)


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_caffe_deeplab` did: file, SHA-256 and the key lists behind the logged counts."""

    path: str
    sha256: str
    loaded: tuple[str, ...]       # our trunk names
    ignored: tuple[str, ...]      # the file's names (fc.*)
    initialised: tuple[str, ...]  # our ASPP names


def load_caffe_deeplab(model: nn.Module, path: str | Path, init_std: float = 0.01) -> LoadReport:
    """Initialise ``model`` (a DeepLabV2 with the caffe trunk) from a caffe-converted file (module docstring).

    ``model.backbone`` receives every trunk tensor (float32; conv1 flipped BGR → RGB), ``model.aspp`` is
    initialised N(0, init_std²) / 0.  Raises DataError naming the file and the first offending key.
    """
    from vwl_lightning.models.weight_files import load_state_dict_file, sha256_of

    path = Path(path).expanduser()
    raw = load_state_dict_file(path)  # weights_only=True
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        name = normalise_caffe_key(key)
        if name in state:
            raise DataError(f"{path}: key {key!r} duplicates {name!r} after removing old prefixes")
        state[name] = value
    own = model.backbone.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, value in state.items():
        if key.startswith(IGNORED_PREFIXES):
            ignored.append(key)
            continue
        target = caffe_to_torchvision(key)
        if target is None or target not in own:
            raise DataError(f"{path}: unexpected key {key!r}, not part of the caffe DeepLab ResNet trunk "
                            f"(segmenter.backbone layers/base_width must match the file)")
        if tuple(value.shape) != tuple(own[target].shape):
            raise DataError(f"{path}: key {key!r} has shape {tuple(value.shape)}, the trunk expects "
                            f"{tuple(own[target].shape)} (segmenter.backbone layers/base_width)")
        mapped[target] = value
    missing = [k for k in own if k not in mapped]
    if missing:
        raise DataError(f"{path}: missing key {torchvision_to_caffe(missing[0])!r} ({len(missing)} trunk tensors "
                        f"missing); expected the 624-tensor deeplab-pytorch trunk layout")
    with torch.no_grad():
        for key, target in own.items():
            value = mapped[key]
            if key == "conv1.weight":
                value = value[:, [2, 1, 0]]  # BGR weights, RGB input (spec §12.6 (a)); flipped from the file
            target.copy_(value.to(target.dtype))
        initialised = []
        for index, conv in enumerate(model.aspp.branches):
            nn.init.normal_(conv.weight, mean=0.0, std=init_std)
            nn.init.zeros_(conv.bias)
            initialised += [f"aspp.branches.{index}.weight", f"aspp.branches.{index}.bias"]
    digest = sha256_of(path)
    model.backbone.weights_sha256 = digest
    log.info("caffe DeepLab init %s: loaded %d trunk tensors, ignored %d (%s), initialised %d (ASPP N(0, %g^2) / 0),"
             " sha256 %s", path, len(mapped), len(ignored), ", ".join(ignored) or "none", len(initialised),
             init_std, digest)
    return LoadReport(str(path), digest, tuple(mapped), tuple(ignored), tuple(initialised))
