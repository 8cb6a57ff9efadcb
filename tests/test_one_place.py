"""A constructor argument is written in one place: the class that takes it.

A model's arguments reach it from the task's config (jsonargparse forwards the task's
``**model_args`` to the model, as LightningCLI builds it), the model records them in its
``config``, a model directory stores that config, and loading rebuilds the model from it. So a new
argument of an encoder, or of the model the task owns, needs no edit anywhere else.
"""

from __future__ import annotations

import copy
import math

import torch
import yaml
from torch import nn

import clapkit
from clapkit.audio.preprocess import InferenceConfig
from clapkit.cli import lightning_main
from clapkit.encoders.base import AudioEncoder, EncoderOutput
from clapkit.hub.directory import CONFIG_NAME
from clapkit.hub.native import load_native, save_pretrained
from helpers.models import tiny_clap_config, tone

SR = 16000
INFERENCE = InferenceConfig(sample_rate=SR, clip_samples=SR)


class GainEncoder(AudioEncoder):
    """A tiny audio encoder with an argument nothing else in clapkit knows about.

    Args:
        sample_rate: rate of the input waveforms.
        dim: embedding size.
        gain: multiplies the embedding (the new argument).
    """

    def __init__(self, sample_rate: int = SR, dim: int = 8, gain: float = 1.0):
        super().__init__()
        self._sample_rate, self._dim, self.gain = sample_rate, dim, gain
        self.linear = nn.Linear(160, dim)

    @property
    def output_dim(self) -> int:
        return self._dim

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        frames = waveform[..., : waveform.shape[-1] // 160 * 160].reshape(waveform.shape[0], -1, 160)
        return EncoderOutput(embedding=self.gain * self.linear(frames).mean(dim=1))


MODULE = GainEncoder.__module__


def _task_config(gain: bool = True, **task_args) -> dict:
    config = copy.deepcopy(tiny_clap_config(sample_rate=SR))
    if gain:
        config["init_args"]["towers"]["audio"]["init_args"]["encoder"] = {
            "class_path": f"{MODULE}.GainEncoder", "init_args": {"gain": 2.5}}
    config["init_args"].update(task_args)
    return config


def _built_by_the_cli(tmp_path, model: dict | str):
    """The task as ``clapkit fit --config RUN.yaml`` (a config tree) or ``clapkit fit --model DIR``
    builds it (parsed and instantiated, not run)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    if isinstance(model, dict):
        (tmp_path / "run.yaml").write_text(yaml.safe_dump({"model": model}))
        given = ["--config", str(tmp_path / "run.yaml")]
    else:
        given = ["--model", model]
    return lightning_main([*given, "--data", "clapkit.datamodules.synthetic.SyntheticCLAPDataModule",
                           "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"], run=False).model


def test_a_new_encoder_argument_survives_save_and_load(tmp_path):
    task = _built_by_the_cli(tmp_path / "run", _task_config())
    assert task.model.towers["audio"].encoder.gain == 2.5
    directory = save_pretrained(task.model, tmp_path / "model", INFERENCE)
    document = yaml.safe_load((directory / CONFIG_NAME).read_text())
    assert document["model"]["init_args"]["towers"]["audio"]["init_args"]["encoder"]["init_args"]["gain"] == 2.5
    loaded = clapkit.load(directory, allow=[MODULE])
    assert loaded.model.towers["audio"].encoder.gain == 2.5
    wave = tone(1.0, SR)
    torch.testing.assert_close(loaded.embed_audio(wave, SR),
                               clapkit.inference.clap.CLAPModel(task.model.eval(), INFERENCE).embed_audio(wave, SR))


def test_a_model_argument_given_to_the_task_survives_save_load_and_fit_from_the_directory(tmp_path):
    task = _built_by_the_cli(tmp_path / "run", _task_config(False, logit_scale_max=50.0, logit_scale_init=20.0, lr=0.003))
    assert task.model.log_scale_bounds[1] == math.log(50.0)
    directory = save_pretrained(task, tmp_path / "model", INFERENCE)
    document = yaml.safe_load((directory / CONFIG_NAME).read_text())
    assert document["clapkit_format"] == 2
    assert document["model"]["class_path"] == "clapkit.encoders.tower.TowerSet"
    assert document["model"]["init_args"]["logit_scale_max"] == 50.0
    assert document["task"]["class_path"].endswith("ContrastiveTask") and document["task"]["init_args"]["lr"] == 0.003
    assert "logit_scale_max" not in document["task"]["init_args"]  # a model argument is the model's only
    loaded = clapkit.load(directory)
    assert loaded.model.log_scale_bounds == (0.0, math.log(50.0))
    assert loaded.logit_scale == clapkit.inference.clap.CLAPModel(task.model, INFERENCE).logit_scale
    # The trainer rebuilds the task from the directory: its own arguments and its model's.
    again = _built_by_the_cli(tmp_path / "refit", str(directory))
    assert again.lr == 0.003 and again.model.log_scale_bounds == (0.0, math.log(50.0))
    trained, _, _ = load_native(directory)
    assert trained.lr == 0.003
    for key, value in task.model.state_dict().items():
        assert torch.equal(trained.model.state_dict()[key], value), key


def test_a_checkpoint_from_before_the_task_owned_its_model_loads(tmp_path):
    task = _built_by_the_cli(tmp_path / "run", _task_config())
    old = {key.removeprefix("model."): value.clone() + 1 for key, value in task.state_dict().items()}
    assert any(key.startswith("towers.audio.") for key in old)
    checkpoint = {"state_dict": old}
    task.on_load_checkpoint(checkpoint)
    task.load_state_dict(checkpoint["state_dict"])  # strict
    assert torch.equal(task.model.logit_scales["audio__text"], old["logit_scales.audio__text"])
