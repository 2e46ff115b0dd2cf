"""Optimiser and schedule of the classifier (spec §4) and segmenter (spec §7).

SGD with two parameter groups — the (pre-trained) backbone at ``lr`` and the layers trained from
scratch at ``lr × new_layer_lr_mult`` (spec: 0.01 and 0.1) — weight decay on both, and the poly schedule
lr_t = lr_0 · (1 − t / T)^power updated every step (T = the run's total optimiser steps).

Momentum: the original code passes its weight decay positionally into SGD's *momentum* slot, so its
effective momentum is 1e-4 (spec §4, "momentum quirk"). ``momentum`` is a plain setting: the VOC/COCO
experiments keep the faithful 1e-4; the embedded benchmark, trained from random init, uses 0.9.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from vwl_lightning.errors import ConfigError

FAITHFUL_MOMENTUM = 1e-4


def trainable(parameters: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    return [p for p in parameters if p.requires_grad]


def poly_lambda(total_steps: int, power: float):
    """Multiplier (1 − t/T)^power, clamped at 0 after T steps."""
    if total_steps <= 0:
        raise ConfigError(f"the poly schedule needs a positive number of steps, got {total_steps}")

    def factor(step: int) -> float:
        return max(0.0, 1.0 - step / total_steps) ** power

    return factor


def build_sgd(groups: list[dict], lr: float, momentum: float, weight_decay: float,
              nesterov: bool = False) -> torch.optim.SGD:
    """SGD over parameter groups, each dict holding ``params`` and ``lr_mult``."""
    if lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {lr}")
    if not 0 <= momentum < 1:
        raise ConfigError(f"optim.momentum must be in [0, 1), got {momentum}")
    param_groups = [
        {"params": g["params"], "lr": lr * g["lr_mult"], "weight_decay": g.get("weight_decay", weight_decay),
         "name": g["name"]}
        for g in groups if g["params"]
    ]
    return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov)
