"""Corpus-scale audio embedding: pipelined, resumable, data-parallel.

:func:`embed_corpus` embeds a fixed, ordered list of files with a
:class:`~clapkit.inference.clap.CLAPModel` and streams the result to parquet *parts* in a folder next
to the output (``<output>.parts/``). The pieces:

- **parts**: the file list is cut into parts of ``part_size`` files by position, so a part's
  content never depends on how many processes ran or where a run stopped. Each part is written
  atomically as it finishes; its name carries a key of (model fingerprint, part size, file
  list), so parts of another model or another folder are never reused, and a key of its own
  files' sizes and modification times (``st_mtime_ns``), so a part whose file was replaced after
  it finished is embedded again while the other parts are reused.
- **resume**: a rerun skips every part already on disk, so after a kill (even ``SIGKILL``) only
  the unfinished part is redone, and the merged index is the same as an uninterrupted run's.
- **data parallel**: rank ``r`` of ``W`` embeds the parts ``k`` with ``k % W == r`` (rank and
  world size from ``torchrun`` / ``torch.distributed`` environment variables or a SLURM array,
  see :func:`rank_from_env`); whichever rank finds every part done merges them in file order.
- **pipelining**: decoding and resampling run in worker processes (forked, so nothing is
  pickled but the paths and the decoded clips) ahead of the model with a bounded look-ahead,
  so the model is never waiting for a decoder when there are enough cores; clips of one part
  are bucketed by length (fusion models take long clips whole) and put back in file order.
- **early decoding**: a command that knows the model's preprocessing before loading it (a
  native directory's ``config.yaml``) starts an :class:`EarlyDecoder` before ``import torch``:
  one forked worker decodes the first files while the main process, single-threaded, imports
  torch and builds the model (3-4 s on a 2-core CPU, one core idle otherwise).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clapkit.utils.atomic import atomic_path
from clapkit.utils.finite import NonFiniteError

__all__ = ["EarlyDecoder", "EmbeddingInputError", "EmbedRun", "PartStore", "RankSlice", "decode_order", "device_for_rank",
           "embed_corpus", "rank_from_env"]

PART_SIZE = 1024

#: Files an :class:`EarlyDecoder` decodes ahead at most (64 ten-second clips at 48 kHz: 123 MB).
EARLY_FILES = 64


#: Rows per parquet row group of an embeddings file: a reader decodes a whole row group at once
#: (``clapkit index`` streams the file batch by batch), so one group of a million 512-d rows
#: would cost it 2 GB; 16k rows cost 32 MiB.
ROW_GROUP_ROWS = 16_384

#: Part metadata key of the files a part skipped (a JSON list of ``[path, reason]``).
SKIPPED_KEY = "clapkit.skipped"


@dataclass(frozen=True)
class Unusable:
    """A file the decoder could not turn into a clip, in place of its clip (skipping runs)."""

    reason: str


class EmbeddingInputError(ValueError):
    """A file of the corpus cannot be embedded; the message names it and the problem."""


@dataclass(frozen=True)
class RankSlice:
    """Which share of the parts this process embeds: parts ``k`` with ``k % world_size == rank``."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} of world size {self.world_size} is not a valid slice")

    def owns(self, part: int) -> bool:
        return part % self.world_size == self.rank


def rank_from_env(env: Mapping[str, str] | None = None) -> RankSlice:
    """This process's slice from the launcher's environment.

    ``torchrun`` / ``torch.distributed``: ``RANK`` and ``WORLD_SIZE``. A SLURM array
    (``sbatch --array=0-N``): ``SLURM_ARRAY_TASK_ID`` relative to ``SLURM_ARRAY_TASK_MIN``,
    out of ``SLURM_ARRAY_TASK_COUNT``. A SLURM job step with several tasks (``srun -n N``):
    ``SLURM_PROCID`` of ``SLURM_NTASKS``. Otherwise one process embeds everything.
    """
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env:
        return RankSlice(int(env["RANK"]), int(env["WORLD_SIZE"]))
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        return RankSlice(int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"]))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return RankSlice(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]))
    return RankSlice()


def device_for_rank(device: str, env: Mapping[str, str] | None = None) -> str:
    """``auto`` under ``torchrun`` / ``srun`` means this process's own GPU (``cuda:LOCAL_RANK``)."""
    env = os.environ if env is None else env
    local = env.get("LOCAL_RANK", env.get("SLURM_LOCALID"))
    if device != "auto" or local is None:
        return device
    import torch

    return f"cuda:{int(local) % max(torch.cuda.device_count(), 1)}" if torch.cuda.is_available() else "cpu"


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


@dataclass
class EmbedRun:
    """What :func:`embed_corpus` did.

    Attributes:
        embeddings: ``[N, D]`` of the whole corpus in file order when every part is done
            (this rank finished last), else ``None``.
        parts_written: parts this call embedded.
        parts_skipped: parts of this rank found done on disk (resumed).
        num_parts: parts of the whole job.
        store: the parts folder (call ``store.remove()`` once the output is written).
        skipped: ``(path, reason)`` of the files left out (their rows of ``embeddings`` are NaN),
            from every part once the corpus is complete (empty while ``embeddings`` is ``None``).
    """

    embeddings: np.ndarray | None
    parts_written: int
    parts_skipped: int
    num_parts: int
    store: PartStore
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def embed_corpus(
    model,
    files: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    part_size: int = PART_SIZE,
    workers: int = 2,
    ranks: RankSlice | None = None,
    resume: bool = True,
    lengths: Sequence[int] | None = None,
    progress: Callable[[int], None] | None = None,
    early: EarlyDecoder | None = None,
    may_skip: Callable[[str], bool] | None = None,
) -> EmbedRun:
    """Embed ``files`` with ``model`` (a :class:`~clapkit.inference.clap.CLAPModel`) into parts.

    Args:
        model: the inference model (``prepare_audio`` + ``embed_prepared``).
        files: the corpus, in output order.
        output: the final embeddings file; parts go to ``<output>.parts/``.
        part_size: files per part (the unit of resuming and of data parallelism).
        workers: decoding processes ahead of the model (``<= 1``: decode inline).
        ranks: this process's slice (default :func:`rank_from_env`).
        resume: skip parts already on disk (``False`` redoes them).
        lengths: per-file durations (any unit), used to bucket clips of a part by length.
        progress: called with the number of files finished (done parts count at once).
        early: decoding started before the model was loaded (its clips are used where they
            match; it is closed here). It must decode as ``model.prepare_audio`` does.
        may_skip: ``path -> bool``: a file that cannot be decoded or embedded (non-finite
            output) is skipped when this says so: its row is NaN, the part records it and the
            part is done (a resume does not retry it). ``None``: nothing is skipped.

    Raises:
        EmbeddingInputError: a file cannot be decoded and may not be skipped (parts finished
            before it are kept).
    """
    ranks = ranks or rank_from_env()
    names = [str(f) for f in files]
    store = PartStore(output, names, getattr(model, "fingerprint", ""), part_size)
    mine = [k for k in range(store.num_parts) if ranks.owns(k)]
    todo = [k for k in mine if not (resume and store.done(k))]
    skipped = len(mine) - len(todo)
    if progress is not None and skipped:
        progress(sum(len(store.part_files(k)) for k in mine if k not in todo))
    with _Decoder(model.prepare_audio, workers, early) as decoder:
        ahead = max(2 * model.batch_size, workers)
        for part in todo:
            paths, order = _part_plan(names, part, part_size, lengths)
            if may_skip is None:
                clips = decoder.map([paths[i] for i in order], ahead=ahead)
                try:
                    embedded = model.embed_prepared(clips, progress=progress)
                except NonFiniteError as exc:  # huge samples overflowed the model: name the file
                    name = paths[order[exc.index]] if exc.index is not None else f"a file of part {part}"
                    raise EmbeddingInputError(str(exc.named(name))) from None
                result = np.empty((len(paths), embedded.shape[1]), dtype=np.float32)
                result[order] = embedded.numpy()
                store.write(part, result)
            else:
                store.write(part, *_embed_skipping(model, decoder, paths, order, ahead, may_skip, progress))
    embeddings, left_out = None, []
    if store.complete():
        try:
            embeddings, left_out = store.merge(), store.skipped()
        except FileNotFoundError:
            embeddings = None  # another rank finished at the same moment, merged and cleaned up
    return EmbedRun(embeddings, len(todo), skipped, store.num_parts, store, left_out)


def _embed_skipping(model, decoder: _Decoder, paths: list[str], order: list[int], ahead: int,
                    may_skip: Callable[[str], bool], progress) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """One part's ``[n, D]`` embeddings with NaN rows for the files skipped, and those files.

    A file whose embedding is not finite is found only after its batch ran: the part is then
    embedded again without it (each retry removes one file, so it ends).
    """
    bad: dict[int, str] = {}
    while True:
        kept: list[int] = []

        def clips(kept: list[int] = kept) -> Iterator[np.ndarray]:
            wanted = [i for i in order if i not in bad]
            for i, clip in zip(wanted, decoder.map([paths[i] for i in wanted], ahead=ahead, settle=True)):
                if isinstance(clip, Unusable):
                    if not may_skip(paths[i]):
                        raise EmbeddingInputError(clip.reason)
                    bad[i] = clip.reason
                    if progress is not None:
                        progress(1)
                    continue
                kept.append(i)
                yield clip

        try:
            embedded = model.embed_prepared(clips(), progress=progress)
        except NonFiniteError as exc:
            if exc.index is None or not may_skip(paths[kept[exc.index]]):
                name = paths[kept[exc.index]] if exc.index is not None else "a file of this part"
                raise EmbeddingInputError(str(exc.named(name))) from None
            bad[kept[exc.index]] = str(exc.named(paths[kept[exc.index]]))
            continue
        result = np.full((len(paths), embedded.shape[1]), np.nan, dtype=np.float32)
        if kept:
            result[kept] = embedded.numpy()
        return result, [(paths[i], _reason(paths[i], bad[i])) for i in sorted(bad)]


def _reason(path: str, message: str) -> str:
    return message[len(path) + 2:] if message.startswith(f"{path}: ") else message


def _part_plan(names: Sequence[str], part: int, part_size: int,
               lengths: Sequence[int] | None) -> tuple[list[str], list[int]]:
    """A part's files and the order they are decoded and embedded in."""
    paths = list(names[part * part_size : (part + 1) * part_size])
    return paths, _bucket_order(paths, lengths, part * part_size)


def decode_order(files: Sequence[str | os.PathLike], *, part_size: int = PART_SIZE, ranks: RankSlice | None = None,
                 lengths: Sequence[int] | None = None) -> Iterator[str]:
    """This rank's files in the order :func:`embed_corpus` decodes them (parts done on disk
    included: which are done is known only once the model, hence its fingerprint, is)."""
    ranks = ranks or rank_from_env()
    names = [str(f) for f in files]
    for part in range(-(-len(names) // part_size)):
        if ranks.owns(part):
            paths, order = _part_plan(names, part, part_size, lengths)
            yield from (paths[i] for i in order)


def _bucket_order(paths: Sequence[str], lengths: Sequence[int] | None, offset: int) -> list[int]:
    """Positions of a part's files sorted by length (stable), so a batch pads least."""
    if lengths is None:
        return list(range(len(paths)))
    own = lengths[offset : offset + len(paths)]
    return sorted(range(len(paths)), key=lambda i: own[i])


# --------------------------------------------------------------------------- decoding workers

_PREPARE: Callable | None = None  # set before the pool forks; workers call it by name


def _prepare_in_worker(path: str) -> np.ndarray:
    assert _PREPARE is not None
    return _prepare_checked(_PREPARE, path)


def _prepare_checked(prepare: Callable, path: str) -> np.ndarray:
    from clapkit.audio import AudioLoadError

    try:
        return prepare(path)
    except AudioLoadError as exc:
        raise EmbeddingInputError(str(exc)) from None
    except ValueError as exc:
        raise EmbeddingInputError(f"{path}: {exc}") from None


class EarlyDecoder:
    """Decoding that starts before the model exists: one forked child, the first files.

    Forked before ``import torch`` (so the child holds no torch, no thread pool), the child
    decodes ``paths`` in order, at most :data:`EARLY_FILES` of them, into its own memory while
    the parent imports torch and builds the model. Clips cross to the parent only when
    :func:`embed_corpus` asks for them (:meth:`take`): a clip sent while the parent imports
    would be read by a thread that waits for the importing thread's GIL at every pipe chunk,
    which halved the child's pace. Clips of parts found done on disk are never sent. Without
    ``fork`` (Windows, macOS' default), or with nothing to decode, it does nothing.

    Args:
        prepare: one path -> the model input, exactly as the model's ``prepare_audio``.
        paths: files in the order the model will ask for them (:func:`decode_order`).
        limit: files decoded ahead at most.
    """

    def __init__(self, prepare: Callable[[str], np.ndarray], paths: Iterable[str], limit: int = EARLY_FILES):
        self.waiting: set[str] = set()
        self.process = None
        self.connection = None
        first: list[str] = []
        for path in paths:
            if len(first) >= limit:
                break
            first.append(path)
        if first and "fork" in multiprocessing.get_all_start_methods():
            context = multiprocessing.get_context("fork")
            self.connection, child = context.Pipe()
            self.process = context.Process(target=_serve_early, args=(child, prepare, first), daemon=True)
            self.process.start()
            child.close()
            self.waiting = set(first)

    def take(self, path: str) -> Future | None:
        """The clip of ``path`` as a finished future, once (``None`` if it was not started early)."""
        if path not in self.waiting or self.connection is None:
            return None
        self.waiting.discard(path)
        future: Future = Future()
        try:
            self.connection.send(path)
            ok, value = self.connection.recv()
        except (EOFError, OSError):  # the child died (killed, out of memory): decode in the pool
            self.close()
            return None
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
        return future

    def close(self) -> None:
        """Stop the child; clips not taken are dropped."""
        self.waiting.clear()
        if self.connection is not None:
            with contextlib.suppress(OSError):
                self.connection.send(None)
            self.connection.close()
            self.connection = None
        if self.process is not None:
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
            self.process = None

    def __enter__(self) -> EarlyDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve_early(connection, prepare: Callable[[str], np.ndarray], paths: list[str]) -> None:
    """The early child: decode ``paths`` ahead, answer each request (a path) with ``(ok, clip or error)``."""
    ready: dict[str, tuple[bool, Any]] = {}
    queue = list(paths)

    def decode(path: str) -> tuple[bool, Any]:
        try:
            return True, _prepare_checked(prepare, path)
        except Exception as exc:  # noqa: BLE001 - sent to the parent, raised there
            return False, exc

    try:
        while True:
            while queue and not connection.poll():
                path = queue.pop(0)
                ready[path] = decode(path)
            request = connection.recv()
            if request is None:
                return
            if request not in ready:
                if request in queue:
                    queue.remove(request)
                ready[request] = decode(request)
            connection.send(ready.pop(request))
    except (EOFError, OSError, KeyboardInterrupt):
        return


class _Decoder:
    """Decode-and-resample ahead of the model: forked worker processes where the platform
    forks, threads otherwise, inline with ``workers <= 1``. Results come back in input order;
    those an :class:`EarlyDecoder` started are taken from it."""

    def __init__(self, prepare: Callable[[str], np.ndarray], workers: int, early: EarlyDecoder | None = None):
        self.prepare = prepare
        self.workers = workers
        self.pool: Executor | None = None
        self.early = early

    def __enter__(self) -> _Decoder:
        global _PREPARE
        if self.workers > 1:
            if "fork" in multiprocessing.get_all_start_methods():
                # Forked children inherit `prepare` (and the model it is bound to) by copy-on-write
                # memory; only paths go in and float32 clips come back.
                _PREPARE = self.prepare
                self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"))
            else:
                self.pool = ThreadPoolExecutor(self.workers)
        return self

    def __exit__(self, *exc) -> None:
        global _PREPARE
        if self.early is not None:
            self.early.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        _PREPARE = None

    def _submit(self, path: str) -> Future:
        started = self.early.take(path) if self.early is not None else None
        if started is not None:
            return started
        if self.pool is None:  # inline decoding: a finished future
            future: Future = Future()
            try:
                future.set_result(_prepare_checked(self.prepare, path))
            except BaseException as exc:  # noqa: BLE001 - re-raised by .result()
                future.set_exception(exc)
            return future
        if isinstance(self.pool, ProcessPoolExecutor):
            return self.pool.submit(_prepare_in_worker, path)
        return self.pool.submit(_prepare_checked, self.prepare, path)

    def map(self, paths: Iterable[str], ahead: int, settle: bool = False) -> Iterator[np.ndarray | Unusable]:
        """Clips of ``paths`` in order; with ``settle``, a file that cannot be decoded gives an
        :class:`Unusable` in place of its clip instead of raising."""
        if self.pool is None and self.early is None:
            for path in paths:
                yield _settled_call(_prepare_checked, self.prepare, path) if settle else \
                    _prepare_checked(self.prepare, path)
            return
        yield from prefetched(self._submit, paths, ahead if self.pool is not None else 1,
                              result=_settled_result if settle else None)


def _settled_call(fn: Callable, *args) -> np.ndarray | Unusable:
    try:
        return fn(*args)
    except EmbeddingInputError as exc:
        return Unusable(str(exc))


def _settled_result(future: Future) -> np.ndarray | Unusable:
    try:
        return future.result()
    except EmbeddingInputError as exc:
        return Unusable(str(exc))


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
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


def prefetched(submit: Callable[[Any], Future], items: Iterable[Any], ahead: int,
               result: Callable[[Future], Any] | None = None) -> Iterator[Any]:
    """Results of ``submit(item)`` in input order, keeping ``ahead`` submissions in flight so
    decoding overlaps with whatever consumes the results. ``result``: how a finished future
    becomes the value yielded (default ``future.result()``)."""
    pending: list[Future] = []
    iterator = iter(items)
    for item in iterator:
        pending.append(submit(item))
        if len(pending) >= ahead:
            break
    while pending:
        future = pending.pop(0)
        value = future.result() if result is None else result(future)
        nxt = next(iterator, None)
        if nxt is not None:
            pending.append(submit(nxt))
        yield value
