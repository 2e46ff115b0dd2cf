"""IRN's boundary-driven random walk as a sparse operation: memory O(n), never an n×n matrix (spec §10.6, §10.9).

The dense walk of IRN (spec §10.6 step 4) builds ``A`` (n×n, ``A_ii = 1``, ``A_ij = A_ji = 1 − max_{q∈Π(d)}
B(i+q)`` for ``j − i = ±d``, ``d ∈ O_5``, both ends in the image), powers it ``S = A^∘β``, normalises by columns
``T = S·diag(d)⁻¹`` with ``d_j = Σ_i S_ij`` (self-loop included), squares ``T`` ``exp_times`` times and returns
``X₀·T^(2^exp_times)`` with ``X₀ = cam ⊙ (1 − B)``.  This module applies the same operator one step at a
time (spec §10.9): with the in-disc neighbourhood ``N(j)`` (68 neighbours, the strict ``dy²+dx² < R²``),

    v_j ← (v_j + Σ_{i∈N(j)} S_ij v_i) / d_j,     repeated 2^exp_times times,

which is ``v ← v·T`` by associativity.  Storage: one weight plane per offset of the full disc (69 for
R = 5, the self-loop included, already divided by the receiving pixel's degree) plus the padded state:
``(69 + 2K)·n`` floats, ~4.5 MiB at n = 16,384 in float32.  Cost per step ``2·69·K·n`` FLOP.

Denormals: on the CPU the walk runs with flush-to-zero (``torch.set_flush_denormal(True)``, turned off again
afterwards, torch's default). A trained IRNet saturates its boundary map (B ≈ 0.9999 on strong edges), and
``(1 − B)^10`` is then a float32 subnormal, on which every multiply-add of the 256 steps is many times slower:
on a 500×375 grid with 9 % subnormal weight planes the walk took 1.26 s with IEEE subnormals against 0.22 s
flushed, with identical labels and scores (``python -m bench.bench_walk --methods sparse --edge 0.9999
--denormals keep|flush``; BENCHMARKS.md). The flag is per thread: it covers the walk's one-thread default.

Batching: images of different sizes share one canvas; each image occupies the top-left ``h_i × w_i`` of its
slot, and every pair with an end outside it has weight 0 (so canvas padding never touches the image).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from vwl_lightning.errors import ConfigError
from vwl_lightning.pseudo.affinity import half_disc_offsets, path_points

WALK_RADIUS = 5


def check_walk_settings(beta: float, exp_times: int, radius: int, bg_thres: float | None = None) -> None:
    """ConfigError (one line, naming the key) for walk settings outside their domain."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ConfigError(f"irn.beta: need a number > 0, got {beta!r}")
    if isinstance(exp_times, bool) or not isinstance(exp_times, int) or not 0 <= exp_times <= 16:
        raise ConfigError(f"irn.exp_times: need an integer in [0, 16] (2^exp_times steps), got {exp_times!r}")
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 2:
        raise ConfigError(f"irn.walk_radius: need an integer >= 2, got {radius!r}")
    if bg_thres is not None and not 0.0 <= float(bg_thres) <= 1.0:
        raise ConfigError(f"irn.sem_seg_bg_thres: need a value in [0, 1], got {bg_thres!r}")


def disc_offsets(radius: int = WALK_RADIUS) -> list[tuple[int, int]]:
    """The full disc the walk uses: ``(0, 0)``, then each half-disc offset ``d`` and ``−d`` (2·|O_R| + 1)."""
    out = [(0, 0)]
    for dy, dx in half_disc_offsets(radius):
        out += [(dy, dx), (-dy, -dx)]
    return out


def _inside_mask(shape: tuple[int, int, int], sizes: Sequence[tuple[int, int]] | None,
                 device: torch.device) -> torch.Tensor:
    n, h, w = shape
    if sizes is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if len(sizes) != n:
        raise ValueError(f"{len(sizes)} sizes for {n} images")
    rows = torch.arange(h, device=device)[None, :, None]
    cols = torch.arange(w, device=device)[None, None, :]
    hs = torch.tensor([s[0] for s in sizes], device=device)[:, None, None]
    ws = torch.tensor([s[1] for s in sizes], device=device)[:, None, None]
    return (rows < hs) & (cols < ws)


def pair_weights(boundary: torch.Tensor, beta: float, radius: int = WALK_RADIUS,
                 sizes: Sequence[tuple[int, int]] | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``S(s, s+d) = (1 − max_{q∈Π(d)} B(s+q))^β`` per half-disc offset, 0 unless both ends are in the image.

    ``boundary`` ``(N, h, w)`` → ``(N, |O_R|, h, w)`` indexed by the source ``s`` (spec §10.6, §10.9 item 1:
    B is padded with 1, never 0, and out-of-image pairs are masked).  The path maximum is accumulated in
    place, so the only large buffer is the result (``out`` when given, e.g. a strided view of a larger buffer).
    """
    n, h, w = boundary.shape
    r = radius
    inside = _inside_mask((n, h, w), sizes, boundary.device)
    b = torch.where(inside, boundary, torch.ones((), dtype=boundary.dtype, device=boundary.device))
    bp = F.pad(b, (r, r, r, r), value=1.0)
    ip = F.pad(inside, (r, r, r, r), value=False)
    offsets = half_disc_offsets(radius)
    if out is None:
        out = torch.empty((n, len(offsets), h, w), dtype=boundary.dtype, device=boundary.device)
    for k, (dy, dx) in enumerate(offsets):
        plane = out[:, k]
        plane.copy_(b)  # (0, 0) is on every path
        for qy, qx in path_points(dy, dx):
            torch.maximum(plane, bp[:, r + qy:r + qy + h, r + qx:r + qx + w], out=plane)
        plane.neg_().add_(1.0).clamp_(min=0.0).pow_(beta)
        plane.mul_(inside & ip[:, r + dy:r + dy + h, r + dx:r + dx + w])
    return out


def transition_weights(boundary: torch.Tensor, beta: float, radius: int = WALK_RADIUS,
                       sizes: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
    """Per-pixel incoming weights ``W_e[j] = S(j, j+e) / d_j`` over :func:`disc_offsets` → ``(N, 2|O_R|+1, h, w)``.

    ``d_j = 1 + Σ_d S(j, j+d) + Σ_d S(j−d, j)``: the powered affinities of every in-image neighbour plus the
    self-loop (spec §10.9 item 2), so each column of ``T`` sums to 1 (division by the *receiving* pixel's
    degree, item 3).  Built in place in the result: peak memory ≈ 69·n values (+ a few n) for R = 5.
    """
    n, h, w = boundary.shape
    m = len(half_disc_offsets(radius))
    out = torch.zeros((n, 2 * m + 1, h, w), dtype=boundary.dtype, device=boundary.device)
    out[:, 0] = 1.0
    forward = out[:, 1::2]  # planes 1, 3, 5, ...: S(j, j+d), seen from j
    pair_weights(boundary, beta, radius, sizes, out=forward)
    for k, (dy, dx) in enumerate(half_disc_offsets(radius)):
        if dy >= h or abs(dx) >= w:
            continue  # no pair of this offset fits in the grid
        # plane 2k+2: S(j−d, j), seen from j: the source plane shifted by +d (zero where j−d is outside)
        tx0, tx1 = max(0, dx), min(w, w + dx)
        out[:, 2 * k + 2, dy:, tx0:tx1] = forward[:, k, : h - dy, tx0 - dx:tx1 - dx]
    degree = out.sum(1, keepdim=True)
    return out.div_(degree)


def walk_steps(x: torch.Tensor, weights: torch.Tensor, steps: int, radius: int = WALK_RADIUS) -> torch.Tensor:
    """Apply ``v ← v·T`` ``steps`` times: ``v_j ← Σ_e W_e[j] v_{j+e}``; ``x`` ``(N, K, h, w)``."""
    r = radius
    offsets = disc_offsets(radius)
    if weights.shape[1] != len(offsets):
        raise ValueError(f"weights have {weights.shape[1]} planes, the radius-{radius} disc has {len(offsets)}")
    h, w = x.shape[-2:]
    wk = weights.unsqueeze(2)  # (N, E, 1, h, w): broadcast over classes
    v = x
    for _ in range(steps):
        vp = F.pad(v, (r, r, r, r))
        out = wk[:, 0] * v
        for e, (dy, dx) in enumerate(offsets[1:], start=1):
            out.addcmul_(wk[:, e], vp[..., r + dy:r + dy + h, r + dx:r + dx + w])
        v = out
    return v


@contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Flush-to-zero on the CPU (this thread) inside the block; off again afterwards (torch's default)."""
    if not enabled:
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def random_walk(cams: torch.Tensor, boundary: torch.Tensor, beta: float = 10.0, exp_times: int = 8,
                radius: int = WALK_RADIUS, sizes: Sequence[tuple[int, int]] | None = None,
                flush_denormal: bool = True) -> torch.Tensor:
    """``X₀·T^(2^exp_times)`` with ``X₀ = cam ⊙ (1 − B)`` (spec §10.6 step 4); ``(N, K, h, w)`` → same shape.

    ``flush_denormal``: run with flush-to-zero on the CPU (module docstring: subnormal weights of a saturated
    boundary map slow the walk several times and change nothing); ``False`` keeps IEEE subnormals.
    """
    with flush_denormals(flush_denormal and cams.device.type == "cpu"):
        return _random_walk(cams, boundary, beta, exp_times, radius, sizes)


def _random_walk(cams: torch.Tensor, boundary: torch.Tensor, beta: float, exp_times: int, radius: int,
                 sizes: Sequence[tuple[int, int]] | None) -> torch.Tensor:
    check_walk_settings(beta, exp_times, radius)
    if cams.ndim != 4 or boundary.ndim != 3 or cams.shape[0] != boundary.shape[0] \
            or cams.shape[-2:] != boundary.shape[-2:]:
        raise ValueError(f"cams (N, K, h, w) {tuple(cams.shape)} and boundary (N, h, w) {tuple(boundary.shape)} "
                         f"do not match")
    boundary = boundary.to(cams.dtype)
    weights = transition_weights(boundary, float(beta), radius, sizes)
    x0 = cams * (1.0 - boundary).unsqueeze(1)
    if sizes is not None:
        x0 = x0 * _inside_mask(tuple(boundary.shape), sizes, boundary.device).unsqueeze(1)
    return walk_steps(x0, weights, 2 ** exp_times, radius)


def walk_to_labels(walked: torch.Tensor, keys: np.ndarray, image_shape: tuple[int, int],
                   bg_thres: float = 0.25) -> np.ndarray:
    """Semantic label map from one walked ``(K, h, w)`` map (spec §10.6 steps 5-6).

    Bilinear ×4 (align_corners=False), crop to ``(H, W)``, divide by the **global** maximum, prepend a
    ``bg_thres`` plane, argmax (first maximum wins: background on ties), map index ``i > 0`` to
    ``keys[i−1]``.  A map whose maximum is not positive (no CAM mass) is all background (IRN would divide
    by 0).  Returns ``(H, W)`` uint8.
    """
    height, width = image_shape
    keys_arr = np.asarray(keys, dtype=np.int64).reshape(-1)
    if walked.ndim != 3 or walked.shape[0] != keys_arr.size:
        raise ValueError(f"walked map {tuple(walked.shape)} does not match {keys_arr.size} keys")
    if keys_arr.size == 0:
        return np.zeros((height, width), dtype=np.uint8)
    up = F.interpolate(walked[None], scale_factor=4, mode="bilinear", align_corners=False)[0, :, :height, :width]
    top = up.max()
    if not top > 0:
        return np.zeros((height, width), dtype=np.uint8)
    up = up / top
    scores = torch.cat([torch.full_like(up[:1], float(bg_thres)), up], 0)
    index = scores.argmax(0).cpu().numpy()
    lookup = np.concatenate([[0], keys_arr]).astype(np.uint8)
    return lookup[index]
