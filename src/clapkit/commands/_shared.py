"""Pieces shared by the inference commands: model options, file discovery, progress bars,
audio loading with one-line errors, and atomic writers for embeddings and tables."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from clapkit.atomic import atomic_path
from clapkit.audio import AudioLoadError, audio_info
from clapkit.commands import CommandError

EMBEDDING_SUFFIXES = (".npy", ".parquet")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the description's line breaks."""


def make_parser(command: str, doc: str | None) -> argparse.ArgumentParser:
    """An ``argparse`` parser for ``clapkit <command>`` whose description is the module docstring."""
    return argparse.ArgumentParser(prog=f"clapkit {command}", description=doc, formatter_class=HelpFormatter)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--precision``, ``--batch-size``, ``--text-model``, ``--trust-checkpoint``."""
    group = parser.add_argument_group("model")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    group.add_argument("--precision", default="auto", choices=["auto", "32", "bf16", "16", "bf16-true"],
                       help="bf16/16: autocast; bf16-true: audio trunk stored in bf16; auto: bf16-true on CPUs "
                            "with bf16 matrix units (AMX, AVX512-BF16), else 32 (front ends stay fp32)")
    group.add_argument("--batch-size", type=int, default=16, help="clips or texts per forward pass")
    group.add_argument("--text-model", default=None,
                       help="official checkpoints only: local directory of the text tower's tokenizer + config")
    group.add_argument("--trust-checkpoint", action="store_true",
                       help="official checkpoints only: allow unpickling code (only for files you trust)")
    group.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                       help="decoders ahead of the model (processes for embed, threads elsewhere)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def load_model(path: str | os.PathLike, args: argparse.Namespace):
    """``clapkit.load`` with the command-line options; user errors become :class:`CommandError`."""
    from clapkit.pretrained import PretrainedError, load

    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        return load(path, text_model=args.text_model, device=args.device, precision=args.precision,
                    batch_size=args.batch_size, trust_pickle=args.trust_checkpoint)
    except (PretrainedError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None
    except (RuntimeError, ValueError) as exc:
        if "CUDA" in str(exc) or "device" in str(exc).lower():
            raise CommandError(f"--device {args.device}: {str(exc).splitlines()[0]}") from None
        raise


def discover_audio(inputs: Sequence[str]) -> list[Path]:
    """Files and folders -> audio files (folders recursively, sorted); errors name the input."""
    from clapkit.inference import audio_files

    try:
        files = audio_files(inputs)
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from None
    if not files:
        raise CommandError(f"no audio files found in {', '.join(map(str, inputs))}")
    return files


def check_headers(files: Sequence[Path]) -> None:
    """Refuse unreadable or empty files before any model work (cheap: headers only)."""
    for path in files:
        try:
            info = audio_info(path)
        except AudioLoadError as exc:
            raise CommandError(str(exc)) from None
        if info.frames == 0:
            raise CommandError(f"{path}: empty (no samples)")


@contextlib.contextmanager
def progress_bar(total: int, description: str, quiet: bool = False) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``."""
    if quiet or total == 0:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=not console.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def embed_files(model, files: Sequence[Path], *, workers: int = 1, quiet: bool = False,
                description: str = "embedding") -> torch.Tensor:
    """Embed audio files with ``model`` (a CLAPModel), decoding ahead in threads.

    A file that cannot be decoded stops everything with a :class:`CommandError` naming it.
    """

    def prepare(path: Path) -> np.ndarray:
        try:
            return model.prepare_audio(path)
        except AudioLoadError as exc:
            raise CommandError(str(exc)) from None
        except ValueError as exc:
            raise CommandError(f"{path}: {exc}") from None

    with progress_bar(len(files), description, quiet) as advance:
        if workers <= 1:
            return model.embed_prepared((prepare(p) for p in files), progress=advance)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # Bounded look-ahead: at most a few batches of decoded audio in memory.
            ahead = max(workers, 2 * model.batch_size)
            return model.embed_prepared(_prefetch(pool, prepare, files, ahead), progress=advance)


def _prefetch(pool: ThreadPoolExecutor, fn, items, ahead: int):
    pending = []
    iterator = iter(items)
    for item in iterator:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            break
    while pending:
        result = pending.pop(0).result()
        nxt = next(iterator, None)
        if nxt is not None:
            pending.append(pool.submit(fn, nxt))
        yield result


# --------------------------------------------------------------------------- writers


def check_output(path: str | os.PathLike, suffixes: Sequence[str]) -> Path:
    """Validate an output path's extension and that its folder can be created."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise CommandError(f"{path}: output must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise CommandError(f"{path}: is a directory, expected a file name")
    return path




def paths_sidecar(path: Path) -> Path:
    """Where ``.npy`` embeddings keep their row -> file list (``<stem>.paths.txt``)."""
    return path.with_name(path.stem + ".paths.txt")


def write_embeddings(path: str | os.PathLike, files: Sequence[str], embeddings: torch.Tensor | np.ndarray,
                     metadata: dict[str, str]) -> list[Path]:
    """Write embeddings with their file paths, atomically.

    ``.parquet``: columns ``path`` (string) and ``embedding`` (fixed-size float32 list), model
    metadata in the schema. ``.npy``: the ``[N, D]`` float32 array, plus ``<stem>.paths.txt``
    (one path per row) and ``<stem>.meta.json``.
    """
    path = Path(path)
    array = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if path.suffix.lower() == ".parquet":
        pa, pq = _pyarrow()
        flat = pa.array(array.reshape(-1), type=pa.float32())
        column = pa.FixedSizeListArray.from_arrays(flat, array.shape[1])
        table = pa.table({"path": pa.array([str(f) for f in files], type=pa.string()), "embedding": column})
        table = table.replace_schema_metadata({f"clapkit.{k}": str(v) for k, v in metadata.items()})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return [path]
    sidecar, meta = paths_sidecar(path), path.with_name(path.stem + ".meta.json")
    with atomic_path(path) as tmp_array, atomic_path(sidecar) as tmp_paths, atomic_path(meta) as tmp_meta:
        with open(tmp_array, "wb") as handle:
            np.save(handle, array)
        tmp_paths.write_text("".join(f"{f}\n" for f in files))
        tmp_meta.write_text(json.dumps(metadata, indent=2) + "\n")
    return [path, sidecar, meta]


def read_embeddings(path: str | os.PathLike) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """Read what :func:`write_embeddings` wrote: ``(paths, [N, D] float32, metadata)``."""
    path = Path(path)
    if not path.is_file():
        raise CommandError(f"{path}: no such embeddings file")
    try:
        if path.suffix.lower() == ".parquet":
            _, pq = _pyarrow()
            table = pq.read_table(path)
            if "path" not in table.column_names or "embedding" not in table.column_names:
                raise CommandError(f"{path}: expected columns 'path' and 'embedding' (written by clapkit embed)")
            paths = [str(p) for p in table.column("path").to_pylist()]
            column = table.column("embedding").combine_chunks()
            width = column.type.list_size if hasattr(column.type, "list_size") else None
            values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            array = values.reshape(len(paths), width or (values.size // max(len(paths), 1)))
            raw = table.schema.metadata or {}
            metadata = {k.decode()[len("clapkit."):]: v.decode() for k, v in raw.items()
                        if k.decode().startswith("clapkit.")}
            return paths, array, metadata
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False).astype(np.float32)
            sidecar = paths_sidecar(path)
            if not sidecar.is_file():
                raise CommandError(f"{path}: missing {sidecar.name} (the file list written next to it)")
            paths = sidecar.read_text().splitlines()
            meta_path = path.with_name(path.stem + ".meta.json")
            metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
            if array.ndim != 2 or len(paths) != array.shape[0]:
                raise CommandError(f"{path}: {array.shape} embeddings but {len(paths)} paths in {sidecar.name}")
            return paths, array, metadata
    except CommandError:
        raise
    except Exception as exc:
        raise CommandError(f"{path}: unreadable embeddings ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    raise CommandError(f"{path}: embeddings must be .parquet or .npy")


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CommandError("parquet needs the pyarrow package (pip install pyarrow), or write .npy") from None
    return pa, pq


def model_metadata(model, source: str | os.PathLike) -> dict[str, str]:
    """What an embeddings file records about the model that made it."""
    return {
        "model": str(source),
        "fingerprint": getattr(model, "fingerprint", ""),
        "dim": str(model.embedding_dim),
        "sample_rate": str(model.sample_rate),
    }


def eprint(*parts) -> None:
    print(*parts, file=sys.stderr)
