"""``clapkit.inference.search_index``: on-disk faiss indexes built batch by batch from an embeddings parquet."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clapkit.inference import search_index
from clapkit.inference.search_index import (
    SearchIndex,
    SearchIndexError,
    build_index,
    choose_kind,
    parse_bytes,
    recall_at_k,
)
from helpers.vectors import read_all, write_clustered_parquet


def _exact(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("index") / "emb.parquet"
    return write_clustered_parquet(path, 20_000, 64, 100, chunk=4_000, metadata={"clapkit.fingerprint": "abc"})


@pytest.mark.parametrize("kind", ["auto", "ivf-sq8"])
def test_index_built_part_by_part_recalls_exact_search(corpus, tmp_path, monkeypatch, kind):
    monkeypatch.setattr(search_index, "BATCH_ROWS", 3_000)  # several batches, not aligned with row groups
    added = []
    info = build_index(corpus, tmp_path / "ix", kind=kind, progress=added.append)
    assert max(added) <= 3_000 and sum(added) == 20_000
    assert info.kind == ("ivf-flat" if kind == "auto" else kind) and info.count == 20_000
    assert info.recall_at_10 >= 0.95 and info.nprobe >= 1 and info.metadata["fingerprint"] == "abc"
    paths, vectors = read_all(corpus)
    queries = vectors[np.random.default_rng(1).choice(len(vectors), 300, replace=False)]
    index = SearchIndex(tmp_path / "ix")
    hits = index.search(queries, 10)
    assert recall_at_k(hits.indices, _exact(vectors, queries, 10)) >= 0.95
    assert index.paths == paths  # rows name their files in order
    expected = {"ivf-flat": 4 * 64 + 8, "ivf-sq8": 64 + 8}[info.kind]
    assert expected <= info.bytes_per_vector < expected * 1.2


def test_budget_picks_the_coding(corpus):
    assert choose_kind(10_000, 64, 1 << 30)[0] == "flat"
    assert choose_kind(1_000_000, 512, parse_bytes("4G"))[0] == "ivf-flat"
    assert choose_kind(1_000_000, 512, parse_bytes("1G")) == ("ivf-sq8", "IVF1000,SQ8")
    assert choose_kind(1_000_000, 512, parse_bytes("200M")) == ("ivf-pq", "IVF1000,PQ128np")
    with pytest.raises(ValueError, match="budget"):
        choose_kind(1_000_000, 512, parse_bytes("5M"))
    assert parse_bytes("1.5k") == 1536 and parse_bytes("2GiB") == 2 << 30
    with pytest.raises(ValueError):
        parse_bytes("lots")


def test_small_set_is_exact(tmp_path):
    small = write_clustered_parquet(tmp_path / "small.parquet", 2_000, 64, 20)
    info = build_index(small, tmp_path / "flat")
    assert info.kind == "flat" and info.recall_at_10 == 1.0


@pytest.mark.slow
def test_pq_fits_a_tight_budget(corpus, tmp_path):
    info = build_index(corpus, tmp_path / "pq", memory_budget=20_000 * 40)
    assert info.kind == "ivf-pq" and info.bytes_per_vector < 50


def test_refuses_foreign_folders_and_contradicting_parts(corpus, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(SearchIndexError, match="not an index folder"):
        build_index(corpus, mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    built = tmp_path / "ix"
    build_index(corpus, built, queries=0)
    with pytest.raises(SearchIndexError, match="--overwrite"):
        build_index(corpus, built)
    info = json.loads((built / "index.json").read_text())
    (built / "index.json").write_text(json.dumps({**info, "count": 5}))
    with pytest.raises(SearchIndexError, match="disagree"):
        SearchIndex(built)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


@pytest.mark.slow
def test_200k_by_512_with_1000_centres_recalls(tmp_path):
    source = write_clustered_parquet(tmp_path / "big.parquet", 200_000, 512, 1_000)
    info = build_index(source, tmp_path / "ix", memory_budget=parse_bytes("256M"))
    assert info.kind == "ivf-sq8"
    _, vectors = read_all(source)
    queries = vectors[np.random.default_rng(2).choice(len(vectors), 200, replace=False)]
    hits = SearchIndex(tmp_path / "ix").search(queries, 10)
    assert recall_at_k(hits.indices, _exact(vectors, queries, 10)) >= 0.95


def test_a_nan_embedding_is_refused_naming_its_file(tmp_path):
    import pyarrow.parquet as pq

    from clapkit.inference.embeddings import embedding_table

    vectors = np.eye(40, 8, dtype=np.float32)
    vectors[7, 0] = np.nan
    pq.write_table(embedding_table([f"f{i}.wav" for i in range(40)], vectors), tmp_path / "e.parquet")
    with pytest.raises(SearchIndexError, match="f7.wav"):
        build_index(tmp_path / "e.parquet", tmp_path / "ix", kind="ivf-flat")
    assert not (tmp_path / "ix").exists()
