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

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        if checkpoint is None or trainer.fast_dev_run or trainer.global_step == 0:
            return
        # ModelCheckpoint's own record of the step it last saved at (no public accessor);
        # without it the save below is merely redundant, never wrong.
        if getattr(checkpoint, "_last_global_step_saved", None) == trainer.global_step:
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
            checkpoint._last_checkpoint_saved = path  # ModelCheckpoint(save_last) need not save it again
        if hasattr(checkpoint, "_last_global_step_saved"):
            checkpoint._last_global_step_saved = trainer.global_step
