"""Classification, separation and spatial tasks own one plain model: its keys, its directory, old saves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

import clapkit
from clapkit.audio.preprocess import InferenceConfig
from clapkit.encoders.classifier import Classifier
from clapkit.encoders.spatial_model import SpatialAlignmentModel
from clapkit.hub.native import instantiate_model, save_pretrained
from clapkit.interop.legacy import TASK_TRANSLATORS, upgrade_task_state
from clapkit.lightning_modules.classification import ClassificationTask
from helpers.audioclip import ToyAudioEncoder

TAGGER_TASK = {
    "class_path": "clapkit.lightning_modules.classification.ClassificationTask",
    "init_args": {"encoder": {"class_path": "clapkit.encoders.esresnext.ESResNeXtFBSP",
                              "init_args": {"variant": "tiny", "sample_rate": 16000, "output_dim": 8}},
                  "num_classes": 3, "multi_label": True, "class_names": ["a", "b", "c"]},
}
SPATIAL_TASK = {
    "class_path": "clapkit.lightning_modules.spatial.SpatialAlignmentTask",
    "init_args": {"audio_encoder": {"class_path": "clapkit.encoders.spatial.SpatialAudioEncoder",
                                    "init_args": {"variant": "tiny", "sample_rate": 16000, "n_mels": 32,
                                                  "hop_length": 160}},
                  "image_encoder": {"class_path": "clapkit.encoders.spatial.CropImageEncoder",
                                    "init_args": {"variant": "tiny"}},
                  "embed_dim": 16},
}


def test_task_keys_are_the_model_keys_under_model():
    task = ClassificationTask(ToyAudioEncoder(), num_classes=3)
    assert isinstance(task.model, Classifier)
    model_keys = {f"model.{k}" for k in task.model.state_dict()}
    assert model_keys == {k for k in task.state_dict() if k.startswith("model.")}
    assert {k.split(".")[0] for k in task.model.state_dict()} == {"encoder", "head"}


def test_an_old_checkpoint_without_the_model_prefix_loads_through_the_key_map(tmp_path):
    torch.manual_seed(0)
    trained = ClassificationTask(ToyAudioEncoder(), num_classes=3).eval()
    old = {k.removeprefix("model."): v for k, v in trained.state_dict().items()}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": old, "hyper_parameters": {"num_classes": 3}, "pytorch-lightning_version": "2.4.0"},
               path)
    loaded = ClassificationTask.load_from_checkpoint(path, encoder=ToyAudioEncoder(), weights_only=False).eval()
    batch = {"audio": torch.randn(2, 4000)}
    assert torch.equal(loaded(batch), trained(batch))
    assert list(upgrade_task_state(trained.state_dict(), trained.state_dict())) == list(trained.state_dict())


def test_a_format_1_tagger_directory_loads_as_the_classifier(tmp_path):
    torch.manual_seed(0)
    model = instantiate_model(TASK_TRANSLATORS["ClassificationTask"](TAGGER_TASK["init_args"])).eval()
    # the old way: the task's tree in config.yaml, the model's keys in model.safetensors
    save_pretrained(model, tmp_path / "tagger", InferenceConfig(sample_rate=16000, clip_samples=8000),
                    model_config=TAGGER_TASK)
    # save_pretrained writes format 2: put the config back in format 1's shape (the weights' hash
    # covers model.safetensors only, which format 1 and 2 share)
    written = yaml.safe_load((tmp_path / "tagger" / "config.yaml").read_text())
    written.update(clapkit_format=1, model=TAGGER_TASK)
    written.pop("task", None)
    (tmp_path / "tagger" / "config.yaml").write_text(yaml.safe_dump(written, sort_keys=False))
    assert "ClassificationTask" in yaml.safe_load((tmp_path / "tagger" / "config.yaml").read_text())["model"][
        "class_path"]
    tagger = clapkit.load(tmp_path / "tagger")
    wave = (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)
    out = tagger.classify(wave, 16000)
    with torch.no_grad():
        expected = model({"audio": torch.from_numpy(wave)[None]})
    assert out.class_names == ["a", "b", "c"]
    assert torch.allclose(out.logits, expected, atol=1e-5)


@pytest.mark.parametrize("tree", ["task", "model"])
def test_a_spatial_directory_loads_as_the_plain_model(tmp_path, tree):
    torch.manual_seed(0)
    model_tree = TASK_TRANSLATORS["SpatialAlignmentTask"](SPATIAL_TASK["init_args"])
    model = instantiate_model(model_tree).eval()
    inference = InferenceConfig(sample_rate=16000, clip_samples=8000)
    save_pretrained(model, tmp_path / "avsa", inference, model_config=SPATIAL_TASK if tree == "task" else model_tree)
    loaded = clapkit.load(tmp_path / "avsa")
    assert isinstance(loaded, SpatialAlignmentModel) and loaded.inference == inference
    foa = 0.1 * torch.randn(2, 4, 8000)
    with torch.no_grad():
        assert torch.allclose(loaded.embed_audio(foa), model.embed_audio(foa), atol=1e-6)


def test_the_task_records_its_model_tree_from_the_cli_config(tmp_path):
    from clapkit.cli import lightning_main

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": SPATIAL_TASK, "data": {
        "class_path": "clapkit.datamodules.foa.Synthetic360DataModule", "init_args": {"sample_rate": 16000}}}))
    cli = lightning_main(["--config", str(config), "--trainer.accelerator=cpu",
                          f"--trainer.default_root_dir={tmp_path}"], run=False)
    config = cli.model.model.config
    assert config["class_path"] == "clapkit.encoders.spatial_model.SpatialAlignmentModel"
    assert config["init_args"]["embed_dim"] == 16 and "temperature" not in config["init_args"]
    rebuilt = instantiate_model(config)
    rebuilt.load_state_dict(cli.model.model.state_dict(), strict=True)
