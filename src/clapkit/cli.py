"""``clapkit`` command line: LightningCLI for training, typed subcommands for inference.

``clapkit fit|validate|test|predict --config x.yaml`` are LightningCLI subcommands (subclass
mode: model and data are chosen by ``class_path``), built by
:mod:`clapkit.commands.lightning_cli`. Every other subcommand lives in its own
module under :mod:`clapkit.commands` and is imported only when called, so ``clapkit --help``
stays fast and one broken optional dependency never takes the trainer down.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings

from clapkit.commands import CommandError
from clapkit.commands.lightning_cli import TRAINER_COMMANDS, lightning_main
from clapkit.utils.deps import DependencyError


def _user_errors() -> tuple[type[BaseException], ...]:
    from clapkit.audio import AudioLoadError
    from clapkit.utils.finite import NonFiniteError

    # OSError: an output in an unwritable place, an existing file where a folder is needed...
    return (CommandError, DependencyError, AudioLoadError, NonFiniteError, OSError)


USER_ERRORS = _user_errors()

# name -> (module under clapkit.commands, one-line help)
INFERENCE_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "train + evaluate a quick start (clap|audioclip|clapsep|avsa): results table + pictures"),
    "embed": ("embed", "embed audio files or folders to .npy / parquet"),
    "zeroshot": ("zeroshot", "zero-shot tag audio files with a list of labels, write CSV"),
    "retrieve": ("retrieve", "rank an embedded folder against a text query"),
    "index": ("index", "build an on-disk faiss index of embeddings for retrieve --index"),
    "convert": ("convert", "convert an official checkpoint to clapkit's native format"),
    "export": ("export", "training checkpoint -> model directory; model -> ONNX or Hugging Face"),
    "make-shards": ("make_shards", "write webdataset shards from a manifest of audio + text"),
    "separate": ("separate", "extract the sound a query describes from mixtures"),
    "query": ("query", "cross-modal search (text, image or audio query) over a folder"),
    "benchmark": ("benchmark", "run the published protocols on a model, report beside the papers' figures"),
}


def _offline_defaults() -> None:
    # Nothing may download at run time; make the hub libraries fail fast instead of hanging.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _usage() -> str:
    lines = ["usage: clapkit <command> [options]", "", "training (LightningCLI):"]
    lines += [f"  {name:<12} --config x.yaml" for name in TRAINER_COMMANDS]
    lines += ["", "inference and tools:"]
    lines += [f"  {name:<12} {text}" for name, (_, text) in INFERENCE_COMMANDS.items()]
    lines += ["", "`clapkit <command> --help` documents each command; `clapkit --version` the versions."]
    return "\n".join(lines)


@contextlib.contextmanager
def one_line_warnings(command: str):
    """clapkit's own warnings (an unknown-token query, ...) as ``clapkit CMD: warning: ...``, one
    line each, like its errors; other libraries' warnings keep Python's format."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.split(".")[0] == "clapkit":
            print(f"clapkit {command}: warning: {message}", file=sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``clapkit`` console script and ``python -m clapkit``."""
    _offline_defaults()
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from clapkit.utils.deps import versions

        print(" ".join(f"{name} {version}" for name, version in versions().items()))
        return 0
    command = argv[0]
    if command in INFERENCE_COMMANDS:
        module = importlib.import_module(f"clapkit.commands.{INFERENCE_COMMANDS[command][0]}")
        try:
            with one_line_warnings(command):
                return int(module.main(argv[1:]) or 0)
        except USER_ERRORS as exc:
            return _one_line(command, exc)
    if command not in TRAINER_COMMANDS and not command.startswith("-"):
        print(f"clapkit: error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        _check_trainer_args(argv[1:] if command in TRAINER_COMMANDS else argv)
        # LightningCLI reads sys.argv itself when given None; passing it both warns.
        lightning_main(None if args is None else argv)
    except _trainer_errors() as exc:
        import argparse
        import pickle

        if isinstance(exc, pickle.UnpicklingError):
            exc = CommandError(f"{_option_value(argv, '--ckpt_path') or 'checkpoint'}: refusing to unpickle code "
                               "from the checkpoint (it is not plain weights); pass --weights_only false only "
                               "for a file you trust")
        elif isinstance(exc, argparse.ArgumentError) and _KEY_REPORT in str(exc):
            from clapkit.commands.trainer_errors import config_error_line

            exc = CommandError(config_error_line(str(exc), argv))
        return _one_line(command, exc)
    return 0


#: How jsonargparse starts a nested report on a config value (reduced to one line).
_KEY_REPORT = 'Parser key "'


def _option_value(argv: list[str], name: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _one_line(command: str, exc: BaseException) -> int:
    """Print a user error as ``clapkit CMD: error: <file>: <problem>`` (one line); exit code 2."""
    if isinstance(exc, OSError) and exc.filename is not None and not isinstance(exc, DependencyError):
        text = f"{exc.filename}: {exc.strerror or type(exc).__name__}"
    else:
        text = str(exc).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    print(f"clapkit {command}: error: {' '.join(lines[:1] + lines[1:3]) if lines else type(exc).__name__}",
          file=sys.stderr)
    return 2


def _trainer_errors() -> tuple[type[BaseException], ...]:
    import argparse
    import pickle

    from clapkit.inference.load import PretrainedError

    errors: tuple[type[BaseException], ...] = (*USER_ERRORS, PretrainedError, pickle.UnpicklingError,
                                                argparse.ArgumentError)
    try:
        from clapkit.datamodules.clips import LayoutError

        errors += (LayoutError,)
    except ImportError:  # pragma: no cover - the module ships with clapkit
        pass
    return errors


def _check_trainer_args(argv: list[str]) -> None:
    """Refuse a missing ``--ckpt_path`` / ``--weights`` / ``--config`` file before LightningCLI
    builds the model (which takes seconds and then fails with a traceback)."""
    from pathlib import Path

    keywords = {"--ckpt_path": ("last", "best", "hpc", "registry"), "--weights": (), "--config": (), "-c": ()}
    for index, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name not in keywords:
            continue
        if not value:
            value = argv[index + 1] if index + 1 < len(argv) else ""
        if not value or value in keywords[name] or value in ("null", "None") or value.lstrip().startswith(("{", "[")):
            continue
        if name in ("--config", "-c") and "\n" in value:
            continue
        path = Path(value)
        if name == "--weights":
            if not path.exists():
                raise CommandError(f"{path}: --weights: no such model directory or .safetensors file")
        elif not path.is_file():
            what = "checkpoint" if name == "--ckpt_path" else "config"
            raise CommandError(f"{path}: {name}: no such {what} file")


if __name__ == "__main__":
    sys.exit(main())
