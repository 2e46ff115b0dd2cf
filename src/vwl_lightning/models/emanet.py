"""EMANet (Li et al., ICCV 2019) as its official code runs it (spec §11).

**Trunk** (spec §11.1): :class:`~vwl_lightning.models.dilated_resnet.DilatedResNet` with the deep stem, the
stride on the 3×3 conv and the official per-block rates at output stride 8 (layer3 = (1, 2, …, 2), layer4 =
(2, 8, 16); ``canonical_rates=True`` gives (2, …, 2) and (4, 8, 16)), wrapped as ``extractor`` =
``Sequential(stem convs, bn1, relu, maxpool, layer1..4)`` so that the state dict has the official names
(``extractor.0.{0,1,3,4,6}``, ``extractor.1``, ``extractor.4..7``).  A timm :class:`Backbone` can stand in
(``backbone.kind=timm``, the embedded benchmark).  ``segmenter.backbone`` is a :func:`emanet_trunk` node and
``segmenter.head`` an :class:`EMANet` node (its ``extractor`` and ``num_classes`` come from the module).

**Head** (spec §11.2): ``fc0`` = Conv3×3(C_in→512)+BN+ReLU → ``emau`` → ``fc1`` = Conv3×3(512→256)+BN+ReLU,
Dropout2d(0.1) → ``fc2`` = Conv1×1(256→classes, bias); the module upsamples to the input, align_corners=True.

**EM attention unit** (spec §11.3), per image, x ∈ R^{C×N} after ``conv1`` (1×1 with bias, no BN/ReLU), bases
μ⁽⁰⁾ = the buffer ``mu`` (1×C×K), T iterations **without gradient** and in fp32 (autocast off):

    z = softmax_k(xᵀ μ)                         (N×K, no temperature)
    μ = x · z / (ε + Σ_n z_nk)                  (responsibility-weighted mean over the image's pixels)
    μ_k ← μ_k / (ε + ‖μ_k‖₂)                    (ε = 1e-6)

then x̃ = μ zᵀ (last z, last μ), ``out = ReLU(BN(conv2(ReLU(x̃))) + x_in)``; it returns (out, μ⁽ᵀ⁾).
``conv1`` never receives a gradient (μ and z are constants), so it is ``requires_grad=False`` (spec §11.6 item 2).

**Bases maintenance** (spec §11.3 item 7): after each *training* forward, ``mu ← m·mu + (1−m)·mean_b μ⁽ᵀ⁾`` with
m = 0.9, the batch mean all-reduced (averaged) over DDP ranks, no re-normalisation (``renorm_mean=True``:
the mmseg variant, the mean is l2-normalised first); evaluation never updates it (:meth:`EMANet.update_bases`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vwl_lightning.errors import DataError
from vwl_lightning.models.dilated_resnet import DilatedResNet, emanet_rates
from vwl_lightning.utils.instantiate import ArgumentError, require_choice, require_number

log = logging.getLogger(__name__)

EPS = 1e-6
EMANET_BN_MOMENTUM = 3e-4  # spec §11.1 (PyTorch convention)
TRUNK_KINDS = ("deep_resnet", "timm")
# Encoding ResNet names → extractor index (spec §11.2)
EXTRACTOR_INDEX = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}


class ConvBNReLU(nn.Module):
    """Conv(k×k, no bias) + BN + ReLU, attributes ``conv`` / ``bn`` (the official key names)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, bn_momentum: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def em_iterations(x: torch.Tensor, mu: torch.Tensor, iterations: int, eps: float = EPS
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The E/M steps of spec §11.3 on ``x`` (B, C, N) from bases ``mu`` (B, C, K): returns the last
    responsibilities z (B, N, K) and the bases μ⁽ᵀ⁾ (B, C, K).  No gradient; computed in fp32."""
    with torch.no_grad():
        x = x.float()
        mu = mu.float()
        z = None
        for _ in range(iterations):
            z = torch.softmax(torch.bmm(x.transpose(1, 2), mu), dim=2)
            z_norm = z / (eps + z.sum(dim=1, keepdim=True))
            mu = torch.bmm(x, z_norm)
            mu = mu / (eps + mu.norm(dim=1, keepdim=True))
    assert z is not None
    return z, mu


class EMAU(nn.Module):
    """The EM attention unit (module docstring; spec §11.3).

    Args:
        channels: C (512).
        bases: K (64).
        iterations: T (3), the same in training and evaluation.
        bn_momentum: of ``conv2``'s BN.
    """

    def __init__(self, channels: int, bases: int = 64, iterations: int = 3,
                 bn_momentum: float = EMANET_BN_MOMENTUM) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("bases", bases), ("iterations", iterations)):
            require_number(name, value, 1, integer=True)
        self.iterations = int(iterations)
        mu = torch.randn(1, channels, bases) * math.sqrt(2.0 / bases)
        self.register_buffer("mu", mu / (EPS + mu.norm(dim=1, keepdim=True)))
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.conv2 = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False),
                                   nn.BatchNorm2d(channels, momentum=bn_momentum))
        for conv in (self.conv1, self.conv2[0]):
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / channels))  # N(0, √(2/(k²·C))), k = 1
        # conv1's bias keeps PyTorch's default uniform(±1/√C); conv1 never trains (spec §11.3 item 5)
        self.conv1.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        identity = x
        x = self.conv1(x)
        batch, channels, height, width = x.shape
        device_type = x.device.type if x.device.type in ("cuda", "cpu") else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            z, mu = em_iterations(x.reshape(batch, channels, height * width),
                                  self.mu.float().expand(batch, -1, -1), self.iterations)
            rec = torch.bmm(mu, z.transpose(1, 2)).reshape(batch, channels, height, width)
        rec = F.relu(rec.to(identity.dtype))
        out = self.conv2(rec)
        return F.relu(out + identity), mu


class EMANet(nn.Module):
    """Trunk + fc0 → EMAU → fc1 → fc2 (module docstring; spec §11.2).

    Args:
        extractor: the trunk (``Sequential`` of the deep-stem ResNet, or a timm :class:`Backbone`).
        in_channels: channels of the trunk output (2048 for ResNet-101); None: ``extractor.out_channels``.
        num_classes: classes including background.
        mid_channels: EMAU width C (spec §11.2: 512).  head_channels: fc1 width (256).
        bases: K (spec §11.3: 64).  iterations: T (spec §11.3: 3, training and evaluation).
        dropout: Dropout2d probability after fc1 (0.1).
        em_momentum: the bases moving average m (spec §11.3 item 7: 0.9).  renorm_mean: the mmseg variant.
        output_stride: of the trunk (8); None: ``extractor.output_stride``.
        bn_momentum: of every head BN (spec §11.1 BN_MOM 3e-4, PyTorch convention).
    """

    msc_scales: tuple[float, ...] = ()

    def __init__(self, extractor: nn.Module, in_channels: int | None = None, num_classes: int = 21,
                 mid_channels: int = 512, head_channels: int = 256, bases: int = 64, iterations: int = 3,
                 dropout: float = 0.1, em_momentum: float = 0.9, renorm_mean: bool = False,
                 output_stride: int | None = None, bn_momentum: float = EMANET_BN_MOMENTUM) -> None:
        require_number("num_classes", num_classes, 2, integer=True)
        self.check_arguments(mid_channels, head_channels, bases, iterations, dropout, em_momentum, renorm_mean,
                             bn_momentum)
        super().__init__()
        in_channels = int(extractor.out_channels) if in_channels is None else in_channels
        output_stride = int(getattr(extractor, "output_stride", 8)) if output_stride is None else output_stride
        self.extractor = extractor
        self.fc0 = ConvBNReLU(in_channels, mid_channels, 3, bn_momentum)
        self.emau = EMAU(mid_channels, bases, iterations, bn_momentum)
        self.fc1 = nn.Sequential(ConvBNReLU(mid_channels, head_channels, 3, bn_momentum), nn.Dropout2d(p=dropout))
        self.fc2 = nn.Conv2d(head_channels, num_classes, 1)
        self.num_classes = num_classes
        self.em_momentum = float(em_momentum)
        self.renorm_mean = bool(renorm_mean)
        self.output_stride = int(output_stride)

    @classmethod
    def check_arguments(cls, mid_channels: int, head_channels: int, bases: int, iterations: int, dropout: float,
                        em_momentum: float, renorm_mean: bool, bn_momentum: float) -> None:
        for name, value in (("mid_channels", mid_channels), ("head_channels", head_channels), ("bases", bases),
                            ("iterations", iterations)):
            require_number(name, value, 1, integer=True)
        require_number("dropout", dropout, 0, 1, high_open=True)
        require_number("em_momentum", em_momentum, 0, 1, high_open=True)
        if not isinstance(renorm_mean, bool):
            raise ArgumentError("renorm_mean", renorm_mean, "true or false")
        require_number("bn_momentum", bn_momentum, 0, 1)

    @property
    def backbone(self) -> nn.Module:
        """The trunk (for loaders that address ``model.backbone``)."""
        return self.extractor

    def outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits at the output stride (B, classes, h, w) and the bases μ⁽ᵀ⁾ (B, C, K) of each image."""
        x = self.fc0(self.extractor(images))
        x, mu = self.emau(x)
        return self.fc2(self.fc1(x)), mu

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits at the output stride."""
        return self.outputs(images)[0]

    @torch.no_grad()
    def update_bases(self, mu: torch.Tensor) -> torch.Tensor:
        """``mu ← m·mu + (1 − m)·mean`` with the batch mean of μ⁽ᵀ⁾ averaged over DDP ranks (spec §11.3 item 7).

        Call in training only, after the forward.  Returns the (all-reduced) mean used."""
        mean = mu.detach().float().mean(dim=0, keepdim=True)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(mean, op=dist.ReduceOp.SUM)
            mean /= dist.get_world_size()
        if self.renorm_mean:
            mean = mean / (EPS + mean.norm(dim=1, keepdim=True))
        buffer = self.emau.mu
        buffer.copy_((buffer.float() * self.em_momentum + mean * (1.0 - self.em_momentum)).to(buffer.dtype))
        return mean


def build_deep_resnet(output_stride: int = 8, canonical_rates: bool = False, layers=(3, 4, 23, 3),
                      base_width: int = 64, bn_momentum: float = EMANET_BN_MOMENTUM) -> DilatedResNet:
    """EMANet's deep-stem dilated ResNet (spec §11.1; ResNet-101 by default), BN trainable."""
    rates = emanet_rates(layers, output_stride, canonical=canonical_rates)
    return DilatedResNet("deep", "3x3", rates, layers=layers, base_width=base_width, fixed_bn=False,
                         bn_momentum=bn_momentum, output_stride=output_stride)


DEEP_PRETRAINED = ("none", "file")


def emanet_trunk(kind: str = "deep_resnet", output_stride: int = 8, canonical_rates: bool = False,
                 pretrained: str = "none", weights_path: str | None = None, model_kwargs: Mapping | None = None,
                 bn_momentum: float = EMANET_BN_MOMENTUM, **backbone: Any) -> nn.Module:
    """EMANet's trunk (``segmenter.backbone``, conf/segmenter/emanet.yaml): the ``extractor`` of :class:`EMANet`.

    Args:
        kind: ``deep_resnet``: the PyTorch-Encoding deep-stem ResNet (spec §11.1), BN trainable, returned as
            ``Sequential(stem convs, bn1, relu, maxpool, layer1..4)`` (the official key names) |
            ``timm``: a dilated :class:`~vwl_lightning.models.backbone.Backbone` (the embedded benchmark).
        output_stride: 8 (spec §11.1) or 16.
        canonical_rates: deep_resnet: false = the official rates (spec §11.1 quirk), true = (2, …) / (4, 8, 16).
        pretrained: deep_resnet: ``none`` | ``file`` (the Encoding ``resnet101-2a57e44d.pth``, loaded here unless
            inside ``weights_from_checkpoint``); timm: as :class:`Backbone`.
        weights_path: the weight file for ``pretrained=file``.
        model_kwargs: deep_resnet: ``layers`` (default 3, 4, 23, 3), ``base_width`` (64); timm: timm's.
        bn_momentum: deep_resnet: of every trunk BN (spec §11.1: the head's 3e-4).
        backbone: kind=timm: the other :class:`Backbone` arguments (``name``, ``fixed_bn``, ``frozen``, ...);
            kind=deep_resnet takes none of them (null values are accepted, as an experiment's reset).
    """
    emanet_trunk.check_arguments(kind, output_stride, canonical_rates, pretrained, weights_path, model_kwargs,
                                 bn_momentum, backbone)
    if kind == "timm":
        from vwl_lightning.models.backbone import Backbone

        return Backbone(dilate=True, output_stride=output_stride, pretrained=pretrained, weights_path=weights_path,
                        model_kwargs=dict(model_kwargs or {}), **backbone)
    from vwl_lightning.models import backbone as backbone_module

    geometry = dict(model_kwargs or {})
    layers = tuple(int(n) for n in geometry.get("layers", (3, 4, 23, 3)))
    trunk = build_deep_resnet(output_stride, canonical_rates, layers, int(geometry.get("base_width", 64)),
                              float(bn_momentum))
    extractor = nn.Sequential(*trunk.stages())
    extractor.out_channels = trunk.out_channels
    extractor.output_stride = output_stride
    if pretrained == "file" and not backbone_module._CHECKPOINT_REBUILDS:
        holder = nn.Module()
        holder.extractor = extractor
        load_encoding_resnet(holder, str(weights_path))
        extractor.weights_sha256 = holder.weights_sha256
    return extractor


def _check_emanet_trunk(kind: str, output_stride: int, canonical_rates: bool, pretrained: str,
                        weights_path: str | None, model_kwargs: Mapping | None, bn_momentum: float,
                        backbone: Mapping[str, Any] | None = None) -> None:
    require_choice("kind", kind, TRUNK_KINDS)
    require_choice("output_stride", output_stride, (8, 16))
    if kind == "timm":
        return  # the Backbone checks its own arguments
    if not isinstance(canonical_rates, bool):
        raise ArgumentError("canonical_rates", canonical_rates, "true or false")
    require_choice("pretrained", pretrained, DEEP_PRETRAINED)
    if pretrained == "file" and not weights_path:
        raise ArgumentError("weights_path", weights_path, "the local PyTorch-Encoding ResNet-101 "
                            "(resnet101-2a57e44d.pth) for pretrained=file")
    geometry = model_kwargs if model_kwargs is not None else {}
    if not isinstance(geometry, Mapping) or set(geometry) - {"layers", "base_width"}:
        raise ArgumentError("model_kwargs", model_kwargs, "{layers, base_width} for kind=deep_resnet")
    require_number("bn_momentum", bn_momentum, 0, 1)
    extra = sorted(k for k, v in (backbone or {}).items() if v is not None)
    if extra:
        raise ArgumentError(extra[0], (backbone or {})[extra[0]], "null for kind=deep_resnet (a Backbone setting; "
                            "kind=timm takes it)")


emanet_trunk.check_arguments = _check_emanet_trunk  # type: ignore[attr-defined]


def encoding_to_extractor(key: str) -> str | None:
    """PyTorch-Encoding ResNet name → EMANet name (``layer3.0.conv1.weight`` → ``extractor.6.0.conv1.weight``)."""
    head, _, rest = key.partition(".")
    if head not in EXTRACTOR_INDEX or not rest:
        return None
    return f"extractor.{EXTRACTOR_INDEX[head]}.{rest}"


def extractor_to_encoding(key: str) -> str:
    """Inverse of :func:`encoding_to_extractor`."""
    _, index, rest = key.split(".", 2)
    names = {v: k for k, v in EXTRACTOR_INDEX.items()}
    return f"{names[int(index)]}.{rest}"


def load_encoding_resnet(model: EMANet, path: str | Path) -> dict[str, int]:
    """Copy an Encoding-layout ResNet file into ``model.extractor`` (spec §11.1, §11.8.2).

    ``fc.*`` is ignored; the only trunk tensors allowed to be missing are ``num_batches_tracked`` (they stay
    0); anything else missing, unexpected or of another shape is a DataError naming the file and the key.
    Returns and logs the counts with the file's SHA-256."""
    from vwl_lightning.models.weight_files import load_state_dict_file, sha256_of, strip_key_prefix

    path = Path(path).expanduser()
    state = strip_key_prefix(load_state_dict_file(path), "module.")
    own = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    ignored = []
    for key, value in state.items():
        if key.startswith("fc."):
            ignored.append(key)
            continue
        target = encoding_to_extractor(key)
        if target is None or target not in own:
            raise DataError(f"{path}: unexpected key {key!r}, not part of the Encoding deep-stem ResNet "
                            f"(segmenter.backbone layers/base_width must match the file)")
        if tuple(value.shape) != tuple(own[target].shape):
            raise DataError(f"{path}: key {key!r} has shape {tuple(value.shape)}, EMANet expects "
                            f"{tuple(own[target].shape)}")
        loaded[target] = value
    trunk_keys = [k for k in own if k.startswith("extractor.")]
    missing = [k for k in trunk_keys if k not in loaded]
    bad = [k for k in missing if not k.endswith("num_batches_tracked")]
    if bad:
        raise DataError(f"{path}: missing key {extractor_to_encoding(bad[0])!r} of the Encoding ResNet "
                        f"({len(bad)} trunk tensors missing)")
    with torch.no_grad():
        for key, value in loaded.items():
            own[key].copy_(value.to(own[key].dtype))
    digest = sha256_of(path)
    model.weights_sha256 = digest
    counts = {"loaded": len(loaded), "ignored": len(ignored), "missing_num_batches_tracked": len(missing)}
    log.info("EMANet trunk init %s: loaded %d tensors, ignored %d (fc.*), %d num_batches_tracked not in the file "
             "(left 0), sha256 %s", path, counts["loaded"], counts["ignored"], counts["missing_num_batches_tracked"],
             digest)
    return counts


def load_emanet_checkpoint(model: EMANet, path: str | Path) -> int:
    """Load an official ``{'net': state_dict, 'step': int}`` file (or a bare state dict), strict, with
    ``weights_only=True``; returns the step (−1 when absent)."""
    from vwl_lightning.models.weight_files import read_weights_only, sha256_of, strip_key_prefix

    path = Path(path).expanduser()
    blob = read_weights_only(path, "EMANet checkpoint", "segmenter.init_checkpoint")
    state = blob.get("net", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected {{'net': state_dict, 'step': int}} or a state dict")
    state = strip_key_prefix(state, "module.")
    own = model.state_dict()
    for key in own:
        if key not in state:
            raise DataError(f"{path}: missing key {key!r} (segmenter.init_checkpoint: an official EMANet file)")
        if tuple(state[key].shape) != tuple(own[key].shape):
            raise DataError(f"{path}: key {key!r} has shape {tuple(state[key].shape)}, "
                            f"expected {tuple(own[key].shape)}")
    extra = [k for k in state if k not in own]
    if extra:
        raise DataError(f"{path}: unexpected key {extra[0]!r} (segmenter.init_checkpoint: an official EMANet file)")
    model.load_state_dict(state, strict=True)
    digest = sha256_of(path)
    step = int(blob.get("step", -1)) if isinstance(blob, dict) else -1
    log.info("EMANet checkpoint %s: loaded %d tensors (step %d), sha256 %s", path, len(own), step, digest)
    return step
