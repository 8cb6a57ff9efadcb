"""Bad files inside a folder are skipped, listed and counted (exit 3); ``--strict`` refuses."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapkit.audio.skips import PARTIAL
from clapkit.cli import main
from helpers.models import save_tiny_native, tone

#: The bad files of a folder and the reason each is listed with (a fragment of it).
BAD = {
    "b_corrupt.wav": "unreadable",
    "d_truncated.flac": "unreadable",
    "f_nan.wav": "NaN",
    "h_empty.wav": "empty",
    "j_byte.wav": "unreadable",
}


def write_mixed_folder(folder: Path, sample_rate: int = 16000) -> tuple[list[Path], list[Path]]:
    """A folder of good clips interleaved with bad ones; ``(good, bad)`` in file order."""
    folder.mkdir(parents=True, exist_ok=True)
    good = []
    for i, name in enumerate(["a", "c", "e", "g", "i", "k"]):
        path = folder / f"{name}_good.wav"
        sf.write(path, tone(0.5 + 0.25 * i, sample_rate, freq=220.0 * (i + 1), seed=i), sample_rate)
        good.append(path)
    (folder / "b_corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    full = folder / "tmp.flac"
    sf.write(full, (np.random.default_rng(0).standard_normal(2 * sample_rate) * 0.1).astype("float32"), sample_rate)
    data = full.read_bytes()
    full.unlink()
    (folder / "d_truncated.flac").write_bytes(data[: len(data) // 2])
    nan = tone(0.5, sample_rate)
    # NaNs through the whole file: a plain model decodes only the window it reads, and a NaN
    # outside it never reaches the model (docs/RELIABILITY.md, Memory).
    nan[100::400] = np.nan
    sf.write(folder / "f_nan.wav", nan, sample_rate, subtype="FLOAT")
    sf.write(folder / "h_empty.wav", np.zeros(0, np.float32), sample_rate)
    (folder / "j_byte.wav").write_bytes(b"R")
    return good, sorted(folder / name for name in BAD)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("skips")
    model = save_tiny_native(tmp / "model")
    good, bad = write_mixed_folder(tmp / "mixed")
    only_good = tmp / "good"
    only_good.mkdir()
    for path in good:
        shutil.copy(path, only_good / path.name)
    return model, tmp / "mixed", only_good, good, bad


def _listed(csv_path: Path) -> dict[str, str]:
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {Path(r["path"]).name: r["reason"] for r in rows}


def _check_listed(csv_path: Path, err: str) -> None:
    listed = _listed(csv_path)
    assert set(listed) == set(BAD)
    for name, fragment in BAD.items():
        assert fragment in listed[name], (name, listed[name])
        assert f"skipped {Path(csv_path).parent}" in err or name in err
    assert "skipped 5 files" in err


@pytest.mark.parametrize("workers", [1, 2])
def test_embed_skips_bad_files_and_matches_the_good_ones_alone(setup, tmp_path, capsys, workers):
    import pyarrow.parquet as pq

    model, mixed, only_good, good, _ = setup
    out, alone = tmp_path / "mixed.parquet", tmp_path / "alone.parquet"
    common = ["embed", "--model", str(model), "--workers", str(workers), "--part-size", "4"]
    assert main([*common, str(mixed), "-o", str(out)]) == PARTIAL
    err = capsys.readouterr().err
    _check_listed(tmp_path / "mixed.parquet.skipped.csv", err)
    assert main([*common, str(only_good), "-o", str(alone), "-q"]) == 0
    assert not (tmp_path / "alone.parquet.skipped.csv").exists()
    mixed_table, alone_table = pq.read_table(out), pq.read_table(alone)
    assert [Path(p).name for p in mixed_table.column("path").to_pylist()] == [p.name for p in good]
    a = np.array(mixed_table.column("embedding").to_pylist(), dtype=np.float32)
    b = np.array(alone_table.column("embedding").to_pylist(), dtype=np.float32)
    assert a.shape == (len(good), b.shape[1]) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert not (tmp_path / "mixed.parquet.parts").exists()


def test_embed_strict_and_named_bad_file_are_refused_in_one_line(setup, tmp_path, capsys):
    model, mixed, _, _, bad = setup
    out = tmp_path / "e.parquet"
    assert main(["embed", "--model", str(model), str(mixed), "-o", str(out), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "b_corrupt.wav" in err[0] and not out.exists()
    assert main(["embed", "--model", str(model), str(bad[2]), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "f_nan.wav" in err[0] and "NaN" in err[0] and not out.exists()


def test_embed_resume_keeps_recorded_skips_and_retries_a_changed_file(setup, tmp_path, monkeypatch, capsys):
    model, mixed, _, good, _ = setup
    folder = tmp_path / "mixed"
    shutil.copytree(mixed, folder)
    out = tmp_path / "r.parquet"
    common = ["embed", "--model", str(model), str(folder), "-o", str(out), "-q", "--part-size", "4", "--workers", "1"]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(common) == 0  # rank 0 of 2: its part (the first 4 readable headers) is done, not merged
    assert not out.exists() and (tmp_path / "r.parquet.parts").is_dir()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    # Resumed with every file unchanged: part 0 is reused with the skips it recorded.
    assert main(common) == PARTIAL
    assert _listed(tmp_path / "r.parquet.skipped.csv").keys() == BAD.keys()
    # A bad file repaired afterwards changes its size and time, so its part is stale and the
    # rerun embeds it (a changed input is never answered from an old part).
    sf.write(folder / "d_truncated.flac", tone(0.5, 16000), 16000)
    assert main([*common, "--overwrite"]) == PARTIAL
    assert "d_truncated.flac" not in _listed(tmp_path / "r.parquet.skipped.csv")


def test_zeroshot_skips_bad_files_and_tags_the_good_ones_as_alone(setup, tmp_path, capsys):
    model, mixed, only_good, good, _ = setup
    out, alone = tmp_path / "tags.csv", tmp_path / "alone.csv"
    common = ["zeroshot", "--model", str(model), "--label", "dog", "--label", "rain", "--workers", "2"]
    assert main([*common, str(mixed), "-o", str(out)]) == PARTIAL
    _check_listed(tmp_path / "tags.csv.skipped.csv", capsys.readouterr().err)
    assert main([*common, str(only_good), "-o", str(alone), "-q"]) == 0
    with open(out, newline="") as a, open(alone, newline="") as b:
        rows, expected = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert [Path(r["path"]).name for r in rows] == [Path(r["path"]).name for r in expected]
    assert {Path(r["path"]).name for r in rows} == {p.name for p in good}
    for r, e in zip(rows, expected):
        assert r["label"] == e["label"] and float(r["similarity"]) == pytest.approx(float(e["similarity"]), abs=1e-5)
    assert main([*common, str(mixed), "-o", str(tmp_path / "s.csv"), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "b_corrupt.wav" in err[0] and not (tmp_path / "s.csv").exists()


def test_separate_skips_bad_files_and_separates_the_good_ones(tmp_path, capsys):
    from helpers.separation import save_tiny_model

    model = tmp_path / "sep"
    save_tiny_model(model)
    good, _ = write_mixed_folder(tmp_path / "mixed")
    out = tmp_path / "out"
    common = ["separate", "--model", str(model), "--query", "dog", "--device", "cpu"]
    assert main([*common, str(tmp_path / "mixed"), "-o", str(out)]) == PARTIAL
    captured = capsys.readouterr()
    _check_listed(tmp_path / "out.skipped.csv", captured.err)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.with_suffix(".wav").name for p in good)
    for path in good:
        assert np.isfinite(sf.read(out / path.with_suffix(".wav").name)[0]).all()
    strict_out = tmp_path / "strict"
    assert main([*common, str(tmp_path / "mixed"), "-o", str(strict_out), "--strict", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "b_corrupt.wav" in err[0] and not strict_out.exists()


def test_query_ranks_the_good_audio_of_a_folder_and_lists_the_bad(tmp_path, capsys):
    from clapkit.hub.convert import save_converted
    from clapkit.interop.audioclip import convert_audioclip
    from helpers.audioclip import official_audioclip_state_dict

    converted = convert_audioclip(official_audioclip_state_dict(tiny=True), audio_variant="tiny",
                                  clip_arch="tiny", sample_rate=16000, clip_seconds=0.25)
    model = save_converted(converted, tmp_path / "audioclip")
    good, _ = write_mixed_folder(tmp_path / "mixed")
    only_good = tmp_path / "good"
    only_good.mkdir()
    for path in good:
        shutil.copy(path, only_good / path.name)
    out, alone = tmp_path / "ranked.csv", tmp_path / "alone.csv"
    common = ["query", "--model", str(model), "--text", "a dog", "--top-k", "20"]
    assert main([*common, str(tmp_path / "mixed"), "-o", str(out)]) == PARTIAL
    _check_listed(tmp_path / "ranked.csv.skipped.csv", capsys.readouterr().err)
    assert main([*common, str(only_good), "-o", str(alone), "-q"]) == 0
    with open(out, newline="") as a, open(alone, newline="") as b:
        rows, expected = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert [Path(r["item"]).name for r in rows] == [Path(r["item"]).name for r in expected]
    assert len(rows) == len(good)
    assert main([*common, str(tmp_path / "mixed"), "--strict", "-q"]) == 2
    assert "b_corrupt.wav" in capsys.readouterr().err
