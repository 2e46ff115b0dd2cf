"""The VWL classification network (spec §1–3): backbone → (hybrid) pooling → 1×1 classifier, plus an
optional visual-words codebook, and the CAM read out of the same classifier weights.

    logits = W_cls · Pool(F)            (pooling on the D-dim features first, then the linear layer)
    CAM    = ReLU(conv1×1(F, W_cls))    (no bias, no pooling)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vwl_lightning.models.backbone import Backbone
from vwl_lightning.models.codebook import CodebookOutput, MemoryBankCodebook


def cam_head(in_channels: int, num_classes: int, bias: bool = False) -> nn.Conv2d:
    """The classifier W_cls (spec §1): a 1×1 convolution from D features to C classes, bias-free so that its
    weights alone make the CAM."""
    return nn.Conv2d(in_channels, num_classes, kernel_size=1, bias=bias)


@dataclass
class ClassifierOutput:
    features: torch.Tensor  # (B, D, h, w) layer-4 features
    logits: torch.Tensor  # (B, C) p^img
    codebook: CodebookOutput | None


class VWLClassifier(nn.Module):
    """Backbone + pooling + bias-free classifier + optional codebook.

    Args:
        backbone: the feature extractor (its ``out_channels`` is D).
        pooling: ``GlobalAveragePooling`` (plain CAM) or ``HybridPooling``.
        codebook: ``LearnedCodebook``, ``MemoryBankCodebook`` or ``None``.
        num_classes: foreground classes C.
        head: builds the classifier from ``(D, C)`` (default :func:`cam_head`).
    """

    def __init__(self, backbone: Backbone, pooling: nn.Module, codebook: nn.Module | None,
                 num_classes: int, head: Callable[[int, int], nn.Conv2d] = cam_head) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.codebook = codebook
        self.num_classes = num_classes
        self.classifier = head(backbone.out_channels, num_classes)

    def new_layers(self) -> list[nn.Module]:
        """Modules trained from scratch (the 10× learning-rate group, spec §4)."""
        return [m for m in (self.classifier, self.codebook) if m is not None]

    def forward(self, images: torch.Tensor) -> ClassifierOutput:
        features = self.backbone(images)
        pooled = self.pooling(features)
        logits = pooled @ self.classifier.weight.flatten(1).t()
        words = self.codebook(features) if self.codebook is not None else None
        return ClassifierOutput(features=features, logits=logits, codebook=words)

    def cam(self, images: torch.Tensor) -> torch.Tensor:
        """Class activation maps ReLU(W_cls * F), ``(B, C, h, w)``."""
        return torch.relu(self.classifier(self.backbone(images)))

    @property
    def memory_bank(self) -> MemoryBankCodebook | None:
        return self.codebook if isinstance(self.codebook, MemoryBankCodebook) else None
