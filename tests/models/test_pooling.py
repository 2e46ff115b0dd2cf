"""Hybrid pooling (spec §3) against a hand-worked example and an independent NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vwl_lightning.errors import ConfigError
from vwl_lightning.models.pooling import GlobalAveragePooling, HybridPooling
from vwl_lightning.utils.instantiate import build, check_node


def numpy_hybrid_pool(x: np.ndarray, gamma: float, levels: tuple[int, ...]) -> np.ndarray:
    """Reference written from the spec's formula with explicit loops over cells.

    Cells are kh x kw = (h//s) x (w//s) tiles laid from the top-left corner, as many as fit whole:
    floor(h/kh) x floor(w/kw) of them (more than s per side when h is not a multiple of s).
    """
    b, c, h, w = x.shape
    out = gamma * x.mean(axis=(2, 3))
    for s in levels:
        kh, kw = h // s, w // s
        rows, cols = h // kh, w // kw
        maxima = np.zeros((b, c, rows, cols))
        for i in range(rows):
            for j in range(cols):
                maxima[:, :, i, j] = x[:, :, i * kh:(i + 1) * kh, j * kw:(j + 1) * kw].max(axis=(2, 3))
        out = out + maxima.mean(axis=(2, 3))
    return out / (gamma + len(levels))


def test_worked_example_4x4() -> None:
    # GAP = 8.5; global max = 16; 2x2 cell maxima 6, 8, 14, 16 -> 11; 4x4 cells are single pixels -> 8.5
    # HP = (2*8.5 + 16 + 11 + 8.5) / 5 = 10.5
    x = torch.arange(1, 17, dtype=torch.float32).reshape(1, 1, 4, 4)
    assert HybridPooling(gamma=2.0)(x).item() == pytest.approx(10.5)
    # gamma = 0 (the earlier "no GAP" variant): (16 + 11 + 8.5) / 3
    assert HybridPooling(gamma=0.0)(x).item() == pytest.approx(35.5 / 3)


def test_weights_with_gamma_two_are_point_four_and_point_two() -> None:
    # a map whose GAP is 0 and every max level is 1 isolates the max weights: 3 * 0.2 = 0.6 ... use delta
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 0, 0] = 64.0  # GAP = 1, global max = 64, 2x2 mean of maxima = 16, 4x4 mean = 4
    expected = 0.4 * 1 + 0.2 * 64 + 0.2 * 16 + 0.2 * 4
    assert HybridPooling(gamma=2.0)(x).item() == pytest.approx(expected)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 7, 10), (1, 5, 13, 9), (3, 2, 14, 14)])
@pytest.mark.parametrize("gamma", [0.0, 2.0, 5.5])
def test_matches_numpy_reference_including_sizes_not_divisible_by_four(shape, gamma) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    ours = HybridPooling(gamma=gamma, levels=(1, 2, 4))(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, numpy_hybrid_pool(x, gamma, (1, 2, 4)), rtol=1e-5, atol=1e-6)


def test_remainder_rows_are_ignored() -> None:
    # 5x5 map: level 2 tiles 2x2 cells over the top-left 4x4 and ignores row/column 4; level 4 has 1x1
    # cells, which tile all 25 pixels (5 per side), so its mean of maxima is the plain mean.
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 4, 4] = 100.0  # in level 2's remainder: seen by GAP (4), the global max (100) and level 4 (4)
    expected = (2 * 4.0 + 100.0 + 0.0 + 4.0) / 5
    assert HybridPooling(gamma=2.0)(x).item() == pytest.approx(expected)


def test_gradient_flows_to_max_locations_and_everywhere_through_gap() -> None:
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4).requires_grad_(True)
    HybridPooling(gamma=2.0)(x).sum().backward()
    grad = x.grad[0, 0]
    # GAP part: 0.4/16 everywhere; the bottom-right pixel also gets 0.2 (global) + 0.2/4 + 0.2/16
    assert grad[0, 0].item() == pytest.approx(0.4 / 16 + 0.2 / 16)
    assert grad[3, 3].item() == pytest.approx(0.4 / 16 + 0.2 + 0.2 / 4 + 0.2 / 16)


def test_gap_and_target_nodes() -> None:
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(GlobalAveragePooling()(x), x.mean(dim=(2, 3)))
    pool = build({"_target_": "vwl_lightning.models.pooling.HybridPooling", "gamma": 1.0}, "model.pool")
    assert isinstance(pool, HybridPooling) and pool.gamma == 1.0 and pool.levels == (1, 2, 4)
    with pytest.raises(ConfigError, match=r"^model\.pool\._target_='vwl_lightning\.models\.pooling\.Lse': expected"):
        build({"_target_": "vwl_lightning.models.pooling.Lse"}, "model.pool")


def test_negative_gamma_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^gamma=-1\.0: expected a number >= 0$"):
        HybridPooling(gamma=-1.0)
    node = {"_target_": "vwl_lightning.models.pooling.HybridPooling", "gamma": -1.0}
    for attempt in (lambda: build(node, "model.pool"), lambda: check_node(node, "model.pool")):
        with pytest.raises(ConfigError, match=r"^model\.pool\.gamma=-1\.0: expected a number >= 0$"):
            attempt()
    with pytest.raises(ConfigError, match=r"^model\.pool\.levels=\[0\]: expected a non-empty list of integers"):
        check_node({**node, "gamma": 2.0, "levels": [0]}, "model.pool")


def test_map_smaller_than_finest_level_is_explained() -> None:
    with pytest.raises(ValueError, match="smaller than the finest pyramid level"):
        HybridPooling()(torch.zeros(1, 1, 3, 3))
