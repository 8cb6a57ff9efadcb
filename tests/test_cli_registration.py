"""The CLI knows clapkit's tasks and datamodules by their short names, so configs and
``--model.help`` need no full import path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clapkit.cli import main

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart" / "clap.yaml"


def test_model_help_prints_the_task_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.help", "ContrastiveTask"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    for argument in ("--model.towers", "--model.pairs", "--model.logit_scale_init", "--model.prompt_templates"):
        assert argument in out
    assert "clapkit.lightning_modules.ContrastiveTask" in out


def test_short_class_names_work_in_yaml(tmp_path, capsys):
    config = yaml.safe_load(QUICKSTART.read_text())
    config["model"]["class_path"] = "ContrastiveTask"
    config["model"]["init_args"]["towers"]["audio"]["class_path"] = "Tower"
    config["data"]["class_path"] = "SyntheticCLAPDataModule"
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].endswith("lightning_modules.ContrastiveTask")
    assert printed["model"]["init_args"]["towers"]["audio"]["class_path"].endswith("tower.Tower")
    assert printed["data"]["class_path"].endswith("synthetic.SyntheticCLAPDataModule")


def test_unknown_command_lists_training_and_inference_commands(capsys):
    assert main(["embedd", "x.wav"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'embedd'" in err
    for command in ("fit", "validate", "embed", "zeroshot", "separate", "convert"):
        assert f"  {command} " in err
