"""EMANet (spec §11.8): the official state-dict layout, the Encoding ResNet loader, the trunk geometry with the
dilation quirk, the EM unit against a NumPy reference, and which parts receive gradients."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fixtures_segmenters import build_emanet, emanet_nodes
from vwl_lightning.errors import DataError
from vwl_lightning.models.dilated_resnet import block_dilations
from vwl_lightning.models.emanet import EMAU, load_emanet_checkpoint, load_encoding_resnet

pytestmark = pytest.mark.usefixtures("one_thread")

R101 = (3, 4, 23, 3)
SMALL = {"layers": [1, 1, 2, 3], "base_width": 8}
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def encoding_resnet_shapes(layers=R101, width: int = 64, with_nbt: bool = False) -> dict[str, tuple[int, ...]]:
    """Names and shapes of PyTorch-Encoding's deep-stem ResNet file (spec §11.1), written out here."""
    bn = BN if with_nbt else BN[:4]
    out: dict[str, tuple[int, ...]] = {"conv1.0.weight": (width, 3, 3, 3)}
    out.update({f"conv1.1.{p}": (width,) for p in bn})
    out["conv1.3.weight"] = (width, width, 3, 3)
    out.update({f"conv1.4.{p}": (width,) for p in bn})
    out["conv1.6.weight"] = (2 * width, width, 3, 3)
    out.update({f"bn1.{p}": (2 * width,) for p in bn})
    in_ch = 2 * width
    for stage, n in enumerate(layers, start=1):
        mid = width * 2 ** (stage - 1)
        for i in range(n):
            pre = f"layer{stage}.{i}"
            out[f"{pre}.conv1.weight"] = (mid, in_ch, 1, 1)
            out[f"{pre}.conv2.weight"] = (mid, mid, 3, 3)
            out[f"{pre}.conv3.weight"] = (4 * mid, mid, 1, 1)
            for j, ch in ((1, mid), (2, mid), (3, 4 * mid)):
                out.update({f"{pre}.bn{j}.{p}": (ch,) for p in bn})
            if i == 0:
                out[f"{pre}.downsample.0.weight"] = (4 * mid, in_ch, 1, 1)
                out.update({f"{pre}.downsample.1.{p}": (4 * mid,) for p in bn})
            in_ch = 4 * mid
    out["fc.weight"] = (1000, in_ch)
    out["fc.bias"] = (1000,)
    return {k: (() if k.endswith("num_batches_tracked") else v) for k, v in out.items()}


def official_emanet_shapes(classes: int = 21, layers=R101, width: int = 64, c: int = 512, k: int = 64
                           ) -> dict[str, tuple[int, ...]]:
    """The official EMANet state-dict names (spec §11.2), derived from the Encoding names by the official
    ``extractor`` indices, plus the head."""
    index = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    trunk = encoding_resnet_shapes(layers, width, with_nbt=True)
    out = {f"extractor.{index[n.split('.')[0]]}.{n.split('.', 1)[1]}": s for n, s in trunk.items()
           if not n.startswith("fc.")}
    in_ch = 32 * width
    out["fc0.conv.weight"] = (c, in_ch, 3, 3)
    out.update({f"fc0.bn.{p}": (c,) for p in BN})
    out.update({"emau.mu": (1, c, k), "emau.conv1.weight": (c, c, 1, 1), "emau.conv1.bias": (c,),
                "emau.conv2.0.weight": (c, c, 1, 1)})
    out.update({f"emau.conv2.1.{p}": (c,) for p in BN})
    out["fc1.0.conv.weight"] = (256, c, 3, 3)
    out.update({f"fc1.0.bn.{p}": (256,) for p in BN})
    out.update({"fc2.weight": (classes, 256, 1, 1), "fc2.bias": (classes,)})
    return {k2: (() if k2.endswith("num_batches_tracked") else v) for k2, v in out.items()}


def small_emanet(**head):
    return build_emanet(21, {"kind": "deep_resnet", "pretrained": "none", "model_kwargs": SMALL},
                        {"mid_channels": 16, "head_channels": 8, "bases": 4, **head})


# ------------------------------------------------------------------------------------------ key layout


def test_state_dict_is_the_official_layout() -> None:
    with torch.device("meta"):
        model = build_emanet(21, {"kind": "deep_resnet", "pretrained": "none"}, {})
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = official_emanet_shapes()
    assert len(expected) == 659
    assert own == expected
    assert list(own)[:2] == ["extractor.0.0.weight", "extractor.0.1.weight"]


def test_official_checkpoint_loads_strict(tmp_path: Path) -> None:
    model = small_emanet()
    gen = torch.Generator().manual_seed(1)
    sd = {k: (torch.rand(v.shape, generator=gen) if v.is_floating_point() else torch.full_like(v, 7))
          for k, v in model.state_dict().items()}
    torch.save({"net": sd, "step": 30000}, tmp_path / "emanet.pth")
    fresh = small_emanet()
    assert load_emanet_checkpoint(fresh, tmp_path / "emanet.pth") == 30000
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, sd[key]), key
    del sd["emau.mu"]
    torch.save({"net": sd, "step": 1}, tmp_path / "broken.pth")
    with pytest.raises(DataError, match=r"broken\.pth: missing key 'emau\.mu'"):
        load_emanet_checkpoint(fresh, tmp_path / "broken.pth")


def test_encoding_resnet_copies_every_trunk_tensor_bit_exactly(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    gen = torch.Generator().manual_seed(2)
    shapes = encoding_resnet_shapes(SMALL["layers"], SMALL["base_width"])
    sd = {k: torch.rand(s, generator=gen) for k, s in shapes.items()}  # no num_batches_tracked, as the file
    torch.save(sd, tmp_path / "resnet101-2a57e44d.pth")
    model = small_emanet()
    head_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("extractor.")}
    with caplog.at_level(logging.INFO, logger="vwl_lightning.models.emanet"):
        counts = load_encoding_resnet(model, tmp_path / "resnet101-2a57e44d.pth")
    index = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    own = model.state_dict()
    for key, value in sd.items():
        if key.startswith("fc."):
            continue
        head, rest = key.split(".", 1)
        assert torch.equal(own[f"extractor.{index[head]}.{rest}"], value), key
    for key, value in head_before.items():
        assert torch.equal(own[key], value), key
    num_bn = sum(1 for k in shapes if k.endswith("running_var"))
    assert counts == {"loaded": len(shapes) - 2, "ignored": 2, "missing_num_batches_tracked": num_bn}
    message = caplog.records[-1].getMessage()
    assert f"loaded {len(shapes) - 2} tensors" in message and "ignored 2" in message and "sha256" in message
    del sd["layer2.0.bn2.running_mean"]
    torch.save(sd, tmp_path / "short.pth")
    with pytest.raises(DataError, match=r"short\.pth: missing key 'layer2\.0\.bn2\.running_mean'"):
        load_encoding_resnet(model, tmp_path / "short.pth")


# -------------------------------------------------------------------------------------------- geometry


def test_dilation_quirk_and_stride_on_the_3x3() -> None:
    with torch.device("meta"):
        official = build_emanet(21, {"kind": "deep_resnet", "pretrained": "none"}, {})
        canonical = build_emanet(21, {"kind": "deep_resnet", "pretrained": "none", "canonical_rates": True}, {})
    layer2, layer3, layer4 = official.extractor[5], official.extractor[6], official.extractor[7]
    assert block_dilations(layer3) == [1] + [2] * 22 and block_dilations(layer4) == [2, 8, 16]
    assert block_dilations(canonical.extractor[6]) == [2] * 23 and block_dilations(canonical.extractor[7]) == [4, 8, 16]
    assert layer2[0].conv1.stride == (1, 1) and layer2[0].conv2.stride == (2, 2)
    assert all(b.conv2.padding == b.conv2.dilation for b in [*layer3, *layer4])
    stem = official.extractor[0]
    assert [m.stride for m in stem if isinstance(m, nn.Conv2d)] == [(2, 2), (1, 1), (1, 1)]
    assert official.extractor[3].ceil_mode is False
    bns = [m for m in official.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.momentum == 3e-4 for m in bns)


def test_513_input_gives_65x65_features_and_full_size_logits() -> None:
    from vwl_lightning.modules.emanet import EMANetModule

    module = EMANetModule(21, **emanet_nodes({"kind": "deep_resnet", "pretrained": "none", "model_kwargs": SMALL},
                                             {"mid_channels": 16, "head_channels": 8, "bases": 4})).eval()
    x = torch.randn(2, 3, 513, 513)
    with torch.no_grad():
        assert module.model.extractor(x).shape == (2, 32 * SMALL["base_width"], 65, 65)
        assert module.predict_logits(x).shape == (2, 21, 513, 513)


# ---------------------------------------------------------------------------------------------- EM unit


def numpy_emau(x: np.ndarray, mu0: np.ndarray, w1: np.ndarray, b1: np.ndarray, iterations: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (C, N) after nothing; returns (z, mu, reconstruction) of spec §11.3 in float64."""
    y = w1 @ x + b1[:, None]
    mu = mu0.copy()
    z = None
    for _ in range(iterations):
        logits = y.T @ mu
        logits -= logits.max(axis=1, keepdims=True)
        z = np.exp(logits)
        z /= z.sum(axis=1, keepdims=True)
        zn = z / (1e-6 + z.sum(axis=0, keepdims=True))
        mu = y @ zn
        mu = mu / (1e-6 + np.linalg.norm(mu, axis=0, keepdims=True))
    return z, mu, mu @ z.T


def test_emau_against_numpy() -> None:
    torch.manual_seed(0)
    unit = EMAU(channels=6, bases=4, iterations=3).eval()
    bn = unit.conv2[1]
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 1.5)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.3, 0.3)
    x = torch.rand(2, 6, 5, 3)  # >= 0, as fc0's ReLU output
    out, mu = unit(x)
    w1 = unit.conv1.weight[:, :, 0, 0].double().numpy()
    b1 = unit.conv1.bias.double().numpy()
    w2 = unit.conv2[0].weight[:, :, 0, 0].detach().double().numpy()
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).double().detach().numpy()
    shift = (bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)).double().detach().numpy()
    for b in range(2):
        xb = x[b].reshape(6, -1).double().numpy()
        z, mu_ref, rec = numpy_emau(xb, unit.mu[0].double().numpy(), w1, b1, 3)
        np.testing.assert_allclose(z.sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(mu_ref, axis=0), 1.0, atol=1e-5)
        np.testing.assert_allclose(mu[b].double().numpy(), mu_ref, atol=1e-5)
        expected = np.maximum(scale[:, None] * (w2 @ np.maximum(rec, 0)) + shift[:, None] + xb, 0)
        np.testing.assert_allclose(out[b].reshape(6, -1).double().detach().numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(unit.mu[0].numpy(), axis=0), 1.0, atol=1e-5)  # initial bases


def test_em_loop_runs_in_fp32_under_autocast() -> None:
    unit = EMAU(channels=8, bases=4).eval()
    x = torch.rand(1, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, mu = unit(x)
    assert mu.dtype == torch.float32 and unit.mu.dtype == torch.float32


def test_gradients_reach_conv2_fc0_and_trunk_but_not_conv1() -> None:
    model = small_emanet().train()
    logits, _ = model.outputs(torch.randn(2, 3, 33, 33))
    logits.square().mean().backward()
    assert model.emau.conv1.weight.requires_grad is False and model.emau.conv1.weight.grad is None
    assert model.emau.conv1.bias.grad is None
    for param in (model.emau.conv2[0].weight, model.fc0.conv.weight, model.extractor[4][0].conv1.weight,
                  model.extractor[0][0].weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert "emau.mu" not in dict(model.named_parameters()) and "emau.mu" in dict(model.named_buffers())
