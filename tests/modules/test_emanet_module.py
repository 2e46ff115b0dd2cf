"""The EMANet LightningModule (spec §11.8): bases moving average (train only, none at validation, the same on
2 DDP ranks), the loss normalisation switch, the optimiser groups and the 10-step poly, 8k+1 eval padding."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from fixtures_segmenters import emanet_nodes
from vwl_lightning.modules.emanet import (
    EMANetModule,
    emanet_loss,
    emanet_param_groups,
    pad_to_8k1,
    stepped_poly_lambda,
)
from vwl_lightning.modules.optim import make_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"layers": [1, 1, 1, 1], "base_width": 4}


def small_module(normalise: str = "pixels") -> EMANetModule:
    return EMANetModule(4, **emanet_nodes({"kind": "deep_resnet", "pretrained": "none", "model_kwargs": SMALL},
                                          {"mid_channels": 8, "head_channels": 4, "bases": 3}, normalise))


class Batches(pl.LightningDataModule):
    def __init__(self, size: int = 25) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.items = [{"image": torch.randn(3, size, size, generator=gen),
                       "mask": torch.randint(0, 4, (size, size), generator=gen)} for _ in range(2)]

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.items, batch_size=2)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.items, batch_size=2)


def test_training_step_updates_the_bases_and_validation_does_not() -> None:
    module = small_module()
    module.train()
    batch = Batches().items
    images = torch.stack([b["image"] for b in batch])
    masks = torch.stack([b["mask"] for b in batch])
    old = module.model.emau.mu.clone()
    torch.manual_seed(3)
    module.training_step({"image": images, "mask": masks}, 0)
    torch.manual_seed(3)  # the same dropout draw: recompute the μ⁽ᵀ⁾ the step saw
    module.model.emau.mu.copy_(old)
    _, mu_t = module.model.outputs(images)
    expected = 0.9 * old + 0.1 * mu_t.mean(dim=0, keepdim=True)
    module.model.emau.mu.copy_(old)
    torch.manual_seed(3)
    module.training_step({"image": images, "mask": masks}, 0)
    torch.testing.assert_close(module.model.emau.mu, expected)
    assert not torch.allclose(module.model.emau.mu, old)
    # no re-normalisation of the averaged bases (official)
    assert not torch.allclose(module.model.emau.mu.norm(dim=1), torch.ones(1, 3))
    after_train = module.model.emau.mu.clone()
    module.eval()
    module.validation_step({"image": images, "mask": masks}, 0)
    assert torch.equal(module.model.emau.mu, after_train)


@pytest.mark.slow  # two spawned processes importing torch: ~100 s on the shared 2-core machine
def test_bases_identical_on_two_ddp_ranks(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    script = Path(__file__).parents[1] / "scripts" / "ddp_emanet_bases.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.run([sys.executable, str(script), str(tmp_path), port], check=True, env=env, timeout=300)
    r0, r1 = (torch.load(tmp_path / f"mu_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.equal(r0["batch"], r1["batch"])
    assert torch.equal(r0["mu"], r1["mu"])
    mean = torch.cat([r0["batch"], r1["batch"]]).mean(dim=0, keepdim=True)  # equal per-rank batches
    torch.testing.assert_close(r0["mu"], 0.9 * r0["initial"] + 0.1 * mean)


def test_loss_normalisation_switch() -> None:
    logits = torch.zeros(2, 3, 4, 6)  # uniform: every valid pixel has NLL ln 3
    masks = torch.randint(0, 3, (2, 4, 6))
    masks[:, :, :3] = 255  # 50% ignored
    official = emanet_loss(logits, masks, "pixels")
    valid = emanet_loss(logits, masks, "valid")
    torch.testing.assert_close(official, torch.tensor(24 * torch.log(torch.tensor(3.0)).item() / 48))
    torch.testing.assert_close(official, valid / 2)
    torch.testing.assert_close(valid, F.cross_entropy(logits, masks, ignore_index=255))
    # low-resolution logits are upsampled with align_corners=True
    small = torch.randn(1, 3, 3, 4)
    labels = torch.randint(0, 3, (1, 5, 7))
    up = F.interpolate(small, size=(5, 7), mode="bilinear", align_corners=True)
    torch.testing.assert_close(emanet_loss(small, labels, "valid"), F.cross_entropy(up, labels))


def test_optimizer_groups_by_module_type() -> None:
    module = small_module()
    sgd = partial(torch.optim.SGD, lr=0.009, momentum=0.9, weight_decay=1e-4)
    groups = {g["name"]: g for g in make_optimizer(sgd, emanet_param_groups(module.model)).param_groups}
    convs = [m for m in module.model.modules() if isinstance(m, nn.Conv2d) and m is not module.model.emau.conv1]
    bns = [m for m in module.model.modules() if isinstance(m, nn.BatchNorm2d)]
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(groups["conv_weight"]["params"]) == ids(m.weight for m in convs)
    assert ids(groups["bn_weight"]["params"]) == ids(m.weight for m in bns)
    biases = [m.bias for m in convs if m.bias is not None] + [m.bias for m in bns]
    assert ids(groups["bias"]["params"]) == ids(biases) and len(biases) == len(bns) + 1  # + fc2's bias
    assert groups["conv_weight"]["lr"] == 0.009 and groups["conv_weight"]["weight_decay"] == 1e-4
    assert groups["bn_weight"]["lr"] == 0.009 and groups["bn_weight"]["weight_decay"] == 0.0
    assert groups["bias"]["lr"] == pytest.approx(0.018) and groups["bias"]["weight_decay"] == 0.0
    every = ids(p for g in groups.values() for p in g["params"])
    assert id(module.model.emau.conv1.weight) not in every and id(module.model.emau.conv1.bias) not in every


def test_poly_is_recomputed_every_10_iterations() -> None:
    factor = stepped_poly_lambda(30000, 0.9, 10)
    # optimiser step k is the official iteration k + 1
    assert [factor(k) for k in range(9)] == [1.0] * 9  # iterations 1..9 at lr0
    assert 0.009 * factor(9) == pytest.approx(0.009 * (1 - 10 / 30000) ** 0.9)
    assert factor(18) == factor(9) and factor(19) == pytest.approx((1 - 20 / 30000) ** 0.9)
    assert stepped_poly_lambda(100, 0.9, 1)(4) == pytest.approx((1 - 5 / 100) ** 0.9)


def test_stepped_poly_scheduler_has_the_same_numbers() -> None:
    from vwl_lightning.modules.optim import SteppedPolyLR

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.009)
    scheduler = SteppedPolyLR(optimizer, total_steps=100, power=0.9, every=10)
    lrs = []
    for _ in range(25):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    factor = stepped_poly_lambda(100, 0.9, 10)
    assert lrs == pytest.approx([0.009 * factor(k) for k in range(25)])


def test_bad_node_values_name_the_key() -> None:
    from vwl_lightning.errors import ConfigError

    nodes = emanet_nodes({"kind": "deep_resnet", "pretrained": "none", "model_kwargs": SMALL},
                         {"mid_channels": 8, "head_channels": 4, "bases": 0})
    with pytest.raises(ConfigError, match=r"^segmenter\.head\.bases=0: expected an integer >= 1$"):
        EMANetModule(4, **nodes)
    nodes = emanet_nodes({"kind": "deep_resnet", "pretrained": "none"}, {}, every=0)
    with pytest.raises(ConfigError, match=r"^segmenter\.scheduler\.every=0"):
        EMANetModule(4, **nodes)
    nodes = emanet_nodes({"kind": "resnet"}, {}, normalise="mean")
    with pytest.raises(ConfigError, match=r"^segmenter\.backbone\.kind='resnet'"):
        EMANetModule(4, **nodes)
    nodes = emanet_nodes({"kind": "deep_resnet", "name": "resnet18"}, {})
    with pytest.raises(ConfigError, match=r"^segmenter\.backbone\.name='resnet18'"):
        EMANetModule(4, **nodes)
    nodes = emanet_nodes({"kind": "deep_resnet"}, {}, normalise="mean")
    with pytest.raises(ConfigError, match=r"^segmenter\.loss\.normalise='mean'"):
        EMANetModule(4, **nodes)


def test_lightning_step_with_the_scheduler() -> None:
    module = small_module()
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1)
    trainer.fit(module, datamodule=Batches())
    assert trainer.global_step == 2
    assert "val/mIoU" in trainer.callback_metrics
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == pytest.approx([0.009, 0.009, 0.018])


def test_eval_padding_to_8k_plus_1() -> None:
    image = torch.randn(1, 3, 375, 500)
    padded = pad_to_8k1(image)
    assert padded.shape[-2:] == (377, 505)
    assert torch.equal(padded[..., :375, :500], image) and torch.all(padded[..., 375:, :] == 0)
    assert pad_to_8k1(torch.zeros(1, 3, 17, 9)).shape[-2:] == (17, 9)
    module = small_module().eval()
    seen = []
    forward = module.model.forward
    module.model.forward = lambda x: (seen.append(tuple(x.shape[-2:])), forward(x))[1]  # type: ignore[method-assign]
    with torch.no_grad():
        logits = module.predict_logits(torch.randn(1, 3, 37, 50))
    assert seen == [(41, 57)] and logits.shape[-2:] == (37, 50)  # padded pixels never reach the metric
