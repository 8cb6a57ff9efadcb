"""Nearest-neighbour search over L2-normalised embeddings (cosine = inner product).

Small sets are searched exactly (one matrix product and a top-k). Above
:data:`EXACT_BELOW` embeddings, or when asked, a faiss inverted-file index (``IndexIVFFlat``,
inner product, ``4 * sqrt(N)`` lists (at most N / 39: faiss wants 39 training points per list), ``nprobe`` lists visited per query) is built once and
cached next to the embeddings file as ``<index>.<key>.faiss``, keyed by the file's size and
modification time and the number of lists, so later queries load it instead of rebuilding.
faiss comes with the ``index`` extra.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from clapkit.utils.atomic import atomic_path

__all__ = ["EXACT_BELOW", "Hits", "NearestNeighbours"]

EXACT_BELOW = 100_000
Method = Literal["auto", "exact", "ann"]


@dataclass
class Hits:
    """Top-k results per query: ``scores`` (cosine, descending) and ``indices`` ``[Q, k]``."""

    scores: np.ndarray
    indices: np.ndarray


class NearestNeighbours:
    """Search an ``[N, D]`` set of normalised embeddings.

    Args:
        embeddings: the set (float32; rows are normalised again here).
        method: ``exact``, ``ann`` (faiss IVF) or ``auto`` (``ann`` from :data:`EXACT_BELOW` rows).
        nprobe: inverted lists visited per query (more: slower, closer to exact).
        cache: the embeddings file, to cache the built faiss index next to it.
    """

    def __init__(self, embeddings: np.ndarray, method: Method = "auto", *, nprobe: int = 32,
                 cache: str | os.PathLike | None = None):
        if method not in ("auto", "exact", "ann"):
            raise ValueError(f"method must be auto, exact or ann, not {method!r}")
        array = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.embeddings = array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)
        self.method = ("ann" if len(array) >= _exact_below() else "exact") if method == "auto" else method
        self.nlist = max(1, min(int(4 * math.sqrt(len(array))), len(array) // 39 or 1))
        self.nprobe = nprobe
        self._index = self._load_or_build(cache) if self.method == "ann" else None

    def search(self, queries: np.ndarray, k: int) -> Hits:
        """The ``k`` most similar rows for each query row (``k`` capped at ``N``)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        k = min(k, len(self.embeddings))
        if self._index is None:
            scores = queries @ self.embeddings.T
            top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            return Hits(np.take_along_axis(scores, top, axis=1), top)
        self._index.nprobe = min(self.nprobe, self.nlist)
        scores, indices = self._index.search(queries, k)
        return Hits(scores, indices)

    def _load_or_build(self, cache: str | os.PathLike | None):
        from clapkit.utils.deps import optional_import

        faiss = optional_import("faiss", "index", "approximate nearest-neighbour search")
        path = None
        if cache is not None:
            source = Path(cache)
            stat = source.stat()
            key = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}:{self.nlist}".encode()).hexdigest()[:12]
            path = source.with_name(f"{source.name}.{key}.faiss")
            if path.is_file():
                index = faiss.read_index(str(path))
                if index.ntotal == len(self.embeddings):
                    return index
        dim = self.embeddings.shape[1]
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        # k-means on a sample: 256 points per list is plenty for the centroids.
        rng = np.random.default_rng(0)
        sample = self.embeddings
        if len(sample) > 256 * self.nlist:
            sample = sample[rng.choice(len(sample), 256 * self.nlist, replace=False)]
        index.train(sample)
        index.add(self.embeddings)
        if path is not None:
            with atomic_path(path) as tmp:
                faiss.write_index(index, str(tmp))
        return index


def _exact_below() -> int:
    return EXACT_BELOW  # read at call time, so tests and callers can lower it
