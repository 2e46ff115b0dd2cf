"""The rolling resume checkpoint shared by the training stages (classifier, segmenter)."""

from __future__ import annotations

from pathlib import Path

from pytorch_lightning.callbacks import ModelCheckpoint


def rolling_checkpoint(stage_dir: Path, every_n_steps: int | None) -> ModelCheckpoint:
    """``checkpoints/last.ckpt``, overwritten every epoch (or every ``every_n_steps`` steps): the resume point.

    Lightning 2.6 writes ``save_last`` only after a top-k save, and with ``save_top_k=0`` that means only when
    training ends, which is useless after a kill; a single un-monitored top-1 checkpoint named ``last``
    (no version counter) is overwritten at every save instead.
    """
    every = {"every_n_train_steps": int(every_n_steps)} if every_n_steps else {"every_n_epochs": 1}
    return ModelCheckpoint(dirpath=stage_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                           save_last=False, enable_version_counter=False, save_on_train_epoch_end=True, **every)
