"""Per-epoch counts of skipped (bad) samples, logged as ``data/skipped_<reason>`` metrics.

clapkit's loaders never stop on a bad file: workers drop it and report it in the batch
(``batch["skipped"] = {reason: count}``, see :mod:`clapkit.datamodules.pipeline`). This
callback sums those reports in the main process and logs them once per epoch, summed over
ranks. Every reason in :data:`~clapkit.datamodules.pipeline.SKIP_REASONS` is logged (zero
when none occurred) so all ranks log the same keys, which the cross-rank sum requires.

Clips a map-style datamodule left out when it read its metadata (an AudioCaps video that
could not be downloaded, an AudioSet segment without a file) are counted too: a datamodule
with a ``left_out(stage) -> {reason: count}`` method (every
:class:`~clapkit.datamodules.clips.ClipDataModule`) adds them to each epoch of that stage, so
the metrics say the same as the setup warning.

Metric names: training ``data/skipped_<reason>`` and ``data/skipped_total``; validation and
test ``data/val_skipped_<reason>``, ``data/test_skipped_<reason>`` (and ``..._total``).
Evaluation epochs also log how many clips and captions were evaluated:
``data/val_clips``, ``data/val_captions`` (``test`` likewise).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from clapkit.datamodules.pipeline import SKIP_REASONS


class DataHealth(Callback):
    """Logs how many samples the loaders skipped per epoch, by reason.

    Args:
        batch_key: key of the per-batch skip report.
        warn_fraction: print a warning when more than this fraction of an epoch's samples
            were skipped (0 disables).
    """

    def __init__(self, batch_key: str = "skipped", warn_fraction: float = 0.05):
        self.batch_key = batch_key
        self.warn_fraction = warn_fraction
        self.counts: dict[str, Counter] = {"train": Counter(), "val": Counter(), "test": Counter()}
        self.seen: Counter = Counter()
        self.captions: Counter = Counter()

    # -- accumulation --------------------------------------------------------------------
    def _add(self, stage: str, batch: Any) -> None:
        if not isinstance(batch, Mapping):
            return
        report = batch.get(self.batch_key)
        if isinstance(report, Mapping):
            for reason, count in report.items():
                self.counts[stage][str(reason)] += int(count)
        keys = batch.get("key")
        if keys is not None:
            self.seen[stage] += len(keys)
        captions = batch.get("captions")
        if captions is not None:
            self.captions[stage] += sum(len(c) for c in captions)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int):
        self._add("train", batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._add("val", batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._add("test", batch)

    # -- logging -------------------------------------------------------------------------
    def _add_left_out(self, stage: str, trainer: Trainer) -> None:
        left_out = getattr(getattr(trainer, "datamodule", None), "left_out", None)
        if callable(left_out) and trainer.is_global_zero:  # once: the metric sums over ranks
            self.counts[stage].update(left_out(stage))

    def _log(self, stage: str, pl_module: LightningModule) -> None:
        counts = self.counts[stage]
        prefix = "data/skipped_" if stage == "train" else f"data/{stage}_skipped_"
        reasons = list(SKIP_REASONS) + sorted(set(counts) - set(SKIP_REASONS))
        for reason in reasons:
            pl_module.log(prefix + reason, float(counts.get(reason, 0)), reduce_fx="sum", sync_dist=True,
                          on_step=False, on_epoch=True)
        total = sum(counts.values())
        pl_module.log(prefix + "total", float(total), reduce_fx="sum", sync_dist=True, on_step=False,
                      on_epoch=True)
        seen = self.seen[stage]
        if self.warn_fraction and total and total > self.warn_fraction * (total + seen):
            pl_module.print(f"warning: {stage} skipped {total} of {total + seen} samples: {dict(counts)}")
        if stage != "train":
            pl_module.log(f"data/{stage}_clips", float(seen), reduce_fx="sum", sync_dist=True,
                          on_step=False, on_epoch=True)
            pl_module.log(f"data/{stage}_captions", float(self.captions[stage]), reduce_fx="sum",
                          sync_dist=True, on_step=False, on_epoch=True)
        counts.clear()
        self.seen[stage] = 0
        self.captions[stage] = 0

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._add_left_out("train", trainer)
        self._log("train", pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._add_left_out("val", trainer)
            self._log("val", pl_module)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._add_left_out("test", trainer)
        self._log("test", pl_module)
