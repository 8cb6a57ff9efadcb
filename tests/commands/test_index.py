"""``clapkit index`` and ``clapkit retrieve --index FOLDER``."""

from __future__ import annotations

import csv

import pytest

from clapkit.cli import main
from helpers.models import save_tiny_native, write_wav_folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("index_cmd")
    model_dir = save_tiny_native(tmp / "model")
    write_wav_folder(tmp / "clips", count=3)
    embeddings = tmp / "emb.parquet"
    assert main(["embed", "--model", str(model_dir), str(tmp / "clips"), "-o", str(embeddings), "-q"]) == 0
    return model_dir, embeddings


def test_retrieve_through_an_index_names_the_same_files(setup, tmp_path, capsys):
    model_dir, embeddings = setup
    folder = tmp_path / "corpus.index"
    assert main(["index", str(embeddings), "-o", str(folder)]) == 0
    assert "indexed 3 vectors" in capsys.readouterr().err
    common = ["retrieve", "--model", str(model_dir), "--query", "a dog barking", "--top-k", "3", "-q"]
    assert main([*common, "--index", str(embeddings)]) == 0
    exact = capsys.readouterr().out
    out = tmp_path / "hits.csv"
    assert main([*common, "--index", str(folder), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert [line.split("\t")[3] for line in printed.splitlines()] == [line.split("\t")[3] for line in exact.splitlines()]
    rows = list(csv.DictReader(open(out, newline="")))
    assert len(rows) == 3 and rows[0]["path"].endswith(".wav")


def test_index_of_another_model_is_refused(setup, tmp_path, capsys):
    _, embeddings = setup
    folder = tmp_path / "ix"
    assert main(["index", str(embeddings), "-o", str(folder), "-q"]) == 0
    other = save_tiny_native(tmp_path / "other", seed=1)
    assert main(["retrieve", "--model", str(other), "--index", str(folder), "--query", "x", "-q"]) == 2
    err = capsys.readouterr().err
    assert "different model" in err and len(err.strip().splitlines()) == 1


def test_bad_inputs_are_one_line(setup, tmp_path, capsys):
    _, embeddings = setup
    assert main(["index", str(tmp_path / "none.parquet"), "-o", str(tmp_path / "ix")]) == 2
    assert "no such embeddings file" in capsys.readouterr().err
    (tmp_path / "ix").mkdir()
    assert main(["index", str(embeddings), "-o", str(tmp_path / "ix")]) == 2
    assert "not an index folder" in capsys.readouterr().err
    assert main(["index", str(embeddings), "-o", str(tmp_path / "iy"), "--memory-budget", "lots"]) == 2
    assert "--memory-budget" in capsys.readouterr().err
