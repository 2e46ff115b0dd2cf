"""Fold frozen BatchNorms into the convolutions before them, for inference (docs/method.md §5.1).

A BatchNorm in eval mode is an affine map per channel, ``y = γ (x − μ) / √(σ² + ε) + β``; after a convolution
``x = W * z + b`` it folds into that convolution exactly (up to rounding):
``W' = W · s``, ``b' = (b − μ) · s + β`` with ``s = γ / √(σ² + ε)`` per output channel
(``torch.nn.utils.fusion.fuse_conv_bn_eval``). The CAM stage then skips one memory-bound pass over every
feature map (14 % of the ResNet-101 CAM time in the profile of BENCHMARKS.md).

Pairs are found by structure, not by tracing: in a ``Sequential``, a ``BatchNorm2d`` right after a ``Conv2d``;
in any module, children named ``bnX`` and ``convX`` (the ResNet naming of timm, torchvision and
``models/dilated_resnet.py``: ``conv1``/``bn1``, ``conv2``/``bn2``, ...; a ``convX`` that is a ``Sequential``
ending in a ``Conv2d``, a deep stem, folds into that last convolution). That naming is a convention, not a
guarantee, so :func:`fold_batchnorm` runs the network on a probe input before and after and refuses the
folding if the outputs differ by more than rounding.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from vwl_lightning.errors import ConfigError


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    """Only a plain Conv2d followed by a plain BatchNorm2d (not timm's BatchNormAct2d) in eval mode."""
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and not bn.training
            and bn.track_running_stats and bn.running_mean is not None and conv.out_channels == bn.num_features)


def _fold_children(parent: nn.Module) -> int:
    """Fold the (conv, bn) pairs among ``parent``'s direct children in place; returns how many."""
    folded = 0
    children = list(parent.named_children())
    if isinstance(parent, nn.Sequential):
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
            if _foldable(conv, bn):
                parent._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
                parent._modules[bn_name] = nn.Identity()
                folded += 1
        return folded
    named = dict(children)
    for bn_name, bn in children:
        if not bn_name.startswith("bn"):
            continue
        owner, conv_name = parent, "conv" + bn_name[2:]
        conv = named.get(conv_name)
        if isinstance(conv, nn.Sequential) and len(conv):   # a deep stem: conv1 = Sequential(..., Conv2d)
            owner, conv_name = conv, str(len(conv) - 1)
            conv = conv[-1]
        if conv is not None and _foldable(conv, bn):
            setattr(owner, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(parent, bn_name, nn.Identity())
            folded += 1
    return folded


def fold_batchnorm(model: nn.Module, forward: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                   probe: torch.Tensor, rtol: float = 1e-4) -> tuple[nn.Module, int]:
    """A copy of ``model`` (in eval mode) with its conv→BN pairs folded, and the number folded.

    ``forward(model, probe)`` is run on the original and on the copy in float32; if the largest difference
    exceeds ``rtol`` times the largest output magnitude (plus 1e-6), the folding is refused with a
    :class:`ConfigError` naming ``cam.fold_batchnorm`` — a model whose BN does not follow the named conv.
    """
    model = model.eval()
    folded_model = copy.deepcopy(model)
    count = sum(_fold_children(module) for module in list(folded_model.modules()))
    with torch.inference_mode():
        reference = forward(model, probe).float()
        result = forward(folded_model, probe).float()
    diff = float((reference - result).abs().max()) if reference.numel() else 0.0
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    if diff > rtol * scale + 1e-6:
        raise ConfigError(f"cam.fold_batchnorm=true: folding {count} BatchNorms changed the CAMs by {diff:.3g} "
                          f"(largest value {scale:.3g}); this network's BatchNorms do not follow the convolutions "
                          "their names pair them with: set cam.fold_batchnorm=false")
    return folded_model, count
