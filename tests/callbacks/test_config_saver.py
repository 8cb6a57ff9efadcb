"""RunConfigSaver: the resolved CLI config is stored once per run, never overwritten by another trial."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clapkit.cli import lightning_main

TINY = """
seed_everything: 0
trainer:
  accelerator: cpu
  max_steps: 1
  limit_val_batches: 0
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: clapkit.callbacks.RunConfigSaver
model:
  class_path: clapkit.lightning_modules.ContrastiveTask
  init_args:
    towers:
      audio:
        class_path: clapkit.encoders.tower.Tower
        init_args:
          encoder: {class_path: helpers.training.TinyAudio}
      text:
        class_path: clapkit.encoders.tower.Tower
        init_args:
          encoder: {class_path: helpers.training.TinyText}
data:
  class_path: clapkit.datamodules.synthetic.SyntheticCLAPDataModule
  init_args: {sample_rate: 16000, clip_seconds: 0.1, train_size: 4, batch_size: 4, retrieval_size: 2, zeroshot_per_class: 1}
"""


def run_fit(tmp_path: Path, lr: float, logger: str) -> Path:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    cli = lightning_main(
        ["fit", "--config", str(config), f"--model.init_args.lr={lr}", f"--trainer.default_root_dir={tmp_path}",
         f"--trainer.logger={logger}", f"--trainer.logger.save_dir={tmp_path}"]
    )
    saver = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "RunConfigSaver")
    assert saver.saved_path is not None and saver.saved_path.exists()
    return saver.saved_path


@pytest.mark.parametrize("logger", ["lightning.pytorch.loggers.CSVLogger"])
def test_each_trial_keeps_its_own_resolved_config(tmp_path, logger):
    first = run_fit(tmp_path, 0.001, logger)
    second = run_fit(tmp_path, 0.005, logger)
    assert first != second  # version_0 / version_1: the second trial did not overwrite the first
    assert first.parent.name == "version_0" and second.parent.name == "version_1"
    one, two = yaml.safe_load(first.read_text()), yaml.safe_load(second.read_text())
    # resolved: command-line overrides and defaults are in, not just the YAML that was given
    assert one["model"]["init_args"]["lr"] == 0.001
    assert two["model"]["init_args"]["lr"] == 0.005
    assert one["model"]["init_args"]["weight_decay"] == 0.0  # a default nobody wrote down
    assert one["data"]["class_path"] == "clapkit.datamodules.synthetic.SyntheticCLAPDataModule"


def test_wandb_offline_config_lands_in_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    import wandb

    try:
        path = run_fit(tmp_path, 0.002, "lightning.pytorch.loggers.WandbLogger")
        run = wandb.run
        assert run is not None
        assert path == Path(run.dir) / "clapkit_config.yaml"
        assert run.config["model"]["init_args"]["lr"] == 0.002
    finally:
        wandb.finish()
    run_dirs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    saved = yaml.safe_load((run_dirs[0] / "files" / "clapkit_config.yaml").read_text())
    assert saved["model"]["init_args"]["lr"] == 0.002
    # the artifact was logged into the offline run (no network)
    artifacts = list((tmp_path / "wandb").rglob("*.wandb"))
    assert artifacts
