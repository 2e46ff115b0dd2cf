"""How much of a trained codebook is in use (issue: ablation; spec §2.1).

The word labels y^word of spec §2.1 mark the words that are the nearest codeword (cosine) at one or more
feature positions of an image. If a few words win everywhere, y^word is almost the same for every image,
the word loss has nothing to learn and VWL cannot shape the features. Over the nearest-word map of a set of
images this module reports:

* ``words_used``: words that are nearest at one or more positions, out of K;
* ``words_per_image``: the mean number of distinct nearest words per image (the mean of Σ_k y^word_k);
* ``word_perplexity``: exp(H(p)), p_k the share of positions whose nearest word is k: the effective
  number of words (K when all are used equally, 1 when one word wins everywhere);
* ``largest_word_share``: max_k p_k.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vwl_lightning.cam.inputs import CamInputs
from vwl_lightning.data.layout import VOCLayout
from vwl_lightning.models.classifier import VWLClassifier
from vwl_lightning.models.codebook import cosine_similarity_map


def usage_from_nearest(nearest: torch.Tensor, num_words: int) -> dict[str, float]:
    """Usage statistics of a nearest-word map ``(B, h, w)`` of word indices in ``[0, num_words)``."""
    if nearest.dim() != 3:
        raise ValueError(f"nearest-word map must be (B, h, w), got shape {tuple(nearest.shape)}")
    counts = torch.bincount(nearest.flatten(), minlength=num_words).double()
    share = counts / counts.sum()
    used = share > 0
    entropy = -(share[used] * share[used].log()).sum()
    per_image = [int(torch.unique(image).numel()) for image in nearest]
    return {"num_words": num_words, "words_used": int(used.sum()),
            "words_per_image": float(sum(per_image) / len(per_image)),
            "word_perplexity": float(entropy.exp()), "largest_word_share": float(share.max())}


def codebook_usage(model: VWLClassifier, layout: VOCLayout, split: str, num_classes: int,
                   normalise: dict[str, Sequence[float]] | None = None, max_images: int = 256,
                   batch_size: int = 32) -> dict[str, float] | None:
    """Usage statistics of a trained classifier network's codebook over the first ``max_images`` images of
    ``split``; ``None`` for a classifier without a codebook (plain CAM)."""
    model = model.eval()
    if model.codebook is None:
        return None
    ids = layout.split_ids(split)[:max_images]
    dataset = CamInputs(layout, ids, layout.image_labels(ids, num_classes), normalise)
    nearest: list[torch.Tensor] = []
    with torch.inference_mode():
        codewords = model.codebook.codewords()
        for start in range(0, len(ids), batch_size):
            images = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch_size, len(ids)))])
            nearest.append(cosine_similarity_map(model.backbone(images), codewords).argmax(dim=1))
    return usage_from_nearest(torch.cat(nearest), int(codewords.shape[0]))


def usage_summary(usage: dict[str, Any]) -> str:
    """One line for logs and reports."""
    return (f"{usage['words_used']} of {usage['num_words']} words in use, {usage['words_per_image']:.1f} per "
            f"image, perplexity {usage['word_perplexity']:.1f}, largest share {usage['largest_word_share']:.2f}")
