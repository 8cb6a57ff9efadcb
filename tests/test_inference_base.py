"""The shared inference base (inputs, batching, capabilities), the embeddings file format as a library
module, and the layering of the modules the inference objects use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clapkit.audio.preprocess import InferenceConfig
from clapkit.inference.base import InferenceModel, NotAnEmbeddingModel, batches
from clapkit.inference.embeddings import (
    EmbeddingsFileError,
    model_metadata,
    paths_sidecar,
    read_embeddings,
    write_embeddings,
)
from test_layering import _graph

SPEC = InferenceConfig(sample_rate=16000, clip_samples=4000)


def test_inputs_become_items_the_same_way_for_every_model(tmp_path):
    as_items = InferenceModel.as_items
    wave = np.zeros(100, dtype=np.float32)
    assert len(as_items(tmp_path / "a.wav")) == 1 and len(as_items("a.wav")) == 1
    assert len(as_items(wave)) == 1 and len(as_items(torch.zeros(100))) == 1
    assert len(as_items(np.zeros((3, 100)))) == 3  # a [B, T] batch
    assert len(as_items(np.zeros((2, 100)), channels=True)) == 1  # one [C, T] item
    assert len(as_items([wave, "b.wav", torch.zeros(5)])) == 3
    with pytest.raises(ValueError, match=r"expected \[T\] or \[B, T\]"):
        as_items(np.zeros((2, 2, 100)))
    assert InferenceModel.item_name("x/a.wav", 4) == "x/a.wav" and InferenceModel.item_name(wave, 4) == "audio[4]"


def test_batches_and_offsets():
    assert list(batches(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batches([], 3)) == []
    model = InferenceModel(SPEC, batch_size=2)
    seen: list[int] = []
    out = model.map_batches(iter("abcde"), lambda batch, offset: (offset, "".join(batch)), progress=seen.append)
    assert out == [(0, "ab"), (2, "cd"), (4, "e")] and seen == [2, 2, 1]
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        InferenceModel(SPEC, batch_size=0)


def test_prepare_audio_follows_the_inference_config_and_the_decode_cap():
    model = InferenceModel(SPEC)
    clip = model.prepare_audio(np.ones(8000, dtype=np.float32) * 0.1, 32000)  # resampled to 16 kHz: 4000 samples
    assert clip.shape == (4000,) and clip.dtype == np.float32
    assert [c.shape for c in model.prepared([np.zeros(100, np.float32)] * 2, 16000)] == [(4000,), (4000,)]
    wave, rate = model.load_waveform(np.zeros((2, 50), np.float32), 8000, mono=False)
    assert wave.shape == (2, 50) and rate == 8000


def test_a_model_without_embeddings_says_so_through_the_base():
    model = InferenceModel(SPEC)
    assert model.embeds is False and "gives no audio-text embeddings" in model.refusal
    for call in (lambda: model.embed_audio(np.zeros(10, np.float32), 16000), lambda: model.embed_text("x"),
                 lambda: model.embed_prepared([]), lambda: model.embed_image([])):
        with pytest.raises(NotAnEmbeddingModel, match="InferenceModel gives no"):
            call()


def test_every_inference_object_derives_from_the_base_and_declares_what_it_does():
    from clapkit.inference.clap import CLAPModel
    from clapkit.inference.onnx import OnnxCLAPModel
    from clapkit.inference.separation import SeparationModel
    from clapkit.inference.tagger import TaggerModel

    for cls, embeds in ((CLAPModel, True), (OnnxCLAPModel, True), (TaggerModel, False), (SeparationModel, False)):
        assert issubclass(cls, InferenceModel) and cls.embeds is embeds


def test_embeddings_round_trip_without_the_command_line(tmp_path):
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    model = type("M", (), {"fingerprint": "abc", "embedding_dim": 4, "sample_rate": 16000})()
    meta = model_metadata(model, "models/x")
    for name in ("e.parquet", "e.npy"):
        written = write_embeddings(tmp_path / name, ["a.wav", "b.wav", "c.wav"], torch.from_numpy(rows), meta)
        paths, array, got = read_embeddings(written[0])
        assert paths == ["a.wav", "b.wav", "c.wav"] and np.array_equal(array, rows)
        assert got == {"model": "models/x", "fingerprint": "abc", "dim": "4", "sample_rate": "16000"}
    assert paths_sidecar(tmp_path / "e.npy").read_text().splitlines() == ["a.wav", "b.wav", "c.wav"]


def test_bad_embeddings_files_are_one_line_naming_them(tmp_path):
    with pytest.raises(EmbeddingsFileError, match="no such embeddings file"):
        read_embeddings(tmp_path / "missing.parquet")
    text = tmp_path / "e.csv"
    text.write_text("path,embedding\n")
    with pytest.raises(EmbeddingsFileError, match=r"must be \.parquet or \.npy"):
        read_embeddings(text)
    garbage = tmp_path / "g.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(EmbeddingsFileError, match=f"{garbage}: unreadable embeddings") as info:
        read_embeddings(garbage)
    assert "\n" not in str(info.value)
    lonely = tmp_path / "l.npy"
    np.save(lonely, np.zeros((2, 3), np.float32))
    with pytest.raises(EmbeddingsFileError, match="missing l.paths.txt"):
        read_embeddings(lonely)


def test_inference_imports_neither_datamodules_nor_the_command_line():
    _, external = _graph()
    offenders = {name: sorted(d for d in deps if d.startswith(("clapkit.datamodules", "clapkit.commands",
                                                               "clapkit.lightning_modules", "lightning")))
                 for name, deps in external.items() if name.startswith("clapkit.inference")}
    assert {k: v for k, v in offenders.items() if v} == {}
