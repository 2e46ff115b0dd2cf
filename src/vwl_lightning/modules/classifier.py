"""Stage 1: the VWL classifier as a LightningModule (spec §1–4).

Loss (spec §2.2, §2.3), each term weighted in config (``model.loss``) and logged on its own::

    L = w_img·MLSM(p^img, y) + w_w2i·MLSM(p^w2i, y) + w_word·MLSM(p^word, y^word) + w_decov·L_decov

VWL-L uses all four (weights 1); VWL-M has no w2i or decov term and instead updates its memory bank
after every step; the plain-CAM baseline has only the image term.
Validation logs multi-label mAP and a quick CAM mIoU (single scale, no flip, background score
``model.val_bg_score``) on the validation split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import WandbLogger
from torchmetrics.classification import MultilabelAveragePrecision

from vwl_lightning.cam.fusion import cams_to_prediction, normalise_cams
from vwl_lightning.errors import DataError, load_error_text
from vwl_lightning.evaluation.metrics import SegmentationConfusion
from vwl_lightning.models.backbone import weights_from_checkpoint
from vwl_lightning.models.classifier import VWLClassifier
from vwl_lightning.modules.optim import check_module_nodes, make_optimizer, trainable
from vwl_lightning.tracking.wandb_runs import cam_overlay, denormalise, mask_image, wandb_image
from vwl_lightning.utils.instantiate import ArgumentError, build, require_number

LOSS_TERMS = ("img", "w2i", "word", "decov")


def build_classifier(num_classes: int, backbone: dict, pool: dict, codebook: dict | None,
                     head: dict | None = None) -> VWLClassifier:
    """The network from the ``model`` config's ``_target_`` nodes (``num_classes`` = foreground classes), built
    in this order: backbone, pooling, codebook, classifier head."""
    net = build(backbone, "model.backbone")
    return VWLClassifier(
        backbone=net,
        pooling=build(pool, "model.pool"),
        codebook=build(codebook, "model.codebook", dim=net.out_channels, supplied={"num_classes": num_classes}),
        num_classes=num_classes,
        **({"head": build(head, "model.head")} if head else {}),
    )


class ClassifierModule(pl.LightningModule):
    """Trains :class:`VWLClassifier` on image-level labels.

    The network's parts, the optimiser and the schedule arrive as ``_target_`` nodes (plain dicts, so the
    checkpoint's hyper-parameters rebuild the module with no other input) and are built here.

    Args:
        num_classes: foreground classes.
        backbone, pool, codebook, head: ``_target_`` nodes of :func:`build_classifier` (codebook ``None``:
            plain CAM).
        loss: weights ``img``, ``w2i``, ``word``, ``decov``.
        optimizer: a ``_partial_`` optimiser node (spec §4: SGD); its ``lr`` is the backbone's.
        scheduler: a ``_partial_`` schedule node taking ``(optimizer, total_steps)`` (spec §4: poly).
        new_layer_lr_mult: learning-rate multiplier of the layers trained from scratch (spec §4: 10).
        val_bg_score: background score of the quick validation CAM mIoU.
        channels_last: run the network in channels-last memory format.
        class_names: names with background first (for logged masks).
        log_images: CAM overlays / seed masks of the first validation batch logged to W&B per epoch.
    """

    def __init__(self, num_classes: int, backbone: dict, pool: dict, codebook: dict | None, loss: dict,
                 optimizer: dict, scheduler: dict, head: dict | None = None, new_layer_lr_mult: float = 10.0,
                 val_bg_score: float = 0.13, channels_last: bool = False, class_names: list[str] | None = None,
                 log_images: int = 0) -> None:
        super().__init__()
        self.check_arguments(backbone, pool, codebook, head, loss, optimizer, scheduler, new_layer_lr_mult,
                             val_bg_score)
        self.save_hyperparameters()
        self.model = build_classifier(num_classes, backbone, pool, codebook, head)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_weights = {k: float(v) for k, v in loss.items()}
        self.make_optimizer = build(optimizer, "model.optimizer")
        self.make_scheduler = build(scheduler, "model.scheduler")
        self.val_map = MultilabelAveragePrecision(num_labels=num_classes, average="macro")
        self.val_cam = SegmentationConfusion(num_classes + 1)

    @classmethod
    def check_arguments(cls, backbone: dict, pool: dict, codebook: dict | None, head: dict | None, loss: dict,
                        optimizer: dict, scheduler: dict, new_layer_lr_mult: float, val_bg_score: float) -> None:
        """Every node checked by its class (the optimiser dry-built), then the module's own values; nothing built."""
        check_module_nodes("model", {"backbone": backbone, "pool": pool, "codebook": codebook, "head": head,
                                     "optimizer": optimizer, "scheduler": scheduler})
        if not isinstance(loss, dict) or set(loss) - set(LOSS_TERMS):
            raise ArgumentError("loss", loss, "weights of " + ", ".join(LOSS_TERMS))
        for term, weight in loss.items():
            require_number(f"loss.{term}", weight, 0)
        require_number("new_layer_lr_mult", new_layer_lr_mult, 0)
        require_number("val_bg_score", val_bg_score, 0, 1)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def compute_losses(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[dict[str, torch.Tensor], Any]:
        """Every loss term of the batch (unweighted) and the network output."""
        out = self.model(self._prepare(images))
        losses = {"img": F.multilabel_soft_margin_loss(out.logits, labels)}
        words = out.codebook
        if words is not None:
            losses["word"] = F.multilabel_soft_margin_loss(words.word_logits, words.word_targets)
            if words.w2i_logits is not None:
                losses["w2i"] = F.multilabel_soft_margin_loss(words.w2i_logits, labels)
            losses.update(words.aux_losses)
        return losses, out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses, out = self.compute_losses(batch["image"], batch["label"])
        total = sum(self.loss_weights.get(name, 1.0) * value for name, value in losses.items())
        bank = self.model.memory_bank
        if bank is not None:
            bank.update(out.features)
        batch_size = batch["image"].shape[0]
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value, batch_size=batch_size)
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        return total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images, labels, masks = batch["image"], batch["label"], batch["mask"]
        features = self.model.backbone(self._prepare(images))
        logits = self.model.pooling(features) @ self.model.classifier.weight.flatten(1).t()
        self.val_map.update(torch.sigmoid(logits), labels.long())
        cams = torch.relu(self.model.classifier(features)).float()
        cams = F.interpolate(cams, size=images.shape[-2:], mode="bilinear", align_corners=False)
        normalised = normalise_cams(cams, labels)
        prediction = cams_to_prediction(normalised, self.hparams.val_bg_score)
        self.val_cam.update(prediction, masks)
        if batch_idx == 0:
            self._log_examples(images, normalised, prediction, masks)

    def _log_examples(self, images: torch.Tensor, cams: torch.Tensor, prediction: torch.Tensor,
                      masks: torch.Tensor) -> None:
        """CAM overlays (strongest labelled class) and seed vs ground-truth masks, to W&B only."""
        count = min(int(self.hparams.log_images), images.shape[0])
        if (count <= 0 or not isinstance(self.logger, WandbLogger) or self.global_rank != 0
                or self.trainer.sanity_checking):
            return
        names = self.hparams.class_names or [str(i) for i in range(self.hparams.num_classes + 1)]
        overlays, seeds = [], []
        for i in range(count):
            image = denormalise(images[i].float().cpu().numpy())
            heat = cams[i].max(dim=0).values.cpu().numpy()
            overlays.append(wandb_image(cam_overlay(image, heat), caption=f"epoch {self.current_epoch}"))
            seeds.append(mask_image(image, names, prediction=prediction[i].cpu().numpy(),
                                    ground_truth=masks[i].cpu().numpy()))
        self.logger.experiment.log({"val/cam_overlay": overlays, "val/seed_masks": seeds,
                                    "trainer/global_step": self.global_step})

    def on_validation_epoch_end(self) -> None:
        self.log("val/mAP", self.val_map.compute(), prog_bar=True, sync_dist=False)
        scores = self.val_cam.scores()
        self.log("val/cam_mIoU", scores["miou"], prog_bar=True)
        self.val_map.reset()
        self.val_cam.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        """Two groups (spec §4): the backbone at the optimiser's lr, the new layers at ``new_layer_lr_mult``×."""
        new_params = {id(p) for m in self.model.new_layers() for p in m.parameters()}
        backbone_params = [p for p in trainable(self.model.parameters()) if id(p) not in new_params]
        new_layer_params = [p for m in self.model.new_layers() for p in trainable(m.parameters())]
        optimizer = make_optimizer(self.make_optimizer, [
            {"name": "backbone", "params": backbone_params, "lr_mult": 1.0},
            {"name": "new_layers", "params": new_layer_params, "lr_mult": float(self.hparams.new_layer_lr_mult)}])
        scheduler = self.make_scheduler(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def load_classifier(path: Path) -> ClassifierModule:
    """Load our classifier checkpoint; anything else is reported as a foreign checkpoint."""
    try:
        with weights_from_checkpoint():  # the checkpoint holds every weight: no hub, no weight file
            return ClassifierModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not one of ours
        raise DataError(f"{path}: not a vwl_lightning classifier checkpoint ({load_error_text(exc)})") from None


# where a trunk copied from a classifier comes from: (config key of the source, the trunk's config group, the
# setting that does without it), for the error messages
SEGMENTER_TRUNK = ("segmenter.backbone_init", "segmenter.backbone", "segmenter.backbone_init=null")
IRN_TRUNK = ("irn.classifier_dir", "irn.backbone", "irn.backbone_source=scratch")


def load_classifier_trunk(trunk: torch.nn.Module, source: str | Path, keys: tuple[str, str, str]) -> Path:
    """Copy the trunk of a classifier checkpoint (``model.backbone.*``) into ``trunk`` (the segmenter's or
    IRN's backbone).

    ``source`` is a classifier stage folder (its manifest names the checkpoint) or a checkpoint file.  The
    classifier's trunk has the same modules and shapes (only strides/dilations differ, which hold no
    weights); every tensor of ``trunk`` must be found with the same shape (DataError naming ``keys``, e.g.
    :data:`SEGMENTER_TRUNK`, otherwise).  Returns the checkpoint path.
    """
    from vwl_lightning.models.weight_files import load_state_dict_file, strip_key_prefix
    from vwl_lightning.utils.manifest import read_manifest

    key, group, fallback = keys
    path = Path(source).expanduser()
    if path.is_dir():
        manifest = read_manifest(path)
        if manifest is None:
            raise DataError(f"{key} {path}: no completed classifier stage there (manifest.json missing); train it "
                            f"first or set {fallback}")
        path = Path(manifest["checkpoint"])
    if not path.is_file():
        raise DataError(f"{key} {path}: classifier checkpoint not found")
    weights = strip_key_prefix(load_state_dict_file(path), "model.backbone.", only=True)
    own = trunk.state_dict()
    bad = [k for k, v in own.items() if k not in weights or weights[k].shape != v.shape]
    if bad:
        raise DataError(f"{path}: its classifier trunk does not match {group} (e.g. {bad[0]}); use the "
                        f"classifier's backbone name and model_kwargs")
    trunk.load_state_dict({k: weights[k] for k in own})
    return path
