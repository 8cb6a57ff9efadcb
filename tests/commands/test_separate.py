"""``clapkit separate``: any length/rate/channels, folders, queries, corrupt input, chunk weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapkit.audio import save_audio
from clapkit.commands import CommandError
from clapkit.commands.separate import main
from clapkit.inference.separation import chunk_windows
from helpers.separation import save_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sep") / "model"
    save_tiny_model(path)
    return path


def test_chunk_weights_sum_to_one():
    for total in (100, 250, 1000, 1001):
        weights = np.zeros(max(total, 200))
        for start, w in chunk_windows(total, 200, 100):
            weights[start : start + 200] += w
        assert np.allclose(weights[:total], 1.0)


def test_35_s_stereo_44k_file_gives_35_s_stereo_44k_output(tmp_path, model_dir):
    rate = 44100
    t = np.arange(35 * rate) / rate
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 1500 * t)]).astype(np.float32)
    src = save_audio(tmp_path / "in.wav", stereo, rate)
    out = tmp_path / "out.wav"
    assert main(["--model", str(model_dir), "--query", "a high tone", "--negative", "a low hum", str(src),
                 "-o", str(out), "--batch-size", "64", "--overlap", "0", "-q"]) == 0
    info = sf.info(str(out))
    assert info.samplerate == rate and info.channels == 2 and info.frames == 35 * rate
    data, _ = sf.read(str(out))
    assert np.isfinite(data).all() and np.abs(data).max() > 0


def test_folder_batch_with_an_audio_query_keeps_relative_paths_and_rates(tmp_path, model_dir):
    folder = tmp_path / "in"
    rng = np.random.default_rng(0)
    save_audio(folder / "a.wav", 0.1 * rng.standard_normal(8000).astype(np.float32), 16000)
    save_audio(folder / "sub" / "b.flac", 0.1 * rng.standard_normal(30000).astype(np.float32), 48000)
    query = save_audio(tmp_path / "q.wav", 0.1 * rng.standard_normal(24000).astype(np.float32), 48000)
    out = tmp_path / "out"
    assert main([str(folder), "--model", str(model_dir), "--query-audio", str(query), "-o", str(out), "-q"]) == 0
    assert sf.info(str(out / "a.wav")).frames == 8000
    assert sf.info(str(out / "sub" / "b.wav")).samplerate == 48000


def test_corrupt_input_is_a_clear_error_and_writes_nothing(tmp_path, model_dir, corrupt_wav, tone_wav):
    out = tmp_path / "outdir"
    with pytest.raises(CommandError, match="corrupt.wav"):
        main(["--model", str(model_dir), "--query", "x", str(tone_wav), str(corrupt_wav), "-o", str(out), "-q"])
    assert not out.exists()
    with pytest.raises(CommandError, match="query"):
        main(["--model", str(model_dir), str(tone_wav), "-o", str(tmp_path / "o.wav"), "-q"])
    assert not (tmp_path / "o.wav").exists()


def test_inputs_stream_one_at_a_time_and_a_late_bad_file_writes_nothing(tmp_path, model_dir, monkeypatch):
    from clapkit.audio import AudioLoadError
    from clapkit.commands import separate

    folder = tmp_path / "in"
    rng = np.random.default_rng(1)
    for name in ("a.wav", "b.wav", "c.wav"):
        save_audio(folder / name, 0.1 * rng.standard_normal(8000).astype(np.float32), 16000)
    real_load, order = separate.load_audio, []

    def load(path, *args, **kwargs):
        order.append((Path(path).name, len(list(tmp_path.glob(".clapkit-separate-*/*")))))
        if Path(path).name == "c.wav":
            raise AudioLoadError(str(path), "truncated data")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(separate, "load_audio", load)
    out = tmp_path / "out"
    with pytest.raises(CommandError, match="c.wav"):
        # --strict: a bad file inside a folder is skipped by default; refused with nothing written here
        main([str(folder), "--model", str(model_dir), "--query", "x", "-o", str(out), "-q", "--strict"])
    # a, b were separated (and staged) before c was read; nothing reached -o, no staging is left
    assert order == [("a.wav", 0), ("b.wav", 1), ("c.wav", 2)]
    assert not out.exists() and not list(tmp_path.glob(".clapkit-separate-*"))


def test_decoding_ahead_in_worker_processes_gives_the_same_outputs_and_skips(tmp_path, model_dir):
    folder = tmp_path / "in"
    rng = np.random.default_rng(3)
    for name in ("a.wav", "b.wav", "c.wav"):
        save_audio(folder / name, 0.1 * rng.standard_normal(8000).astype(np.float32), 16000)
    (folder / "bad.wav").write_bytes(b"RIFF....WAVEfmt not really")
    outputs = {}
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}"
        assert main([str(folder), "--model", str(model_dir), "--query", "x", "-o", str(out), "-q",
                     "--workers", workers]) == 3  # the bad file skipped, the others separated
        outputs[workers] = {name: sf.read(str(out / name))[0] for name in ("a.wav", "b.wav", "c.wav")}
        assert not (out / "bad.wav").exists()
    for name, data in outputs["1"].items():
        assert np.array_equal(data, outputs["2"][name])
