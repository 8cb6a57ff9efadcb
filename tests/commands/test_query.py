"""``clapkit query``: text, image or audio query over a folder (or list) of another modality."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from clapkit.audio import save_audio
from clapkit.commands import CommandError
from clapkit.commands.query import main
from clapkit.hub.convert import save_converted
from clapkit.interop.audioclip import convert_audioclip
from helpers.audioclip import official_audioclip_state_dict


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    converted = convert_audioclip(official_audioclip_state_dict(tiny=True), audio_variant="tiny",
                                  clip_arch="tiny", sample_rate=16000, clip_seconds=0.25)
    return save_converted(converted, tmp_path_factory.mktemp("model") / "audioclip")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    images = _mkdir(root / "images")
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / f"{i}.png")
        save_audio(root / "audio" / f"{i}.wav", (0.2 * rng.standard_normal(4000)).astype(np.float32), 16000)
    (root / "labels.txt").write_text("a dog\n\nrain on a roof\na siren\n")
    return root


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def _rows(capsys):
    return [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]


def test_text_query_over_images_writes_csv(model_dir, media, tmp_path, capsys):
    out = tmp_path / "ranked.csv"
    assert main(["--model", str(model_dir), "--text", "a red circle", "--folder", str(media / "images"),
                 "--top-k", "2", "-o", str(out), "--device", "cpu", "-q"]) == 0
    rows = _rows(capsys)
    assert [r[0] for r in rows] == ["1", "2"] and float(rows[0][1]) >= float(rows[1][1])
    with open(out) as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["rank", "item", "score"] and len(table) == 3


def test_audio_query_over_images_and_image_query_over_texts(model_dir, media, capsys):
    main(["--model", str(model_dir), "--audio", str(media / "audio" / "0.wav"), "--folder", str(media / "images"),
          "--device", "cpu", "-q"])
    assert len(_rows(capsys)) == 3
    main(["--model", str(model_dir), "--image", str(media / "images" / "1.png"), "--texts", str(media / "labels.txt"),
          "--device", "cpu", "-q"])
    rows = _rows(capsys)
    assert sorted(r[2] for r in rows) == ["a dog", "a siren", "rain on a roof"]


def test_errors_name_the_input(model_dir, media, tmp_path):
    base = ["--model", str(model_dir), "--device", "cpu", "-q"]
    with pytest.raises(CommandError, match="missing.wav: no such file"):
        main(base + ["--audio", str(tmp_path / "missing.wav"), "--folder", str(media / "images")])
    with pytest.raises(CommandError, match="both audio and image"):
        main(base + ["--text", "x", "--folder", str(media)])
    empty = _mkdir(tmp_path / "empty")
    with pytest.raises(CommandError, match="no audio or image files"):
        main(base + ["--text", "x", "--folder", str(empty)])
    bad = media / "images_bad"
    _mkdir(bad)
    (bad / "broken.png").write_bytes(b"not an image")
    with pytest.raises(CommandError, match="broken.png: not a readable image"):
        main(base + ["--text", "x", "--folder", str(bad)])
    with pytest.raises(CommandError, match="both audio"):
        main(base + ["--audio", str(media / "audio" / "0.wav"), "--folder", str(media / "audio"), "--target", "audio"])
