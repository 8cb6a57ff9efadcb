"""Pieces shared by the inference commands: model options, file discovery, progress bars,
audio loading with one-line errors, and atomic writers for embeddings and tables."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clapkit.commands import CommandError
from clapkit.inference.embedding import ROW_GROUP_ROWS, embedding_columns, embedding_table, read_table
from clapkit.utils.atomic import atomic_path

if TYPE_CHECKING:
    import torch

EMBEDDING_SUFFIXES = (".npy", ".parquet")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the description's line breaks."""


class Parser(argparse.ArgumentParser):
    """``argparse`` whose usage errors are one line (``clapkit CMD: error: ...``, exit 2), not a
    usage dump; ``--help`` still prints the full help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def make_parser(command: str, doc: str | None) -> argparse.ArgumentParser:
    """An ``argparse`` parser for ``clapkit <command>`` whose description is the module docstring."""
    return Parser(prog=f"clapkit {command}", description=doc, formatter_class=HelpFormatter)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--precision``, ``--batch-size``, ``--text-model``, ``--trust-checkpoint``."""
    group = parser.add_argument_group("model")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    add_precision_option(group)
    group.add_argument("--batch-size", type=int, default=None,
                       help="clips or texts per forward pass (default: 8 on a CPU, 16 on a GPU)")
    group.add_argument("--text-model", default=None,
                       help="local directory of the text tower's tokenizer + config: for official checkpoints, "
                            "and for a model directory whose text tower names a path outside it")
    group.add_argument("--trust-checkpoint", action="store_true",
                       help="official checkpoints only: allow unpickling code (only for files you trust)")
    group.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                       help="decoders ahead of the model (processes for embed, threads elsewhere)")
    add_decode_cap_option(group)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def add_decode_cap_option(group) -> None:
    """``--max-decode-seconds``: the cap on audio decoded whole (see :mod:`clapkit.audio.stream`)."""
    from clapkit.audio.stream import DEFAULT_MAX_SECONDS

    group.add_argument("--max-decode-seconds", type=_positive_seconds, default=DEFAULT_MAX_SECONDS, metavar="S",
                       help="refuse a file longer than this where it is decoded whole (fusion models, "
                            "separation); a model reading one window decodes only that window")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_precision_option(group) -> None:
    """``--precision``: the same flag, choices and help on every model command."""
    group.add_argument("--precision", default="auto", choices=["auto", "32", "bf16", "16", "bf16-true"],
                       help="bf16/16: autocast; bf16-true: audio trunk stored in bf16; auto: bf16-true on CPUs "
                            "with bf16 matrix units (AMX, AVX512-BF16), else 32 (front ends stay fp32)")


def add_model_and_inputs(parser: argparse.ArgumentParser, inputs_help: str = "audio files and/or folders") -> None:
    """The one command surface for model commands: ``--model MODEL`` and positional INPUTS."""
    parser.add_argument("--model", default=None,
                        help="native model directory, or an official LAION-CLAP / MS-CLAP / AudioCLIP checkpoint")
    parser.add_argument("inputs", nargs="*", metavar="INPUTS", help=inputs_help)


def add_overwrite_option(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``: the same flag on every command that writes (an existing output is refused without it)."""
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def refuse_existing(path: str | os.PathLike, overwrite: bool) -> None:
    """Refuse to replace an existing output file unless ``--overwrite`` was given."""
    path = Path(path)
    if not overwrite and (path.exists() or path.is_symlink()):
        raise CommandError(f"{path}: already exists (pass --overwrite to replace it)")


def add_model_alias(parser: argparse.ArgumentParser, what: str) -> None:
    """``MODEL`` (positional, the form older command lines used) or ``--model``: the same model,
    given once (read back with :func:`model_argument`)."""
    parser.add_argument("model_arg", nargs="?", default=None, metavar="MODEL", help=f"{what}; or --model")
    parser.add_argument("--model", default=None, help="the same as MODEL")


def model_argument(option: str | None, positional: str | None, usage: str) -> str:
    """The model from ``--model`` or from the positional alias a command kept; one of them, once."""
    if option is not None and positional is not None:
        raise CommandError(f"give the model once: --model {option} or {positional}, not both")
    if option is None and positional is None:
        raise CommandError(f"--model is required: {usage}")
    return option if option is not None else positional


def refuse_training_checkpoint(path: str | os.PathLike, command: str | None = None) -> None:
    """A Lightning ``.ckpt`` of ``clapkit fit`` is not a model yet: say how to make it one
    (``command``: the subcommand to name in the advice, e.g. ``export onnx``)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".ckpt":
        then = f", then run clapkit {command} --model MODEL_DIR" if command else " and pass --model MODEL_DIR"
        raise CommandError(f"{path}: a training checkpoint, not a model; export the checkpoint first "
                           f"(clapkit export {path} -o MODEL_DIR){then}")


def cli_message(text: str) -> str:
    """A library error in the command line's spelling: ``text_model=<...>`` becomes ``--text-model DIR``
    (the keyword stays in brackets for those who call :func:`clapkit.load`)."""
    return re.sub(r"pass text_model=<([^>]*)>", r"pass --text-model DIR, a \1 (in Python: text_model)", text)


def deprecated_alias(old: str, new: str) -> None:
    """One line on stderr for an option spelling that still works but is on its way out."""
    eprint(f"warning: {old} is deprecated, use {new}")


def load_model(path: str | os.PathLike, args: argparse.Namespace, towers: Sequence[str] | None = None):
    """``clapkit.load`` with the command-line options; user errors become :class:`CommandError`.

    ``towers``: build only these towers of a native contrastive model now (``("audio",)`` for
    audio-only commands); see :func:`clapkit.load`."""
    from clapkit.inference.load import PretrainedError, load

    if args.batch_size is not None and args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1, got {args.batch_size}")
    check_device(args.device)
    check_model_path(path)
    try:
        model = load(path, text_model=args.text_model, device=args.device, precision=args.precision,
                     batch_size=args.batch_size, trust_pickle=args.trust_checkpoint, towers=towers)
    except (PretrainedError, FileNotFoundError) as exc:
        raise CommandError(cli_message(str(exc))) from None
    except (RuntimeError, ValueError) as exc:
        if "CUDA" in str(exc) or "device" in str(exc).lower():
            raise CommandError(f"--device {args.device}: {str(exc).splitlines()[0]}") from None
        raise
    except (IndexError, KeyError, TypeError, AttributeError) as exc:
        # A file torch.load reads but that holds no model layout clapkit knows.
        raise CommandError(f"{path}: not a model clapkit can load ({type(exc).__name__}: {exc})") from None
    if not hasattr(model, "embed_prepared"):
        raise CommandError(f"{path}: a separation model; use it with clapkit separate --model {path}")
    if hasattr(args, "max_decode_seconds"):
        model.max_seconds = args.max_decode_seconds
    return model


def check_device(device: str) -> None:
    """Refuse ``--device cuda`` without a GPU (and a malformed device) in one line, before any work."""
    import torch

    try:
        resolved = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                ("cpu" if device == "auto" else device))
    except (RuntimeError, ValueError) as exc:
        raise CommandError(f"--device {device}: {str(exc).splitlines()[0]}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise CommandError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif resolved.type not in ("cpu", "mps", "xpu"):
        raise CommandError(f"--device {device}: unsupported device type {resolved.type!r}")


def check_model_path(path: str | os.PathLike) -> None:
    """Refuse a model argument that is plainly not a model (missing, or an audio file)."""
    from clapkit.audio.io import AUDIO_EXTENSIONS

    path = Path(path)
    if not path.exists():
        raise CommandError(f"{path}: no such model directory or checkpoint file")
    refuse_training_checkpoint(path)
    if path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS:
        raise CommandError(f"{path}: an audio file, not a model (pass the model directory or checkpoint first)")


def discover_audio(inputs: Sequence[str]) -> list[Path]:
    """Files and folders -> audio files (folders recursively, sorted); errors name the input."""
    from clapkit.audio.io import audio_files  # torch-free: embed decodes while torch loads

    try:
        files = audio_files(inputs)
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from None
    if not files:
        raise CommandError(f"no audio files found in {', '.join(map(str, inputs))}")
    return files


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


# --------------------------------------------------------------------------- writers


def check_output(path: str | os.PathLike, suffixes: Sequence[str], overwrite: bool | None = None) -> Path:
    """Validate an output path's extension and that its folder can be created; with ``overwrite``
    given (the command's ``--overwrite``), an existing file is refused unless it is True."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise CommandError(f"{path}: output must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise CommandError(f"{path}: is a directory, expected a file name")
    if overwrite is not None:
        refuse_existing(path, overwrite)
    check_writable_folder(path.parent)
    return path


def check_writable_folder(folder: str | os.PathLike) -> None:
    """Refuse an output folder that cannot be created or written (checked before any work)."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CommandError(f"{existing}: is a file, so {folder} cannot be a folder for the output")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"{existing}: not writable (permission denied)")




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
        _, pq = _pyarrow()
        table = embedding_table(files, array, {f"clapkit.{k}": str(v) for k, v in metadata.items()})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)
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
            _pyarrow()  # pyarrow missing: say so in one line
            table = read_table(path)
            if "path" not in table.column_names or "embedding" not in table.column_names:
                raise CommandError(f"{path}: expected columns 'path' and 'embedding' (written by clapkit embed)")
            paths, array = embedding_columns(table)
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
