"""Store the fully resolved run configuration inside the run it produced.

LightningCLI's own ``SaveConfigCallback`` writes ``config.yaml`` to ``trainer.log_dir``. With a
``WandbLogger`` that directory is the logger's shared ``save_dir``, so every trial of a sweep
writes (or, with ``overwrite``, silently replaces) the same file. :class:`RunConfigSaver`
instead writes one copy per run, named by the run's id, and hands it to the logger:

- W&B: ``wandb.config`` gets the nested config (``allow_val_change`` so sweep-set values
  stay consistent), the YAML lands in the run's files directory (synced with the run) and
  is logged as an artifact ``config-<run id>`` of type ``config``;
- CSV / TensorBoard: the YAML goes into the logger's versioned ``log_dir``;
- no logger: ``<default_root_dir>/configs/<timestamp>-<pid>/``.

The configuration comes from the CLI's ``SaveConfigCallback`` (found among the trainer's
callbacks, so nothing in the CLI has to change). Outside the CLI it falls back to the model's
and datamodule's hyperparameters. Only global rank zero writes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from clapkit.utils.atomic import write_text


def _plain(value: Any) -> Any:
    """YAML/JSON-safe copy: containers recurse, anything exotic becomes its ``str``."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class RunConfigSaver(Callback):
    """Save the resolved configuration once per run, in a place unique to that run.

    Args:
        filename: name of the YAML file written into the run's directory (not ``config.yaml``,
            which W&B writes into the same directory for its own run config).
        log_artifact: also log the YAML as a W&B artifact (``config-<run id>``).
        update_wandb_config: put the nested configuration into ``wandb.config``.
    """

    def __init__(self, filename: str = "clapkit_config.yaml", log_artifact: bool = True,
                 update_wandb_config: bool = True):
        super().__init__()
        self.filename = filename
        self.log_artifact = log_artifact
        self.update_wandb_config = update_wandb_config
        self.saved_path: Path | None = None

    # --- what to save ------------------------------------------------------------------------
    @staticmethod
    def resolved_config(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The CLI's parsed config as a plain dict (or the modules' hyperparameters without a CLI)."""
        for callback in trainer.callbacks:
            if isinstance(callback, SaveConfigCallback):
                text = callback.parser.dump(callback.config, skip_none=False)
                return yaml.safe_load(text)
        config: dict[str, Any] = {"model": {"class_path": type(pl_module).__module__ + "." + type(pl_module).__qualname__,
                                            "init_args": _plain(dict(pl_module.hparams))}}
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None:
            config["data"] = {"class_path": type(datamodule).__module__ + "." + type(datamodule).__qualname__,
                              "init_args": _plain(dict(getattr(datamodule, "hparams", {})))}
        return config

    # --- where to save -----------------------------------------------------------------------
    @staticmethod
    def run_directory(trainer: pl.Trainer) -> tuple[Path, str]:
        """``(directory, run id)`` unique to this run for the trainer's first logger."""
        logger = trainer.logger
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            return Path(run.dir), str(run.id)
        if isinstance(logger, (CSVLogger, TensorBoardLogger)):
            version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
            return Path(logger.log_dir), version
        run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        return Path(trainer.default_root_dir) / "configs" / run_id, run_id

    # --- hook --------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.saved_path is not None or not trainer.is_global_zero:
            return
        config = self.resolved_config(trainer, pl_module)
        directory, run_id = self.run_directory(trainer)
        self.saved_path = write_text(directory / self.filename, yaml.safe_dump(config, sort_keys=False))
        logger = trainer.logger
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            if self.update_wandb_config:
                run.config.update(_plain(config), allow_val_change=True)
            if self.log_artifact:
                import wandb

                artifact = wandb.Artifact(f"config-{run_id}", type="config", metadata={"stage": stage})
                artifact.add_file(str(self.saved_path), name=self.filename)
                run.log_artifact(artifact)
