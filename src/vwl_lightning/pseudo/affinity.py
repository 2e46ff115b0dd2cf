"""IRN's inter-pixel relations on the stride-4 grid: offsets, paths, pair labels, affinities, loss (spec §10.3, §10.5).

* **Offsets** ``O_R`` (spec §10.3 item 7): the "search dst" half-disc ``{(0,dx): 1 <= dx <= R-1} ∪
  {(dy,dx): 1 <= dy <= R-1, |dx| <= R-1, dy²+dx² < R²}``, listed row ``dy = 0`` first, then ``dy``
  ascending and ``dx`` ascending, then stable-sorted by path length ``|Π(d)|``. ``|O_10| = 152``,
  ``|O_5| = 34``.
* **Path** ``Π(d)`` (spec §10.5): the integer points of the box spanned by ``0`` and ``d`` whose distance
  to the line through them is below 1 px, ``(dy·x − dx·y)² / (dy² + dx²) < 1`` — a thick line including
  both endpoints.
* **Affinity** ``a(s, s+d) = 1 − max_{q ∈ Π(d)} B(s+q)`` (spec §10.5).
* **Training sources** (spec §10.3 item 8): rows ``[0, h − r_f)``, columns ``[r_f, w − r_f)`` with
  ``r_f = ⌈R⌉ − 1``, so every destination and every path point lies inside the grid.
* **Pair labels** (spec §10.3 item 9): valid when both ends are ``< 255``-class labels (``< ignore``);
  ``bg_pos`` both 0, ``fg_pos`` both the same class ``>= 1``, ``neg`` different labels.
* **Loss** (spec §10.5): ``ℓ⁺ = −ln(a + 1e-5)``, ``ℓ⁻ = −ln(1 + 1e-5 − a)``, summed over the whole batch;
  ``L = ((L_bg⁺ + L_fg⁺)/2 + L_neg) / 2``, each group normalised by its count ``+ 1e-5``.
"""

from __future__ import annotations

import math
from functools import cache

import torch

from vwl_lightning.errors import ConfigError

LOSS_EPS = 1e-5


def _check_radius(radius: int) -> int:
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 2:
        raise ConfigError(f"radius: need an integer >= 2, got {radius!r}")
    return radius


@cache
def path_points(dy: int, dx: int) -> tuple[tuple[int, int], ...]:
    """``Π(d)`` for ``d = (dy, dx) != 0`` as ``(y, x)`` points, row-major (spec §10.5)."""
    if dy == 0 and dx == 0:
        raise ValueError("the path of the zero offset is undefined")
    norm = dy * dy + dx * dx
    return tuple((y, x)
                 for y in range(min(0, dy), max(0, dy) + 1)
                 for x in range(min(0, dx), max(0, dx) + 1)
                 if (dy * x - dx * y) ** 2 < norm)  # (dy·x − dx·y)²/|d|² < 1, in integers


@cache
def half_disc_offsets(radius: int) -> tuple[tuple[int, int], ...]:
    """``O_R`` in IRN's tensor order: scan order, then stable-sorted by ``|Π(d)|`` (spec §10.3 item 7)."""
    r = _check_radius(radius)
    scan = [(0, dx) for dx in range(1, r)]
    scan += [(dy, dx) for dy in range(1, r) for dx in range(-r + 1, r) if dy * dy + dx * dx < r * r]
    return tuple(sorted(scan, key=lambda d: len(path_points(*d))))


def source_box(height: int, width: int, radius: int) -> tuple[int, int, int, int]:
    """Training sources ``(y0, y1, x0, x1)``: rows ``[0, h − r_f)``, columns ``[r_f, w − r_f)`` (spec §10.3)."""
    r_f = math.ceil(_check_radius(radius)) - 1
    if height <= r_f or width <= 2 * r_f:
        raise ConfigError(f"radius {radius}: a {height}x{width} label grid has no training source "
                          f"(needs height > {r_f} and width > {2 * r_f})")
    return 0, height - r_f, r_f, width - r_f


def pair_labels(labels: torch.Tensor, radius: int = 10, ignore_index: int = 255,
                dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``bg_pos, fg_pos, neg`` 0/1 masks ``(N, |O_R|, n_src)`` of a ``(N, h, w)`` stride-4 label map.

    For offset ``d`` and source ``s``: valid ⇔ ``L[s] < ignore`` and ``L[s+d] < ignore``; ``bg_pos`` ⇔
    both 0; ``fg_pos`` ⇔ equal and ``>= 1``; ``neg`` ⇔ different (spec §10.3 item 9).  ``dtype``: the loss's
    working precision (default: torch's default float), so ``count + 1e-5`` is formed in that precision.
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must be (N, h, w), got {tuple(labels.shape)}")
    labels = labels.long()
    y0, y1, x0, x1 = source_box(labels.shape[1], labels.shape[2], radius)
    src = labels[:, y0:y1, x0:x1].flatten(1)
    dst = torch.stack([labels[:, y0 + dy:y1 + dy, x0 + dx:x1 + dx].flatten(1)
                       for dy, dx in half_disc_offsets(radius)], dim=1)
    src = src.unsqueeze(1)
    valid = (src < ignore_index) & (dst < ignore_index)
    same = src == dst
    bg_pos = valid & same & (src == 0)
    fg_pos = valid & same & (src > 0)
    neg = valid & ~same
    dtype = dtype or torch.get_default_dtype()
    return bg_pos.to(dtype), fg_pos.to(dtype), neg.to(dtype)


def training_affinities(boundary: torch.Tensor, radius: int = 10) -> torch.Tensor:
    """``a(s, s+d) = 1 − max_{q∈Π(d)} B(s+q)`` for the training sources: ``(N, h, w) → (N, |O_R|, n_src)``."""
    if boundary.ndim != 3:
        raise ValueError(f"boundary must be (N, h, w), got {tuple(boundary.shape)}")
    y0, y1, x0, x1 = source_box(boundary.shape[1], boundary.shape[2], radius)
    out = []
    for dy, dx in half_disc_offsets(radius):
        path = torch.stack([boundary[:, y0 + qy:y1 + qy, x0 + qx:x1 + qx] for qy, qx in path_points(dy, dx)], 0)
        out.append(1.0 - path.amax(dim=0).flatten(1))
    return torch.stack(out, dim=1)


def affinity_loss(affinity: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor
                  ) -> dict[str, torch.Tensor]:
    """IRN's boundary loss over the whole batch (spec §10.5); returns ``bg_pos, fg_pos, pos, neg, total``.

    ``L_bg⁺ = Σ bg·(−ln(a+ε)) / (Σ bg + ε)``, ``L_fg⁺`` likewise, ``L_neg = Σ neg·(−ln(1+ε−a)) / (Σ neg + ε)``,
    ``total = ((L_bg⁺ + L_fg⁺)/2 + L_neg)/2`` with ε = 1e-5 (an empty group contributes 0).  The masks are
    taken in the affinities' dtype, so the counts and ``count + ε`` are in the loss's working precision.
    """
    bg_pos, fg_pos, neg = (m.to(affinity.dtype) for m in (bg_pos, fg_pos, neg))
    pos_term = -torch.log(affinity + LOSS_EPS)
    neg_term = -torch.log(1.0 + LOSS_EPS - affinity)
    bg = (bg_pos * pos_term).sum() / (bg_pos.sum() + LOSS_EPS)
    fg = (fg_pos * pos_term).sum() / (fg_pos.sum() + LOSS_EPS)
    ng = (neg * neg_term).sum() / (neg.sum() + LOSS_EPS)
    pos = (bg + fg) / 2
    return {"bg_pos": bg, "fg_pos": fg, "pos": pos, "neg": ng, "total": (pos + ng) / 2}
