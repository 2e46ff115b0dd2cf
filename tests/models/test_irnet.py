"""IRNet's boundary branch: five levels, shapes, frozen trunk, flip-averaged logits (spec §10.4, §10.6 step 2)."""

from __future__ import annotations

import pytest
import torch

from fixtures_segmenters import irn_nodes
from vwl_lightning.errors import ConfigError
from vwl_lightning.models.backbone import Backbone
from vwl_lightning.models.irnet import IRNet, boundary_map
from vwl_lightning.modules.irn import IRNModule, stride4_labels


def small_trunk(output_stride: int = 16) -> Backbone:
    return Backbone("resnet18", output_stride=output_stride, fixed_bn=True, frozen=[], pretrained="none",
                    model_kwargs={"channels": (8, 16, 32, 64)})


def test_levels_and_logit_shape_follow_the_spec_strides() -> None:
    net = IRNet(small_trunk(16)).eval()
    # IRN's ResNet strides: S1/S2 at 4, S3 at 8, S4/S5 at 16 (layer4 at stride 1, no dilation)
    assert net.level_strides == [4, 4, 8, 16, 16]
    assert [m[0].out_channels for m in net.edge] == [32] * 5 and net.edge_out.in_channels == 160
    assert net.edge[0][1].num_groups == 4 and net.edge_out.bias is not None and net.edge[0][0].bias is None
    z = net(torch.randn(2, 3, 64, 48))
    assert z.shape == (2, 1, 16, 12)
    assert net.displacement is None


def test_efficientnet_levels_are_stages_0_1_2_4_6_and_the_stride_2_level_is_pooled() -> None:
    trunk = Backbone("tf_efficientnet_lite0", output_stride=16, dilate=True, fixed_bn=True, frozen=[],
                     pretrained="none")
    net = IRNet(trunk).eval()
    assert net.level_strides == [2, 4, 8, 16, 16]
    assert [m[0].in_channels for m in net.edge] == [16, 24, 40, 112, 320]
    x = torch.randn(1, 3, 57, 45)  # odd sizes: every level lands on the ceil(H/4) x ceil(W/4) grid of S2
    assert net(x).shape == (1, 1, 15, 12)
    with torch.no_grad():
        levels = net._levels(x)
        s1 = net.edge[0](levels[0])
        pooled = torch.nn.functional.avg_pool2d(s1, 2, ceil_mode=True)
        # the S1 map the branch sees: cell (y, x) is the mean of the 2x2 stride-2 cells it covers
        assert torch.allclose(pooled[0, :, 3, 4], s1[0, :, 6:8, 8:10].mean(dim=(-2, -1)), atol=1e-6)
        assert pooled.shape[-2:] == levels[1].shape[-2:] == (15, 12)
    with pytest.raises(ConfigError, match="neither"):
        IRNet(Backbone("mobilenetv3_small_050", output_stride=32, fixed_bn=True, frozen=[], pretrained="none"))


def test_frozen_trunk_gets_no_gradient_and_stays_in_eval_mode() -> None:
    net = IRNet(small_trunk(), frozen=True)
    net.train()
    assert not net.trunk.training
    net(torch.randn(1, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for p in net.trunk.parameters())
    assert all(p.grad is not None for p in net.edge_out.parameters())
    assert {id(p) for p in net.trainable_parameters()} == \
        {id(p) for p in [*net.edge.parameters(), *net.edge_out.parameters()]}
    scratch = IRNet(small_trunk(), frozen=False)
    assert len(scratch.trainable_parameters()) > len(net.trainable_parameters())


def test_boundary_map_averages_the_flipped_logits_then_applies_the_sigmoid() -> None:
    torch.manual_seed(0)
    net = IRNet(small_trunk()).eval()
    x = torch.randn(1, 3, 30, 42)  # H, W not multiples of 4: crop to ceil(H/4) x ceil(W/4)
    with torch.no_grad():
        b = boundary_map(net, x)
        z0, z1 = net(x), net(x.flip(-1)).flip(-1)
        padded = boundary_map(net, x, pad_to=64)
    assert b.shape == (1, 8, 11) and padded.shape == (1, 8, 11)
    torch.testing.assert_close(b, torch.sigmoid((z0 + z1) / 2)[:, 0, :8, :11])
    with pytest.raises(ConfigError, match="irn.infer_pad"):
        boundary_map(net, torch.zeros(1, 3, 70, 20), pad_to=64)


def spec_boundary_map(net: IRNet, x: torch.Tensor, pad_to: int) -> torch.Tensor:
    """Spec §10.6 steps 1-2, written from the text: each pass on its own, padded right/bottom, cropped, then flipped."""
    height, width = x.shape[-2:]
    h, w = -(-height // 4), -(-width // 4)

    def logits(image: torch.Tensor) -> torch.Tensor:
        canvas = torch.zeros(image.shape[0], 3, pad_to, pad_to)
        canvas[..., :height, :width] = image  # zero padding right and bottom
        return net(canvas)[:, 0, :h, :w]  # crop to (h, w)

    z0, z1 = logits(x), logits(x.flip(-1)).flip(-1)  # the mirrored pass's cropped logits, flipped back
    return torch.sigmoid((z0 + z1) / 2)


@pytest.mark.parametrize("width", [42, 45])  # W mod 4 = 2, and an odd width
def test_padded_boundary_map_flips_then_pads_as_the_spec_says(width: int) -> None:
    torch.manual_seed(0)
    net = IRNet(small_trunk()).eval()
    torch.nn.init.normal_(net.edge_out.weight, std=1.0)  # a branch whose levels all count
    x = torch.randn(2, 3, 30, width)
    with torch.no_grad():
        b = boundary_map(net, x, pad_to=64)
        reference = spec_boundary_map(net, x, 64)
        # the former order (pad, then flip the padded canvas) puts the mirrored pass's padding on the left
        padded = torch.nn.functional.pad(x, (0, 64 - width, 0, 64 - 30))
        z = net(torch.cat([padded, padded.flip(-1)]))
        former = torch.sigmoid((z[:2] + z[2:].flip(-1)) / 2)[:, 0, :8, : -(-width // 4)]
    torch.testing.assert_close(b, reference, atol=1e-6, rtol=0)
    assert (former - reference).abs().max() > 1e-3  # the test tells the two orders apart on this width


def test_stride4_labels_take_pixel_4y_plus_2() -> None:
    masks = torch.arange(16 * 12).reshape(1, 16, 12)
    labels = stride4_labels(masks)
    assert labels.shape == (1, 4, 3)
    assert labels[0, 1, 2].item() == masks[0, 6, 10].item()


def test_module_loss_is_finite_and_backpropagates_to_the_branch_only() -> None:
    trunk = {"name": "resnet18", "output_stride": 16, "frozen": [], "pretrained": "none",
             "model_kwargs": {"channels": [8, 16, 32, 64]}}
    module = IRNModule(**irn_nodes(trunk), backbone_source="scratch", radius=5)
    masks = torch.zeros(2, 64, 64, dtype=torch.long)
    masks[:, 20:44, 20:44] = 3
    masks[:, 44:48] = 255
    out = module.losses(torch.randn(2, 3, 64, 64), masks)
    assert set(out) == {"bg_pos", "fg_pos", "pos", "neg", "total"}
    assert torch.isfinite(out["total"]) and out["neg"] > 0 and out["fg_pos"] > 0
    out["total"].backward()
    assert module.model.edge_out.weight.grad is not None
    with pytest.raises(ConfigError, match=r"^irn\.backbone_source='imagenet1k': expected one of"):
        IRNModule(**irn_nodes({}), backbone_source="imagenet1k")
    with pytest.raises(ConfigError, match=r"^irn\.net\.gn_groups=5: expected a divisor of branch_channels=32"):
        IRNModule(**{**irn_nodes({}), "net": {"_target_": "vwl_lightning.models.irnet.IRNet", "gn_groups": 5}},
                  backbone_source="scratch")
    with pytest.raises(ConfigError, match=r"^irn\.scheduler\.power=-1"):
        IRNModule(**{**irn_nodes({}), "scheduler": {"_target_": "vwl_lightning.modules.optim.PolyLR",
                                                    "_partial_": True, "power": -1}}, backbone_source="scratch")


def test_irn_efficientnet_config_builds_the_packaged_imagenet_trunk_frozen(tmp_path, cache_dir) -> None:
    from conftest import compose_config
    from vwl_lightning.models.weight_files import load_state_dict_file, resolve_weights_path
    from vwl_lightning.stages.irn import _module_kwargs

    cfg = compose_config(["pseudo.mode=irn", "irn=efficientnet_lite0"], tmp_path / "run", cache_dir)
    module = IRNModule(**_module_kwargs(cfg, "run"))
    net = module.model
    assert net.frozen and net.level_strides == [2, 4, 8, 16, 16]
    assert not any(p.requires_grad for p in net.trunk.parameters())
    shipped = load_state_dict_file(resolve_weights_path(cfg.irn.backbone.weights_path))
    assert torch.equal(net.trunk.net.conv_stem.weight, shipped["_conv_stem.weight"])  # the ImageNet weights
    assert module(torch.randn(1, 3, 112, 112)).shape == (1, 1, 28, 28)
