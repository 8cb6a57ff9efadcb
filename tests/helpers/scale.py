"""Helpers for the scale tests (resume after a kill): a callback that records training progress."""

from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl


class StepLog(pl.Callback):
    """Append ``start <global_step>`` when training starts and ``step <global_step>`` after each batch.

    Args:
        path: text file to append to (shared by successive runs of the same command).
        sleep: seconds to wait after each batch, so a test can stop the run mid-epoch.
    """

    def __init__(self, path: str, sleep: float = 0.0):
        super().__init__()
        self.path = Path(path)
        self.sleep = sleep

    def _write(self, line: str) -> None:
        with self.path.open("a") as handle:
            handle.write(line + "\n")
            handle.flush()

    def on_train_start(self, trainer, pl_module) -> None:
        self._write(f"start {trainer.global_step} epoch {trainer.current_epoch} batch {trainer.fit_loop.epoch_loop.batch_idx}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._write(f"step {trainer.global_step}")
        if self.sleep:
            time.sleep(self.sleep)

    def on_train_end(self, trainer, pl_module) -> None:
        self._write(f"end {trainer.global_step}")


class FinalMetrics(pl.Callback):
    """At the end of ``fit``, write the logged metrics and a weight checksum to a JSON file
    (compared across an interrupted and an uninterrupted run)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = Path(path)

    def on_fit_end(self, trainer, pl_module) -> None:
        import json

        import torch

        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}
        metrics["weights/abs_sum"] = float(sum(p.detach().double().abs().sum() for p in pl_module.parameters()))
        metrics["global_step"] = trainer.global_step
        self.path.write_text(json.dumps(metrics, indent=1, sort_keys=True))
