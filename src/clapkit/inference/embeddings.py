"""The embeddings file format: what ``clapkit embed`` writes and ``clapkit retrieve`` / ``index`` read.

- ``.parquet``: columns ``path`` (string) and ``embedding`` (fixed-size float32 list), row groups
  of :data:`ROW_GROUP_ROWS` rows, the model's identity (:func:`model_metadata`: source, fingerprint,
  dimension, rate) in the schema metadata under ``clapkit.<key>``.
- ``.npy``: the ``[N, D]`` float32 array, plus ``<stem>.paths.txt`` (one path per row) and
  ``<stem>.meta.json`` (the same metadata).
- **parts** (:class:`PartStore`): the streamed pieces of an unfinished embedding job in
  ``<output>.parts/``, parquet files of the same two columns whose names key the model, the
  file list and the files' stamps, so a resumed job reuses exactly the parts still valid.

Tables are built and read through pyarrow's buffers, never pandas. A library user reads an
embeddings file with :func:`read_embeddings` (no command-line module involved); a file that does
not hold what this module writes is one :class:`EmbeddingsFileError` line naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from clapkit.utils.atomic import atomic_path

__all__ = ["EMBEDDING_SUFFIXES", "PART_SIZE", "ROW_GROUP_ROWS", "SKIPPED_KEY", "EmbeddingsFileError", "PartStore",
           "embedding_columns", "embedding_table", "model_metadata", "paths_sidecar", "read_embeddings", "read_table",
           "write_embeddings"]

#: The suffixes an embeddings file may have.
EMBEDDING_SUFFIXES = (".npy", ".parquet")

#: Files per part of an embedding job (the unit of resuming and of data parallelism).
PART_SIZE = 1024

#: Rows per parquet row group of an embeddings file: a reader decodes a whole row group at once
#: (``clapkit index`` streams the file batch by batch), so one group of a million 512-d rows
#: would cost it 2 GB; 16k rows cost 32 MiB.
ROW_GROUP_ROWS = 16_384

#: Part metadata key of the files a part skipped (a JSON list of ``[path, reason]``).
SKIPPED_KEY = "clapkit.skipped"


class PartStore:
    """The parts folder of one embedding job (``<output>.parts/``).

    Args:
        output: the final embeddings file; parts live in ``<output>.parts/`` beside it.
        files: the corpus, in output order.
        fingerprint: identifies the model (parts of another model are not reused).
        part_size: files per part.
    """

    def __init__(self, output: str | os.PathLike, files: Sequence[str], fingerprint: str, part_size: int = PART_SIZE):
        if part_size < 1:
            raise ValueError("part_size must be at least 1")
        self.output = Path(output)
        self.files = [str(f) for f in files]
        self.part_size = part_size
        self.directory = self.output.with_name(self.output.name + ".parts")
        digest = hashlib.sha256(f"{fingerprint}\n{part_size}\n".encode())
        for name in self.files:
            digest.update(name.encode() + b"\n")
        self.key = digest.hexdigest()[:16]
        self._stamps: dict[int, str] = {}

    @property
    def num_parts(self) -> int:
        return -(-len(self.files) // self.part_size)

    def part_files(self, part: int) -> list[str]:
        return self.files[part * self.part_size : (part + 1) * self.part_size]

    def stamp(self, part: int) -> str:
        """A key of the part's files' sizes and modification times, taken once (before the part
        is decoded), so a file that changes after its part is written makes the part stale."""
        if part not in self._stamps:
            digest = hashlib.sha256()
            for name in self.part_files(part):
                try:
                    info = os.stat(name)
                    digest.update(f"{info.st_size} {info.st_mtime_ns}\n".encode())
                except OSError:
                    digest.update(b"missing\n")  # decoding it reports the problem
            self._stamps[part] = digest.hexdigest()[:12]
        return self._stamps[part]

    def path(self, part: int) -> Path:
        return self.directory / f"{self.key}-{part:06d}-{self.stamp(part)}.parquet"

    def _stale(self, part: int) -> list[Path]:
        """This job's files of ``part`` written for other versions of its files."""
        if not self.directory.is_dir():
            return []
        current = self.path(part)
        found = list(self.directory.glob(f"{self.key}-{part:06d}-*.parquet"))
        found += [p for p in [self.directory / f"{self.key}-{part:06d}.parquet"] if p.exists()]  # older clapkit
        return [p for p in found if p != current]

    def done(self, part: int) -> bool:
        # Parts are published by rename, so an existing file is a complete one.
        return self.path(part).is_file()

    def complete(self) -> bool:
        return all(self.done(k) for k in range(self.num_parts))

    def write(self, part: int, embeddings: np.ndarray, skipped: Sequence[tuple[str, str]] = ()) -> Path:
        """Write one part's ``[n, D]`` float32 embeddings (with its paths) atomically.

        ``skipped``: ``(path, reason)`` of the part's files that could not be embedded (their
        rows are NaN); kept in the part's metadata, so a resumed run does not decode them again.
        """
        pa, pq = _pyarrow()
        array = np.ascontiguousarray(embeddings, dtype=np.float32)
        paths = self.part_files(part)
        if array.shape[0] != len(paths):
            raise ValueError(f"part {part}: {array.shape[0]} embeddings for {len(paths)} files")
        metadata = {SKIPPED_KEY: json.dumps([list(s) for s in skipped])} if skipped else None
        table = embedding_table(paths, array, metadata)
        path = self.path(part)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        for stale in self._stale(part):
            stale.unlink(missing_ok=True)
        return path

    def read(self, part: int) -> np.ndarray:
        """A part's embeddings, checking that it holds the files it should."""
        paths, array = embedding_columns(read_table(self.path(part)))
        if paths != self.part_files(part):
            raise ValueError(f"{self.path(part)}: holds other files than part {part} of this job")
        return array

    def merge(self) -> np.ndarray:
        """Every part's embeddings in file order ``[N, D]`` (NaN rows for skipped files)."""
        return np.concatenate([self.read(k) for k in range(self.num_parts)])

    def skipped(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of every file the done parts skipped, in file order."""
        _, pq = _pyarrow()
        found: list[tuple[str, str]] = []
        for k in range(self.num_parts):
            if self.done(k):
                raw = (pq.read_schema(self.path(k)).metadata or {}).get(SKIPPED_KEY.encode())
                found += [(str(p), str(r)) for p, r in json.loads(raw)] if raw else []
        return found

    def remove(self) -> None:
        """Delete this job's parts (and the folder when nothing else is left in it)."""
        if self.directory.is_dir():
            for path in self.directory.glob(f"{self.key}-*.parquet"):  # stale versions included
                path.unlink(missing_ok=True)
        with_others = self.directory.is_dir() and any(self.directory.iterdir())
        if self.directory.is_dir() and not with_others:
            shutil.rmtree(self.directory, ignore_errors=True)


def embedding_table(paths: Sequence[str], embeddings: np.ndarray, metadata: Mapping[str, str] | None = None):
    """A pyarrow table of ``path`` (string) and ``embedding`` (fixed-size float32 list) columns.

    Built from raw buffers: ``pa.array`` on a list or an ndarray first asks whether it is a
    pandas object, which imports pandas (0.48 s, a tenth of a 48-file ``clapkit embed``).
    """
    pa, _ = _pyarrow()
    array = np.ascontiguousarray(embeddings, dtype=np.float32)
    encoded = [str(p).encode("utf-8") for p in paths]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    names = pa.LargeStringArray.from_buffers(len(encoded), pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded)))
    values = pa.Array.from_buffers(pa.float32(), array.size, [None, pa.py_buffer(array.reshape(-1))])
    column = pa.FixedSizeListArray.from_arrays(values, array.shape[1] if array.ndim == 2 else 0)
    table = pa.Table.from_arrays([names.cast(pa.string()), column], names=["path", "embedding"])
    return table.replace_schema_metadata(dict(metadata)) if metadata else table


def read_table(path: str | os.PathLike):
    """A parquet file as a pyarrow table (``pq.read_table`` would import pandas, see above)."""
    _, pq = _pyarrow()
    return pq.ParquetFile(path).read()


def embedding_columns(table) -> tuple[list[str], np.ndarray]:
    """``(paths, [N, D] float32)`` of a table with ``path`` and ``embedding`` columns, read
    through the buffers (``to_numpy`` would import pandas)."""
    pa, _ = _pyarrow()
    paths = [str(p) for p in table.column("path").to_pylist()]
    column = table.column("embedding").combine_chunks()
    values = column.flatten()
    if values.type != pa.float32():
        values = values.cast(pa.float32())
    if values.null_count:
        flat = values.to_numpy(zero_copy_only=False).astype(np.float32)
    else:
        flat = np.frombuffer(values.buffers()[1], dtype=np.float32, count=len(values), offset=values.offset * 4)
    width = getattr(column.type, "list_size", None) or (flat.size // max(len(paths), 1))
    return paths, flat.reshape(len(paths), width).copy()


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        from clapkit.utils.deps import DependencyError

        raise DependencyError("parquet needs the pyarrow package (pip install pyarrow), or write .npy") from None
    return pa, pq


class EmbeddingsFileError(ValueError):
    """An embeddings file that is missing or does not hold what :func:`write_embeddings` writes;
    the message names the file and the problem."""


def paths_sidecar(path: str | os.PathLike) -> Path:
    """Where ``.npy`` embeddings keep their row -> file list (``<stem>.paths.txt``)."""
    path = Path(path)
    return path.with_name(path.stem + ".paths.txt")


def _meta_sidecar(path: Path) -> Path:
    return path.with_name(path.stem + ".meta.json")


def model_metadata(model, source: str | os.PathLike) -> dict[str, str]:
    """What an embeddings file records about the model that made it (an inference model: its
    ``fingerprint``, ``embedding_dim`` and ``sample_rate``)."""
    return {
        "model": str(source),
        "fingerprint": getattr(model, "fingerprint", ""),
        "dim": str(model.embedding_dim),
        "sample_rate": str(model.sample_rate),
    }


def write_embeddings(path: str | os.PathLike, files: Sequence[str], embeddings, metadata: Mapping[str, str]) -> list[Path]:
    """Write embeddings with their file paths, atomically; returns the files written.

    ``.parquet``: columns ``path`` (string) and ``embedding`` (fixed-size float32 list), model
    metadata in the schema. ``.npy``: the ``[N, D]`` float32 array, plus ``<stem>.paths.txt``
    (one path per row) and ``<stem>.meta.json``. ``embeddings``: an array or a CPU tensor.
    """
    path = Path(path)
    array = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if path.suffix.lower() == ".parquet":
        _, pq = _pyarrow()
        table = embedding_table(files, array, {f"clapkit.{k}": str(v) for k, v in metadata.items()})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)
        return [path]
    sidecar, meta = paths_sidecar(path), _meta_sidecar(path)
    with atomic_path(path) as tmp_array, atomic_path(sidecar) as tmp_paths, atomic_path(meta) as tmp_meta:
        with open(tmp_array, "wb") as handle:
            np.save(handle, array)
        tmp_paths.write_text("".join(f"{f}\n" for f in files))
        tmp_meta.write_text(json.dumps(dict(metadata), indent=2) + "\n")
    return [path, sidecar, meta]


def read_embeddings(path: str | os.PathLike) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """Read what :func:`write_embeddings` wrote: ``(paths, [N, D] float32, metadata)``.

    Raises:
        EmbeddingsFileError: the file is missing, has another suffix, or does not hold a
            ``path`` / ``embedding`` table (or an array matching its paths file).
        DependencyError: a parquet file without pyarrow installed.
    """
    path = Path(path)
    if not path.is_file():
        raise EmbeddingsFileError(f"{path}: no such embeddings file")
    suffix = path.suffix.lower()
    if suffix not in EMBEDDING_SUFFIXES:
        raise EmbeddingsFileError(f"{path}: embeddings must be .parquet or .npy")
    if suffix == ".parquet":
        _pyarrow()  # pyarrow missing: say so in one line
    try:
        return _read_parquet(path) if suffix == ".parquet" else _read_npy(path)
    except EmbeddingsFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the file holds, one line naming it
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EmbeddingsFileError(f"{path}: unreadable embeddings ({detail})") from None


def _read_parquet(path: Path) -> tuple[list[str], np.ndarray, dict[str, str]]:
    table = read_table(path)
    if "path" not in table.column_names or "embedding" not in table.column_names:
        raise EmbeddingsFileError(f"{path}: expected columns 'path' and 'embedding' (written by clapkit embed)")
    paths, array = embedding_columns(table)
    raw = table.schema.metadata or {}
    metadata = {k.decode()[len("clapkit."):]: v.decode() for k, v in raw.items() if k.decode().startswith("clapkit.")}
    return paths, array, metadata


def _read_npy(path: Path) -> tuple[list[str], np.ndarray, dict[str, str]]:
    array = np.load(path, allow_pickle=False).astype(np.float32)
    sidecar = paths_sidecar(path)
    if not sidecar.is_file():
        raise EmbeddingsFileError(f"{path}: missing {sidecar.name} (the file list written next to it)")
    paths = sidecar.read_text().splitlines()
    meta_path = _meta_sidecar(path)
    metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if array.ndim != 2 or len(paths) != array.shape[0]:
        raise EmbeddingsFileError(f"{path}: {array.shape} embeddings but {len(paths)} paths in {sidecar.name}")
    return paths, array, metadata
