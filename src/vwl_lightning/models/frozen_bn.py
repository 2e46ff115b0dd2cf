"""Frozen BatchNorm: every ``_BatchNorm`` (plain ``BatchNorm2d``, timm's ``BatchNormAct2d``, SyncBN) kept in eval
mode, so it normalises with its stored statistics and never updates them (spec §1, §12.4)."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_to_eval(module: nn.Module) -> None:
    """Put every BatchNorm inside ``module`` in eval mode (call it after ``module.train(...)``)."""
    for child in module.modules():
        if isinstance(child, _BatchNorm):
            child.eval()
