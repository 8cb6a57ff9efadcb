"""``clapkit embed``: files and folders -> .parquet / .npy with paths; bad audio stops everything."""

from __future__ import annotations

import numpy as np
import pytest

import clapkit
from clapkit.cli import main
from clapkit.inference.embeddings import read_embeddings
from helpers.models import save_tiny_native, write_wav_folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_native(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def folder(tmp_path):
    write_wav_folder(tmp_path / "clips", count=3)
    (tmp_path / "clips" / "notes.txt").write_text("not audio, ignored in folders")
    return tmp_path / "clips"


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_embed_folder_and_file(model_dir, folder, tmp_path, suffix):
    extra = write_wav_folder(tmp_path / "extra", count=1, sample_rate=8000)[0]
    out = tmp_path / f"emb{suffix}"
    quiet = ["-q"] if suffix == ".parquet" else []  # one run draws the progress bar
    assert main(["embed", str(model_dir), str(folder), str(extra), "-o", str(out), "--batch-size", "2",
                 "--device", "cpu", *quiet]) == 0
    paths, array, meta = read_embeddings(out)
    expected = sorted(str(p) for p in folder.rglob("*.wav")) + [str(extra)]
    assert paths == expected and array.shape == (4, 16) and array.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-5)
    model = clapkit.load(model_dir, precision="auto")  # the command's default precision
    np.testing.assert_allclose(array, model.embed_audio(paths).numpy(), atol=1e-6)
    assert meta["fingerprint"] == model.fingerprint and meta["dim"] == "16"


@pytest.mark.parametrize("bad", ["corrupt_wav", "empty_wav"])
def test_bad_audio_refused_naming_the_file(model_dir, folder, tmp_path, bad, request, capsys):
    broken = request.getfixturevalue(bad)
    out = tmp_path / "emb.parquet"
    code = main(["embed", str(model_dir), str(folder), str(broken), "-o", str(out), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(broken) in err
    assert not out.exists() and not list(tmp_path.glob(".emb*"))


def test_usage_errors(model_dir, folder, tmp_path, capsys):
    assert main(["embed", str(model_dir), str(folder), "-o", str(tmp_path / "emb.csv")]) == 2
    assert "must end in .npy or .parquet" in capsys.readouterr().err
    assert main(["embed", str(model_dir), str(tmp_path / "nope"), "-o", str(tmp_path / "e.npy")]) == 2
    assert "nope: no such file or directory" in capsys.readouterr().err
    (tmp_path / "void").mkdir()
    assert main(["embed", str(model_dir), str(tmp_path / "void"), "-o", str(tmp_path / "e.npy")]) == 2
    assert "no audio files found" in capsys.readouterr().err
    assert main(["embed", str(tmp_path / "no-model"), str(folder), "-o", str(tmp_path / "e.npy")]) == 2
    assert "no-model: no such model directory" in capsys.readouterr().err
