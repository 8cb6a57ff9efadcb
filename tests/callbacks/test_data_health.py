"""A shard with corrupt and empty audio trains through; the skips show up in the logged metrics."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from clapkit.callbacks.data_health import DataHealth
from clapkit.datamodules.pipeline import SKIP_REASONS, AudioPolicy
from clapkit.datamodules.webdataset import ShardDataModule
from helpers.fixtures import write_shards


class TinyAudioModel(pl.LightningModule):
    """Linear regression on a downsampled waveform: enough to run real optimisation steps."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(50, 1)

    def _loss(self, batch):
        x = torch.nn.functional.adaptive_avg_pool1d(batch["audio"][:, None], 50)[:, 0]
        return self.net(x).pow(2).mean()

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RecordingHealth(DataHealth):
    """Keeps each epoch's counts so the test can compare them with what was logged."""

    def __init__(self):
        super().__init__()
        self.history = []

    def _log(self, stage, pl_module):
        self.history.append((stage, dict(self.counts[stage])))
        super()._log(stage, pl_module)


def test_bad_audio_is_skipped_counted_and_logged(tmp_path):
    # 4 shards x 4 samples; shard 0 holds a corrupt and an empty clip, shard 3 a silent one
    write_shards(tmp_path / "train", 4, 4, bad={1: "corrupt", 2: "empty", 13: "silent"})
    write_shards(tmp_path / "val", 1, 4, bad={0: "nan"})
    dm = ShardDataModule(train=str(tmp_path / "train"), val=str(tmp_path / "val"),
                         audio=AudioPolicy(sample_rate=8000, clip_seconds=0.25), batch_size=2, num_workers=2,
                         shuffle_buffer=0)
    health = RecordingHealth()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", callbacks=[health], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(TinyAudioModel(), dm)
    assert trainer.global_step == 16  # 8 full batches per epoch despite the bad samples
    metrics = trainer.logged_metrics
    # the 13 good samples cannot fill a 16-sample epoch, so every worker reads its whole share
    # (each bad clip is met at least once) and then starts over (some are met again)
    last = [counts for stage, counts in health.history if stage == "train"][-1]
    for reason in ("unreadable", "empty", "silent"):
        assert 1 <= metrics[f"data/skipped_{reason}"] == last[reason] <= 2
    assert metrics["data/skipped_total"] == sum(last.values())
    assert metrics["data/skipped_missing"] == 0
    assert metrics["data/val_skipped_nonfinite"] == 1 and metrics["data/val_skipped_total"] == 1
    assert {f"data/skipped_{r}" for r in SKIP_REASONS} <= set(trainer.callback_metrics)
    assert torch.isfinite(metrics["train/loss"])


def test_counts_reset_every_epoch():
    health = DataHealth()
    health._add("train", {"skipped": {"empty": 2}, "key": ["a"]})
    health._add("train", {"skipped": {"empty": 1, "missing": 1}, "key": ["b"]})
    assert health.counts["train"] == {"empty": 3, "missing": 1} and health.seen["train"] == 2

    class Sink:
        def __init__(self):
            self.logged = {}

        def log(self, name, value, **kwargs):
            assert kwargs["sync_dist"] and kwargs["reduce_fx"] == "sum"
            self.logged[name] = value

        def print(self, *args):
            pass

    sink = Sink()
    health._log("train", sink)
    assert sink.logged["data/skipped_empty"] == 3 and sink.logged["data/skipped_total"] == 4
    assert not health.counts["train"]
