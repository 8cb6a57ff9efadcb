"""ONNX export (``clapkit export onnx``) and the onnxruntime path (``clapkit embed --runtime onnx``).

One tiny CLAP (Cnn6 tiny + tiny BERT) is exported once per module; onnxruntime's embeddings are
compared with the PyTorch model's on clips shorter than, equal to and longer than the window,
at a batch size other than the traced one (dynamic batch), and for texts of different token
lengths: max abs diff <= 1e-4 on L2-normalised embeddings.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import clapkit
from clapkit.cli import main
from clapkit.inference.embeddings import read_embeddings
from helpers.models import save_tiny_native, write_wav_folder

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TOL = 1e-4
RATE = 16000
TEXTS = ["a dog barks", "rain falls on a tin roof while a car passes by", "music"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    model_dir = save_tiny_native(root / "model", sample_rate=RATE)
    assert main(["export", "onnx", str(model_dir), "-o", str(root / "onnx"), "-q"]) == 0
    return model_dir, root / "onnx"


def _waves():
    rng = np.random.default_rng(0)
    # shorter than (repeat-padded), equal to and longer than (centre-cropped) the 1 s window
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (5000, RATE, 2 * RATE + 123)]


def test_onnxruntime_matches_pytorch(exported):
    from clapkit.inference.onnx import OnnxCLAPModel

    model_dir, onnx_dir = exported
    reference = clapkit.load(model_dir)
    runtime = OnnxCLAPModel(onnx_dir, batch_size=3)  # traced with a batch of 2
    audio, ref_audio = runtime.embed_audio(_waves(), RATE), reference.embed_audio(_waves(), RATE)
    text, ref_text = runtime.embed_text(TEXTS), reference.embed_text(TEXTS)
    assert audio.shape == (3, 16) and audio.dtype == torch.float32 and text.shape == (3, 16)
    assert (audio - ref_audio).abs().max().item() <= TOL
    assert (text - ref_text).abs().max().item() <= TOL
    # the comparison is meaningful: different inputs differ by more than the tolerance (the random
    # tiny BERT maps texts close together, hence the smaller text margin)
    assert (ref_audio[0] - ref_audio[2]).abs().max() > 1e-2 and (ref_text[0] - ref_text[1]).abs().max() > 2 * TOL
    meta = json.loads((onnx_dir / "onnx.json").read_text())
    assert meta["fingerprint"] == reference.fingerprint and meta["inference"]["clip_samples"] == RATE
    assert sorted(meta["graphs"]) == ["audio", "text"]


def test_embed_runtime_onnx_writes_the_pytorch_embeddings(exported, tmp_path):
    model_dir, onnx_dir = exported
    folder = tmp_path / "clips"
    write_wav_folder(folder, count=3, sample_rate=22050)
    out_onnx, out_torch = tmp_path / "onnx.npy", tmp_path / "torch.npy"
    assert main(["embed", "--runtime", "onnx", str(onnx_dir), str(folder), "-o", str(out_onnx), "-q"]) == 0
    assert main(["embed", str(model_dir), str(folder), "-o", str(out_torch), "-q", "--device", "cpu",
                 "--precision", "32"]) == 0  # ONNX runs fp32; the commands default to auto (bf16 on AMX CPUs)
    paths, onnx_array, meta = read_embeddings(out_onnx)
    torch_paths, torch_array, torch_meta = read_embeddings(out_torch)
    assert paths == torch_paths and onnx_array.shape == (3, 16)
    assert np.abs(onnx_array - torch_array).max() <= TOL
    assert meta["fingerprint"] == torch_meta["fingerprint"]


def test_embed_runtime_onnx_refuses_a_model_directory_in_one_line(exported, tmp_path, capsys):
    model_dir, _ = exported
    folder = tmp_path / "clips"
    write_wav_folder(folder, count=1)
    assert main(["embed", "--runtime", "onnx", str(model_dir), str(folder), "-o", str(tmp_path / "e.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an ONNX export" in err[0] and str(model_dir) in err[0]


def test_export_folder_follows_the_umask(exported):
    import os
    import stat

    _, onnx_dir = exported
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(onnx_dir.stat().st_mode) == 0o777 & ~mask  # not mkdtemp's 0700
    for path in onnx_dir.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o777 if path.is_dir() else 0o666) & ~mask, path


@pytest.mark.slow
def test_mel_graph_matches_pytorch(tmp_path):
    from clapkit.export.onnx import export_onnx
    from clapkit.inference.onnx import OnnxCLAPModel

    model = clapkit.load(save_tiny_native(tmp_path / "model", sample_rate=RATE))
    export_onnx(model, tmp_path / "onnx", audio_inputs=("mel",), text=False)
    runtime = OnnxCLAPModel(tmp_path / "onnx")
    clips = torch.from_numpy(np.stack([model.prepare_audio(w, RATE) for w in _waves()]))
    mel = model.model.towers["audio"].encoder.frontend(clips)  # [B, n_mels, frames]
    assert (runtime.embed_mel(mel) - model.embed_audio(_waves(), RATE)).abs().max().item() <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("fusion", [False, True], ids=["htsat", "htsat-fusion"])
def test_htsat_graphs_match_pytorch(fusion, tmp_path):
    from clapkit.audio.preprocess import InferenceConfig
    from clapkit.export.onnx import export_onnx
    from clapkit.hub.native import instantiate_model, save_pretrained
    from clapkit.inference.onnx import OnnxCLAPModel
    from helpers.models import tiny_clap_config

    config = tiny_clap_config(sample_rate=48000)
    config["init_args"]["towers"]["audio"]["init_args"]["encoder"] = {
        "class_path": "clapkit.encoders.htsat.HTSAT",
        "init_args": {"variant": "test", "clip_samples": 48000, "fusion": fusion}}
    torch.manual_seed(0)
    inference = InferenceConfig(sample_rate=48000, clip_samples=48000, fusion=fusion)
    model = clapkit.load(save_pretrained(instantiate_model(config), tmp_path / "model", inference, config))
    export_onnx(model, tmp_path / "onnx", audio_inputs=("waveform", "mel"), text=False)
    runtime = OnnxCLAPModel(tmp_path / "onnx")
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (20000, 48000)]
    expected = model.embed_audio(waves, 48000)
    assert (runtime.embed_audio(waves, 48000) - expected).abs().max().item() <= TOL
    clips = torch.from_numpy(np.stack([model.prepare_audio(w, 48000) for w in waves]))
    mel = model.model.towers["audio"].encoder.frontend(clips)
    assert (runtime.embed_mel(mel) - expected).abs().max().item() <= TOL
    longer = (0.1 * rng.standard_normal(100000)).astype(np.float32)
    if fusion:  # no long-clip fusion in the graph: refused, not embedded differently
        with pytest.raises(ValueError, match="no long-clip fusion"):
            runtime.embed_audio(longer, 48000)
    else:  # centre-cropped like PyTorch
        assert (runtime.embed_audio(longer, 48000) - model.embed_audio(longer, 48000)).abs().max().item() <= TOL
