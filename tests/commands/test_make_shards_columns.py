"""`clapkit make-shards --audio-column/--text-column`: a manifest with other column names."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import soundfile as sf

from clapkit.audio import save_audio
from clapkit.commands import CommandError
from clapkit.commands.make_shards import main
from helpers.fixtures import tone


def test_file_caption_csv_is_sharded_with_the_column_mapping(tmp_path):
    for i in range(3):
        save_audio(tmp_path / "audio" / f"c{i}.wav", tone(i, 0.3, 16000), 16000)
    manifest = tmp_path / "train.csv"
    manifest.write_text("file,caption,audio\n" + "".join(f"audio/c{i}.wav,caption {i},ignored\n" for i in range(3)))
    out = tmp_path / "shards"
    assert main([str(manifest), "--audio-root", str(tmp_path), "-o", str(out), "--audio-column", "file",
                 "--text-column", "caption", "--sample-rate", "16000", "--workers", "1", "-q"]) == 0
    with tarfile.open(out / "000000.tar") as tar:
        metas = [json.loads(tar.extractfile(f"{i:06d}.json").read()) for i in range(3)]
        wave, rate = sf.read(io.BytesIO(tar.extractfile("000002.flac").read()))
    assert [m["text"] for m in metas] == ["caption 0", "caption 1", "caption 2"]
    assert [m["original_filename"] for m in metas] == [f"audio/c{i}.wav" for i in range(3)]
    assert rate == 16000 and len(wave) == 4800
    assert json.loads((out / "sizes.json").read_text()) == {"000000.tar": 3}


def test_default_columns_missing_names_the_flags(tmp_path):
    manifest = tmp_path / "train.csv"
    manifest.write_text("file,caption\na.wav,a dog\n")
    with pytest.raises(CommandError, match="needs columns 'audio' and 'text'.*--audio-column"):
        main([str(manifest), "-o", str(tmp_path / "s"), "--workers", "1", "-q"])
