"""Every training run ends with a ``last.ckpt``, whatever the validation cadence.

Lightning's :class:`~lightning.pytorch.callbacks.ModelCheckpoint` saves when validation ends
(or at a training epoch's end only when validation runs every epoch), so
``clapkit fit --config configs/quickstart/clap.yaml --trainer.max_epochs 1`` (validation every
4 epochs) trained and saved nothing, and a run whose last epochs fall between two validations
lost them. :class:`LastCheckpoint` (added to every ``clapkit`` LightningCLI run) writes
``<checkpoint dir>/last.ckpt`` when training ends unless the checkpoint callback already saved
at the final step. Runs without checkpointing (``enable_checkpointing: false``) are left alone.
"""

from __future__ import annotations

import os

from lightning.pytorch import Callback, LightningModule, Trainer


class LastCheckpoint(Callback):
    """Save ``last.ckpt`` in the checkpoint callback's folder when ``fit`` ends."""

    def __init__(self) -> None:
        self._saved_at: int | None = None  # global step of the latest checkpoint of this fit

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._saved_at = None

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        # Every full checkpoint the trainer writes (ModelCheckpoint's included) passes here; a
        # weights-only one does not, and then the save below is merely redundant, never wrong.
        self._saved_at = trainer.global_step

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        if checkpoint is None or trainer.fast_dev_run or trainer.global_step == 0:
            return
        if self._saved_at == trainer.global_step:
            return
        dirpath = getattr(checkpoint, "dirpath", None)
        if not dirpath:
            return
        name = getattr(checkpoint, "CHECKPOINT_NAME_LAST", "last") + getattr(checkpoint, "FILE_EXTENSION", ".ckpt")
        path = os.path.join(dirpath, name)
        if hasattr(checkpoint, "last_model_path"):
            checkpoint.last_model_path = path  # recorded in the checkpoint's callback state
        trainer.save_checkpoint(path)
        if hasattr(checkpoint, "_last_checkpoint_saved"):
            # Private, and kept on purpose: ModelCheckpoint(save_last=True) writes last.ckpt again in
            # its own on_train_end when this attribute is empty (it saved nothing during the run),
            # and no public attribute or method tells it that a checkpoint was written meanwhile
            # (it reads this one, not the public last_model_path). Without it: a second write of
            # the same file.
            checkpoint._last_checkpoint_saved = path
