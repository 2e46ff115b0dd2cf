"""CAM post-processing shared by validation and the CAM stage (spec §5).

* keep the image's labelled classes only and max-normalise each: cam_c / (max cam_c + 1e-5);
* background: a constant score ``bg`` padded in front of the class maps, then argmax (ties go to
  background, the first channel).
"""

from __future__ import annotations

from collections.abc import Mapping

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


def fuse_flip(cams: torch.Tensor, flipped_cams: torch.Tensor, fusion: str) -> torch.Tensor:
    """Fuse the CAM of an image with the flipped-back CAM of its mirror image (spec §5).

    ``max`` is VWL's rule (element-wise max); ``sum`` is IRN's. ``flipped_cams`` is still mirrored.
    """
    back = flipped_cams.flip(-1)
    if fusion == "max":
        return torch.maximum(cams, back)
    if fusion == "sum":
        return cams + back
    raise ValueError(f"flip fusion must be 'max' or 'sum', got {fusion!r}")


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The size of an ``height × width`` image rescaled by ``scale``: (round(H·s), round(W·s)), at least 1
    (Python's round, half to even, as NumPy's in the official code; spec §5.1)."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def multiscale_cams(
    cam_fn,
    images: torch.Tensor,
    scales: tuple[float, ...],
    flip: bool,
    flip_fusion: str,
    low_size: tuple[int, int],
    scaled_images: Mapping[float, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-scale + flip CAMs of a batch of same-size images (spec §5).

    For each scale s the batch is rescaled by s, run together with its mirror images in one forward pass,
    the two CAMs are fused (:func:`fuse_flip`), and the result is upsampled (bilinear) to the image size and
    to the stride-4 size ``low_size``; the scales are **summed**. The rescaled batch is
    ``scaled_images[s]`` when given (``cam.resize=pil_bicubic``: the uint8 image resized by PIL bicubic in
    the loader, then normalised, spec §5.1), else the normalised batch resized here by
    ``F.interpolate(bicubic)`` (``cam.resize=tensor_bicubic``: a = -0.75, no antialiasing, no rounding).
    Returns the un-normalised ``(high (B, C, H, W), low (B, C, h4, w4))``.
    """
    height, width = images.shape[-2:]
    batch = images.shape[0]
    high = low = None
    for scale in scales:
        if scale == 1.0:
            scaled = images
        elif scaled_images is not None:
            scaled = scaled_images[scale]
            if scaled.shape[-2:] != scaled_size(height, width, scale):
                raise ValueError(f"scaled_images[{scale}] is {tuple(scaled.shape[-2:])}, expected "
                                 f"{scaled_size(height, width, scale)}")
        else:
            scaled = torch.nn.functional.interpolate(images, size=scaled_size(height, width, scale),
                                                     mode="bicubic", align_corners=False)
        if flip:
            scaled = torch.cat([scaled, scaled.flip(-1)], dim=0)
        cams = cam_fn(scaled).float()
        if flip:
            cams = fuse_flip(cams[:batch], cams[batch:], flip_fusion)
        up_high = torch.nn.functional.interpolate(cams, size=(height, width), mode="bilinear", align_corners=False)
        up_low = torch.nn.functional.interpolate(cams, size=low_size, mode="bilinear", align_corners=False)
        high = up_high if high is None else high + up_high
        low = up_low if low is None else low + up_low
    if high is None or low is None:
        raise ValueError("multiscale_cams needs at least one scale")
    return high, low


def keep_labelled(cams: torch.Tensor, keys: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """One image's ``(C, H, W)`` CAMs → the labelled classes only (``keys`` are 0-based channel indices),
    each divided by its max + eps (spec §5)."""
    kept = cams[keys]
    return kept / (kept.flatten(1).max(dim=1).values[:, None, None] + eps)
