"""The sparse random walk against a dense reference written from spec §10.6 / §10.9 (kept here, NumPy, float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vwl_lightning.errors import ConfigError
from vwl_lightning.pseudo.random_walk import (
    disc_offsets,
    random_walk,
    transition_weights,
    walk_steps,
    walk_to_labels,
)


def dense_transition(boundary: np.ndarray, beta: float, radius: int = 5) -> np.ndarray:
    """IRN's dense ``T = S·diag(d)⁻¹`` (spec §10.6): n×n, every in-image pair with dy²+dx² < R² built in both
    directions from its own thick-line path (endpoints included), self-loop 1, powered, then column-normalised."""
    h, w = boundary.shape
    n = h * w
    a = np.eye(n)
    for y in range(h):
        for x in range(w):
            for dy in range(-radius + 1, radius):
                for dx in range(-radius + 1, radius):
                    if (dy, dx) == (0, 0) or dy * dy + dx * dx >= radius * radius:
                        continue
                    ty, tx = y + dy, x + dx
                    if not (0 <= ty < h and 0 <= tx < w):
                        continue
                    norm = dy * dy + dx * dx
                    path = [boundary[y + qy, x + qx]
                            for qy in range(min(0, dy), max(0, dy) + 1)
                            for qx in range(min(0, dx), max(0, dx) + 1)
                            if (dy * qx - dx * qy) ** 2 / norm < 1]
                    a[y * w + x, ty * w + tx] = 1.0 - max(path)
    s = a ** beta
    return s / s.sum(axis=0, keepdims=True)


def dense_walk(boundary: np.ndarray, cams: np.ndarray, beta: float, exp_times: int) -> np.ndarray:
    """``X₀·T^(2^exp_times)`` by repeated squaring, as IRN computes it; ``X₀ = cam ⊙ (1 − B)``."""
    t = dense_transition(boundary, beta)
    for _ in range(exp_times):
        t = t @ t
    k = cams.shape[0]
    x0 = (cams * (1.0 - boundary)[None]).reshape(k, -1)
    return (x0 @ t).reshape(cams.shape)


def random_inputs(h: int, w: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    boundary = rng.random((h, w)) ** 3  # mostly low, some strong edges
    boundary[:, w // 2] = 0.9  # a wall the walk must respect
    cams = rng.random((k, h, w))
    return boundary, cams


def sparse_transition(boundary: np.ndarray, beta: float) -> np.ndarray:
    """Rows of the sparse operator: one step applied to every basis vector (K = n channels)."""
    h, w = boundary.shape
    b = torch.from_numpy(boundary)[None]
    weights = transition_weights(b, beta)
    eye = torch.eye(h * w, dtype=torch.float64).reshape(1, h * w, h, w)
    return walk_steps(eye, weights, 1).reshape(h * w, h * w).numpy()


@pytest.mark.parametrize(("h", "w", "beta", "exp_times"), [(9, 13, 10.0, 8), (17, 11, 10.0, 8), (7, 5, 3.0, 5),
                                                           (3, 8, 10.0, 8)])
def test_sparse_walk_equals_dense_reference_float64(h: int, w: int, beta: float, exp_times: int) -> None:
    boundary, cams = random_inputs(h, w, 3, seed=h * 100 + w)
    expected = dense_walk(boundary, cams, beta, exp_times)
    got = random_walk(torch.from_numpy(cams)[None], torch.from_numpy(boundary)[None], beta, exp_times)[0].numpy()
    assert np.abs(expected).max() > 0.05  # a non-trivial result
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_sparse_operator_is_the_dense_matrix_and_columns_sum_to_one() -> None:
    boundary, _ = random_inputs(9, 13, 1, seed=3)
    sparse = sparse_transition(boundary, 10.0)
    dense = dense_transition(boundary, 10.0)
    np.testing.assert_allclose(sparse, dense, rtol=0, atol=1e-14)
    np.testing.assert_allclose(sparse.sum(axis=0), 1.0, rtol=0, atol=1e-12)
    # the rows do not: the walk is not mass-preserving diffusion (spec §10.9 item 3)
    assert np.abs(sparse.sum(axis=1) - 1.0).max() > 0.1
    # 68 neighbours + self for an interior pixel, fewer at borders (no out-of-image pairs)
    nonzero = (dense > 0).sum(axis=0)
    assert nonzero.max() == 69 and nonzero.min() < 69
    assert len(disc_offsets()) == 69


def test_constant_map_stays_constant() -> None:
    boundary, _ = random_inputs(11, 14, 1, seed=5)
    weights = transition_weights(torch.from_numpy(boundary)[None], 10.0)
    x = torch.full((1, 2, 11, 14), 0.37, dtype=torch.float64)
    out = walk_steps(x, weights, 256)
    np.testing.assert_allclose(out.numpy(), 0.37, rtol=0, atol=1e-12)


def test_wrong_normalisation_direction_is_detected() -> None:
    """The transposed rule v ← S(v/d) (i.e. x·D⁻¹S) is a different operator: the 1e-10 check catches it."""
    boundary, cams = random_inputs(9, 13, 2, seed=7)
    t = dense_transition(boundary, 10.0)
    h, w = boundary.shape
    # recover S and d from T: d_j = 1 / T_jj's self-loop share (A_jj = 1 → S_jj = 1 → T_jj = 1/d_j)
    degree = 1.0 / np.diag(t)
    s = t * degree[None, :]
    wrong = s / degree[:, None]  # D⁻¹S: rows sum to 1
    x0 = (cams * (1.0 - boundary)[None]).reshape(2, -1)
    right_result, wrong_result = x0.copy(), x0.copy()
    for _ in range(256):
        right_result, wrong_result = right_result @ t, wrong_result @ wrong
    got = random_walk(torch.from_numpy(cams)[None], torch.from_numpy(boundary)[None], 10.0, 8)[0].numpy()
    np.testing.assert_allclose(got.reshape(2, -1), right_result, rtol=0, atol=1e-10)
    assert np.abs(wrong_result - right_result).max() > 1e-2
    assert np.abs(got.reshape(2, -1) - wrong_result).max() > 1e-2
    # un-normalised squaring followed by normalisation is also different (spec §10.9 item 2)
    s2 = np.linalg.matrix_power(s, 2)
    assert np.abs(s2 / s2.sum(axis=0, keepdims=True) - t @ t).max() > 1e-3
    assert h * w == t.shape[0]


def test_batched_walk_of_two_sizes_equals_each_walk_alone() -> None:
    b1, c1 = random_inputs(9, 13, 2, seed=11)
    b2, c2 = random_inputs(12, 7, 2, seed=12)
    canvas_b = np.full((2, 12, 13), 0.3)
    canvas_c = np.full((2, 2, 12, 13), 0.8)  # garbage outside each image must not leak in
    canvas_b[0, :9, :13], canvas_c[0, :, :9, :13] = b1, c1
    canvas_b[1, :12, :7], canvas_c[1, :, :12, :7] = b2, c2
    got = random_walk(torch.from_numpy(canvas_c), torch.from_numpy(canvas_b), 10.0, 8, sizes=[(9, 13), (12, 7)])
    np.testing.assert_allclose(got[0, :, :9, :13].numpy(), dense_walk(b1, c1, 10.0, 8), rtol=0, atol=1e-10)
    np.testing.assert_allclose(got[1, :, :12, :7].numpy(), dense_walk(b2, c2, 10.0, 8), rtol=0, atol=1e-10)


def test_float32_labels_match_the_float64_dense_labels_except_at_near_ties() -> None:
    boundary, cams = random_inputs(19, 23, 3, seed=21)
    keys = np.array([4, 9, 15])
    height, width = 19 * 4 - 2, 23 * 4 - 3  # H, W not multiples of 4: the upsampled map is cropped
    dense = torch.from_numpy(dense_walk(boundary, cams, 10.0, 8))
    got = random_walk(torch.from_numpy(cams).float()[None], torch.from_numpy(boundary).float()[None], 10.0, 8)[0]
    # float32 rounding of (1 - B)^10 and 256 steps: measured max |Δ| 1.4e-4 on values up to 0.46
    np.testing.assert_allclose(got.double().numpy(), dense.numpy(), rtol=0, atol=5e-4 * float(dense.max()))
    want = walk_to_labels(dense, keys, (height, width))
    have = walk_to_labels(got, keys, (height, width))
    assert want.shape == (height, width) and set(np.unique(want)) <= {0, 4, 9, 15}
    assert len(np.unique(want)) >= 3
    up = torch.nn.functional.interpolate(dense[None], scale_factor=4, mode="bilinear",
                                         align_corners=False)[0, :, :height, :width]
    scores = torch.cat([torch.full_like(up[:1], 0.25), up / up.max()]).sort(0).values
    margin = (scores[-1] - scores[-2]).numpy()
    differ = want != have
    assert np.all(margin[differ] < 1e-4)


def test_walk_to_labels_by_hand() -> None:
    # two classes on a 1x2 grid; upsampled to 4x8 then cropped to 3x6; global max normalisation
    walked = torch.tensor([[[0.8, 0.1]], [[0.1, 0.15]]], dtype=torch.float64)
    labels = walk_to_labels(walked, np.array([3, 7]), (3, 6))
    # column 0 is all class 3 (score 0.8 / 0.8 = 1 there); the rule below is argmax([0.25, c3, c7])
    assert labels.shape == (3, 6)
    assert labels[:, 0].tolist() == [3, 3, 3]
    up = torch.nn.functional.interpolate(walked[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
    c3, c7 = up[0, :3, :6].numpy() / 0.8, up[1, :3, :6].numpy() / 0.8
    expected = np.where((c3 > 0.25) & (c3 >= c7), 3, np.where(c7 > 0.25, 7, 0))  # first maximum wins
    assert labels.tolist() == expected.tolist()
    assert walk_to_labels(torch.zeros(2, 1, 2), np.array([3, 7]), (4, 8)).max() == 0


@pytest.mark.parametrize(("beta", "exp_times", "radius"), [(0, 8, 5), (10.0, -1, 5), (10.0, 8.0, 5), (10.0, 8, 1)])
def test_bad_walk_settings_are_one_line_errors(beta: float, exp_times: int, radius: int) -> None:
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ConfigError, match=r"^irn\.\w+: need") as info:
        random_walk(x, x[:, 0], beta, exp_times, radius)
    assert "\n" not in str(info.value)


def test_flushed_walk_equals_the_ieee_walk_and_leaves_flushing_off() -> None:
    torch.manual_seed(0)
    boundary = torch.rand(1, 15, 17) * 0.05
    boundary[:, 7] = 0.99995  # a saturated edge: (1 - B)^10 ~ 1e-43, a float32 subnormal
    cams = torch.rand(1, 2, 15, 17)
    flushed = random_walk(cams, boundary, 10.0, 4, 5)
    ieee = random_walk(cams, boundary, 10.0, 4, 5, flush_denormal=False)
    torch.testing.assert_close(flushed, ieee, rtol=1e-5, atol=1e-7)
    assert (torch.tensor([1e-40]) * 1.0).item() != 0.0  # flush-to-zero is off again after the walk
