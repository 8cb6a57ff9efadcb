"""W&B sweep files: the argument strings an agent generates parse with LightningCLI and land where intended.

The agent's formatting is taken from wandb itself (``create_sweep_command_args``, what
``wandb agent`` calls), so the test follows W&B if its format ever changes.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from clapkit.cli import lightning_main

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))


def agent_command(sweep: dict, values: dict) -> list[str]:
    """The argv a W&B agent runs for one trial (``${env}`` and ``${args}`` expanded as the agent does)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    flags = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    argv = []
    for chunk in sweep["command"]:
        if chunk == "${env}":
            argv.append("/usr/bin/env")
        elif chunk == "${args}":
            argv += flags["args"]
        else:
            assert not str(chunk).startswith("${"), f"unexpected macro {chunk}"
            argv.append(str(chunk))
    return argv


def corners(spec: dict) -> list:
    """Values a parameter can take: its list, or the ends of its range."""
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    return [spec["min"], spec["max"]]


def trials(sweep: dict) -> list[dict]:
    """Two trials: every parameter at its first corner, then at its last."""
    params = sweep["parameters"]
    return [{name: corners(spec)[i] for name, spec in params.items()} for i in (0, -1)]


def lookup(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def test_there_is_a_sweep_file():
    assert any(path.name == "clap_lr.yaml" for path in SWEEPS)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_file_shape(path):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] in {"grid", "random", "bayes"}
    assert sweep["metric"]["name"].startswith("val/")
    command = sweep["command"]
    assert command[command.index("clapkit") + 1] == "fit"
    assert command[-1] == "${args}"
    for name in sweep["parameters"]:
        assert name.split(".")[0] in {"model", "data", "trainer", "seed_everything"}, name


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_agent_arguments_parse_and_override(path, tmp_path, monkeypatch):
    sweep = yaml.safe_load(path.read_text())
    monkeypatch.chdir(ROOT)  # the sweep's command uses repository-relative config paths
    for values in trials(sweep):
        argv = agent_command(sweep, values)
        for name, value in values.items():
            assert f"--{name}={value}" in argv  # `--model.init_args.lr=0.001`: dotted, with `=`
        clapkit_args = argv[argv.index("clapkit") + 1 :]
        assert clapkit_args[0] == "fit"
        cli = lightning_main(
            clapkit_args[1:] + [f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"], run=False
        )
        config = cli.config.as_dict()
        for name, value in values.items():
            assert lookup(config, name) == pytest.approx(value), name
        # ... and the objects were built with them
        model, data = cli.model, cli.datamodule
        if "model.init_args.lr" in values:
            assert model.lr == pytest.approx(values["model.init_args.lr"])
        if "model.init_args.weight_decay" in values:
            assert model.weight_decay == pytest.approx(values["model.init_args.weight_decay"])
        if "model.init_args.logit_scale_init" in values:
            scale = math.exp(next(iter(model.model.logit_scales.values())).item())
            assert scale == pytest.approx(values["model.init_args.logit_scale_init"], rel=1e-5)
        if "data.init_args.batch_size" in values:
            assert data.batch_size == values["data.init_args.batch_size"]
