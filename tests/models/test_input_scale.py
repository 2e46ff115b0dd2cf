"""``model.backbone.input_scale``: the image is resized by f before the trunk (bilinear, half-pixel centres),
checked against a NumPy reference; the feature map grows by f; bad values are refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vwl_lightning.errors import ConfigError
from vwl_lightning.models.backbone import Backbone, rescale_input
from vwl_lightning.utils.instantiate import check_node

TINY_RESNET = {"name": "resnet18", "output_stride": 8, "fixed_bn": False, "frozen": [],
               "model_kwargs": {"channels": [8, 16, 32, 64]}}


def bilinear_reference(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """(C, H, W) → (C, out_h, out_w): source coordinate (i + 0.5) · H / out_h − 0.5, clamped at the borders,
    linear weights between the two neighbours (align_corners=False, no antialiasing)."""
    _, h, w = image.shape

    def taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0, None)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, wy = taps(out_h, h)
    x0, x1, wx = taps(out_w, w)
    rows = image[:, y0, :] * (1 - wy)[None, :, None] + image[:, y1, :] * wy[None, :, None]
    return rows[:, :, x0] * (1 - wx)[None, None, :] + rows[:, :, x1] * wx[None, None, :]


@pytest.mark.parametrize(("factor", "size"), [(2.0, (14, 22)), (1.5, (11, 17))])
def test_upscaling_equals_the_numpy_bilinear_reference(factor: float, size: tuple[int, int]) -> None:
    image = np.random.default_rng(0).normal(size=(3, 7, 11))
    out = rescale_input(torch.from_numpy(image)[None], factor)[0].numpy()
    assert out.shape == (3, *size)  # floor(7 f + 1/2) x floor(11 f + 1/2)
    np.testing.assert_allclose(out, bilinear_reference(image, *size), atol=1e-12)


def test_hand_worked_doubling_of_a_two_pixel_row() -> None:
    """[0, 4] doubled: samples at source x = −0.25 (clamped to 0), 0.25, 0.75, 1.25 (→ 1) give 0, 1, 3, 4."""
    out = rescale_input(torch.tensor([[[[0.0, 4.0]]]]), 2.0)
    assert out.shape == (1, 1, 2, 4)
    assert out[0, 0, 0].tolist() == [0.0, 1.0, 3.0, 4.0]


def test_the_trunk_sees_the_rescaled_image_and_its_features_grow() -> None:
    torch.manual_seed(0)
    plain = Backbone(**TINY_RESNET).eval()
    scaled = Backbone(**TINY_RESNET, input_scale=2.0).eval()
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        features = scaled(x)
        assert features.shape == (2, 64, 8, 12)  # 64 x 96 at output stride 8
        assert plain(x).shape == (2, 64, 4, 6)
        torch.testing.assert_close(features, plain(rescale_input(x, 2.0)))


@pytest.mark.parametrize("bad", [0, -1.0, 16, "2", True])
def test_a_bad_scale_is_one_line_naming_the_key(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^input_scale=.*: expected a number > 0 and < 16$"):
        Backbone(**TINY_RESNET, input_scale=bad)
    node = {"_target_": "vwl_lightning.models.backbone.Backbone", **TINY_RESNET, "input_scale": bad}
    with pytest.raises(ConfigError, match=r"^model\.backbone\.input_scale=.*: expected a number > 0 and < 16$"):
        check_node(node, "model.backbone")
