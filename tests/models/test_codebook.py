"""Visual-words codebooks (spec §2) against independent NumPy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vwl_lightning.errors import ConfigError
from vwl_lightning.models.codebook import (
    LearnedCodebook,
    MemoryBankCodebook,
    cosine_similarity_map,
    decov_loss,
    soft_assignment,
    word_histogram,
    word_labels,
)
from vwl_lightning.utils.instantiate import build, check_node


def np_normalise(x: np.ndarray, axis: int) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def np_cosine(features: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """(B, D, h, w), (K, D) -> (B, K, h, w) with explicit loops over positions."""
    b, d, h, w = features.shape
    c = np_normalise(codebook, 1)
    out = np.zeros((b, codebook.shape[0], h, w))
    for i in range(b):
        for y in range(h):
            for x in range(w):
                f = features[i, :, y, x] / np.linalg.norm(features[i, :, y, x])
                out[i, :, y, x] = c @ f
    return out


def np_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.fixture
def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.normal(size=(2, 6, 3, 4)).astype(np.float32), rng.normal(size=(5, 6)).astype(np.float32)


def test_cosine_similarity_and_soft_assignment(batch) -> None:
    features, codebook = batch
    ours = cosine_similarity_map(torch.from_numpy(features), torch.from_numpy(codebook)).numpy()
    ref = np_cosine(features, codebook)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert np.abs(ours).max() <= 1 + 1e-6
    for tau in (1.0, 10.0):
        assign = soft_assignment(torch.from_numpy(ours), tau).numpy()
        np.testing.assert_allclose(assign, np_softmax(tau * ref, axis=1), atol=1e-5)


def test_word_labels_mark_words_nearest_somewhere(batch) -> None:
    features, codebook = batch
    sim = cosine_similarity_map(torch.from_numpy(features), torch.from_numpy(codebook))
    ours = word_labels(sim).numpy()
    ref = np.zeros((2, 5))
    nearest = np_cosine(features, codebook).argmax(axis=1)  # (B, h, w)
    for i in range(2):
        ref[i, np.unique(nearest[i])] = 1
    np.testing.assert_array_equal(ours, ref)


def test_word_labels_hand_example() -> None:
    # two words along the axes; positions point at word 1, word 1, word 1 -> only word 1 is labelled
    codebook = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    features = torch.tensor([[[[0.1, 0.2, 0.0]], [[1.0, 3.0, 0.5]]]])  # (1, 2, 1, 3)
    assert word_labels(cosine_similarity_map(features, codebook)).tolist() == [[0.0, 1.0]]


def test_histogram_is_summed_over_positions(batch) -> None:
    features, codebook = batch
    sim = cosine_similarity_map(torch.from_numpy(features), torch.from_numpy(codebook))
    hist = word_histogram(soft_assignment(sim, 1.0)).numpy()
    ref = np_softmax(np_cosine(features, codebook), axis=1).sum(axis=(2, 3))
    np.testing.assert_allclose(hist, ref, atol=1e-5)
    # every position contributes a distribution, so each histogram sums to h*w = 12
    np.testing.assert_allclose(hist.sum(axis=1), [12.0, 12.0], atol=1e-5)


def test_decov_hand_example() -> None:
    # rows [1,0],[0,1] centre to [.5,-.5],[-.5,.5]; M = [[.5,-.5],[-.5,.5]]; ||M||_F = 1; ||diag|| = sqrt(.5)
    value = decov_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).item()
    assert value == pytest.approx(0.5 * (1.0 - math.sqrt(0.5)))


def test_decov_matches_numpy_and_is_zero_for_orthogonal_centred_rows(batch) -> None:
    _, codebook = batch
    centred = codebook - codebook.mean(axis=1, keepdims=True)
    m = centred @ centred.T
    ref = 0.5 * (np.sqrt((m**2).sum()) - np.sqrt((np.diag(m) ** 2).sum()))
    assert decov_loss(torch.from_numpy(codebook)).item() == pytest.approx(ref, rel=1e-5)
    orthogonal = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]])
    assert decov_loss(orthogonal).item() == pytest.approx(0.0, abs=1e-6)


def test_learned_codebook_forward_and_gradients() -> None:
    torch.manual_seed(0)
    book = LearnedCodebook(size=16, dim=32, num_classes=4)
    # kaiming_normal_(a=sqrt 5): std = sqrt(2 / (1 + 5)) / sqrt(fan_in)
    assert book.codebook.std().item() == pytest.approx(math.sqrt(1 / 3) / math.sqrt(32), rel=0.15)
    features = torch.randn(3, 32, 5, 5, requires_grad=True)
    out = book(features)
    assert out.word_logits.shape == (3, 16) and out.w2i_logits.shape == (3, 4)
    assert set(out.word_targets.unique().tolist()) <= {0.0, 1.0}
    assert out.word_targets.sum(dim=1).min() >= 1
    # w2i and decov train the codebook but not the features (they are detached)
    (out.w2i_logits.sum() + out.aux_losses["decov"]).backward()
    assert features.grad is None
    assert book.codebook.grad.abs().sum() > 0 and book.w2i_head.weight.grad.abs().sum() > 0
    # the word head is the only path into the features
    out = book(features)
    out.word_logits.sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def np_ema_update(bank: np.ndarray, features: np.ndarray, rate: float, eps: float) -> np.ndarray:
    flat = features.transpose(0, 2, 3, 1).reshape(-1, features.shape[1]).astype(np.float64)
    sims = np_normalise(flat, 1) @ np_normalise(bank.astype(np.float64), 1).T
    nearest = sims.argmax(axis=1)
    centroids = np.zeros_like(bank, dtype=np.float64)
    for k in range(bank.shape[0]):
        members = flat[nearest == k]
        centroids[k] = members.sum(axis=0) / (len(members) + eps)
    return rate * centroids + (1 - rate) * bank


def test_memory_bank_first_update_samples_batch_features_then_ema_matches_numpy() -> None:
    torch.manual_seed(0)
    bank = MemoryBankCodebook(size=6, dim=8, ema_rate=0.1)
    first = torch.randn(2, 8, 3, 3)
    bank.update(first)
    assert bool(bank.initialised)
    flat = first.permute(0, 2, 3, 1).reshape(-1, 8)
    for row in bank.bank:  # every codeword is one of the batch's raw features
        assert torch.isclose(flat, row).all(dim=1).any()
    for _ in range(3):
        features = torch.randn(2, 8, 3, 3) * 2 + 0.5
        expected = np_ema_update(bank.bank.numpy().copy(), features.numpy(), 0.1, 1e-4)
        bank.update(features)
        np.testing.assert_allclose(bank.bank.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_unused_word_shrinks_without_turning() -> None:
    bank = MemoryBankCodebook(size=2, dim=2, ema_rate=0.5)
    bank.initialised.fill_(True)
    bank.bank.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    bank.update(torch.tensor([[[[2.0]], [[0.1]]]]))  # one feature, nearest to word 0
    torch.testing.assert_close(bank.bank[1], torch.tensor([0.0, 0.5]))
    # word 0: 0.5 * [2, .1] / (1 + 1e-4) + 0.5 * [1, 0]
    torch.testing.assert_close(bank.bank[0], 0.5 * torch.tensor([2.0, 0.1]) / (1 + 1e-4) + torch.tensor([0.5, 0.0]))


def test_memory_bank_is_a_checkpointed_buffer() -> None:
    bank = MemoryBankCodebook(size=4, dim=3)
    state = bank.state_dict()
    assert "bank" in state and "initialised" in state
    assert all(p is not bank.bank for p in bank.parameters())
    out = bank(torch.randn(2, 3, 4, 4))
    assert out.w2i_logits is None and out.aux_losses == {}


@pytest.mark.parametrize("size", [0, -3])
@pytest.mark.parametrize("target", ["LearnedCodebook", "MemoryBankCodebook"])
def test_non_positive_codebook_size_is_a_config_error(size, target) -> None:
    node = {"_target_": f"vwl_lightning.models.codebook.{target}", "size": size}
    with pytest.raises(ConfigError, match=rf"^model\.codebook\.size={size}: expected an integer >= 1$"):
        build(node, "model.codebook", dim=8, supplied={"num_classes": 3})
    with pytest.raises(ConfigError, match=rf"^model\.codebook\.size={size}: expected an integer >= 1$"):
        check_node(node, "model.codebook")


def test_codebook_nodes_take_the_shapes_they_need() -> None:
    """The network supplies D and C; the memory bank has no w2i head, so it takes no class count."""
    supplied = {"num_classes": 3}
    learned = build({"_target_": "vwl_lightning.models.codebook.LearnedCodebook", "size": 4}, "model.codebook",
                    dim=8, supplied=supplied)
    bank = build({"_target_": "vwl_lightning.models.codebook.MemoryBankCodebook", "size": 4}, "model.codebook",
                 dim=8, supplied=supplied)
    assert learned.w2i_head.weight.shape == (3, 4) and bank.bank.shape == (4, 8)
    assert build(None, "model.codebook") is None


def test_cosine_ignores_feature_scale() -> None:
    codebook = torch.randn(4, 6)
    features = torch.randn(1, 6, 2, 2)
    torch.testing.assert_close(cosine_similarity_map(features, codebook),
                               cosine_similarity_map(7.0 * features, codebook))
    torch.testing.assert_close(cosine_similarity_map(features, codebook)[0, :, 0, 0],
                               F.cosine_similarity(features[0, :, 0, 0][None], codebook, dim=1))


def test_learned_codebook_feature_init_takes_batch_directions_at_the_kaiming_scale() -> None:
    torch.manual_seed(0)
    book = LearnedCodebook(size=6, dim=8, num_classes=3, init="features")
    norms_before = book.codebook.detach().norm(dim=1).clone()
    assert not bool(book.initialised)
    features = torch.relu(torch.randn(2, 8, 3, 3)) + 0.01
    book.eval()
    book(features)  # evaluation never draws
    assert not bool(book.initialised)
    book.train()
    out = book(features)
    assert bool(book.initialised)
    torch.testing.assert_close(book.codebook.detach().norm(dim=1), norms_before)
    directions = F.normalize(features.permute(0, 2, 3, 1).reshape(-1, 8), dim=1)
    for row in F.normalize(book.codebook.detach(), dim=1):  # each codeword points along one batch feature
        assert (directions @ row).max() == pytest.approx(1.0, abs=1e-6)
    # every word's nearest position is the feature it was drawn from, so all drawn words are labelled
    assert out.word_targets.sum() >= 1
    drawn = book.codebook.detach().clone()
    book(torch.randn(2, 8, 3, 3))  # later batches do not draw again
    torch.testing.assert_close(book.codebook.detach(), drawn)
    assert "initialised" in book.state_dict()


def test_learned_codebook_kaiming_init_keeps_the_spec_state_dict() -> None:
    book = LearnedCodebook(size=4, dim=8, num_classes=3)
    assert set(book.state_dict()) == {"word_head.weight", "codebook", "w2i_head.weight"}
    with pytest.raises(ConfigError, match="^init='random': expected one of kaiming, features$"):
        LearnedCodebook(size=4, dim=8, num_classes=3, init="random")
    assert LearnedCodebook(4, 8, 3, init="features").init == "features"
