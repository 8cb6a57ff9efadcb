"""Nothing silently wrong, end to end: a corpus of faulty and valid files (generated here) through make-shards,
embed, zeroshot, retrieve and separate with tiny models. Every bad file is named (make-shards
skips and lists it; the inference commands refuse it in one line, exit 2), no good file is
lost, no output holds a NaN, and nothing prints a traceback."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapkit.cli import main
from clapkit.commands._shared import read_embeddings
from helpers.models import save_tiny_native
from helpers.separation import save_tiny_model

RATE = 16000


def _tone(seconds: float, freq: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    wave = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([wave * (0.5 + 0.5 * c / max(channels, 1)) for c in range(channels)], axis=1) if channels > 1 else wave


def build_corpus(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """``(good, bad)``: name -> path. Good files include odd names, 8 channels and a long clip."""
    good_dir, bad_dir = root / "good", root / "bad"
    good_dir.mkdir(parents=True)
    bad_dir.mkdir()
    good = {
        "plain": good_dir / "plain.wav",
        "spaces": good_dir / "a file with spaces.wav",
        "unicode": good_dir / "ünïcødé ñame.flac",
        "punctuation": good_dir / "semi;colon,comma'quote.wav",
        "eight_channels": good_dir / "eight channels.wav",
        "long": good_dir / "long.flac",
    }
    sf.write(good["plain"], _tone(0.5, 220), RATE)
    sf.write(good["spaces"], _tone(0.7, 330), RATE)
    sf.write(good["unicode"], _tone(0.4, 440), RATE)
    sf.write(good["punctuation"], _tone(1.2, 550), RATE)
    sf.write(good["eight_channels"], _tone(0.5, 660, channels=8), RATE)
    sf.write(good["long"], _tone(20.0, 770), RATE)  # longer than every model window
    bad = {
        "corrupt": bad_dir / "corrupt.wav",
        "empty": bad_dir / "empty.wav",
        "truncated": bad_dir / "truncated.flac",
        "nan": bad_dir / "nan.wav",
        "inf": bad_dir / "inf.wav",
        "huge": bad_dir / "huge finite.wav",
        "not_audio": bad_dir / "notes.mp3",
    }
    bad["corrupt"].write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    sf.write(bad["empty"], np.zeros(0, np.float32), RATE)
    sf.write(bad["truncated"], _tone(2.0, 300), RATE)
    data = bad["truncated"].read_bytes()
    bad["truncated"].write_bytes(data[: len(data) // 3])
    nan = _tone(0.5, 200)
    nan[100] = np.nan
    sf.write(bad["nan"], nan, RATE, subtype="FLOAT")
    inf = _tone(0.5, 200)
    inf[-1] = np.inf
    sf.write(bad["inf"], inf, RATE, subtype="FLOAT")
    sf.write(bad["huge"], _tone(0.5, 250) / 0.3 * 1e29, RATE, subtype="FLOAT")
    bad["not_audio"].write_text("just some text")
    return good, bad


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    good, bad = build_corpus(root)
    return {"root": root, "good": good, "bad": bad, "clap": save_tiny_native(root / "clap"),
            "sep": _sep(root / "sep")}


def _sep(directory: Path) -> Path:
    save_tiny_model(directory)
    return directory


def _run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    return code, captured.out, captured.err


def test_make_shards_keeps_every_good_file_and_names_every_bad_one(corpus, capsys):
    root, good, bad = corpus["root"], corpus["good"], corpus["bad"]
    rows = [(p, f"a sound called {name}") for name, p in {**good, **bad}.items()]
    manifest = root / "manifest.csv"
    with open(manifest, "wb") as handle:
        handle.write(b"audio,text\n")
        for path, text in rows:
            handle.write(f'"{path}","{text}"\n'.encode())
        handle.write(f'"{good["plain"]}",'.encode() + b"\xff\xfe not utf-8\n")  # bad bytes: this row only
        handle.write(f'"{good["spaces"]}",\n'.encode())  # empty caption
    out = root / "shards"
    code, _, err = _run(["make-shards", manifest, "-o", out, "--sample-rate", RATE, "--workers", "1",
                         "--shard-size", "4", "-q"], capsys)
    assert code == 0, err
    with open(out / "skipped.csv", newline="", encoding="utf-8") as handle:
        skipped = {row["audio"]: row["reason"] for row in csv.DictReader(handle)}
    for name, path in bad.items():
        assert str(path) in skipped, (name, skipped)
    assert "far outside" in skipped[str(bad["huge"])]
    assert sum("not UTF-8" in r for r in skipped.values()) == 1
    assert sum("no text" in r for r in skipped.values()) == 1
    stored = {}
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    stored[meta["original_filename"]] = meta
    assert set(stored) == {str(p) for p in good.values()}  # no good file lost
    assert sum(json.loads((out / "sizes.json").read_text()).values()) == len(good)


def test_inference_commands_name_every_bad_file(corpus, capsys):
    root, bad = corpus["root"], corpus["bad"]
    for name, path in bad.items():
        commands = {
            "embed": ["embed", corpus["clap"], path, "-o", root / "bad.npy"],
            "zeroshot": ["zeroshot", "--model", corpus["clap"], "--audio", path, "--label", "dog",
                         "-o", root / "bad.csv"],
            "separate": ["separate", "--model", corpus["sep"], "--query", "dog", path, "-o", root / "bad.wav"],
        }
        for command, argv in commands.items():
            code, _, err = _run([*argv, "-q", "--device", "cpu"], capsys)
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and str(path) in lines[0], (command, name, err)
    assert not list(root.glob("bad.*"))


def test_good_files_give_finite_outputs_everywhere(corpus, tmp_path, capsys):
    good = corpus["good"]
    index = tmp_path / "index.parquet"
    code, _, err = _run(["embed", corpus["clap"], *good.values(), "-o", index, "-q", "--device", "cpu"], capsys)
    assert code == 0, err
    paths, array, _ = read_embeddings(index)
    assert paths == [str(p) for p in good.values()] and np.isfinite(array).all()
    tags = tmp_path / "tags.csv"
    code, _, err = _run(["zeroshot", "--model", corpus["clap"], "--audio", corpus["root"] / "good", "--label", "dog",
                         "--label", "a bell", "-o", tags, "-q", "--device", "cpu"], capsys)
    assert code == 0, err
    with open(tags, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["path"] for r in rows} == {str(p) for p in good.values()}
    assert all(np.isfinite(float(r["probability"])) and np.isfinite(float(r["similarity"])) for r in rows)
    code, out, err = _run(["retrieve", "--model", corpus["clap"], "--index", index, "--query", "a dog",
                           "--top-k", "10", "-q", "--device", "cpu"], capsys)
    assert code == 0, err
    ranked = [line.split("\t") for line in out.strip().splitlines()]
    assert {r[3] for r in ranked} == {str(p) for p in good.values()}
    assert all(np.isfinite(float(r[2])) for r in ranked)
    short = {k: v for k, v in good.items() if k != "long"}  # separating 20 s takes a while on CPU
    out_dir = tmp_path / "separated"
    code, _, err = _run(["separate", "--model", corpus["sep"], "--query", "dog", *short.values(), "-o", out_dir,
                         "-q", "--device", "cpu"], capsys)
    assert code == 0, err
    for name, path in short.items():
        result, rate = sf.read(out_dir / Path(path).with_suffix(".wav").name, always_2d=True)
        info = sf.info(path)
        assert rate == info.samplerate and result.shape == (info.frames, info.channels), name
        assert np.isfinite(result).all(), name
