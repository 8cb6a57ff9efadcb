"""`clapkit.load` of a separation model directory and the `SeparationModel` Python API."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

import clapkit
from clapkit.audio import save_audio
from clapkit.commands.separate import main
from clapkit.inference.separation import SeparationModel
from helpers.separation import save_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sep") / "model"
    save_tiny_model(path)
    return path


@pytest.fixture(scope="module")
def model(model_dir):
    return clapkit.load(model_dir)


def _noise(shape, seed=0):
    return (0.1 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def test_load_gives_a_separation_model_that_matches_the_command(model, model_dir, tmp_path):
    assert isinstance(model, SeparationModel) and model.sample_rate == 32000
    stereo = _noise((2, 44100 * 2))
    estimate = model.separate(stereo, 44100, query="a dog barking", negative="rain")
    assert estimate.shape == stereo.shape and estimate.dtype == np.float32 and np.isfinite(estimate).all()
    src = save_audio(tmp_path / "in.wav", stereo, 44100, subtype="FLOAT")
    assert main(["--model", str(model_dir), "--query", "a dog barking", "--negative", "rain", str(src),
                 "-o", str(tmp_path / "out.wav"), "-q", "--batch-size", "16"]) == 0
    written, rate = sf.read(str(tmp_path / "out.wav"), always_2d=True)
    assert rate == 44100
    np.testing.assert_allclose(written.T, estimate, atol=1e-6)


def test_mono_samples_in_mono_samples_out_and_the_query_matters(model_dir):
    from clapkit.encoders.separation.film import FiLM

    model = clapkit.load(model_dir)
    with torch.no_grad():  # FiLM starts as the identity; make the condition count
        for module in model.task.modules():
            if isinstance(module, FiLM):
                for p in module.parameters():
                    p.add_(0.5 * torch.randn_like(p))
    mono = _noise(16000 * 3, seed=1)
    a = model.separate(mono, 16000, query="a dog barking")
    b = model.separate(torch.from_numpy(mono), 16000, query="church bells")
    assert a.shape == mono.shape and b.shape == mono.shape
    assert not np.allclose(a, b)


def test_example_audio_as_samples_or_as_a_file_gives_the_same_condition(model, tmp_path):
    example = _noise(48000, seed=2)
    path = save_audio(tmp_path / "bark.wav", example, 48000, subtype="FLOAT")
    from_file = model.condition(query_audio=[path])
    from_samples = model.condition(query_audio=[example], sample_rate=48000)
    torch.testing.assert_close(from_file, from_samples, atol=1e-5, rtol=0)
    assert from_file.shape[0] == 1


def test_missing_query_or_rate_is_a_clear_error(model):
    with pytest.raises(ValueError, match="give a query"):
        model.condition()
    with pytest.raises(ValueError, match="sample_rate"):
        model.separate(_noise(1000), query="x")


def _conditioned(model_dir):
    """A loaded model whose FiLM layers are not the identity, so the condition changes the output."""
    from clapkit.encoders.separation.film import FiLM

    model = clapkit.load(model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.task.modules():
            if isinstance(module, FiLM):
                for p in module.parameters():
                    p.add_(0.5 * torch.randn_like(p))
    return model


def test_precomputed_embeddings_give_the_same_condition_as_example_audio(model):
    example = _noise(48000, seed=2)
    embedding = model.condition(query_audio=[example], sample_rate=48000)  # audio only: normalised [e, 0]
    clap_embedding = model._embed_examples([example], 48000)
    from_embedding = model.condition(query_embedding=clap_embedding[0])
    torch.testing.assert_close(from_embedding, embedding, atol=1e-6, rtol=0)
    rows = model.condition_from_embeddings(positive=torch.cat([clap_embedding, -clap_embedding]))
    assert rows.shape == (2, embedding.shape[1])
    torch.testing.assert_close(rows[:1], embedding, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="not both"):
        model.condition(query_audio=[example], sample_rate=48000, query_embedding=clap_embedding[0])


def test_separate_batch_uses_each_items_query_and_can_return_masks(model_dir):
    model = _conditioned(model_dir)
    mixtures = np.stack([_noise(32000, seed=3), _noise(32000, seed=4)])
    queries = ["a dog barking", "church bells"]
    results = model.separate_batch(mixtures, 32000, queries=queries, negatives=[None, "rain"], return_mask=True)
    assert len(results) == 2
    for mixture, query, negative, result in zip(mixtures, queries, [None, "rain"], results):
        alone = model.separate(mixture, 32000, query=query, negative=negative)
        np.testing.assert_allclose(result.waveform, alone, atol=1e-6)
        chunks = len(result.chunk_starts)
        assert result.mask.ndim == 3 and result.mask.shape[0] == chunks
        assert ((result.mask >= 0) & (result.mask <= 1)).all()
    # the per-item query matters: the first mixture with the second item's query differs
    swapped = model.separate_batch(mixtures[:1], 32000, conditions=model.conditions(["church bells"], ["rain"]))
    assert not np.allclose(swapped[0].waveform, results[0].waveform)
    without = model.separate_batch(mixtures, 32000, queries=queries)
    assert without[0].mask is None and without[0].chunk_starts is None
    with pytest.raises(ValueError, match="2 inputs but 3 conditions"):
        model.separate_batch(mixtures, 32000, conditions=model.conditions(["a", "b", "c"]))
