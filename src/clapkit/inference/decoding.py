"""The decode-ahead engine: audio files decoded (and resampled) ahead of whatever consumes them.

One engine serves every folder run (``clapkit embed``'s :func:`~clapkit.inference.embedding.embed_corpus`,
``zeroshot`` / ``query`` through :func:`~clapkit.inference.embedding.embed_files`, ``separate``):

- :class:`Decoder`: ``prepare(path)`` run by worker **processes** forked from the caller where the
  platform forks (threads elsewhere, inline with ``workers <= 1``), results in input order,
  ``ahead`` files in flight at most (a bounded look-ahead: memory is ``ahead`` decoded files).
  Forked children inherit ``prepare`` (and the model it may be bound to) by copy-on-write memory,
  so only paths go in and decoded arrays come back. Processes were measured faster than a thread
  pool of the same size for ``clapkit embed`` over a folder on a 2-core CPU (docs/BENCHMARKS.md,
  "Decode-ahead engine"), so they are the one engine.
- :class:`EarlyDecoder`: decoding that starts before the model exists (see its docstring).
- A file that cannot be decoded raises :class:`InputError` naming it, or, with ``settle``, comes
  back as an :class:`Unusable` in its place (runs that skip bad files).
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = ["EARLY_FILES", "Decoder", "EarlyDecoder", "InputError", "Unusable", "prefetched"]

#: Files an :class:`EarlyDecoder` decodes ahead at most (64 ten-second clips at 48 kHz: 123 MB).
EARLY_FILES = 64


@dataclass(frozen=True)
class Unusable:
    """A file the decoder could not turn into a clip, in place of its clip (skipping runs)."""

    reason: str


class InputError(ValueError):
    """A file cannot be decoded (or embedded); the message names it and the problem."""


_PREPARE: Callable | None = None  # set before the pool forks; workers call it by name


def _prepare_in_worker(path: str) -> Any:
    assert _PREPARE is not None
    return _prepare_checked(_PREPARE, path)


def _prepare_checked(prepare: Callable, path: str) -> Any:
    from clapkit.audio import AudioLoadError

    try:
        return prepare(path)
    except AudioLoadError as exc:
        raise InputError(str(exc)) from None
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None


class EarlyDecoder:
    """Decoding that starts before the model exists: one forked child, the first files.

    Forked before ``import torch`` (so the child holds no torch, no thread pool), the child
    decodes ``paths`` in order, at most :data:`EARLY_FILES` of them, into its own memory while
    the parent imports torch and builds the model. Clips cross to the parent only when
    :func:`~clapkit.inference.embedding.embed_corpus` asks for them (:meth:`take`): a clip sent while the parent imports
    would be read by a thread that waits for the importing thread's GIL at every pipe chunk,
    which halved the child's pace. Clips of parts found done on disk are never sent. Without
    ``fork`` (Windows, macOS' default), or with nothing to decode, it does nothing.

    Args:
        prepare: one path -> the model input, exactly as the model's ``prepare_audio``.
        paths: files in the order the model will ask for them (:func:`~clapkit.inference.embedding.decode_order`).
        limit: files decoded ahead at most.
    """

    def __init__(self, prepare: Callable[[str], Any], paths: Iterable[str], limit: int = EARLY_FILES):
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


def _serve_early(connection, prepare: Callable[[str], Any], paths: list[str]) -> None:
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


class Decoder:
    """Decode-and-resample ahead of the model: forked worker processes where the platform
    forks, threads otherwise, inline with ``workers <= 1``. Results come back in input order;
    those an :class:`EarlyDecoder` started are taken from it. One decoder is open at a time
    (its ``prepare`` is what the forked workers call).

    Args:
        prepare: one path -> its decoded value (a model's ``prepare_audio``; ``load_audio``).
            An :class:`~clapkit.audio.AudioLoadError` or ``ValueError`` it raises becomes an
            :class:`InputError` naming the file.
        workers: decoding processes (``<= 1``: decode inline, in the caller).
        early: an :class:`EarlyDecoder` whose clips are used where it has them (closed on exit).
    """

    def __init__(self, prepare: Callable[[str], Any], workers: int, early: EarlyDecoder | None = None):
        self.prepare = prepare
        self.workers = workers
        self.pool: Executor | None = None
        self.early = early

    def __enter__(self) -> Decoder:
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

    def map(self, paths: Iterable[str], ahead: int, settle: bool = False) -> Iterator[Any | Unusable]:
        """Clips of ``paths`` in order; with ``settle``, a file that cannot be decoded gives an
        :class:`Unusable` in place of its clip instead of raising."""
        if self.pool is None and self.early is None:
            for path in paths:
                yield _settled_call(_prepare_checked, self.prepare, path) if settle else \
                    _prepare_checked(self.prepare, path)
            return
        yield from prefetched(self._submit, paths, ahead if self.pool is not None else 1,
                              result=_settled_result if settle else None)


def _settled_call(fn: Callable, *args) -> Any | Unusable:
    try:
        return fn(*args)
    except InputError as exc:
        return Unusable(str(exc))


def _settled_result(future: Future) -> Any | Unusable:
    try:
        return future.result()
    except InputError as exc:
        return Unusable(str(exc))


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
