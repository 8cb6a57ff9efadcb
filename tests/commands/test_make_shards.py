"""`clapkit make-shards`: round trip, LAION-CLAP layout, resume, skipped-file summary, errors."""

from __future__ import annotations

import ast
import csv
import importlib.util
import io
import json
import os
import tarfile
from pathlib import Path

import braceexpand
import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from clapkit.audio import load_audio, save_audio
from clapkit.commands import CommandError
from clapkit.commands.make_shards import main
from clapkit.datamodules.pipeline import AudioPolicy
from clapkit.datamodules.shards import resolve
from clapkit.datamodules.webdataset import ShardStream
from helpers.fixtures import tone

SR_IN, SR_OUT = 22050, 16000


def _corpus(root: Path, n: int = 7) -> tuple[Path, list[dict]]:
    """n good clips (one stereo, varied lengths) + corrupt, empty and missing entries."""
    rows = []
    for i in range(n):
        wave = tone(i, 0.2 + 0.05 * i, SR_IN, channels=2 if i == 1 else 1)
        save_audio(root / "audio" / f"clip {i}.wav", wave, SR_IN)
        rows.append({"audio": f"audio/clip {i}.wav", "text": f"a sound number {i}, with a comma",
                     "tags": "Dog;Bark" if i % 2 else ""})
    (root / "audio" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    save_audio(root / "audio" / "empty.wav", np.zeros(0, np.float32), SR_IN)
    rows.insert(2, {"audio": "audio/broken.wav", "text": "broken", "tags": ""})
    rows.insert(4, {"audio": "audio/empty.wav", "text": "empty", "tags": ""})
    rows.append({"audio": "audio/nowhere.wav", "text": "missing", "tags": ""})
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["audio", "text", "tags"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest, rows


@pytest.fixture
def sharded(tmp_path):
    manifest, rows = _corpus(tmp_path)
    out = tmp_path / "shards"
    code = main([str(manifest), "--audio-root", str(tmp_path), "-o", str(out), "--sample-rate", str(SR_OUT),
                 "--shard-size", "3", "--workers", "2", "-q"])
    assert code == 0
    return tmp_path, out, rows


def test_round_trip_sample_for_sample(sharded):
    root, out, rows = sharded
    sizes = json.loads((out / "sizes.json").read_text())
    assert sorted(sizes) == [f"{i:06d}.tar" for i in range(3)]  # 10 rows / 3 per shard; the last holds only a missing file
    assert sum(sizes.values()) == 7
    seen = {}
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            names = tar.getnames()
            assert sizes[tar_path.name] * 2 == len(names)
            for name in names:
                key, ext = name.split(".", 1)
                seen.setdefault(key, {})[ext] = tar.extractfile(name).read()
    for index, row in enumerate(rows):
        key = f"{index:06d}"
        if row["text"] in ("broken", "empty", "missing"):
            assert key not in seen
            continue
        sample = seen[key]
        assert set(sample) == {"flac", "json"}
        meta = json.loads(sample["json"])
        assert meta["text"] == row["text"]
        assert meta["original_filename"] == row["audio"]
        assert meta.get("tag", []) == (["Dog", "Bark"] if row["tags"] else [])
        stored, rate = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
        assert rate == SR_OUT and stored.ndim == 1
        expected, _ = load_audio(root / row["audio"], SR_OUT)
        assert stored.shape == expected.shape
        assert np.abs(stored - expected).max() <= 1.0 / 32767 + 1e-6  # 16-bit FLAC precision
    skipped = list(csv.DictReader(open(out / "skipped.csv")))
    assert {r["audio"] for r in skipped} == {"audio/broken.wav", "audio/empty.wav", "audio/nowhere.wav"}


def test_read_back_through_shard_stream(sharded):
    _, out, rows = sharded
    stream = ShardStream([resolve(str(out))], AudioPolicy(sample_rate=SR_OUT, clip_seconds=0.5, int16=False),
                         batch_size=4, stage="eval")
    texts = {k: t for b in stream for k, t in zip(b["key"], b["text"])}
    good = {f"{i:06d}": r["text"] for i, r in enumerate(rows) if r["text"] not in ("broken", "empty", "missing")}
    assert texts == good


def _laion_get_dataset_size():
    """``get_dataset_size`` from laion_clap/training/data.py, lifted out of the module.

    Importing the module itself downloads tokenizers at import time, so the function's source
    is extracted with ``ast`` and executed on its own.
    """
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or spec.origin is None:
        pytest.skip("laion-clap (parity extra) not installed")
    source_path = Path(spec.origin).parent / "training" / "data.py"
    tree = ast.parse(source_path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "get_dataset_size")
    namespace = {"braceexpand": braceexpand, "os": os, "json": json, "ast": ast}
    exec(compile(ast.Module([node], []), str(source_path), "exec"), namespace)
    return namespace["get_dataset_size"]


@pytest.mark.parity
def test_laion_clap_pipeline_reads_the_shards(sharded):
    """The stages of laion_clap's ``get_wds_dataset`` accept what make-shards writes."""
    _, out, _ = sharded
    pattern = str(out / "{000000..000002}.tar")
    num_samples, num_shards = _laion_get_dataset_size()(pattern, is_local=True)
    assert (num_samples, num_shards) == (7, 3)

    # torchaudio>=2.9 needs torchcodec for wds.torch_audio; decode flac with soundfile the same way.
    def sf_audio(key, data):
        if not key.endswith("flac"):
            return None
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        return wave.T, rate

    pipeline = wds.DataPipeline(wds.SimpleShardList(list(braceexpand.braceexpand(pattern))),
                                wds.tarfile_to_samples(), wds.decode(sf_audio))
    samples = list(pipeline)
    assert len(samples) == 7
    for sample in samples:
        audio_data, orig_sr = sample["flac"]  # preprocess_single: sample[audio_ext]
        assert orig_sr == SR_OUT and audio_data.shape[0] == 1
        assert isinstance(sample["json"]["text"], str)  # select_text: json_dict_raw["text"]
        assert "/" not in sample["__key__"] and "." not in sample["__key__"]


def test_resume_skips_complete_shards(sharded, capsys):
    root, out, _ = sharded
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    victim = out / "000001.tar"
    victim.unlink()
    (out / ".make_shards" / "000001.json").unlink()
    code = main([str(root / "manifest.csv"), "--audio-root", str(root), "-o", str(out), "--sample-rate",
                 str(SR_OUT), "--shard-size", "3", "--workers", "1", "-q"])
    assert code == 0
    assert victim.is_file()
    for name, stamp in stamps.items():
        if name != victim.name:
            assert (out / name).stat().st_mtime_ns == stamp
    assert sum(json.loads((out / "sizes.json").read_text()).values()) == 7
    assert "skipped 3 files" in capsys.readouterr().err
    assert not list(out.glob(".*.tmp"))


def test_changed_settings_refuse_without_overwrite(sharded):
    root, out, _ = sharded
    argv = [str(root / "manifest.csv"), "--audio-root", str(root), "-o", str(out), "--shard-size", "2", "-q",
            "--sample-rate", str(SR_OUT), "--workers", "1"]
    with pytest.raises(CommandError, match="different manifest or settings"):
        main(argv)
    assert main(argv + ["--overwrite"]) == 0
    assert len(json.loads((out / "sizes.json").read_text())) == 5  # 10 rows, 2 per shard


def test_jsonl_manifest_with_caption_lists(tmp_path):
    save_audio(tmp_path / "a.wav", tone(0), SR_IN)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": str(tmp_path / "a.wav"), "text": ["one", "two"],
                                    "tags": ["Speech"], "source": "x"}) + "\n")
    assert main([str(manifest), "-o", str(tmp_path / "s"), "--workers", "1", "-q"]) == 0
    with tarfile.open(tmp_path / "s" / "000000.tar") as tar:
        meta = json.loads(tar.extractfile("000000.json").read())
        _, rate = sf.read(io.BytesIO(tar.extractfile("000000.flac").read()))
    assert meta["text"] == ["one", "two"] and meta["tag"] == ["Speech"] and meta["source"] == "x"
    assert rate == 48000


def test_bad_manifest_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,caption\nx.wav,hello\n")
    with pytest.raises(CommandError, match=r"bad\.csv: needs columns 'audio' and 'text'"):
        main([str(bad), "-o", str(tmp_path / "o"), "-q"])
    with pytest.raises(CommandError, match="manifest not found"):
        main([str(tmp_path / "nope.csv"), "-o", str(tmp_path / "o"), "-q"])
