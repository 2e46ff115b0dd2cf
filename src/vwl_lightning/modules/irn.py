"""IRNet's boundary branch as a LightningModule: pair labels, affinities, the affinity loss, SGD (spec §10.3-10.5).

A batch holds crops ``(N, 3, S, S)`` and confident-seed masks ``(N, S, S)`` (0 background, classes, 255
uncertain).  The stride-4 labels take pixel ``(4y+2, 4x+2)`` (spec §10.3 item 6); pair labels and
affinities ``a = 1 − max_{Π(d)} B`` use the training radius (10, spec §10.3); the loss is
``((L_bg⁺ + L_fg⁺)/2 + L_neg)/2`` over the whole batch (spec §10.5).

Optimiser (spec §10.5): SGD (``irn.optimizer``, a ``_partial_`` node) on the boundary branch (and on the trunk
when it is not frozen) at ``lr``, coupled weight decay on every parameter, poly schedule ``lr·(1 − t/T)^power``
(``irn.scheduler``, :class:`~vwl_lightning.modules.optim.PolyLR`).  ``momentum``: IRN's code
passes the weight decay into SGD's momentum slot (effective 1e-4, the faithful value); 0.9 is the corrected
one.  Backbone sources (``backbone_source``): ``classifier`` (this run's classifier trunk, loaded and
frozen), ``file``/``hub`` (ImageNet weights through :class:`Backbone`, frozen), ``scratch`` (random init,
trained with the branch).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from vwl_lightning.errors import ConfigError
from vwl_lightning.models.irnet import IRNet
from vwl_lightning.modules.classifier import IRN_TRUNK, load_classifier_trunk
from vwl_lightning.modules.optim import check_module_nodes, make_optimizer
from vwl_lightning.pseudo.affinity import affinity_loss, pair_labels, training_affinities
from vwl_lightning.utils.instantiate import ArgumentError, build, require_choice, require_number

BACKBONE_SOURCES = ("classifier", "imagenet", "scratch")


def stride4_labels(masks: torch.Tensor) -> torch.Tensor:
    """IRN's label ↓4: cell ``(y, x)`` takes pixel ``(4y+2, 4x+2)`` (PIL NEAREST at 0.25, spec §10.3 item 6)."""
    return masks[:, 2::4, 2::4]


class IRNModule(pl.LightningModule):
    """Trains IRNet's boundary branch on confident seeds (spec §10.3-10.5).

    Args:
        backbone: ``irn.backbone``: a :class:`Backbone` node.
        net: ``irn.net``: an :class:`~vwl_lightning.models.irnet.IRNet` node (``trunk`` and ``frozen`` given here).
        optimizer: ``irn.optimizer``: a ``_partial_`` optimiser (SGD).
        scheduler: ``irn.scheduler``: a ``_partial_`` :class:`~vwl_lightning.modules.optim.PolyLR`.
        backbone_source: ``classifier`` (this run's classifier trunk, frozen) | ``imagenet`` (weights through
            ``backbone``, frozen) | ``scratch`` (random init, trained with the branch).
        classifier_dir: the classifier stage folder or checkpoint for ``backbone_source=classifier``.
        radius: the training radius of the pair labels (spec §10.3: 10).
        ignore_index: the uncertain label of the seeds.
        cam_dir, run_id: recorded with the checkpoint (which CAMs it was trained on).
    """

    def __init__(self, backbone: dict, net: dict, optimizer: dict, scheduler: dict,
                 backbone_source: str = "classifier", classifier_dir: str | None = None, radius: int = 10,
                 ignore_index: int = 255, cam_dir: str = "", run_id: str = "") -> None:
        super().__init__()
        self.check_arguments(backbone, net, optimizer, scheduler, backbone_source, radius)
        self.save_hyperparameters()
        if backbone_source == "classifier" and not classifier_dir:
            raise ConfigError("irn.classifier_dir: backbone_source=classifier needs the classifier stage folder")
        trunk = build(backbone, "irn.backbone")
        if backbone_source == "classifier":
            load_classifier_trunk(trunk, classifier_dir, IRN_TRUNK)
        self.model: IRNet = build(net, "irn.net", trunk=trunk, frozen=backbone_source != "scratch")
        self.radius = int(radius)
        self.ignore_index = int(ignore_index)

    @classmethod
    def check_arguments(cls, backbone: dict, net: dict, optimizer: dict, scheduler: dict, backbone_source: str,
                        radius: int) -> None:
        """The checks of every node and setting (one line naming ``irn.<key>``), without building anything."""
        check_module_nodes("irn", {"backbone": backbone, "net": net, "optimizer": optimizer, "scheduler": scheduler})
        try:
            require_choice("backbone_source", backbone_source, BACKBONE_SOURCES)
            require_number("radius", radius, 1, integer=True)
        except ArgumentError as exc:
            raise exc.at("irn") from None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def losses(self, images: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        labels = stride4_labels(masks)
        boundary = torch.sigmoid(self.model(images))[:, 0, : labels.shape[1], : labels.shape[2]]
        bg, fg, neg = pair_labels(labels, self.radius, self.ignore_index, dtype=boundary.dtype)
        return affinity_loss(training_affinities(boundary, self.radius), bg, fg, neg)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.losses(batch["image"], batch["mask"])
        n = batch["image"].shape[0]
        self.log("train/loss", out["total"], prog_bar=True, batch_size=n, sync_dist=True)
        for key in ("bg_pos", "fg_pos", "neg"):
            self.log(f"train/loss_{key}", out[key], batch_size=n, sync_dist=True)
        return out["total"]

    def configure_optimizers(self) -> dict[str, Any]:
        groups = [{"params": self.model.trainable_parameters(), "lr_mult": 1.0, "name": "boundary"}]
        optimizer = make_optimizer(build(self.hparams.optimizer, "irn.optimizer"), groups)
        scheduler = build(self.hparams.scheduler, "irn.scheduler")(
            optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
