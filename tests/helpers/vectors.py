"""Clustered unit vectors (a Gaussian mixture, normalised) written to an embeddings parquet
part by part: uniform random vectors in many dimensions have no neighbours worth finding."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def clustered_unit_vectors(count: int, dim: int, centres: int, seed: int = 0, spread: float = 0.6,
                           start: int = 0, centre_seed: int | None = None) -> np.ndarray:
    """Rows ``start .. start + count`` of a mixture of ``centres`` Gaussians around unit centres.

    The centres depend on ``centre_seed`` (default ``seed``) only, so a set generated chunk by
    chunk (``start`` advancing, ``seed`` varying) comes from one mixture. ``spread``: the noise
    norm relative to the centres' (unit) norm.
    """
    centre_rng = np.random.default_rng(seed if centre_seed is None else centre_seed)
    means = centre_rng.standard_normal((centres, dim)).astype(np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    rng = np.random.default_rng([seed, start])
    which = rng.integers(0, centres, count)
    noise = rng.standard_normal((count, dim)).astype(np.float32) * (spread / np.sqrt(dim))
    rows = means[which] + noise
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def write_clustered_parquet(path: Path, count: int, dim: int, centres: int, *, chunk: int = 16_384,
                            seed: int = 0, metadata: dict[str, str] | None = None) -> Path:
    """An embeddings parquet (``path``, ``embedding``) of ``count`` clustered unit vectors, generated
    and written ``chunk`` rows at a time (one row group each), never all in memory."""
    import pyarrow.parquet as pq

    from clapkit.inference.embeddings import embedding_table

    writer = None
    try:
        for start in range(0, count, chunk):
            rows = clustered_unit_vectors(min(chunk, count - start), dim, centres, seed=seed, start=start)
            table = embedding_table([f"clip_{i:07d}.wav" for i in range(start, start + len(rows))], rows,
                                    metadata)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    return path


def read_all(path: Path) -> tuple[list[str], np.ndarray]:
    """Every path and vector of a small embeddings parquet (tests only)."""
    from clapkit.inference.embeddings import embedding_columns, read_table

    return embedding_columns(read_table(path))
