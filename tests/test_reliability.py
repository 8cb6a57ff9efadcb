"""Nothing silently wrong (non-finite outputs refused), the quick-start separation
model separates, saved models are readable by the group."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import soundfile as sf
import yaml

from clapkit.cli import main
from clapkit.commands._shared import write_embeddings
from clapkit.utils.resources import packaged_config
from helpers.models import save_tiny_native, write_wav_folder
from helpers.separation import save_tiny_model

HUGE_PEAK = 4.6e29


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return save_tiny_native(tmp_path_factory.mktemp("clap") / "model")


@pytest.fixture(scope="module")
def sep_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sep") / "model"
    save_tiny_model(directory)
    return directory


def huge_wav(path, rate=16000):
    """A float WAV whose samples are finite but about 1e29: decodes fine, overflows any model."""
    wave = np.random.default_rng(0).standard_normal(rate).astype(np.float32)
    sf.write(path, wave / np.abs(wave).max() * HUGE_PEAK, rate, subtype="FLOAT")
    return path


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_huge_finite_audio_refused_by_embed_zeroshot_separate(clap_dir, sep_dir, tmp_path, capsys):
    good = write_wav_folder(tmp_path / "good", count=2, sample_rate=16000)
    huge = huge_wav(tmp_path / "huge.wav")
    commands = {
        "embed": ["embed", str(clap_dir), *map(str, good), str(huge), "-o", str(tmp_path / "e.parquet")],
        "zeroshot": ["zeroshot", "--model", str(clap_dir), "--audio", *map(str, good), str(huge), "--label", "dog",
                     "-o", str(tmp_path / "z.csv")],
        "separate": ["separate", "--model", str(sep_dir), "--query", "dog", str(huge), "-o", str(tmp_path / "s.wav")],
    }
    for name, argv in commands.items():
        assert main([*argv, "-q", "--device", "cpu"]) == 2, name
        err = one_line(capsys)
        assert str(huge) in err and "non-finite" in err and "4.6e+29" in err, err
    assert not [p.name for p in tmp_path.iterdir() if p.is_file() and p.name != "huge.wav"]


def test_library_names_the_input_of_a_nonfinite_embedding(clap_dir, tmp_path):
    import clapkit
    from clapkit.utils.finite import NonFiniteError

    model = clapkit.load(clap_dir)
    good = write_wav_folder(tmp_path, count=1, sample_rate=16000)[0]
    huge = huge_wav(tmp_path / "huge.wav")
    with pytest.raises(NonFiniteError) as info:
        model.embed_audio([good, huge])
    assert info.value.index == 1 and str(huge) in str(info.value)
    wave = np.full(16000, 1e30, dtype=np.float32)
    with pytest.raises(NonFiniteError, match=r"audio\[0\]: non-finite audio embedding"):
        model.embed_audio(wave, 16000)
    assert np.isfinite(model.embed_audio(good).numpy()).all()


def test_retrieve_never_ranks_a_nan(clap_dir, tmp_path, capsys):
    rows = np.eye(3, 16, dtype=np.float32)
    rows[1, 4] = np.nan
    index = tmp_path / "index.npy"
    write_embeddings(index, ["a.wav", "nan.wav", "c.wav"], rows, {})
    assert main(["retrieve", "--model", str(clap_dir), "--index", str(index), "--query", "dog", "-q"]) == 2
    err = one_line(capsys)
    assert str(index) in err and "nan.wav" in err and "non-finite" in err
    rows[1, 4] = 0.0
    write_embeddings(index, ["a.wav", "nan.wav", "c.wav"], rows, {})
    assert main(["retrieve", "--model", str(clap_dir), "--index", str(index), "--query", "dog", "-q"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3 and all(np.isfinite(float(score)) for _, _, score, _ in lines)


def test_export_chunk_follows_the_encoder_window():
    from clapkit.lightning_modules.separation import SeparationTask
    from helpers.separation import CLIP_SECONDS, tiny_query_network, tiny_separator

    task = SeparationTask(separator=tiny_separator(), query=tiny_query_network())
    assert task.export_chunk_seconds == pytest.approx(CLIP_SECONDS)
    with pytest.raises(ValueError, match="export_chunk_seconds must be in"):
        SeparationTask(separator=tiny_separator(), query=tiny_query_network(), export_chunk_seconds=10.0)


def test_old_export_with_a_too_long_chunk_still_separates(sep_dir, tmp_path):
    import clapkit

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    document = yaml.safe_load((sep_dir / "config.yaml").read_text())
    document["inference"]["clip_samples"] = 320000  # 10 s: what the old default exported
    (legacy / "config.yaml").write_text(yaml.safe_dump(document))
    os.link(sep_dir / "model.safetensors", legacy / "model.safetensors")
    model = clapkit.load(legacy)
    assert model.chunk == 16000
    out = model.separate(np.random.default_rng(0).standard_normal(40000).astype(np.float32) * 0.1, 32000,
                         query="dog")
    assert out.shape == (40000,) and np.isfinite(out).all()


@pytest.mark.slow
def test_quickstart_clapsep_fit_export_separate(tmp_path, capsys):
    """The shipped quick-start config (shortened and with a tiny text tower via overrides):
    fit exports a model that `clapkit separate` runs on."""
    export = tmp_path / "sep"
    tiny_text = {"class_path": "clapkit.encoders.tower.Tower", "init_args": {
        "encoder": {"class_path": "clapkit.encoders.hf_text.HFTextEncoder",
                    "init_args": {"variant": "tiny", "pooling": "mean"}},
        "projection": {"class_path": "clapkit.encoders.projection.LinearProjection", "init_args": {"out_dim": 384}}}}
    code = main([
        "fit", "--config", str(packaged_config("configs/quickstart/clapsep.yaml")),
        "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(tmp_path / "run"),
        "--data.init_args.train_source.init_args.size", "4", "--data.init_args.val_source.init_args.size", "2",
        "--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "2",
        "--model.init_args.query.init_args.text", json.dumps(tiny_text),
        "--model.init_args.export_dir", str(export),
    ])
    assert code == 0
    inference = yaml.safe_load((export / "config.yaml").read_text())["inference"]
    assert inference["clip_samples"] == 32000 and inference["sample_rate"] == 32000  # the 1 s training window
    mixture = tmp_path / "mix.wav"
    sf.write(mixture, np.random.default_rng(1).standard_normal((44100 + 4410, 2)).astype(np.float32) * 0.1, 44100)
    out = tmp_path / "out.wav"
    assert main(["separate", "--model", str(export), "--query", "a dog barking", str(mixture), "-o", str(out),
                 "--device", "cpu", "-q"]) == 0
    wave, rate = sf.read(out, always_2d=True)
    assert rate == 44100 and wave.shape == (44100 + 4410, 2) and np.isfinite(wave).all() and np.abs(wave).max() > 0


def test_saved_model_directory_has_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        directory = save_tiny_native(tmp_path / "model")
    finally:
        os.umask(old)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    for name in ("config.yaml", "model.safetensors"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o644
