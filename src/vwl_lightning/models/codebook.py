"""Visual-words codebooks (spec §2): VWL-L (learned) and VWL-M (memory bank).

Shared parts (spec §2.1), for layer-4 features F (B, D, h, w) and a codebook C (K, D):

* similarity: cos(f_ij, c_k) between the L2-normalised, **detached** features and normalised codewords;
* soft assignment: A_ijk = softmax_k(τ · cos(f_ij, c_k)), τ = 1 by default;
* word label: y^word_k = 1 when word k is the nearest codeword (argmax) at ≥ 1 position of the image;
* word head: p^word = W_b · GAP(F) (no bias); loss MLSM(p^word, y^word) — the only codebook term that
  sends gradient into the backbone.

VWL-L (spec §2.2) adds the histogram h = Σ_ij A_ij (summed, not averaged), the word-to-image head
p^w2i = W_a · h with loss MLSM(p^w2i, y^img), and the decorrelation loss on the raw codebook.
VWL-M (spec §2.3) keeps the codebook as a buffer updated by an EMA of batch centroids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vwl_lightning.utils.instantiate import require_choice, require_number


@dataclass
class CodebookOutput:
    """What a codebook contributes to the losses of one batch."""

    word_logits: torch.Tensor  # (B, K) p^word
    word_targets: torch.Tensor  # (B, K) y^word, multi-hot, no gradient
    w2i_logits: torch.Tensor | None = None  # (B, C) p^w2i (VWL-L only)
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. {"decov": ...}


def cosine_similarity_map(features: torch.Tensor, codewords: torch.Tensor) -> torch.Tensor:
    """cos(f_ij, c_k) for detached features ``(B, D, h, w)`` and codewords ``(K, D)`` → ``(B, K, h, w)``."""
    f = F.normalize(features.detach(), dim=1)
    c = F.normalize(codewords, dim=1)
    return torch.einsum("bdhw,kd->bkhw", f, c)


def soft_assignment(similarity: torch.Tensor, tau: float) -> torch.Tensor:
    """A = softmax over words of τ·cos, ``(B, K, h, w)``."""
    return torch.softmax(tau * similarity, dim=1)


def word_labels(similarity: torch.Tensor) -> torch.Tensor:
    """y^word: 1 for each word that is the nearest codeword at one or more positions, ``(B, K)``."""
    batch, words = similarity.shape[:2]
    nearest = similarity.detach().argmax(dim=1).flatten(1)  # (B, h*w)
    labels = torch.zeros(batch, words, dtype=similarity.dtype, device=similarity.device)
    return labels.scatter_(1, nearest, 1.0)


def word_histogram(assignment: torch.Tensor) -> torch.Tensor:
    """h_k = Σ_ij A_ijk, summed over positions (so its scale grows with h·w, spec §2.2), ``(B, K)``."""
    return assignment.sum(dim=(2, 3))


def decov_loss(codebook: torch.Tensor) -> torch.Tensor:
    """L_decov = ½(‖M‖_F − ‖diag(M)‖₂), M = Ĉ Ĉᵀ, Ĉ = rows of the raw codebook centred over D (spec §2.2).

    Both norms are plain (not squared), as in the original code.
    """
    centred = codebook - codebook.mean(dim=1, keepdim=True)
    gram = centred @ centred.t()
    return 0.5 * (torch.linalg.matrix_norm(gram, ord="fro") - torch.linalg.vector_norm(torch.diagonal(gram)))


def sample_rows(flat: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` rows of ``flat`` (N, D) drawn uniformly with replacement; under DDP rank 0's draw is
    broadcast, so every rank gets the same rows."""
    index = torch.randint(flat.shape[0], (count,), generator=generator, device="cpu")
    sample = flat[index.to(flat.device)].clone()
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(sample, src=0)
    return sample


def _check_common(size: int, tau: float) -> None:
    require_number("size", size, 1, integer=True)
    require_number("tau", tau, 0, low_open=True)


class _VisualWords(nn.Module):
    """The parts both strategies share: the codebook size, τ, and the word head W_b on GAP(F)."""

    def __init__(self, size: int, dim: int, tau: float) -> None:
        super().__init__()
        self.size = size
        self.dim = dim
        self.tau = tau
        self.word_head = nn.Linear(dim, size, bias=False)  # W_b, a 1×1 conv on GAP(F) in the original

    def codewords(self) -> torch.Tensor:
        raise NotImplementedError

    def _word_parts(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        similarity = cosine_similarity_map(features, self.codewords())
        word_logits = self.word_head(features.mean(dim=(2, 3)))
        return similarity, word_logits, word_labels(similarity)


class LearnedCodebook(_VisualWords):
    """VWL-L: a learned codebook (spec §2.2), trained through the w2i head and the decov loss only.

    Args:
        size: K, the number of visual words.
        dim: D, the feature channels.
        num_classes: foreground classes of the w2i head.
        tau: softmax temperature τ of the soft assignment.
        init: ``kaiming`` (the spec: ``kaiming_normal_(a=√5)``) or ``features``: at the first training
            forward pass, each codeword becomes the direction of a raw feature sampled (with replacement)
            from that batch, scaled to the norm of its Kaiming draw, so cosine assignment starts spread
            over the words while the decov loss sees the spec's scale. Not in the spec: a correction for
            codebook collapse (a handful of words nearest everywhere; see README, ablation). Under DDP the
            sample is broadcast from rank 0.
    """

    def __init__(self, size: int, dim: int, num_classes: int, tau: float = 1.0, init: str = "kaiming") -> None:
        self.check_arguments(size, tau, init)
        super().__init__(size, dim, tau)
        self.init = init
        weight = torch.empty(size, dim, 1, 1)
        nn.init.kaiming_normal_(weight, a=math.sqrt(5))  # std = sqrt(1/3)/sqrt(D) ≈ 0.0128 for D = 2048
        self.codebook = nn.Parameter(weight.view(size, dim))
        self.w2i_head = nn.Linear(size, num_classes, bias=False)  # W_a
        if init == "features":  # saved in the checkpoint, so a resumed run does not draw again
            self.register_buffer("initialised", torch.tensor(False))

    @classmethod
    def check_arguments(cls, size: int, tau: float, init: str) -> None:
        _check_common(size, tau)
        require_choice("init", init, ("kaiming", "features"))

    def codewords(self) -> torch.Tensor:
        return self.codebook

    @torch.no_grad()
    def initialise_from(self, features: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """``init=features``: codewords ← directions of K raw features of this batch (B, D, h, w), each
        scaled to the norm of the codeword it replaces."""
        flat = features.detach().float().permute(0, 2, 3, 1).reshape(-1, self.dim)
        sample = F.normalize(sample_rows(flat, self.size, generator), dim=1)
        norms = self.codebook.norm(dim=1, keepdim=True)
        self.codebook.copy_((sample * norms.float()).to(self.codebook.dtype))
        self.initialised.fill_(True)

    def forward(self, features: torch.Tensor) -> CodebookOutput:
        if self.init == "features" and self.training and not bool(self.initialised):
            self.initialise_from(features)
        similarity, word_logits, targets = self._word_parts(features)
        histogram = word_histogram(soft_assignment(similarity, self.tau))
        return CodebookOutput(
            word_logits=word_logits,
            word_targets=targets,
            w2i_logits=self.w2i_head(histogram),
            aux_losses={"decov": decov_loss(self.codebook)},
        )


class MemoryBankCodebook(_VisualWords):
    """VWL-M: a memory-bank codebook updated by an EMA of batch centroids (spec §2.3).

    The bank is a buffer, so it is saved in the checkpoint. It starts as ``kaiming_normal_`` and, at the
    first update, is replaced by K raw features sampled with replacement from that batch. Each later
    update assigns every raw feature to its nearest word (cosine), takes the centroid of each word's
    members, ctr_k = Σ f / (n_k + 1e-4), and sets C ← ρ·ctr + (1 − ρ)·C. Under DDP the per-word sums and
    counts are all-reduced first and the first-batch sample is broadcast from rank 0, so every rank holds
    the same bank.

    Args:
        size: K.
        dim: D.
        ema_rate: ρ (spec: 1e-3).
        tau: temperature (the memory bank uses the similarity only through argmax, so τ has no effect).
    """

    def __init__(self, size: int, dim: int, ema_rate: float = 1e-3, tau: float = 1.0,
                 count_epsilon: float = 1e-4) -> None:
        self.check_arguments(size, tau, ema_rate)
        super().__init__(size, dim, tau)
        self.ema_rate = ema_rate
        self.count_epsilon = count_epsilon
        weight = torch.empty(size, dim, 1, 1)
        nn.init.kaiming_normal_(weight, a=math.sqrt(5))
        self.register_buffer("bank", weight.view(size, dim))
        self.register_buffer("initialised", torch.tensor(False))

    @classmethod
    def check_arguments(cls, size: int, tau: float, ema_rate: float) -> None:
        _check_common(size, tau)
        require_number("ema_rate", ema_rate, 0, 1, low_open=True)

    def codewords(self) -> torch.Tensor:
        return self.bank

    def forward(self, features: torch.Tensor) -> CodebookOutput:
        _, word_logits, targets = self._word_parts(features)
        return CodebookOutput(word_logits=word_logits, word_targets=targets)

    @torch.no_grad()
    def update(self, features: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """One EMA step from raw layer-4 ``features`` (B, D, h, w) of the current batch."""
        flat = features.detach().float().permute(0, 2, 3, 1).reshape(-1, self.dim)  # (N, D) raw
        distributed = dist.is_available() and dist.is_initialized()
        if not bool(self.initialised):
            self.bank.copy_(sample_rows(flat, self.size, generator).to(self.bank.dtype))
            self.initialised.fill_(True)
            return
        nearest = (F.normalize(flat, dim=1) @ F.normalize(self.bank.float(), dim=1).t()).argmax(dim=1)
        sums = torch.zeros(self.size, self.dim, device=flat.device).index_add_(0, nearest, flat)
        counts = torch.bincount(nearest, minlength=self.size).to(flat.dtype)
        if distributed:
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        centroids = sums / (counts[:, None] + self.count_epsilon)
        self.bank.mul_(1.0 - self.ema_rate).add_(self.ema_rate * centroids.to(self.bank.dtype))

