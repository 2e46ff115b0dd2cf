"""Hybrid pooling (HP, the original code's "HSPP"), spec §3.

Per channel of a feature map F (h × w)::

    HP(F) = ( γ·GAP(F) + Σ_{s ∈ levels} mean over the s×s grid of (max over each cell) ) / (γ + |levels|)

Each cell max is a ``max_pool2d`` with kernel (h//s, w//s) and stride equal to the kernel, as in the
original code. When h or w is not a multiple of s this tiles floor(h/(h//s)) cells per side (which can
exceed s: h = 5, s = 4 gives five 1-pixel cells) and ignores the rows/columns left over (floor mode).
With γ = 2 and levels (1, 2, 4) the weights are 0.4 on GAP and 0.2 on each max level. γ = 0 is the pure pyramid max.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vwl_lightning.utils.instantiate import require_int_list, require_number


class HybridPooling(nn.Module):
    """Spatial-pyramid max pooling mixed with global average pooling (spec §3).

    Args:
        gamma: weight γ of the GAP term; must be ≥ 0.
        levels: pyramid levels s; each contributes the mean of the s×s cell maxima.
    """

    def __init__(self, gamma: float = 2.0, levels: Sequence[int] = (1, 2, 4)) -> None:
        super().__init__()
        self.check_arguments(gamma, levels)
        self.gamma = float(gamma)
        self.levels = tuple(int(s) for s in levels)

    @classmethod
    def check_arguments(cls, gamma: float, levels: Sequence[int]) -> None:
        require_number("gamma", gamma, 0)
        require_int_list("levels", list(levels) if isinstance(levels, tuple) else levels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` → ``(B, C)``."""
        h, w = features.shape[-2:]
        if min(h, w) < max(self.levels):
            raise ValueError(
                f"feature map {h}x{w} is smaller than the finest pyramid level {max(self.levels)}; "
                "use larger inputs or coarser pyramid levels"
            )
        total = self.gamma * features.mean(dim=(2, 3))
        for s in self.levels:
            kernel = (h // s, w // s)
            cell_max = F.max_pool2d(features, kernel_size=kernel, stride=kernel)
            total = total + cell_max.mean(dim=(2, 3))
        return total / (self.gamma + len(self.levels))

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, levels={self.levels}"


class GlobalAveragePooling(nn.Module):
    """Plain GAP, ``(B, C, h, w)`` → ``(B, C)``: the baseline CAM pooling and the word head's pooling."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=(2, 3))

