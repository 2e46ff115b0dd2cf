"""Stage 3: DeepLabV2 trained on the pseudo masks as a LightningModule, with its data (spec §7).

Loss: pixel-wise cross-entropy with 255 ignored, averaged over the network's outputs (one without MSC,
the four MSC outputs with it)::

    L = 1/|O| Σ_{o∈O} Σ_{p: y_p≠255} −log softmax(o_p)[y_p] / #{p: y_p≠255}

``loss.resolution`` says where the comparison happens: ``labels`` upsamples each output bilinearly to the
label size (the usual choice, sharper on small images); ``logits`` resizes the labels (nearest) to each
output's size, as deeplab-pytorch does (spec §7 [DL]).

Optimiser (spec §7): SGD with momentum, weight decay and the poly schedule lr_t = lr_0 (1 − t/T)^0.9 per
step.  Parameter groups, ``optim.lr_grouping``:

* ``corrected`` (default; DeepLab's own recipe): backbone at 1×, ASPP weights at 10×, ASPP biases at 20×
  (weight decay ``optim.aspp_bias_weight_decay``, 0 in DeepLab).
* ``faithful`` (the code VWL used, spec §7 "Quirk"): the 10×/20× groups look for a module named ``conv8``
  that DeepLabV2 lacks, so every conv weight (backbone and ASPP) trains at 1× and the ASPP biases are in
  no group: they never move from their initial 0 (here they are also marked ``requires_grad=False``).

``optim.train_bn``: whether BatchNorm γ/β train (in the backbone group).  DeepLab freezes BN entirely
(statistics and affine); the CPU benchmark trains from scratch and so trains them.

Validation: the mIoU of the test-time logits (bilinearly upsampled, argmax) against the val ground truth
with :class:`~vwl_lightning.evaluation.metrics.SegmentationConfusion`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from vwl_lightning.data.meta import IGNORE_INDEX
from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.evaluation.metrics import SegmentationConfusion
from vwl_lightning.models.deeplab import DeepLabV2, build_deeplab
from vwl_lightning.modules.classifier import SEGMENTER_TRUNK, load_classifier_trunk
from vwl_lightning.modules.optim import build_sgd, poly_lambda, trainable

LR_GROUPINGS = ("corrected", "faithful")
LOSS_RESOLUTIONS = ("labels", "logits")


# ----------------------------------------------------------------------------------------------- optimiser


def freeze_for_grouping(model: DeepLabV2, grouping: str, train_bn: bool) -> None:
    """Mark what the chosen recipe never updates as ``requires_grad=False`` (module docstring).

    ``faithful``: the ASPP biases (in no optimiser group in the original); ``train_bn=False``: every
    BatchNorm γ/β of the backbone.
    """
    if grouping not in LR_GROUPINGS:
        raise ConfigError(f"segmenter.optim.lr_grouping must be one of {LR_GROUPINGS}, got {grouping!r}")
    if grouping == "faithful":
        for conv in model.aspp.branches:
            conv.bias.requires_grad_(False)
    if not train_bn:
        for module in model.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                for parameter in module.parameters():
                    parameter.requires_grad_(False)


def segmenter_param_groups(model: DeepLabV2, grouping: str, lr_mults: Mapping[str, float],
                           aspp_bias_weight_decay: float | None = None) -> list[dict[str, Any]]:
    """Parameter groups for :func:`~vwl_lightning.modules.optim.build_sgd` (spec §7; module docstring).

    ``corrected``: ``backbone`` (lr × ``lr_mults.backbone``), ``aspp_weight`` (× ``aspp_weight``),
    ``aspp_bias`` (× ``aspp_bias``, weight decay ``aspp_bias_weight_decay`` or the global one if None).
    ``faithful``: one group ``conv_1x`` holding every trainable backbone parameter and the ASPP weights at 1×.
    """
    if grouping not in LR_GROUPINGS:
        raise ConfigError(f"segmenter.optim.lr_grouping must be one of {LR_GROUPINGS}, got {grouping!r}")
    aspp_weights = trainable(conv.weight for conv in model.aspp.branches)
    aspp_biases = trainable(conv.bias for conv in model.aspp.branches)
    backbone = trainable(model.backbone.parameters())
    if grouping == "faithful":
        return [{"name": "conv_1x", "params": backbone + aspp_weights, "lr_mult": 1.0}]
    for key in ("backbone", "aspp_weight", "aspp_bias"):
        if key not in lr_mults or float(lr_mults[key]) <= 0:
            raise ConfigError(f"segmenter.optim.lr_mults.{key} must be a positive number, "
                              f"got {lr_mults.get(key)!r}")
    bias_group: dict[str, Any] = {"name": "aspp_bias", "params": aspp_biases,
                                  "lr_mult": float(lr_mults["aspp_bias"])}
    if aspp_bias_weight_decay is not None:
        bias_group["weight_decay"] = float(aspp_bias_weight_decay)
    return [
        {"name": "backbone", "params": backbone, "lr_mult": float(lr_mults["backbone"])},
        {"name": "aspp_weight", "params": aspp_weights, "lr_mult": float(lr_mults["aspp_weight"])},
        bias_group,
    ]


# ------------------------------------------------------------------------------------------------------ loss


def segmentation_loss(outputs: Sequence[torch.Tensor], masks: torch.Tensor, resolution: str = "labels",
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy with ``ignore_index`` averaged over ``outputs`` (module docstring).

    A batch whose labels are all ignored contributes 0 (not NaN).
    """
    if resolution not in LOSS_RESOLUTIONS:
        raise ConfigError(f"segmenter.loss.resolution must be one of {LOSS_RESOLUTIONS}, got {resolution!r}")
    total = outputs[0].new_zeros(())
    for logits in outputs:
        if resolution == "labels":
            logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
            target = masks
        else:
            target = F.interpolate(masks[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
        valid = (target != ignore_index).sum().clamp(min=1)
        total = total + F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum") / valid
    return total / len(outputs)


# ----------------------------------------------------------------------------------------------- the module


class SegmenterModule(pl.LightningModule):
    """Trains :class:`~vwl_lightning.models.deeplab.DeepLabV2` on pseudo masks (module docstring).

    Args:
        num_classes: classes including background.
        backbone, aspp, msc: sub-configs of :func:`~vwl_lightning.models.deeplab.build_deeplab`.
        loss: ``resolution`` (labels | logits).
        optim: ``lr``, ``momentum``, ``weight_decay``, ``poly_power``, ``lr_grouping``, ``lr_mults``,
            ``aspp_bias_weight_decay``, ``train_bn``.
        init_checkpoint: optional DeepLabV2 state dict to start from (e.g. a COCO-trained model).
        backbone_init: optional classifier stage folder or classifier checkpoint whose trunk initialises the
            backbone (the embedded benchmark's stand-in for ImageNet weights, see conf/segmenter/synthetic.yaml).
        channels_last: run the network in channels-last memory format.
        class_names: for logs and reports.
    """

    def __init__(self, num_classes: int, backbone: dict, aspp: dict, msc: dict, loss: dict, optim: dict,
                 init_checkpoint: str | None = None, backbone_init: str | None = None, channels_last: bool = False,
                 class_names: list[str] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_deeplab(num_classes, backbone, aspp, msc)
        if backbone_init:
            load_classifier_trunk(self.model.backbone, backbone_init, SEGMENTER_TRUNK)
        if init_checkpoint:
            load_init_checkpoint(self.model, init_checkpoint)
        self.optim_cfg = dict(optim)
        freeze_for_grouping(self.model, str(optim.get("lr_grouping", "corrected")), bool(optim.get("train_bn", True)))
        self.loss_resolution = str(loss.get("resolution", "labels"))
        if self.loss_resolution not in LOSS_RESOLUTIONS:
            raise ConfigError(f"segmenter.loss.resolution must be one of {LOSS_RESOLUTIONS}, "
                              f"got {self.loss_resolution!r}")
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.val_conf = SegmentationConfusion(num_classes)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def compute_loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch (every MSC output when MSC is on)."""
        return segmentation_loss(self.model.outputs(self._prepare(images)), masks, self.loss_resolution)

    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Test-time logits upsampled (bilinear) to the input size."""
        logits = self.model(self._prepare(images)).float()
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch["image"], batch["mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        prediction = self.predict_logits(batch["image"]).argmax(dim=1)
        self.val_conf.update(prediction, batch["mask"])

    def on_validation_epoch_end(self) -> None:
        self.log("val/mIoU", self.val_conf.scores()["miou"], prog_bar=True)
        self.val_conf.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim_cfg
        bias_wd = o.get("aspp_bias_weight_decay")
        groups = segmenter_param_groups(self.model, str(o.get("lr_grouping", "corrected")),
                                        dict(o.get("lr_mults") or {}),
                                        None if bias_wd is None else float(bias_wd))
        optimizer = build_sgd(groups, lr=float(o["lr"]), momentum=float(o["momentum"]),
                              weight_decay=float(o["weight_decay"]))
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lambda(total, float(o["poly_power"])))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def load_init_checkpoint(model: DeepLabV2, path: str) -> None:
    """Initialise from a DeepLabV2 state dict in this package's key layout (``backbone.*``, ``aspp.*``;
    a Lightning checkpoint's ``model.`` prefix is stripped).  ASPP tensors whose shape differs (another
    number of classes) are skipped; every backbone tensor must match."""
    from vwl_lightning.models.backbone import load_state_dict_file, strip_key_prefix

    state = strip_key_prefix(load_state_dict_file(path), "model.")
    own = model.state_dict()
    backbone_missing = [k for k in own if k.startswith("backbone.") and k not in state]
    mismatched = [k for k in own if k.startswith("backbone.") and k in state and state[k].shape != own[k].shape]
    if backbone_missing or mismatched:
        raise DataError(f"{path}: not a DeepLabV2 checkpoint of this backbone (segmenter.init_checkpoint): "
                        f"missing {backbone_missing[:3]}, shape mismatch {mismatched[:3]}")
    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(usable, strict=False)
