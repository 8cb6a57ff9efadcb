"""``--plot`` of ``clapkit separate`` and ``clapkit zeroshot``: a decodable PNG, or one line and exit 2."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clapkit.audio import save_audio
from clapkit.cli import main
from helpers.models import save_tiny_native, write_wav_folder
from helpers.separation import save_tiny_model


def decoded_size(path):
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


@pytest.fixture(scope="module")
def sep_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sep") / "model"
    save_tiny_model(path)
    return path


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return save_tiny_native(tmp_path_factory.mktemp("tiny") / "model")


def test_separate_plot_with_and_without_reference(tmp_path, sep_dir, capsys):
    rng = np.random.default_rng(0)
    source = (0.2 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    mixture = save_audio(tmp_path / "mix.wav", source + 0.05 * rng.standard_normal(16000).astype(np.float32), 16000)
    reference = save_audio(tmp_path / "ref.wav", source, 16000)
    two = tmp_path / "two.png"
    assert main(["separate", "--model", str(sep_dir), "--query", "a tone", str(mixture), "-o", str(tmp_path / "a.wav"),
                 "--plot", str(two)]) == 0
    assert f"plot: {two}" in capsys.readouterr().out
    three = tmp_path / "three.png"
    assert main(["separate", "--model", str(sep_dir), "--query", "a tone", str(mixture), "-o", str(tmp_path / "b.wav"),
                 "--plot", str(three), "--reference", str(reference), "-q"]) == 0
    # Three panels side by side are wider than two.
    assert decoded_size(three)[0] > decoded_size(two)[0]


def test_zeroshot_plot(tmp_path, clap_dir):
    clips = write_wav_folder(tmp_path / "clips", count=3)
    picture = tmp_path / "tags.png"
    assert main(["zeroshot", "--model", str(clap_dir), "--audio", *map(str, clips), "--label", "dog",
                 "--label", "rain", "--label", "cat", "-o", str(tmp_path / "t.csv"), "--plot", str(picture), "-q"]) == 0
    width, height = decoded_size(picture)
    assert width > 600 and height > 100


@pytest.mark.parametrize("command", ["separate", "zeroshot"])
def test_plot_refuses_an_unwritable_path_with_one_line(tmp_path, sep_dir, clap_dir, command, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    wav = save_audio(tmp_path / "in.wav", np.zeros(1600, dtype=np.float32) + 0.01, 16000)
    bad = blocker / "out.png"
    if command == "separate":
        argv = ["separate", "--model", str(sep_dir), "--query", "x", str(wav), "-o", str(tmp_path / "o.wav")]
    else:
        argv = ["zeroshot", "--model", str(clap_dir), "--audio", str(wav), "--label", "x", "-o", str(tmp_path / "o.csv")]
    assert main([*argv, "--plot", str(bad), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "writable" in err
    assert not (tmp_path / "o.wav").exists() and not (tmp_path / "o.csv").exists()
