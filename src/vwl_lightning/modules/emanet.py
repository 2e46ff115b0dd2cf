"""LightningModule: EMANet trained on pseudo masks (spec §11.4-§11.6), a second segmenter next to DeepLabV2.

**Loss** (spec §11.4): the logits are upsampled (bilinear, align_corners=True) to the label size and
NLL(log_softmax) is taken per pixel with 255 ignored.  ``loss.normalise``:

* ``pixels`` (official): Σ_valid NLL / (B·H·W) — ignored pixels count in the denominator;
* ``valid``: Σ_valid NLL / #valid, as ``F.cross_entropy(ignore_index=255)``.

**Bases** (spec §11.3 item 7): every training step calls :meth:`EMANet.update_bases` right after the forward
(before backward); validation and prediction never do.

**Optimiser** (spec §11.5): SGD (momentum 0.9) with three groups built by module type over every trainable
parameter: Conv2d weights (lr, weight decay ``weight_decay``), BatchNorm γ (lr, wd 0), every conv and BN bias
(``bias_lr_mult``·lr = 2·lr, wd 0); no 10× head.  ``emau.conv1`` (no gradient) and ``emau.mu`` (a buffer)
are in no group.  Poly schedule ``lr(it) = lr₀ (1 − ⌊it/s⌋·s / T)^0.9`` recomputed every s = ``lr_step_every``
iterations (official s = 10; it counts from 1, so iterations 1..9 run at lr₀).

**Evaluation** (spec §11.5): images are padded bottom/right (0 = the mean colour) to H, W ≡ 1 (mod 8), the
logits upsampled with align_corners=True to the padded size and cropped back, so padded pixels never reach
the confusion matrix; multi-scale + flip comes from the stage (``segmenter.eval.scales`` / ``flip``).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from vwl_lightning.data.meta import IGNORE_INDEX
from vwl_lightning.errors import ConfigError
from vwl_lightning.evaluation.metrics import SegmentationConfusion
from vwl_lightning.models.emanet import EMANet, build_emanet, load_emanet_checkpoint
from vwl_lightning.modules.optim import build_sgd

LOSS_NORMALISATIONS = ("pixels", "valid")


def emanet_loss(logits: torch.Tensor, masks: torch.Tensor, normalise: str = "pixels",
                ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy of logits upsampled (align_corners=True) to the masks (module docstring)."""
    if normalise not in LOSS_NORMALISATIONS:
        raise ConfigError(f"segmenter.loss.normalise must be one of {LOSS_NORMALISATIONS}, got {normalise!r}")
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=True)
    nll = F.cross_entropy(logits.float(), masks, ignore_index=ignore_index, reduction="none")
    if normalise == "pixels":
        return nll.mean()
    return nll.sum() / (masks != ignore_index).sum().clamp(min=1)


def pad_to_8k1(images: torch.Tensor, stride: int = 8) -> torch.Tensor:
    """Pad bottom/right with 0 so that H and W ≡ 1 (mod ``stride``) (spec §11.5: 500×375 → 505×377)."""
    height, width = images.shape[-2:]
    pad_h = (1 - height) % stride
    pad_w = (1 - width) % stride
    if pad_h == 0 and pad_w == 0:
        return images
    return F.pad(images, (0, pad_w, 0, pad_h), value=0.0)


def emanet_param_groups(model: nn.Module, bias_lr_mult: float = 2.0) -> list[dict[str, Any]]:
    """``conv_weight`` (wd), ``bn_weight`` (wd 0), ``bias`` (× ``bias_lr_mult``, wd 0) (module docstring)."""
    conv_w, bn_w, biases = [], [], []
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            weight_list = conv_w
        elif isinstance(module, _BatchNorm):
            weight_list = bn_w
        else:
            leftovers = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
            if leftovers:
                raise ConfigError(f"EMANet optimiser groups: {type(module).__name__} has parameters {leftovers} "
                                  f"that are neither conv nor BN")
            continue
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            (weight_list if name == "weight" else biases).append(parameter)
    return [
        {"name": "conv_weight", "params": conv_w, "lr_mult": 1.0},
        {"name": "bn_weight", "params": bn_w, "lr_mult": 1.0, "weight_decay": 0.0},
        {"name": "bias", "params": biases, "lr_mult": float(bias_lr_mult), "weight_decay": 0.0},
    ]


def stepped_poly_lambda(total_steps: int, power: float = 0.9, every: int = 10):
    """LambdaLR factor for optimiser step k (iteration it = k + 1): (1 − ⌊it/every⌋·every / T)^power."""
    if total_steps <= 0:
        raise ConfigError(f"the poly schedule needs a positive number of steps, got {total_steps}")
    if every < 1:
        raise ConfigError(f"segmenter.optim.lr_step_every must be >= 1, got {every}")

    def factor(step: int) -> float:
        iteration = step + 1
        return max(0.0, 1.0 - (iteration // every) * every / total_steps) ** power

    return factor


class EMANetModule(pl.LightningModule):
    """Trains :class:`~vwl_lightning.models.emanet.EMANet` on pseudo masks (module docstring).

    Args:
        num_classes: classes including background.
        backbone, head: sub-configs of :func:`~vwl_lightning.models.emanet.build_emanet`.
        loss: ``normalise`` (pixels | valid).
        optim: ``lr``, ``momentum``, ``weight_decay``, ``poly_power``, ``lr_step_every``, ``bias_lr_mult``.
        eval_pad_8k1: pad inputs to 8k+1 before prediction (official evaluation).
        init_checkpoint: an official EMANet ``{'net': ..., 'step': ...}`` file to start from.
        backbone_init: a classifier stage folder or checkpoint whose trunk initialises a timm trunk.
        channels_last: run the network in channels-last memory format.
        class_names: for logs and reports.
    """

    def __init__(self, num_classes: int, backbone: dict, head: dict, loss: dict, optim: dict,
                 eval_pad_8k1: bool = True, init_checkpoint: str | None = None, backbone_init: str | None = None,
                 channels_last: bool = False, class_names: list[str] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model: EMANet = build_emanet(num_classes, backbone, head)
        if backbone_init:
            from vwl_lightning.modules.classifier import SEGMENTER_TRUNK, load_classifier_trunk

            if dict(backbone).get("kind", "deep_resnet") != "timm":
                raise ConfigError("segmenter.backbone_init (a classifier trunk) needs segmenter.backbone.kind=timm "
                                  "with the classifier's backbone name; the deep-stem trunk loads weights_path")
            load_classifier_trunk(self.model.backbone, backbone_init, SEGMENTER_TRUNK)
        if init_checkpoint:
            load_emanet_checkpoint(self.model, init_checkpoint)
        self.loss_normalise = str(loss.get("normalise", "pixels"))
        if self.loss_normalise not in LOSS_NORMALISATIONS:
            raise ConfigError(f"segmenter.loss.normalise must be one of {LOSS_NORMALISATIONS}, "
                              f"got {self.loss_normalise!r}")
        self.optim_cfg = dict(optim)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.val_conf = SegmentationConfusion(num_classes)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits, mu = self.model.outputs(self._prepare(batch["image"]))
        self.model.update_bases(mu)  # train only, before backward (spec §11.3 item 7)
        loss = emanet_loss(logits, batch["mask"], self.loss_normalise)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Test-time logits at the input size (module docstring: 8k+1 padding, align_corners=True)."""
        height, width = images.shape[-2:]
        padded = pad_to_8k1(images, self.model.output_stride) if self.hparams.eval_pad_8k1 else images
        logits = self.model(self._prepare(padded)).float()
        logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=True)
        return logits[..., :height, :width]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_conf.update(self.predict_logits(batch["image"]).argmax(dim=1), batch["mask"])

    def on_validation_epoch_end(self) -> None:
        self.log("val/mIoU", self.val_conf.scores()["miou"], prog_bar=True)
        self.val_conf.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim_cfg
        groups = emanet_param_groups(self.model, float(o.get("bias_lr_mult", 2.0)))
        optimizer = build_sgd(groups, lr=float(o["lr"]), momentum=float(o["momentum"]),
                              weight_decay=float(o["weight_decay"]))
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, stepped_poly_lambda(total, float(o["poly_power"]), int(o.get("lr_step_every", 10))))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
