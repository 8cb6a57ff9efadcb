"""``clapkit zeroshot``: labels file and/or --label, template, top-k CSV."""

from __future__ import annotations

import csv

import pytest
import torch

import clapkit
from clapkit.cli import main
from helpers.models import save_tiny_native, write_wav_folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_native(tmp_path_factory.mktemp("tiny") / "model")


def test_scores_match_the_python_api(model_dir, tmp_path):
    clips = write_wav_folder(tmp_path / "clips", count=2)
    out = tmp_path / "tags.csv"
    labels = ["dog", "cat", "rain"]
    args = ["zeroshot", "--model", str(model_dir), "--audio", *map(str, clips), "--template", "a {} sound",
            "-o", str(out), "--top-k", "5", "-q"]
    for label in labels:
        args += ["--label", label]
    assert main(args) == 0
    rows = list(csv.DictReader(open(out, newline="")))
    assert len(rows) == 2 * 3 and [r["rank"] for r in rows[:3]] == ["1", "2", "3"]
    model = clapkit.load(model_dir)
    probs = model.classify(model.embed_audio(clips), model.embed_text([f"a {x} sound" for x in labels]))
    best = labels[int(torch.argmax(probs[0]))]
    assert rows[0]["label"] == best
    assert float(rows[0]["probability"]) == pytest.approx(float(probs[0].max()), abs=1e-5)


def test_errors(model_dir, tmp_path, corrupt_wav, capsys):
    clips = write_wav_folder(tmp_path / "clips", count=1)
    out = tmp_path / "tags.csv"
    base = ["zeroshot", "--model", str(model_dir), "-o", str(out), "-q"]
    assert main([*base, "--audio", str(clips[0])]) == 2
    assert "no labels" in capsys.readouterr().err
    assert main([*base, "--audio", str(clips[0]), "--label", "x", "--template", "no slot"]) == 2
    assert "placeholder" in capsys.readouterr().err
    assert main([*base, "--audio", str(clips[0]), str(corrupt_wav), "--label", "dog"]) == 2
    err = capsys.readouterr().err
    assert str(corrupt_wav) in err and len(err.strip().splitlines()) == 1
    empty_labels = tmp_path / "labels.txt"
    empty_labels.write_text("# nothing\n\n")
    assert main([*base, "--audio", str(clips[0]), "--labels", str(empty_labels)]) == 2
    assert "no labels in the file" in capsys.readouterr().err
    assert not out.exists()
