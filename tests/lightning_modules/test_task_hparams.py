"""Hyperparameters are the task's config (BaseTask.save_config_hyperparameters): module
arguments are kept as class_path trees when built from a config, left out when built in Python,
without Lightning's private ``_given_hyperparameters``."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from clapkit.cli import lightning_main
from clapkit.lightning_modules import ContrastiveTask
from clapkit.lightning_modules.audioclip import AudioCLIPTask
from helpers.models import save_tiny_native
from helpers.training import tiny_towers

SRC = Path(__file__).resolve().parents[2] / "src" / "clapkit"


def test_built_in_python_the_towers_stay_out_of_hparams():
    task = ContrastiveTask(tiny_towers(), lr=3e-4)
    assert "towers" not in task.hparams and "optimizer" not in task.hparams
    assert task.hparams["lr"] == 3e-4 and task.hparams["pairs"] == (("audio", "text"),)
    sub = AudioCLIPTask(tiny_towers(), pairs=[("audio", "text")], aux_loss_weight=0.5)
    assert "towers" not in sub.hparams and sub.hparams["aux_loss_weight"] == 0.5
    assert not any(isinstance(v, nn.Module) for v in task.hparams_initial.values())


def test_built_from_a_config_the_towers_are_their_class_path_trees(tmp_path):
    native = save_tiny_native(tmp_path / "model")
    cli = lightning_main(["--model", str(native), "--data", "clapkit.datamodules.synthetic.SyntheticCLAPDataModule",
                          "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"], run=False)
    hparams = cli.model.hparams
    assert hparams["_class_path"].endswith("ContrastiveTask")
    towers = hparams["towers"]
    assert sorted(towers) == ["audio", "text"]
    assert towers["audio"]["class_path"] == "clapkit.encoders.tower.Tower"
    assert towers["audio"]["init_args"]["encoder"]["class_path"] == "clapkit.encoders.pann.Cnn6"
    assert "optimizer" not in hparams


def test_no_private_lightning_hook_is_used():
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "_given_hyperparameters" in p.read_text()]
    assert offenders == []
