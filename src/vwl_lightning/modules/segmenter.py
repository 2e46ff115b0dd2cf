"""Stage 3: DeepLabV2 trained on the pseudo masks as a LightningModule, with its data (spec §7).

Loss: pixel-wise cross-entropy with 255 ignored, averaged over the network's outputs (one without MSC,
the four MSC outputs with it)::

    L = 1/|O| Σ_{o∈O} Σ_{p: y_p≠255} −log softmax(o_p)[y_p] / #{p: y_p≠255}

``loss.resolution`` (:class:`SegmentationLoss`) says where the comparison happens: ``labels`` upsamples each
output bilinearly to the label size (the usual choice, sharper on small images); ``logits`` resizes the labels
(nearest) to each output's size, as deeplab-pytorch does (spec §7 [DL]).

Optimiser (spec §7): SGD with momentum, weight decay (``segmenter.optimizer``, a ``_partial_`` node) and the
poly schedule lr_t = lr_0 (1 − t/T)^0.9 per step (``segmenter.scheduler``,
:class:`~vwl_lightning.modules.optim.PolyLR`).
Parameter groups (``segmenter.groups``, :class:`DeepLabParamGroups`), ``lr_grouping``:

* ``corrected`` (default; DeepLab's own recipe): backbone at 1×, ASPP weights at 10×, ASPP biases at 20×
  (weight decay ``aspp_bias_weight_decay``, 0 in DeepLab).
* ``faithful`` (the code VWL used, spec §7 "Quirk"): the 10×/20× groups look for a module named ``conv8``
  that DeepLabV2 lacks, so every conv weight (backbone and ASPP) trains at 1× and the ASPP biases are in
  no group: they never move from their initial 0 (here they are also marked ``requires_grad=False``).

``train_bn``: whether BatchNorm γ/β train (in the backbone group).  DeepLab freezes BN entirely
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
from vwl_lightning.models.backbone import Backbone
from vwl_lightning.models.deeplab import MSC, OUTPUT_STRIDES, DeepLabV2
from vwl_lightning.modules.classifier import SEGMENTER_TRUNK, load_classifier_trunk
from vwl_lightning.modules.optim import check_module_nodes, make_optimizer, trainable
from vwl_lightning.utils.instantiate import (
    ArgumentError,
    build,
    node_arguments,
    require_choice,
    require_number,
)

LR_GROUPINGS = ("corrected", "faithful")
LOSS_RESOLUTIONS = ("labels", "logits")
LR_MULT_KEYS = ("backbone", "aspp_weight", "aspp_bias")
DEEPLAB_LR_MULTS = {"backbone": 1.0, "aspp_weight": 10.0, "aspp_bias": 20.0}


# ----------------------------------------------------------------------------------------------- optimiser


def freeze_for_grouping(model: DeepLabV2, grouping: str, train_bn: bool) -> None:
    """Mark what the chosen recipe never updates as ``requires_grad=False`` (module docstring).

    ``faithful``: the ASPP biases (in no optimiser group in the original); ``train_bn=False``: every
    BatchNorm γ/β of the backbone.
    """
    require_choice("lr_grouping", grouping, LR_GROUPINGS)
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
    """Parameter groups for :func:`~vwl_lightning.modules.optim.make_optimizer` (spec §7; module docstring).

    ``corrected``: ``backbone`` (lr × ``lr_mults.backbone``), ``aspp_weight`` (× ``aspp_weight``),
    ``aspp_bias`` (× ``aspp_bias``, weight decay ``aspp_bias_weight_decay`` or the optimiser's if None).
    ``faithful``: one group ``conv_1x`` holding every trainable backbone parameter and the ASPP weights at 1×.
    """
    DeepLabParamGroups.check_arguments(grouping, lr_mults, aspp_bias_weight_decay, True)
    aspp_weights = trainable(conv.weight for conv in model.aspp.branches)
    aspp_biases = trainable(conv.bias for conv in model.aspp.branches)
    backbone = trainable(model.backbone.parameters())
    if grouping == "faithful":
        return [{"name": "conv_1x", "params": backbone + aspp_weights, "lr_mult": 1.0}]
    bias_group: dict[str, Any] = {"name": "aspp_bias", "params": aspp_biases,
                                  "lr_mult": float(lr_mults["aspp_bias"])}
    if aspp_bias_weight_decay is not None:
        bias_group["weight_decay"] = float(aspp_bias_weight_decay)
    return [
        {"name": "backbone", "params": backbone, "lr_mult": float(lr_mults["backbone"])},
        {"name": "aspp_weight", "params": aspp_weights, "lr_mult": float(lr_mults["aspp_weight"])},
        bias_group,
    ]


class DeepLabParamGroups:
    """DeepLabV2's optimiser groups and what they leave frozen (``segmenter.groups``; module docstring).

    Args:
        lr_grouping: ``corrected`` (backbone 1×, ASPP weights 10×, ASPP biases 20×) | ``faithful`` (spec §7 Quirk).
        lr_mults: ``backbone``, ``aspp_weight``, ``aspp_bias`` multipliers of the optimiser's lr (corrected only).
        aspp_bias_weight_decay: weight decay of the ASPP biases (corrected; DeepLab: 0); None: the optimiser's.
        train_bn: whether the backbone's BatchNorm γ/β train (DeepLab: false).
    """

    def __init__(self, lr_grouping: str = "corrected", lr_mults: Mapping[str, float] | None = None,
                 aspp_bias_weight_decay: float | None = 0.0, train_bn: bool = False) -> None:
        lr_mults = dict(DEEPLAB_LR_MULTS if lr_mults is None else lr_mults)
        self.check_arguments(lr_grouping, lr_mults, aspp_bias_weight_decay, train_bn)
        self.lr_grouping, self.lr_mults = lr_grouping, lr_mults
        self.aspp_bias_weight_decay, self.train_bn = aspp_bias_weight_decay, train_bn

    @classmethod
    def check_arguments(cls, lr_grouping: str, lr_mults: Mapping[str, float] | None,
                        aspp_bias_weight_decay: float | None, train_bn: bool) -> None:
        require_choice("lr_grouping", lr_grouping, LR_GROUPINGS)
        if lr_grouping == "corrected" and lr_mults is not None:
            if not isinstance(lr_mults, Mapping):
                raise ArgumentError("lr_mults", lr_mults, "{" + ", ".join(LR_MULT_KEYS) + "}")
            for key in LR_MULT_KEYS:
                require_number(f"lr_mults.{key}", lr_mults.get(key), 0, low_open=True)
        if aspp_bias_weight_decay is not None:
            require_number("aspp_bias_weight_decay", aspp_bias_weight_decay, 0)
        if not isinstance(train_bn, bool):
            raise ArgumentError("train_bn", train_bn, "true or false")

    def freeze(self, model: DeepLabV2) -> None:
        """:func:`freeze_for_grouping` with these settings."""
        freeze_for_grouping(model, self.lr_grouping, self.train_bn)

    def __call__(self, model: DeepLabV2) -> list[dict[str, Any]]:
        """:func:`segmenter_param_groups` with these settings."""
        return segmenter_param_groups(model, self.lr_grouping, self.lr_mults, self.aspp_bias_weight_decay)


# ------------------------------------------------------------------------------------------------------ loss


def segmentation_loss(outputs: Sequence[torch.Tensor], masks: torch.Tensor, resolution: str = "labels",
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy with ``ignore_index`` averaged over ``outputs`` (module docstring).

    A batch whose labels are all ignored contributes 0 (not NaN).
    """
    require_choice("resolution", resolution, LOSS_RESOLUTIONS)
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


class SegmentationLoss:
    """:func:`segmentation_loss` as the ``segmenter.loss`` node.

    Args:
        resolution: ``labels`` (outputs upsampled to the labels) | ``logits`` (labels resized to each output,
            deeplab-pytorch).
    """

    def __init__(self, resolution: str = "labels") -> None:
        self.check_arguments(resolution)
        self.resolution = resolution

    @classmethod
    def check_arguments(cls, resolution: str) -> None:
        require_choice("resolution", resolution, LOSS_RESOLUTIONS)

    def __call__(self, outputs: Sequence[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        return segmentation_loss(outputs, masks, self.resolution)


# ----------------------------------------------------------------------------------------------- the module


class SegmenterModule(pl.LightningModule):
    """Trains :class:`~vwl_lightning.models.deeplab.DeepLabV2` on pseudo masks (module docstring).

    Every network argument is a ``_target_`` node of the ``segmenter`` config (plain dicts, saved as the
    hyper-parameters, so ``load_from_checkpoint`` needs nothing else).

    Args:
        num_classes: classes including background.
        backbone: ``segmenter.backbone``: a dilated :class:`~vwl_lightning.models.backbone.Backbone` or the
            caffe trunk :class:`~vwl_lightning.models.caffe_deeplab.CaffeResNet`.
        aspp: ``segmenter.aspp``: :class:`~vwl_lightning.models.deeplab.ASPP` (``in_channels`` and
            ``num_classes`` given here).
        msc: ``segmenter.msc``: :class:`~vwl_lightning.models.deeplab.MSC`.
        loss: ``segmenter.loss``: :class:`SegmentationLoss`.
        optimizer: ``segmenter.optimizer``: a ``_partial_`` optimiser (SGD with ``lr``, ``momentum``,
            ``weight_decay``).
        scheduler: ``segmenter.scheduler``: a ``_partial_`` :class:`~vwl_lightning.modules.optim.PolyLR`.
        groups: ``segmenter.groups``: :class:`DeepLabParamGroups`.
        init_checkpoint: optional DeepLabV2 state dict to start from (e.g. a COCO-trained model).
        backbone_init: optional classifier stage folder or classifier checkpoint whose trunk initialises the
            backbone (the embedded benchmark's stand-in for ImageNet weights, see conf/segmenter/synthetic.yaml).
        channels_last: run the network in channels-last memory format.
        class_names: for logs and reports.
    """

    def __init__(self, num_classes: int, backbone: dict, aspp: dict, msc: dict, loss: dict, optimizer: dict,
                 scheduler: dict, groups: dict, init_checkpoint: str | None = None, backbone_init: str | None = None,
                 channels_last: bool = False, class_names: list[str] | None = None) -> None:
        super().__init__()
        self.check_arguments(backbone, aspp, msc, loss, optimizer, scheduler, groups)
        self.save_hyperparameters()
        trunk = build(backbone, "segmenter.backbone")
        head = build(aspp, "segmenter.aspp", in_channels=trunk.out_channels, num_classes=num_classes)
        try:
            inputs: MSC = build(msc, "segmenter.msc")
            self.model = DeepLabV2(trunk, head, inputs.scales, inputs.resize)
        except ArgumentError as exc:
            raise exc.at("segmenter.backbone") from None
        if backbone_init:
            load_classifier_trunk(self.model.backbone, backbone_init, SEGMENTER_TRUNK)
        if init_checkpoint:
            load_init_checkpoint(self.model, init_checkpoint)
        self.groups: DeepLabParamGroups = build(groups, "segmenter.groups")
        self.groups.freeze(self.model)
        self.loss: SegmentationLoss = build(loss, "segmenter.loss")
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.val_conf = SegmentationConfusion(num_classes)

    @classmethod
    def check_arguments(cls, backbone: dict, aspp: dict, msc: dict, loss: dict, optimizer: dict, scheduler: dict,
                        groups: dict) -> None:
        """The checks of every node (one line naming ``segmenter.<key>``), without building the network."""
        check_module_nodes("segmenter", {"backbone": backbone, "aspp": aspp, "msc": msc, "loss": loss,
                                         "optimizer": optimizer, "scheduler": scheduler, "groups": groups})
        if str(backbone.get("_target_")) == f"{Backbone.__module__}.{Backbone.__name__}":
            arguments = node_arguments(backbone)
            if arguments.get("dilate") is not True:
                raise ConfigError(f"segmenter.backbone.dilate={arguments.get('dilate')!r}: expected true "
                                  "(DeepLabV2 uses the dilated trunk, spec §7)")
            if arguments.get("output_stride") not in OUTPUT_STRIDES:
                raise ConfigError(f"segmenter.backbone.output_stride={arguments.get('output_stride')!r}: expected "
                                  "8 or 16 (DeepLab)")

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def compute_loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch (every MSC output when MSC is on)."""
        return self.loss(self.model.outputs(self._prepare(images)), masks)

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
        optimizer = make_optimizer(build(self.hparams.optimizer, "segmenter.optimizer"), self.groups(self.model))
        scheduler = build(self.hparams.scheduler, "segmenter.scheduler")(
            optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def load_init_checkpoint(model: DeepLabV2, path: str) -> None:
    """Initialise from a DeepLabV2 state dict in this package's key layout (``backbone.*``, ``aspp.*``;
    a Lightning checkpoint's ``model.`` prefix is stripped).  ASPP tensors whose shape differs (another
    number of classes) are skipped; every backbone tensor must match."""
    from vwl_lightning.models.weight_files import load_state_dict_file, strip_key_prefix

    state = strip_key_prefix(load_state_dict_file(path), "model.")
    own = model.state_dict()
    backbone_missing = [k for k in own if k.startswith("backbone.") and k not in state]
    mismatched = [k for k in own if k.startswith("backbone.") and k in state and state[k].shape != own[k].shape]
    if backbone_missing or mismatched:
        raise DataError(f"{path}: not a DeepLabV2 checkpoint of this backbone (segmenter.init_checkpoint): "
                        f"missing {backbone_missing[:3]}, shape mismatch {mismatched[:3]}")
    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(usable, strict=False)
