"""Optimiser and schedule of the classifier (spec §4), the segmenter (spec §7) and IRN (spec §10.5).

The optimiser is a ``_partial_`` ``_target_`` node (``torch.optim.SGD`` with ``lr``, ``momentum``,
``weight_decay``); each module splits its parameters into named groups with a learning-rate multiplier
(spec §4: the pre-trained backbone at ``lr``, the layers trained from scratch at ``lr × new_layer_lr_mult``,
0.01 and 0.1) and :func:`make_optimizer` gives each group ``lr × lr_mult``. The schedule is
:class:`PolyLR`, lr_t = lr_0 · (1 − t / T)^power updated every step, T = the run's total optimiser steps.

Momentum: the original code passes its weight decay positionally into SGD's *momentum* slot, so its
effective momentum is 1e-4 (spec §4, "momentum quirk"). ``momentum`` is a plain setting: the VOC/COCO
experiments keep the faithful 1e-4; the embedded benchmark, trained from random init, uses 0.9.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

import torch
from torch import nn

from vwl_lightning.errors import ConfigError
from vwl_lightning.utils.instantiate import ArgumentError, build, check_node, require_number

FAITHFUL_MOMENTUM = 1e-4


def trainable(parameters: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    return [p for p in parameters if p.requires_grad]


def poly_lambda(total_steps: int, power: float) -> Callable[[int], float]:
    """Multiplier (1 − t/T)^power, clamped at 0 after T steps."""
    if total_steps <= 0:
        raise ArgumentError("total_steps", total_steps, "a positive number of optimiser steps")

    def factor(step: int) -> float:
        return max(0.0, 1.0 - step / total_steps) ** power

    return factor


class PolyLR(torch.optim.lr_scheduler.LambdaLR):
    """The poly schedule lr_t = lr_0 · (1 − t/T)^power, stepped every optimiser step (spec §4, §7).

    Args:
        optimizer: the optimiser whose groups it scales.
        total_steps: T, the run's total optimiser steps (the module passes ``estimated_stepping_batches``).
        power: the exponent (0.9 in every stage of the spec).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9) -> None:
        self.check_arguments(power)
        super().__init__(optimizer, poly_lambda(total_steps, power))

    @classmethod
    def check_arguments(cls, power: float) -> None:
        require_number("power", power, 0)


def stepped_poly_lambda(total_steps: int, power: float = 0.9, every: int = 10) -> Callable[[int], float]:
    """Factor for optimiser step k (iteration it = k + 1): (1 − ⌊it/every⌋·every / T)^power (EMANet, spec §11.5)."""
    if total_steps <= 0:
        raise ArgumentError("total_steps", total_steps, "a positive number of optimiser steps")

    def factor(step: int) -> float:
        iteration = step + 1
        return max(0.0, 1.0 - (iteration // every) * every / total_steps) ** power

    return factor


class SteppedPolyLR(torch.optim.lr_scheduler.LambdaLR):
    """EMANet's poly schedule (spec §11.5): lr(it) = lr_0 · (1 − ⌊it/every⌋·every / T)^power, recomputed every
    ``every`` iterations (it counts from 1, so iterations 1..every−1 run at lr_0); ``every=1``: every step.

    Args:
        optimizer: the optimiser whose groups it scales.
        total_steps: T, the run's total optimiser steps (the module passes ``estimated_stepping_batches``).
        power: the exponent (0.9).
        every: s, iterations between two recomputations (official: 10).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9,
                 every: int = 10) -> None:
        self.check_arguments(power, every)
        super().__init__(optimizer, stepped_poly_lambda(total_steps, power, every))

    @classmethod
    def check_arguments(cls, power: float, every: int) -> None:
        require_number("power", power, 0)
        require_number("every", every, 1, integer=True)


def make_optimizer(optimizer: Callable[..., torch.optim.Optimizer] | Any, groups: list[dict]) -> torch.optim.Optimizer:
    """Build the ``_partial_`` optimiser over named groups (``name``, ``params``, ``lr_mult``, optional
    ``weight_decay``): each group's learning rate is the optimiser's ``lr`` × its ``lr_mult``; empty groups
    are dropped."""
    base_lr = float(optimizer.keywords["lr"]) if isinstance(optimizer, partial) else None
    if base_lr is None:
        raise TypeError("make_optimizer needs a functools.partial optimiser (a `_partial_: true` node) with lr")
    param_groups = []
    for group in groups:
        if not group["params"]:
            continue
        entry = {"params": group["params"], "lr": base_lr * float(group["lr_mult"]), "name": group["name"]}
        if "weight_decay" in group:
            entry["weight_decay"] = group["weight_decay"]
        param_groups.append(entry)
    return optimizer(param_groups)


def check_optimizer(optimizer: Callable[..., torch.optim.Optimizer]) -> None:
    """Build the partial optimiser over one dummy parameter, so a bad value fails at start-up (torch's own
    checks: lr, momentum, weight_decay >= 0)."""
    optimizer([torch.zeros(1, requires_grad=True)])


def check_module_nodes(prefix: str, nodes: Mapping[str, Any], extra: Mapping[str, dict] | None = None) -> None:
    """:func:`~vwl_lightning.utils.instantiate.check_node` on each ``_target_`` node of a module (key
    ``<prefix>.<name>``) and a dry build of its ``optimizer``: a bad value fails before any network is built."""
    for name, node in nodes.items():
        check_node(node, f"{prefix}.{name}", **(extra or {}).get(name, {}))
    if nodes.get("optimizer") is not None:
        try:
            check_optimizer(build(nodes["optimizer"], f"{prefix}.optimizer"))
        except ValueError as exc:
            raise ConfigError(f"{prefix}.optimizer: {str(exc).splitlines()[0]}") from None
