"""Codebook usage statistics against counts worked out by hand and a NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vwl_lightning.evaluation.codebook_usage import usage_from_nearest


def test_usage_of_a_hand_made_nearest_word_map() -> None:
    # image 0 uses words 0 and 1 (3 and 1 positions), image 1 uses word 0 only (4 positions); K = 4
    nearest = torch.tensor([[[0, 0], [0, 1]], [[0, 0], [0, 0]]])
    usage = usage_from_nearest(nearest, num_words=4)
    assert usage["num_words"] == 4
    assert usage["words_used"] == 2
    assert usage["words_per_image"] == pytest.approx(1.5)
    assert usage["largest_word_share"] == pytest.approx(7 / 8)
    p = np.array([7 / 8, 1 / 8])
    assert usage["word_perplexity"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))


def test_perplexity_is_k_for_uniform_use_and_one_for_a_single_word() -> None:
    uniform = torch.arange(16).reshape(1, 4, 4)
    assert usage_from_nearest(uniform, 16)["word_perplexity"] == pytest.approx(16.0)
    assert usage_from_nearest(uniform, 16)["words_per_image"] == 16
    single = torch.full((3, 4, 4), 5)
    one = usage_from_nearest(single, 16)
    assert one["word_perplexity"] == pytest.approx(1.0) and one["words_used"] == 1
    assert one["largest_word_share"] == 1.0


def test_a_map_of_the_wrong_rank_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        usage_from_nearest(torch.zeros(4, 4, dtype=torch.long), 8)
