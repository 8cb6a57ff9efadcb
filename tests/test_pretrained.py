"""clapkit's native format (config.yaml + model.safetensors), clapkit.load and CLAPModel."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import clapkit
from clapkit.audio import save_audio
from clapkit.audio.preprocess import InferenceConfig
from clapkit.hub.directory import CONFIG_NAME, WEIGHTS_NAME
from clapkit.hub.native import instantiate_model, save_pretrained
from clapkit.inference.clap import CLAPModel
from clapkit.io.checkpoint import read_checkpoint
from clapkit.io.errors import PretrainedError
from helpers.models import (
    randomize_norm_stats,
    tiny_clap_config,
    tiny_fusion_clap_config,
    tone,
    write_bert_dir,
)

SR = 16000
INFERENCE = InferenceConfig(sample_rate=SR, clip_samples=SR, pad="repeatpad", int16_roundtrip=True)
TEXTS = ["a dog barks", "rain on a window", "a high whistle"]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return write_bert_dir(tmp_path_factory.mktemp("bert") / "bert")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, text_dir):
    """A tiny CLAP built from its config, saved natively with the text model as an asset."""
    config = tiny_clap_config(text_model=str(text_dir), sample_rate=SR)
    (text_dir / "model.safetensors").write_bytes(b"weights that must not be copied")
    torch.manual_seed(0)
    task = instantiate_model(config)
    randomize_norm_stats(task)
    directory = tmp_path_factory.mktemp("native") / "model"
    save_pretrained(task, directory, INFERENCE, config, assets={"text_model": text_dir})
    return task.eval(), directory


def _waves():
    return [tone(0.4, SR, 300.0), tone(1.0, SR, 900.0, 1), tone(2.7, SR, 2000.0, 2)]


def test_round_trip_gives_identical_embeddings(saved):
    task, directory = saved
    assert (directory / CONFIG_NAME).is_file() and (directory / WEIGHTS_NAME).is_file()
    document = yaml.safe_load((directory / CONFIG_NAME).read_text())
    assert document["model"]["class_path"].endswith("TowerSet") and document["task"]["class_path"].endswith("ContrastiveTask")
    assert document["inference"]["sample_rate"] == SR and document["inference"]["int16_roundtrip"] is True
    text_args = document["model"]["init_args"]["towers"]["text"]["init_args"]["encoder"]["init_args"]
    assert text_args["model"] == "./text_model" and text_args["load_weights"] is False
    # Weights of the text model come from model.safetensors, not from the copied directory.
    assert not any(p.suffix in (".safetensors", ".bin") for p in (directory / "text_model").iterdir())

    loaded = clapkit.load(directory)
    original = CLAPModel(task.model, INFERENCE)
    for a, b in zip(loaded.model.state_dict().values(), task.model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(loaded.embed_audio(_waves(), SR), original.embed_audio(_waves(), SR))
    assert torch.equal(loaded.embed_text(TEXTS), original.embed_text(TEXTS))


def test_moved_directory_still_loads(saved, tmp_path):
    _, directory = saved
    moved = shutil.copytree(directory, tmp_path / "elsewhere")
    assert torch.equal(clapkit.load(moved).embed_text(TEXTS), clapkit.load(directory).embed_text(TEXTS))


def test_deterministic_and_batch_independent(saved):
    _, directory = saved
    model = clapkit.load(directory, batch_size=2)
    waves = _waves()
    first = model.embed_audio(waves, SR)
    assert torch.equal(first, model.embed_audio(waves, SR))
    one_by_one = torch.cat([model.embed_audio(w, SR) for w in waves])
    torch.testing.assert_close(first, one_by_one, atol=1e-5, rtol=0)
    assert torch.equal(model.embed_text(TEXTS), model.embed_text(TEXTS))


def test_batch_size_defaults_to_8_on_a_cpu_and_refuses_zero(saved):
    _, directory = saved
    assert clapkit.load(directory).batch_size == 8
    assert clapkit.load(directory, batch_size=3).batch_size == 3
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        clapkit.load(directory, batch_size=0)


def test_embed_audio_inputs(saved, tmp_path):
    _, directory = saved
    model = clapkit.load(directory)
    wave = tone(1.3, 22050, 440.0)
    path = save_audio(tmp_path / "a.wav", wave, 22050)
    from_path = model.embed_audio(path)
    from_array = model.embed_audio(wave, 22050)
    torch.testing.assert_close(from_path, from_array, atol=1e-4, rtol=0)  # wav is 16-bit
    stereo = np.stack([wave, wave])
    torch.testing.assert_close(model.embed_audio([stereo], 22050), from_array, atol=1e-6, rtol=0)
    batch = model.embed_audio(torch.from_numpy(np.stack([wave, wave[::-1].copy()])), 22050)
    assert batch.shape == (2, model.embedding_dim)
    torch.testing.assert_close(batch.norm(dim=-1), torch.ones(2))
    with pytest.raises(ValueError, match="sample_rate is required"):
        model.embed_audio(wave)
    with pytest.raises(ValueError, match=r"audio\[0\]: empty"):
        model.embed_audio([np.zeros(0, np.float32)], SR)
    with pytest.raises(ValueError, match="NaN"):
        model.embed_audio([np.full(100, np.nan, np.float32)], SR)


def test_zeroshot_scores(saved):
    _, directory = saved
    model = clapkit.load(directory)
    probs = model.classify(model.embed_audio(_waves(), SR), model.embed_text(TEXTS))
    assert probs.shape == (3, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))


def test_bf16_precision_runs_close_to_fp32(saved):
    _, directory = saved
    fp32 = clapkit.load(directory).embed_audio(_waves(), SR)
    bf16 = clapkit.load(directory, precision="bf16").embed_audio(_waves(), SR)
    assert bf16.dtype == torch.float32
    assert (fp32 * bf16).sum(-1).min() > 0.98


def test_save_is_atomic_and_refuses_to_clobber(saved, tmp_path):
    task, directory = saved
    target = tmp_path / "model"
    config = yaml.safe_load((directory / CONFIG_NAME).read_text())["model"]
    save_pretrained(task, target, INFERENCE, config, assets={"text_model": directory / "text_model"})
    with pytest.raises(PretrainedError, match="already exists"):
        save_pretrained(task, target, INFERENCE, config)
    save_pretrained(task, target, InferenceConfig(sample_rate=SR, clip_samples=2 * SR), config,
                    assets={"text_model": directory / "text_model"}, overwrite=True)
    assert yaml.safe_load((target / CONFIG_NAME).read_text())["inference"]["clip_samples"] == 2 * SR
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp directories left


def test_config_from_lightning_cli_file(saved, tmp_path):
    task, directory = saved
    config = yaml.safe_load((directory / CONFIG_NAME).read_text())["model"]
    cli_yaml = tmp_path / "fit.yaml"
    cli_yaml.write_text(yaml.safe_dump({"model": config, "trainer": {"max_epochs": 1}}))
    save_pretrained(task, tmp_path / "m", INFERENCE, cli_yaml, assets={"text_model": directory / "text_model"})
    from clapkit.hub.native import portable as _portable

    tree = {"init_args": {"model": str(directory / "text_model"), "load_weights": True, "other": ["x"]}}
    assert _portable(tree, {"text_model": directory / "text_model"}) == {
        "init_args": {"model": "./text_model", "load_weights": False, "other": ["x"]}}
    with pytest.raises(PretrainedError, match="config is unknown"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x", INFERENCE)


def test_bad_native_directories(saved, tmp_path):
    _, directory = saved
    broken = shutil.copytree(directory, tmp_path / "broken")
    weights = broken / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(PretrainedError, match=r"model.safetensors: truncated"):
        clapkit.load(broken)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedError, match="not a clapkit model directory"):
        clapkit.load(tmp_path / "empty")
    with pytest.raises(PretrainedError, match="no such model"):
        clapkit.load(tmp_path / "missing")
    wrong = shutil.copytree(directory, tmp_path / "wrong")
    document = yaml.safe_load((wrong / CONFIG_NAME).read_text())
    document["model"]["init_args"]["towers"]["audio"]["init_args"]["projection"]["init_args"]["out_dim"] = 8
    (wrong / CONFIG_NAME).write_text(yaml.safe_dump(document))
    with pytest.raises(PretrainedError, match="does not fit the model"):
        clapkit.load(wrong)


def test_bad_checkpoint_files(tmp_path):
    truncated = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(PretrainedError, match=r"ckpt.pt: truncated or not a PyTorch checkpoint"):
        read_checkpoint(truncated)
    code = tmp_path / "code.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": Path("x")}, code)
    with pytest.raises(PretrainedError, match="refusing to unpickle.*trust"):
        read_checkpoint(code)
    assert "args" in read_checkpoint(code, trust_pickle=True)
    unknown = tmp_path / "other.pt"
    torch.save({"weights": {"w": torch.zeros(1)}}, unknown)
    with pytest.raises(PretrainedError, match="unrecognised checkpoint layout"):
        clapkit.load(unknown)


def test_fusion_batches_mixed_lengths(tmp_path):
    """A fusion tower gets long clips whole (with ``lengths``); batching never changes a result."""
    config = tiny_fusion_clap_config(sample_rate=SR)
    torch.manual_seed(0)
    task = instantiate_model(config)
    fusion = InferenceConfig(sample_rate=SR, clip_samples=SR, fusion=True)
    save_pretrained(task, tmp_path / "fused", fusion, config)
    model = clapkit.load(tmp_path / "fused", batch_size=2)
    waves = [tone(0.5, SR, 300.0), tone(2.6, SR, 700.0, 1)]
    assert model.prepare_audio(waves[1], SR).shape == (int(2.6 * SR),)
    together = model.embed_audio(waves, SR)
    alone = torch.cat([model.embed_audio(w, SR) for w in waves])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
