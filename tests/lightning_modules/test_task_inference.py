"""A task's model learns its InferenceConfig from the datamodule at fit start, and the Lightning
checkpoint carries it (a plain dict) back into a task loaded from it."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from clapkit.audio.preprocess import INFERENCE_KEY, InferenceConfig
from clapkit.datamodules.base import AudioDataModule
from clapkit.datamodules.pipeline import AudioPolicy
from clapkit.lightning_modules.base import BaseTask

LEARNED = AudioPolicy(sample_rate=16000, clip_seconds=0.5, pad="pad", eval_crop="start", int16=False)


class PlainModel(nn.Linear):
    """Stands in for a SavedModel: a plain module with an ``inference`` slot."""

    inference: InferenceConfig | None = None


class TinyTask(BaseTask):
    def __init__(self, with_model: bool = True):
        super().__init__()
        if with_model:
            self.model = PlainModel(4, 1)
        else:
            self.net = nn.Linear(4, 1)
        self.set_optimization(lambda params: torch.optim.SGD(params, lr=0.1))

    def training_step(self, batch, batch_idx):
        layer = self.model if hasattr(self, "model") else self.net
        return layer(batch).pow(2).mean()


class TinyData(AudioDataModule):
    def __init__(self, policy: AudioPolicy | None = LEARNED):
        super().__init__()
        self.policy = policy

    def train_dataloader(self):
        return DataLoader(torch.randn(4, 4), batch_size=2)

    def inference_config(self):
        return None if self.policy is None else self.policy.inference_config()


def _fit(task, data) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(task, datamodule=data)
    return trainer


def test_fit_stores_the_data_inference_in_the_model_and_checkpoint(tmp_path):
    task = TinyTask()
    assert task.inference is None
    trainer = _fit(task, TinyData())
    expected = LEARNED.inference_config()
    assert task.model.inference == expected and task.inference == expected
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # a plain dict, no pickled class
    assert checkpoint[INFERENCE_KEY] == expected.to_dict()
    loaded = TinyTask.load_from_checkpoint(path)
    assert loaded.model.inference == expected
    # resuming on other data: the data of the run wins over the checkpoint's
    other = AudioPolicy(sample_rate=16000, clip_seconds=0.25)
    resumed = TinyTask()
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(resumed, datamodule=TinyData(other), ckpt_path=path)
    assert resumed.model.inference == other.inference_config()


def test_tasks_without_a_model_and_data_without_settings(tmp_path):
    task = TinyTask(with_model=False)
    trainer = _fit(task, TinyData())
    assert task.inference == LEARNED.inference_config()
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    assert TinyTask.load_from_checkpoint(tmp_path / "a.ckpt", with_model=False).inference == task.inference
    quiet = TinyTask()
    trainer = _fit(quiet, TinyData(policy=None))
    assert quiet.model.inference is None
    trainer.save_checkpoint(tmp_path / "b.ckpt")
    assert INFERENCE_KEY not in torch.load(tmp_path / "b.ckpt", map_location="cpu", weights_only=True)


def test_an_evaluation_crop_inference_cannot_use_is_a_warning_not_a_failure():
    task = TinyTask()
    with pytest.warns(UserWarning, match="no inference settings"):
        _fit(task, TinyData(AudioPolicy(sample_rate=16000, clip_seconds=0.5, eval_crop="random")))
    assert task.model.inference is None


def test_a_bad_checkpoint_entry_is_refused():
    with pytest.raises(ValueError, match="bad 'clapkit_inference' entry"):
        TinyTask().on_load_checkpoint({INFERENCE_KEY: {"sample_rate": 0}})


def test_the_model_keeps_its_text_limit_the_data_never_sets():
    task = TinyTask()
    task.inference = InferenceConfig(sample_rate=48000, clip_samples=480000, text_max_length=77)
    _fit(task, TinyData())
    assert task.model.inference == InferenceConfig(**{**LEARNED.inference_config().to_dict(), "text_max_length": 77})
