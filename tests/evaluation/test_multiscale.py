"""The segmenter's test-time fusion (spec §7): un-mirroring restores the logits exactly, scales are resized back
and fused by max or mean before the softmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vwl_lightning.evaluation.multiscale import predict_probs


def test_predict_probs_fuses_scales_and_flips() -> None:
    class Identity:
        """Logits = the first 3 input channels: un-mirroring must restore them exactly."""

        def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :3]

    x = torch.randn(2, 3, 16, 20)
    torch.testing.assert_close(predict_probs(Identity(), x, [1.0], True, "mean"), torch.softmax(x, 1))
    small = F.interpolate(F.interpolate(x, size=(8, 10), mode="bilinear", align_corners=False), size=(16, 20),
                          mode="bilinear", align_corners=False)
    torch.testing.assert_close(predict_probs(Identity(), x, [1.0, 0.5], False, "max"),
                               torch.softmax(torch.maximum(x, small), 1))


def test_scales_resize_as_the_training_msc() -> None:
    """A scale that does not divide the size: the image is resized as the official MSC resizes its inputs
    (``scale_factor``: floor of the size, grid by s), 21×30 at 0.75 → 15×22 (not round's 16×22)."""
    seen: list[tuple[int, int]] = []

    class Identity:
        def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(x.shape[-2:]))
            return x[:, :3]

    x = torch.randn(1, 3, 21, 30)
    scaled = F.interpolate(x, scale_factor=0.75, mode="bilinear", align_corners=False)
    back = F.interpolate(scaled, size=(21, 30), mode="bilinear", align_corners=False)
    torch.testing.assert_close(predict_probs(Identity(), x, [0.75], False, "max"), torch.softmax(back, 1))
    assert seen == [(15, 22)]
