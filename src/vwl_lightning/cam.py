"""CAM post-processing shared by validation and the CAM stage (spec §5).

* keep the image's labelled classes only and max-normalise each: cam_c / (max cam_c + 1e-5);
* background: a constant score ``bg`` padded in front of the class maps, then argmax (ties go to
  background, the first channel).
"""

from __future__ import annotations

import torch

NORM_EPS = 1e-5


def normalise_cams(cams: torch.Tensor, labels: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Zero the classes an image does not have and divide each class map by its max (+eps).

    ``cams`` (B, C, H, W) non-negative, ``labels`` (B, C) multi-hot → (B, C, H, W) in [0, 1).
    """
    peak = cams.flatten(2).max(dim=2).values[..., None, None]
    return cams / (peak + eps) * labels[..., None, None].to(cams.dtype)


def cams_to_prediction(cams: torch.Tensor, bg_score: float) -> torch.Tensor:
    """argmax over [bg, cam_1..cam_C] → (B, H, W) label map with 0 = background."""
    background = torch.full_like(cams[:, :1], bg_score)
    return torch.cat([background, cams], dim=1).argmax(dim=1)
