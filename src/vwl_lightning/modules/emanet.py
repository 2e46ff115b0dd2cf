"""LightningModule: EMANet trained on pseudo masks (spec §11.4-§11.6), a second segmenter next to DeepLabV2.

**Loss** (spec §11.4, ``segmenter.loss``, :class:`EMANetLoss`): the logits are upsampled (bilinear,
align_corners=True) to the label size and NLL(log_softmax) is taken per pixel with 255 ignored.  ``loss.normalise``:

* ``pixels`` (official): Σ_valid NLL / (B·H·W) — ignored pixels count in the denominator;
* ``valid``: Σ_valid NLL / #valid, as ``F.cross_entropy(ignore_index=255)``.

**Bases** (spec §11.3 item 7): every training step calls :meth:`EMANet.update_bases` right after the forward
(before backward); validation and prediction never do.

**Optimiser** (spec §11.5): SGD (momentum 0.9, ``segmenter.optimizer``) with three groups built by module type
over every trainable parameter (``segmenter.groups``, :class:`EMANetParamGroups`): Conv2d weights (lr, weight
decay ``weight_decay``), BatchNorm γ (lr, wd 0), every conv and BN bias (``bias_lr_mult``·lr = 2·lr, wd 0); no
10× head.  ``emau.conv1`` (no gradient) and ``emau.mu`` (a buffer) are in no group.  Poly schedule
``lr(it) = lr₀ (1 − ⌊it/s⌋·s / T)^0.9`` recomputed every s = ``segmenter.scheduler.every`` iterations
(:class:`~vwl_lightning.modules.optim.SteppedPolyLR`; official s = 10; it counts from 1, so iterations 1..9
run at lr₀).

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
from vwl_lightning.models.backbone import Backbone
from vwl_lightning.models.emanet import EMANet, load_emanet_checkpoint
from vwl_lightning.modules.optim import check_module_nodes, make_optimizer, stepped_poly_lambda
from vwl_lightning.utils.instantiate import build, require_choice, require_number

LOSS_NORMALISATIONS = ("pixels", "valid")
__all__ = ["EMANetLoss", "EMANetModule", "EMANetParamGroups", "emanet_loss", "emanet_param_groups", "pad_to_8k1",
           "stepped_poly_lambda"]


def emanet_loss(logits: torch.Tensor, masks: torch.Tensor, normalise: str = "pixels",
                ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy of logits upsampled (align_corners=True) to the masks (module docstring)."""
    require_choice("normalise", normalise, LOSS_NORMALISATIONS)
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=True)
    nll = F.cross_entropy(logits.float(), masks, ignore_index=ignore_index, reduction="none")
    if normalise == "pixels":
        return nll.mean()
    return nll.sum() / (masks != ignore_index).sum().clamp(min=1)


class EMANetLoss:
    """:func:`emanet_loss` as the ``segmenter.loss`` node.

    Args:
        normalise: ``pixels`` (official: Σ valid NLL / (B·H·W), spec §11.4) | ``valid`` (/ #valid).
    """

    def __init__(self, normalise: str = "pixels") -> None:
        self.check_arguments(normalise)
        self.normalise = normalise

    @classmethod
    def check_arguments(cls, normalise: str) -> None:
        require_choice("normalise", normalise, LOSS_NORMALISATIONS)

    def __call__(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return emanet_loss(logits, masks, self.normalise)


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


class EMANetParamGroups:
    """EMANet's optimiser groups (``segmenter.groups``; :func:`emanet_param_groups`, spec §11.5).

    Args:
        bias_lr_mult: lr multiplier of every conv and BN bias (official: 2).
    """

    def __init__(self, bias_lr_mult: float = 2.0) -> None:
        self.check_arguments(bias_lr_mult)
        self.bias_lr_mult = float(bias_lr_mult)

    @classmethod
    def check_arguments(cls, bias_lr_mult: float) -> None:
        require_number("bias_lr_mult", bias_lr_mult, 0, low_open=True)

    def __call__(self, model: nn.Module) -> list[dict[str, Any]]:
        return emanet_param_groups(model, self.bias_lr_mult)


class EMANetModule(pl.LightningModule):
    """Trains :class:`~vwl_lightning.models.emanet.EMANet` on pseudo masks (module docstring).

    Every network argument is a ``_target_`` node of the ``segmenter`` config (saved as the hyper-parameters).

    Args:
        num_classes: classes including background.
        backbone: ``segmenter.backbone``: :func:`~vwl_lightning.models.emanet.emanet_trunk`.
        head: ``segmenter.head``: :class:`~vwl_lightning.models.emanet.EMANet` (``extractor``, ``num_classes``
            given here).
        loss: ``segmenter.loss``: :class:`EMANetLoss`.
        optimizer: ``segmenter.optimizer``: a ``_partial_`` optimiser (SGD).
        scheduler: ``segmenter.scheduler``: a ``_partial_`` :class:`~vwl_lightning.modules.optim.SteppedPolyLR`.
        groups: ``segmenter.groups``: :class:`EMANetParamGroups`.
        eval_pad_8k1: pad inputs to 8k+1 before prediction (official evaluation).
        init_checkpoint: an official EMANet ``{'net': ..., 'step': ...}`` file to start from.
        backbone_init: a classifier stage folder or checkpoint whose trunk initialises a timm trunk.
        channels_last: run the network in channels-last memory format.
        class_names: for logs and reports.
    """

    def __init__(self, num_classes: int, backbone: dict, head: dict, loss: dict, optimizer: dict, scheduler: dict,
                 groups: dict, eval_pad_8k1: bool = True, init_checkpoint: str | None = None,
                 backbone_init: str | None = None, channels_last: bool = False,
                 class_names: list[str] | None = None) -> None:
        super().__init__()
        self.check_arguments(backbone, head, loss, optimizer, scheduler, groups)
        self.save_hyperparameters()
        trunk = build(backbone, "segmenter.backbone")
        if backbone_init and not isinstance(trunk, Backbone):
            raise ConfigError("segmenter.backbone_init (a classifier trunk) needs segmenter.backbone.kind=timm "
                              "with the classifier's backbone name; the deep-stem trunk loads weights_path")
        self.model: EMANet = build(head, "segmenter.head", extractor=trunk, num_classes=num_classes)
        if backbone_init:
            from vwl_lightning.modules.classifier import SEGMENTER_TRUNK, load_classifier_trunk

            load_classifier_trunk(self.model.backbone, backbone_init, SEGMENTER_TRUNK)
        if init_checkpoint:
            load_emanet_checkpoint(self.model, init_checkpoint)
        self.loss: EMANetLoss = build(loss, "segmenter.loss")
        self.groups: EMANetParamGroups = build(groups, "segmenter.groups")
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.val_conf = SegmentationConfusion(num_classes)

    @classmethod
    def check_arguments(cls, backbone: dict, head: dict, loss: dict, optimizer: dict, scheduler: dict,
                        groups: dict) -> None:
        """The checks of every node (one line naming ``segmenter.<key>``), without building the network."""
        check_module_nodes("segmenter", {"backbone": backbone, "head": head, "loss": loss, "optimizer": optimizer,
                                         "scheduler": scheduler, "groups": groups})

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits, mu = self.model.outputs(self._prepare(batch["image"]))
        self.model.update_bases(mu)  # train only, before backward (spec §11.3 item 7)
        loss = self.loss(logits, batch["mask"])
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
        optimizer = make_optimizer(build(self.hparams.optimizer, "segmenter.optimizer"), self.groups(self.model))
        scheduler = build(self.hparams.scheduler, "segmenter.scheduler")(
            optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
