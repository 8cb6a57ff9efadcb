"""Nearest-neighbour search: exact top-k, faiss IVF against it, the cached index."""

from __future__ import annotations

import numpy as np
import pytest

from clapkit.inference import search
from clapkit.inference.search import NearestNeighbours

pytest.importorskip("faiss")


def _clustered(n: int = 6000, dim: int = 32, clusters: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    points = centres[rng.integers(clusters, size=n)] + 0.3 * rng.standard_normal((n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def test_exact_is_brute_force_top_k():
    data = _clustered(500)
    queries = _clustered(7, seed=1)
    hits = NearestNeighbours(data, "auto").search(queries, 5)
    scores = queries @ data.T
    np.testing.assert_array_equal(hits.indices, np.argsort(-scores, axis=1)[:, :5])
    np.testing.assert_allclose(hits.scores, np.sort(scores, axis=1)[:, ::-1][:, :5], atol=1e-6)


def test_ivf_visiting_every_list_is_exact_and_default_nprobe_recalls(tmp_path, monkeypatch):
    data = _clustered()
    queries = _clustered(50, seed=2)
    exact = NearestNeighbours(data, "exact").search(queries, 10)
    cache = tmp_path / "index.parquet"
    cache.write_bytes(b"stands in for the embeddings file")
    full = NearestNeighbours(data, "ann", nprobe=10_000, cache=cache)
    assert full.method == "ann" and full.nlist == min(int(4 * np.sqrt(len(data))), len(data) // 39)
    hits = full.search(queries, 10)
    np.testing.assert_array_equal(hits.indices, exact.indices)
    np.testing.assert_allclose(hits.scores, exact.scores, atol=1e-5)
    default = NearestNeighbours(data, "ann", cache=cache).search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(default.indices, exact.indices)])
    assert recall >= 0.9, recall
    assert len(list(tmp_path.glob("index.parquet.*.faiss"))) == 1  # built once, then loaded
    monkeypatch.setattr(search, "EXACT_BELOW", 100)
    assert NearestNeighbours(data[:99]).method == "exact" and NearestNeighbours(data[:100]).method == "ann"
