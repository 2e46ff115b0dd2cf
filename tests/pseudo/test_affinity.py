"""IRN offsets, paths, pair labels, affinities and the boundary loss against spec §10.3 / §10.5 values."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from vwl_lightning.errors import ConfigError
from vwl_lightning.pseudo.affinity import (
    affinity_loss,
    half_disc_offsets,
    pair_labels,
    path_points,
    source_box,
    training_affinities,
)

O5_SPEC_ORDER = [(0, 1), (1, 0), (0, 2), (2, 0), (0, 3), (1, -1), (1, 1), (3, 0), (0, 4), (4, 0), (1, -2), (1, 2),
                 (2, -1), (2, 1), (2, -2), (2, 2), (1, -3), (1, 3), (2, -3), (2, 3), (3, -2), (3, -1), (3, 1), (3, 2),
                 (1, -4), (1, 4), (3, -3), (3, 3), (4, -1), (4, 1), (2, -4), (2, 4), (4, -2), (4, 2)]


def test_offset_sets_have_the_spec_sizes_and_order() -> None:
    assert len(half_disc_offsets(10)) == 152
    assert len(half_disc_offsets(5)) == 34
    assert list(half_disc_offsets(5)) == O5_SPEC_ORDER
    o10 = half_disc_offsets(10)
    assert max(dy * dy + dx * dx for dy, dx in o10) == 98  # (7, ±7): the inequality is strict
    # exactly one of d and -d for every non-zero d with |d|² < R²
    full = {(dy, dx) for dy in range(-9, 10) for dx in range(-9, 10) if 0 < dy * dy + dx * dx < 100}
    halves = set(o10) | {(-dy, -dx) for dy, dx in o10}
    assert halves == full and not set(o10) & {(-dy, -dx) for dy, dx in o10}


def test_paths_match_the_spec_examples() -> None:
    assert set(path_points(1, 1)) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert [len(path_points(*d)) for d in [(0, 4), (2, 1), (3, 4), (4, 2), (9, 4)]] == [5, 6, 10, 11, 20]
    # point symmetry about the midpoint: the same pixels seen from either end
    for dy, dx in half_disc_offsets(10):
        points = set(path_points(dy, dx))
        assert {(dy - y, dx - x) for y, x in points} == points
        assert (0, 0) in points and (dy, dx) in points


def test_path_length_groups() -> None:
    assert Counter(len(path_points(*d)) for d in half_disc_offsets(5)) == {2: 2, 3: 2, 4: 4, 5: 2, 6: 4, 7: 2,
                                                                         8: 8, 10: 6, 11: 4}
    lengths = {len(path_points(*d)) for d in half_disc_offsets(10)}
    assert min(lengths) == 2 and max(lengths) == 22 and len(lengths) == 20


def test_sources_of_a_128_grid() -> None:
    y0, y1, x0, x1 = source_box(128, 128, 10)
    assert (y0, y1, x0, x1) == (0, 119, 9, 119)
    assert (y1 - y0) * (x1 - x0) == 13090
    bg, fg, neg = pair_labels(torch.zeros(2, 128, 128, dtype=torch.long), 10)
    assert bg.shape == fg.shape == neg.shape == (2, 152, 13090)
    assert bg.sum() == 2 * 152 * 13090 and fg.sum() == 0 and neg.sum() == 0


def test_pair_label_counts_on_a_hand_made_map() -> None:
    # R = 2: offsets (0,1), (1,0), (1,-1), (1,1); sources rows 0-1, columns 1-3 (6 sources)
    labels = torch.tensor([[[0, 0, 1, 1, 255],
                            [0, 2, 1, 1, 0],
                            [0, 0, 0, 255, 0]]])
    assert half_disc_offsets(2) == ((0, 1), (1, 0), (1, -1), (1, 1))
    bg, fg, neg = pair_labels(labels, 2)
    assert bg.shape == (1, 4, 6)
    # worked by hand, per offset (bg, fg, neg): (0,1) 0,2,3  (1,0) 0,2,3  (1,-1) 1,1,4  (1,1) 0,1,4
    assert bg[0].sum(1).tolist() == [0, 0, 1, 0]
    assert fg[0].sum(1).tolist() == [2, 2, 1, 1]
    assert neg[0].sum(1).tolist() == [3, 3, 4, 4]
    # the three pairs touching 255 are in no group; source (0,1)=0 with (1,0)=0 is the only bg pair
    assert int((bg + fg + neg).sum()) == 24 - 3
    assert bg[0, 2].tolist() == [1, 0, 0, 0, 0, 0]


def test_training_affinity_is_one_minus_the_path_maximum() -> None:
    torch.manual_seed(0)
    boundary = torch.rand(1, 12, 14)
    aff = training_affinities(boundary, 3)
    offsets = half_disc_offsets(3)
    y0, y1, x0, x1 = source_box(12, 14, 3)
    width = x1 - x0
    for dy, dx in [(0, 1), (1, 1), (2, -2), (1, 2)]:
        k = offsets.index((dy, dx))
        for sy, sx in [(0, 2), (5, 7), (9, 11)]:
            expected = 1 - max(float(boundary[0, sy + qy, sx + qx]) for qy, qx in path_points(dy, dx))
            assert float(aff[0, k, sy * width + (sx - x0)]) == pytest.approx(expected, abs=1e-7)
    # (1,1) at source (5,7): the four cells (5,7), (5,8), (6,7), (6,8)
    k = offsets.index((1, 1))
    box = boundary[0, 5:7, 7:9].max()
    assert float(aff[0, k, 5 * width + (7 - x0)]) == pytest.approx(1 - float(box), abs=1e-7)


def test_loss_against_hand_computed_values() -> None:
    aff = torch.tensor([[[0.9, 0.2, 0.5, 0.7]]])
    bg = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    fg = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]])
    neg = torch.tensor([[[0.0, 1.0, 0.0, 0.0]]])
    out = affinity_loss(aff, bg, fg, neg)
    eps = 1e-5
    l_bg = -math.log(0.9 + eps) / (1 + eps)
    l_fg = (-math.log(0.5 + eps) - math.log(0.7 + eps)) / (2 + eps)
    l_neg = -math.log(1 + eps - 0.2) / (1 + eps)
    assert float(out["bg_pos"]) == pytest.approx(l_bg, rel=1e-6)
    assert float(out["fg_pos"]) == pytest.approx(l_fg, rel=1e-6)
    assert float(out["neg"]) == pytest.approx(l_neg, rel=1e-6)
    assert float(out["total"]) == pytest.approx(((l_bg + l_fg) / 2 + l_neg) / 2, rel=1e-6)
    # by hand: bg 0.10535, fg (0.69313 + 0.35666)/2 = 0.52489, neg 0.22313 → ((0.10535 + 0.52489)/2 + 0.22313)/2
    assert float(out["total"]) == pytest.approx(0.26912, abs=1e-5)
    empty = affinity_loss(aff, torch.zeros_like(bg), fg, torch.zeros_like(neg))
    assert float(empty["bg_pos"]) == 0.0 and float(empty["neg"]) == 0.0


def test_loss_counts_in_the_affinities_precision() -> None:
    # 1000 + 1e-5 is 1000 in float32; the float64 loss must not depend on the masks arriving as float32
    aff = torch.full((1, 1, 1000), 0.5, dtype=torch.float64)
    ones = torch.ones(1, 1, 1000)  # float32 masks
    out = affinity_loss(aff, ones, torch.zeros_like(ones), ones)
    assert out["bg_pos"].dtype == torch.float64
    term = -math.log(0.5 + 1e-5)
    assert float(out["bg_pos"]) == pytest.approx(1000 * term / (1000 + 1e-5), rel=1e-13)
    assert float(out["bg_pos"]) != pytest.approx(term, rel=1e-13)  # what a count rounded in float32 gives
    labels = torch.zeros(1, 16, 32, dtype=torch.long)
    assert all(m.dtype == torch.float64 for m in pair_labels(labels, 5, dtype=torch.float64))
    assert all(m.dtype == torch.float32 for m in pair_labels(labels, 5))


def test_bad_radius_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="radius"):
        half_disc_offsets(1)
    with pytest.raises(ConfigError, match="no training source"):
        pair_labels(torch.zeros(1, 8, 16, dtype=torch.long), 10)
