"""``clapkit convert`` end to end: an official-layout LAION-CLAP file -> native model -> zeroshot CSV."""

from __future__ import annotations

import csv

import pytest
import torch

import clapkit
from clapkit.cli import main
from helpers.models import write_wav_folder


@pytest.fixture(scope="module")
def official(laion_small):
    """The run-wide official-layout LAION-CLAP file and its RoBERTa directory (``helpers.references``;
    skipped without the laion-clap reference package)."""
    return laion_small.checkpoint, laion_small.text_dir


def test_convert_then_zeroshot(official, tmp_path, capsys):
    checkpoint, text_dir = official
    out = tmp_path / "model"
    assert main(["convert", "laion-clap", str(checkpoint), "--text-model", str(text_dir), "-o", str(out)]) == 0
    assert "HTSAT" in capsys.readouterr().err
    assert (out / "config.yaml").is_file() and (out / "model.safetensors").is_file()

    audio = write_wav_folder(tmp_path / "recordings", count=3, sample_rate=22050)
    labels = tmp_path / "labels.txt"
    labels.write_text("# sounds\ndog barking\n\ncat meowing\n")
    tags = tmp_path / "tags.csv"
    code = main(["zeroshot", "--model", str(out), "--labels", str(labels), "--label", "rain",
                 "--audio", str(tmp_path / "recordings"), "-o", str(tags), "--top-k", "2", "--device", "cpu", "-q"])
    assert code == 0
    with open(tags, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "rank", "label", "probability", "similarity"]
    assert len(rows) == 3 * 2 and {r["path"] for r in rows} == {str(p) for p in audio}
    assert {r["label"] for r in rows} <= {"dog barking", "cat meowing", "rain"}
    for path in {r["path"] for r in rows}:
        probs = [float(r["probability"]) for r in rows if r["path"] == path]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6

    # The converted directory and the official file give the same embeddings.
    native = clapkit.load(out).embed_audio(audio)
    direct = clapkit.load(checkpoint, text_model=text_dir).embed_audio(audio)
    assert torch.equal(native, direct)


def test_convert_errors_are_one_line(official, tmp_path, capsys):
    checkpoint, text_dir = official
    out = tmp_path / "model"
    assert main(["convert", "msclap", str(checkpoint), "--text-model", str(text_dir), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(checkpoint) in err and "not a msclap checkpoint" in err
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:4096])
    assert main(["convert", "auto", str(truncated), "--text-model", str(text_dir), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "truncated.pt: truncated or not a PyTorch checkpoint" in err
    assert not out.exists()


def test_convert_refuses_to_overwrite(official, tmp_path, capsys):
    checkpoint, text_dir = official
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = ["convert", "auto", str(checkpoint), "--text-model", str(text_dir), "-o", str(out), "-q"]
    assert main(args) == 2 and "already exists (pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").is_file()  # replacing with --overwrite: test_pretrained.py


def test_help_documents_every_command(capsys):
    for command in ("convert", "embed", "zeroshot", "retrieve"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert f"clapkit {command}" in text and "example:" in text


def test_laion_clap_without_text_model_says_what_to_pass(official, tmp_path, capsys):
    checkpoint, _ = official
    assert main(["convert", "laion-clap", str(checkpoint), "-o", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "text_model" in err and "roberta" in err.lower() and not (tmp_path / "m").exists()
