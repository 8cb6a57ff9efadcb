"""On-disk faiss indexes of an embeddings parquet, built without holding every vector at once.

:func:`build_index` reads the parquet written by ``clapkit embed`` in record batches: a first
pass draws a training sample (k-means centroids, scalar or product quantiser), a second adds
the vectors batch by batch, so the build holds the index being filled plus one batch, never
the ``[N, D]`` float32 matrix. The index kind follows the size and a memory budget for the
finished index (:func:`choose_kind`):

========== ======================================== ============== =====================
kind       faiss                                    bytes/vector   read at query time
========== ======================================== ============== =====================
flat       ``IndexFlatIP`` (exact; < 20,000 rows)   4 D            ``IO_FLAG_MMAP_IFC``
ivf-flat   ``IVF<n>,Flat``                          4 D + 8        ``IO_FLAG_MMAP``
ivf-sq8    ``IVF<n>,SQ8`` (8-bit scalar quantiser)  D + 8          ``IO_FLAG_MMAP``
ivf-pq     ``IVF<n>,PQ<m>np`` (m bytes per vector)  m + 8          ``IO_FLAG_MMAP``
hnsw       ``HNSW32,Flat`` (only when asked)        4 D + ~260     ``IO_FLAG_MMAP_IFC``
========== ======================================== ============== =====================

``IO_FLAG_MMAP`` maps an IVF index's inverted lists (the vectors' codes), so a query pages
in only the lists it visits; ``IO_FLAG_MMAP_IFC`` maps the flat codes of ``IndexFlat`` and of
HNSW's storage, while the HNSW graph itself is read into memory. HNSW is never picked
automatically: its graph is built in RAM over all vectors and the build is slow on a few cores.

The index folder holds ``index.faiss``, ``paths.parquet`` (the file of each row, in row order)
and ``index.json`` (:class:`IndexInfo`: kind, size, the model's fingerprint copied from the
embeddings, and the search depth tuned at build time to reach a target recall@10 against
exact search on sample queries drawn from the embeddings).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from clapkit.utils.atomic import normal_permissions

__all__ = ["IndexInfo", "SearchIndex", "SearchIndexError", "build_index", "choose_kind", "describe_embeddings", "exact_top_k", "recall_at_k",
           "is_index_dir", "parse_bytes"]

INDEX_FILE = "index.faiss"
PATHS_FILE = "paths.parquet"
INFO_FILE = "index.json"
#: Below this many rows the index is exact (``IndexFlatIP``): a scan is fast and needs no training.
EXACT_BELOW = 20_000
#: Rows per record batch read from the parquet (16k x 512 float32: 32 MiB per copy).
BATCH_ROWS = 16_384
#: Training points per inverted list (faiss wants at least 39).
TRAIN_PER_LIST = 50
KINDS = ("auto", "flat", "ivf-flat", "ivf-sq8", "ivf-pq", "hnsw")


class SearchIndexError(ValueError):
    """An embeddings file or index folder that cannot be used; the message names the file."""


@dataclass
class IndexInfo:
    """What ``index.json`` records about an index folder.

    Attributes:
        kind: one of :data:`KINDS` (never ``auto``).
        factory: the faiss ``index_factory`` string.
        count: vectors (rows) in the index.
        dim: embedding width.
        bytes_per_vector: size of ``index.faiss`` divided by ``count``.
        nprobe: IVF lists visited per query (tuned at build time); 0 for other kinds.
        ef_search: HNSW search depth (tuned at build time); 0 for other kinds.
        recall_at_10: recall@10 against exact search measured at build time (sample queries).
        source: the embeddings file the index was built from.
        metadata: the embeddings' ``clapkit.*`` metadata (``fingerprint``, ``model``...).
    """

    kind: str
    factory: str
    count: int
    dim: int
    bytes_per_vector: float = 0.0
    nprobe: int = 0
    ef_search: int = 0
    recall_at_10: float = 0.0
    source: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


def parse_bytes(text: str) -> int:
    """``"1G"``, ``"512MB"``, ``"2GiB"`` or a plain number of bytes -> bytes (powers of 1024)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size: {text!r} (write e.g. 800M or 4G)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def choose_kind(count: int, dim: int, budget: int) -> tuple[str, str]:
    """``(kind, factory)`` for ``count`` vectors of width ``dim`` in an index of ``budget`` bytes.

    Exact below :data:`EXACT_BELOW` rows (if it fits); otherwise the most precise IVF coding
    that fits the budget: float32, then 8-bit scalar, then product codes of D/2, D/4, ...
    bytes (at least 4). Raises ``ValueError`` when nothing fits.
    """
    nlist = _nlist(count)
    if count < EXACT_BELOW and count * 4 * dim <= budget:
        return "flat", "Flat"
    if count * (4 * dim + 8) <= budget:
        return "ivf-flat", f"IVF{nlist},Flat"
    if count * (dim + 8) <= budget:
        return "ivf-sq8", f"IVF{nlist},SQ8"
    for m in _pq_sizes(dim):
        if count * (m + 8) <= budget:
            return "ivf-pq", f"IVF{nlist},PQ{m}np"
    raise ValueError(f"{count} vectors of dim {dim} need at least {count * 12 / 2**20:.0f} MiB "
                     f"(4-byte product codes), more than the budget of {budget / 2**20:.0f} MiB")


def factory_for(kind: str, count: int, dim: int, budget: int) -> str:
    """The faiss factory string of an explicitly requested ``kind`` (``auto``: :func:`choose_kind`)."""
    nlist = _nlist(count)
    if kind == "auto":
        return choose_kind(count, dim, budget)[1]
    if kind == "ivf-pq":
        fitting = [m for m in _pq_sizes(dim) if count * (m + 8) <= budget]
        m = fitting[0] if fitting else _pq_sizes(dim)[-1]
        return f"IVF{nlist},PQ{m}np"
    return {"flat": "Flat", "ivf-flat": f"IVF{nlist},Flat", "ivf-sq8": f"IVF{nlist},SQ8",
            "hnsw": "HNSW32,Flat"}[kind]


# Product codes are trained without faiss' polysemous step (``np``): it only serves Hamming
# pre-filtering, which clapkit does not use, and took minutes on a 20k x 64 set.
def _pq_sizes(dim: int) -> list[int]:
    """Product-code sizes to try, most precise first: D/2, D/4, ... bytes, each dividing D, at least 4."""
    sizes, m = [], dim // 2
    while m >= 4:
        if dim % m == 0:
            sizes.append(m)
        m //= 2
    return sizes or [next(m for m in range(min(dim, 4), 0, -1) if dim % m == 0)]


def _nlist(count: int) -> int:
    # sqrt(N) lists keeps both the coarse scan and each list's scan short; N / 39 keeps faiss'
    # minimum of 39 training points per list on small sets.
    return max(1, min(int(math.sqrt(count)), count // 39 or 1))


def is_index_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by :func:`build_index`."""
    return (Path(path) / INFO_FILE).is_file()


# --------------------------------------------------------------------------- reading the parquet


def _batches(path: Path, columns: list[str]) -> Iterator:
    import pyarrow.parquet as pq

    handle = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    for number, batch in enumerate(handle.iter_batches(batch_size=BATCH_ROWS, columns=columns)):
        yield batch
        if number % 8 == 7:  # freed batches would otherwise pile up beside the index being filled
            _release_memory()
    _release_memory()


def _vectors(batch, dim: int) -> np.ndarray:
    """``[rows, dim]`` float32 of a record batch's ``embedding`` column, normalised."""
    import pyarrow as pa

    column = batch.column(batch.schema.get_field_index("embedding"))
    values = column.flatten()
    if values.type != pa.float32():
        values = values.cast(pa.float32())
    # One copy (the arrow buffer is read-only), normalised in place: np.linalg.norm and a
    # division would each add a batch-sized temporary at the build's peak.
    array = np.array(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(batch), dim)
    norms = np.sqrt(np.einsum("ij,ij->i", array, array))
    array /= np.maximum(norms, 1e-12)[:, None]
    return array


def describe_embeddings(path: Path) -> tuple[int, int, dict[str, str]]:
    """``(rows, dim, clapkit metadata)`` of an embeddings parquet, from its footer only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise SearchIndexError(f"{path}: no such embeddings file")
    try:
        handle = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - any parquet error is one line naming the file
        raise SearchIndexError(f"{path}: not a parquet file ({str(exc).splitlines()[0]})") from None
    schema = handle.schema_arrow
    if "path" not in schema.names or "embedding" not in schema.names:
        raise SearchIndexError(f"{path}: expected columns 'path' and 'embedding' (written by clapkit embed)")
    kind = schema.field("embedding").type
    if not isinstance(kind, pa.FixedSizeListType) or kind.list_size < 1:
        raise SearchIndexError(f"{path}: 'embedding' is not a fixed-size list of floats")
    raw = schema.metadata or {}
    metadata = {k.decode()[len("clapkit."):]: v.decode() for k, v in raw.items()
                if k.decode().startswith("clapkit.")}
    return handle.metadata.num_rows, kind.list_size, metadata


def _sample(path: Path, dim: int, count: int, size: int, rng: np.random.Generator, with_rows: bool = False):
    """``size`` rows drawn without replacement, read batch by batch (sorted row numbers);
    with ``with_rows``, ``(row numbers, rows)``."""
    chosen = np.sort(rng.choice(count, size=min(size, count), replace=False))
    out, start = [], 0
    for batch in _batches(path, ["path", "embedding"]):
        stop = start + len(batch)
        lo, hi = np.searchsorted(chosen, [start, stop])
        if hi > lo:
            taken = batch.take(chosen[lo:hi] - start)
            rows = _vectors(taken, dim)
            _require_finite(rows, taken, path)
            out.append(rows)
        start = stop
    vectors = np.concatenate(out) if out else np.empty((0, dim), np.float32)
    return (chosen, vectors) if with_rows else vectors


def exact_top_k(path: Path, dim: int, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the exact top-``k`` inner products of ``queries``, one streamed pass."""
    best_scores = np.full((len(queries), k), -np.inf, np.float32)
    best_rows = np.full((len(queries), k), -1, np.int64)
    start = 0
    for batch in _batches(path, ["embedding"]):
        scores = queries @ _vectors(batch, dim).T
        # The batch's own top-k first, so the merge below handles [Q, 2k], not [Q, batch].
        kk = min(k, scores.shape[1])
        own = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        both_s = np.concatenate([best_scores, np.take_along_axis(scores, own, axis=1)], axis=1)
        both_r = np.concatenate([best_rows, own + start], axis=1)
        top = np.argpartition(-both_s, k - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(both_s, top, axis=1)
        best_rows = np.take_along_axis(both_r, top, axis=1)
        start += len(batch)
    return best_rows


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true top-k rows that the search returned (both ``[Q, k]``)."""
    hits = sum(len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) for f, t in zip(found, truth))
    return hits / max(1, int((truth >= 0).sum()))


# --------------------------------------------------------------------------- building


def build_index(embeddings: str | os.PathLike, output: str | os.PathLike, *, memory_budget: int = 1 << 30,
                kind: str = "auto", target_recall: float = 0.95, queries: int = 200, seed: int = 0,
                overwrite: bool = False, progress=None) -> IndexInfo:
    """Build an index folder from an embeddings parquet, batch by batch.

    Args:
        embeddings: a ``.parquet`` written by ``clapkit embed`` (columns ``path``, ``embedding``).
        output: the index folder to write (published whole, by a rename, when complete).
        memory_budget: bytes the finished index may take (the build's peak is this plus one
            batch and the training sample); picks the kind with ``kind="auto"``.
        kind: one of :data:`KINDS`.
        target_recall: the recall@10 against exact search the tuned search depth aims for.
        queries: sample queries used to tune and measure recall (0: no tuning).
        seed: the random sample's seed (the same inputs give the same index).
        overwrite: replace an existing index folder (only one this function wrote).
        progress: called with the number of rows added after each batch.

    Raises:
        SearchIndexError: unreadable embeddings, non-finite vectors, an output that is not ours.
    """
    from clapkit.utils.deps import optional_import

    faiss = optional_import("faiss", "index", "clapkit index")
    source, out = Path(embeddings), Path(output)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if out.exists() and not (overwrite and is_index_dir(out)):
        what = "an index folder (use --overwrite)" if is_index_dir(out) else "not an index folder clapkit wrote"
        raise SearchIndexError(f"{out}: already exists, {what}")
    count, dim, metadata = describe_embeddings(source)
    if count == 0:
        raise SearchIndexError(f"{source}: no embeddings")
    try:
        factory = factory_for(kind, count, dim, memory_budget)
    except ValueError as exc:
        raise SearchIndexError(f"{source}: {exc}; raise --memory-budget") from None
    chosen = kind if kind != "auto" else choose_kind(count, dim, memory_budget)[0]
    rng = np.random.default_rng(seed)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        nlist = getattr(faiss.extract_index_ivf(index), "nlist", 1) if "IVF" in factory else 1
        index.train(_sample(source, dim, count, max(TRAIN_PER_LIST * nlist, 10_000), rng))
        _release_memory()

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        _fill(index, source, dim, staging / PATHS_FILE, progress)
        info = IndexInfo(kind=chosen, factory=factory, count=count, dim=dim, source=str(source), metadata=metadata)
        if queries > 0:
            _tune(faiss, index, info, source, dim, min(queries, count), target_recall, rng)
        faiss.write_index(index, str(staging / INDEX_FILE))
        info.bytes_per_vector = (staging / INDEX_FILE).stat().st_size / count
        (staging / INFO_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")
        normal_permissions(staging)
        _publish_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info


def _fill(index, source: Path, dim: int, paths_out: Path, progress) -> None:
    """Add every row batch by batch, writing the row -> path table alongside.

    IVF kinds take two passes: the first assigns every vector to its list and reserves each
    list's exact size, the second adds the vectors with those assignments. Growing the lists
    one batch at a time instead would let each over-allocate (vectors double their capacity),
    up to twice the finished index's size at the peak.
    """
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    ivf = faiss.try_extract_index_ivf(index)
    assigned = _assign(ivf, source, dim) if ivf is not None else None
    start = 0
    with pq.ParquetWriter(paths_out, pa.schema([("path", pa.string())])) as writer:
        for batch in _batches(source, ["path", "embedding"]):
            vectors = _vectors(batch, dim)
            if assigned is None:
                _require_finite(vectors, batch, source)
                index.add(vectors)
            else:
                lists = np.ascontiguousarray(assigned[start : start + len(batch)])
                ivf.add_core(len(vectors), faiss.swig_ptr(vectors), None, faiss.swig_ptr(lists))
            writer.write_table(pa.Table.from_batches([batch.select(["path"])]))
            start += len(batch)
            if progress is not None:
                progress(len(batch))
    _release_memory()


def _release_memory() -> None:
    """Hand freed memory back to the system before the index grows.

    The sample pass and k-means leave a few hundred MB freed but still held by arrow's pool and
    the C heap; held, it sat under the filled index and made the build's peak (963 of 977 MiB
    allowed at 1M x 512 with a 498 MiB index).
    """
    import ctypes
    import ctypes.util

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    libc = ctypes.util.find_library("c")
    if libc:
        trim = getattr(ctypes.CDLL(libc), "malloc_trim", None)  # glibc only
        if trim is not None:
            trim(0)


def _assign(ivf, source: Path, dim: int) -> np.ndarray:
    """Each row's inverted list (one streamed pass), with every list's capacity reserved."""
    parts = []
    for batch in _batches(source, ["path", "embedding"]):
        vectors = _vectors(batch, dim)
        _require_finite(vectors, batch, source)
        parts.append(ivf.quantizer.assign(vectors, 1).reshape(-1).astype(np.int64))
    assigned = np.concatenate(parts)
    del parts
    _release_memory()
    invlists = ivf.invlists
    for number, size in enumerate(np.bincount(assigned, minlength=ivf.nlist).tolist()):
        if size:  # resize up allocates exactly; resize down keeps that capacity
            invlists.resize(number, size)
            invlists.resize(number, 0)
    return assigned


def _require_finite(vectors: np.ndarray, batch, source: Path) -> None:
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        name = batch.column(batch.schema.get_field_index("path"))[row].as_py()
        raise SearchIndexError(f"{source}: non-finite embedding (NaN or Inf) for {name}; re-embed that file")


def _tune(faiss, index, info: IndexInfo, source: Path, dim: int, queries: int, target: float,
          rng: np.random.Generator) -> None:
    """Smallest search depth whose recall@10 on sample queries reaches ``target`` (else the best).

    The queries are rows of the set, each left out of its own results: a row is always its own
    nearest neighbour, and counting that hit overstated recall for fresh queries (0.955 on rows
    against 0.945 on fresh draws of the same mixture at 1M x 512).
    """
    if info.count < 2:
        info.recall_at_10 = 1.0
        return
    rows, sample = _sample(source, dim, info.count, queries, rng, with_rows=True)
    k = min(10, info.count - 1)
    truth = _leave_out(exact_top_k(source, dim, sample, k + 1), rows, k)
    if info.kind == "flat":
        info.recall_at_10 = recall_at_k(_leave_out(index.search(sample, k + 1)[1], rows, k), truth)
        return
    if info.kind == "hnsw":
        depths, attribute = [16, 32, 64, 128, 256, 512, 1024], "ef_search"
    else:
        nlist = faiss.extract_index_ivf(index).nlist
        depths = sorted({min(2 ** i, nlist) for i in range(0, int(math.log2(nlist)) + 2)})
        attribute = "nprobe"
    for depth in depths:
        found = _leave_out(_search(faiss, index, info.kind, sample, k + 1, depth), rows, k)
        recall = recall_at_k(found, truth)
        setattr(info, attribute, depth)
        info.recall_at_10 = recall
        if recall >= target:
            break


def _leave_out(found: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Each query's results without the query's own row, cut to ``k``."""
    out = np.full((len(found), k), -1, np.int64)
    for q, (hits, own) in enumerate(zip(found, rows)):
        kept = hits[hits != own][:k]
        out[q, : len(kept)] = kept
    return out


def _search(faiss, index, kind: str, queries: np.ndarray, k: int, depth: int) -> np.ndarray:
    if kind == "hnsw":
        params = faiss.SearchParametersHNSW(efSearch=max(depth, k))
    elif kind == "flat":
        return index.search(queries, k)[1]
    else:
        params = faiss.SearchParametersIVF(nprobe=depth)
    return index.search(queries, k, params=params)[1]


def _publish_dir(staging: Path, out: Path) -> None:
    """Move a finished folder onto ``out``; an index folder already there is replaced."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
    os.replace(out, old / "index")
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- querying


class SearchIndex:
    """An index folder opened for search, its codes memory-mapped from disk.

    Args:
        path: a folder written by :func:`build_index`.
        nprobe: IVF lists visited per query (default: the depth tuned at build time).
        ef_search: HNSW search depth (default: the depth tuned at build time).
    """

    def __init__(self, path: str | os.PathLike, *, nprobe: int | None = None, ef_search: int | None = None):
        from clapkit.utils.deps import optional_import

        self.faiss = optional_import("faiss", "index", "searching a clapkit index")
        self.path = Path(path)
        try:
            raw = json.loads((self.path / INFO_FILE).read_text(encoding="utf-8"))
            self.info = IndexInfo(**raw)
        except (OSError, ValueError, TypeError) as exc:
            raise SearchIndexError(f"{self.path / INFO_FILE}: unreadable index description ({exc})") from None
        flag = self.faiss.IO_FLAG_MMAP if self.info.kind.startswith("ivf") else self.faiss.IO_FLAG_MMAP_IFC
        try:
            self.index = self.faiss.read_index(str(self.path / INDEX_FILE), flag)
        except RuntimeError as exc:
            raise SearchIndexError(f"{self.path / INDEX_FILE}: unreadable faiss index "
                              f"({str(exc).strip().splitlines()[-1]})") from None
        self.paths = self._read_paths()
        if self.index.ntotal != self.info.count or len(self.paths) != self.info.count or \
                self.index.d != self.info.dim:
            raise SearchIndexError(f"{self.path}: parts disagree ({self.index.ntotal} vectors of dim {self.index.d}, "
                              f"{len(self.paths)} paths, {INFO_FILE} says {self.info.count} of dim {self.info.dim})")
        self.nprobe = nprobe or self.info.nprobe or 1
        self.ef_search = ef_search or self.info.ef_search or 64

    def _read_paths(self) -> list[str]:
        import pyarrow.parquet as pq

        try:
            column = pq.ParquetFile(self.path / PATHS_FILE).read(columns=["path"]).column("path")
        except Exception as exc:  # noqa: BLE001 - one line naming the file
            raise SearchIndexError(f"{self.path / PATHS_FILE}: unreadable ({str(exc).splitlines()[0]})") from None
        return [str(p) for p in column.to_pylist()]

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.info.metadata)

    def search(self, queries: np.ndarray, k: int):
        """Top-``k`` rows per query (:class:`clapkit.inference.search.Hits`; cosine scores, ``-1`` past the end)."""
        from clapkit.inference.search import Hits

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        k = min(k, self.info.count)
        depth = self.ef_search if self.info.kind == "hnsw" else self.nprobe
        if self.info.kind == "flat":
            scores, indices = self.index.search(queries, k)
        else:
            params = (self.faiss.SearchParametersHNSW(efSearch=max(depth, k)) if self.info.kind == "hnsw"
                      else self.faiss.SearchParametersIVF(nprobe=depth))
            scores, indices = self.index.search(queries, k, params=params)
        return Hits(scores, indices)
