"""``clapkit retrieve``: text queries over embeddings written by ``clapkit embed``."""

from __future__ import annotations

import csv

import pytest
import torch

import clapkit
from clapkit.cli import main
from helpers.models import save_tiny_native, write_wav_folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("retrieve")
    model_dir = save_tiny_native(tmp / "model")
    clips = write_wav_folder(tmp / "clips", count=3)
    index = tmp / "index.parquet"
    assert main(["embed", str(model_dir), str(tmp / "clips"), "-o", str(index), "-q"]) == 0
    return model_dir, clips, index


def test_ranks_like_the_python_api(setup, tmp_path, capsys):
    model_dir, clips, index = setup
    out = tmp_path / "hits.csv"
    assert main(["retrieve", "--model", str(model_dir), "--index", str(index), "--query", "a dog barking",
                 "--query", "rain", "--top-k", "2", "-o", str(out), "-q"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 4 and printed[0].startswith("a dog barking\t1\t")
    rows = list(csv.DictReader(open(out, newline="")))
    assert list(rows[0]) == ["query", "rank", "path", "score"] and len(rows) == 4
    model = clapkit.load(model_dir, precision="auto")  # the commands' default precision
    scores = model.embed_text(["a dog barking"]) @ model.embed_audio(clips).T
    assert rows[0]["path"] == str(clips[int(torch.argmax(scores))])
    assert float(rows[0]["score"]) == pytest.approx(float(scores.max()), abs=1e-5)


def test_index_from_another_model_is_refused(setup, tmp_path, capsys):
    _, _, index = setup
    other = save_tiny_native(tmp_path / "other", seed=1)
    assert main(["retrieve", "--model", str(other), "--index", str(index), "--query", "x", "-q"]) == 2
    assert "different model" in capsys.readouterr().err
    assert main(["retrieve", "--model", str(other), "--index", str(tmp_path / "none.parquet"), "--query", "x"]) == 2
    assert "no such embeddings file" in capsys.readouterr().err


def test_ann_search_ranks_like_exact(setup, capsys):
    model_dir, _, index = setup
    common = ["retrieve", "--model", str(model_dir), "--index", str(index), "--query", "a dog barking", "-q"]
    assert main([*common, "--search", "exact"]) == 0
    exact = capsys.readouterr().out
    assert main([*common, "--search", "ann"]) == 0
    assert capsys.readouterr().out == exact and len(exact.strip().splitlines()) == 3
