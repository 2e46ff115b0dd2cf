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

from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.models.dilated_resnet import DilatedResNet, caffe_rates

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
    from vwl_lightning.models.backbone import load_state_dict_file, sha256_of

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


def check_caffe_kwargs(kwargs: Mapping) -> dict:
    """The trunk settings of ``segmenter.backbone`` for :data:`CAFFE_BACKBONE` (ConfigError on bad values)."""
    model_kwargs = dict(kwargs.get("model_kwargs") or {})
    unknown = sorted(set(model_kwargs) - {"layers", "base_width"})
    if unknown:
        raise ConfigError(f"segmenter.backbone.model_kwargs: {CAFFE_BACKBONE} takes layers and base_width, "
                          f"got {unknown}")
    if kwargs.get("pretrained", "none") not in ("none", "file"):
        raise ConfigError(f"segmenter.backbone.pretrained must be none or file for {CAFFE_BACKBONE} (a local "
                          f"deeplabv1_resnet101-*.pth), got {kwargs.get('pretrained')!r}")
    if kwargs.get("pretrained") == "file" and not kwargs.get("weights_path"):
        raise ConfigError(f"segmenter.backbone.pretrained=file needs segmenter.backbone.weights_path: the local "
                          f"caffe-converted deeplabv1_resnet101-coco.pth (or -imagenet.pth) for {CAFFE_BACKBONE}")
    return {"layers": tuple(int(n) for n in model_kwargs.get("layers", (3, 4, 23, 3))),
            "base_width": int(model_kwargs.get("base_width", 64))}
