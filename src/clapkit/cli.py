"""``clapkit`` command line: LightningCLI for training, typed subcommands for inference.

``clapkit fit|validate|test|predict --config x.yaml`` are LightningCLI subcommands (subclass
mode: model and data are chosen by ``class_path``). Every other subcommand lives in its own
module under :mod:`clapkit.commands` and is imported only when called, so ``clapkit --help``
stays fast and one broken optional dependency never takes the trainer down.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import warnings

from clapkit.commands import CommandError
from clapkit.utils.deps import DependencyError

TRAINER_COMMANDS = ("fit", "validate", "test", "predict")

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


#: Modules whose LightningModules / LightningDataModules (and the encoders they use) the CLI
#: registers before parsing, so ``--model.help ContrastiveTask`` and short ``class_path`` names
#: (``class_path: ContrastiveTask``) resolve: jsonargparse finds short names only among classes
#: already imported.
REGISTERED_MODULES: tuple[str, ...] = (
    "clapkit.lightning_modules.contrastive",
    "clapkit.lightning_modules.audioclip",
    "clapkit.lightning_modules.classification",
    "clapkit.lightning_modules.separation",
    "clapkit.lightning_modules.spatial",
    "clapkit.datamodules.synthetic",
    "clapkit.datamodules.webdataset",
    "clapkit.datamodules.audio_image_text",
    "clapkit.datamodules.clips",
    "clapkit.datamodules.evalsets",
    "clapkit.datamodules.captionsets",
    "clapkit.datamodules.captiontable",
    "clapkit.datamodules.audioset",
    "clapkit.datamodules.mixtures",
    "clapkit.datamodules.foa",
    "clapkit.encoders.tower",
    "clapkit.encoders.projection",
    "clapkit.encoders.htsat",
    "clapkit.encoders.pann",
    "clapkit.encoders.hf_text",
    "clapkit.encoders.separation",
)


def register_classes() -> list[str]:
    """Import :data:`REGISTERED_MODULES`; returns those that could not be imported (an optional
    dependency missing), which then only lose their short names."""
    missing = []
    for name in REGISTERED_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _offline_defaults() -> None:
    # Nothing may download at run time; make the hub libraries fail fast instead of hanging.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _native_model_args(argv: list[str]) -> list[str]:
    """Rewrite ``--model DIR`` (a native clapkit model directory) into the model's own config
    tree plus ``--weights DIR``, so ``clapkit validate --config eval.yaml --model DIR`` evaluates
    a saved or converted model without the user copying its config by hand."""
    from clapkit.inference.load import is_native, native_model_tree

    out: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        value = None
        if arg == "--model" and index + 1 < len(argv):
            value, step = argv[index + 1], 2
        elif arg.startswith("--model="):
            value, step = arg.split("=", 1)[1], 1
        if value is not None and is_native(value):
            out += ["--model", json.dumps(native_model_tree(value)), "--weights", value]
            index += step
            continue
        if value is not None and os.path.exists(value):
            raise CommandError(f"{value}: --model: not a clapkit model directory (no config.yaml); convert it "
                               "once with `clapkit convert auto|laion-clap|hf-clap|msclap ... -o DIR` and pass DIR")
        out.append(arg)
        index += 1
    return out


def lightning_main(args: list[str] | None = None, run: bool = True):
    """Run LightningCLI (or build it without running when ``run`` is False, for tests)."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    from clapkit.callbacks.last_checkpoint import LastCheckpoint

    class ClapkitCLI(LightningCLI):
        """LightningCLI plus ``--weights``: a native model directory (or ``.safetensors`` file)
        whose weights are loaded into the configured model before the subcommand runs."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument(
                "--weights", type=str | None, default=None,
                help="native clapkit model directory or .safetensors file to load into the model",
            )

        def _load_weights(self) -> None:
            from clapkit.inference.load import load_weights_into

            weights = self.config[self.subcommand].get("weights") if self.subcommand else None
            if weights:  # a model directory holds the task's model (a task's `model` attribute)
                load_weights_into(getattr(self.model, "model", self.model), weights)
            _check_task_matches_data(self.model, self.datamodule, weights)

        def before_fit(self) -> None:
            self._load_weights()
            from clapkit.callbacks.resume import ExactResume

            # Exact resume after a kill is the default: RNGs seeded per step, data position kept.
            if not any(isinstance(c, ExactResume) for c in self.trainer.callbacks):
                self.trainer.callbacks.append(ExactResume())

        before_validate = before_test = before_predict = _load_weights

        def before_instantiate_classes(self) -> None:
            # A native model directory's own preprocessing beats the data config's audio values.
            from clapkit.commands.trainer_errors import wandb_offline_fallback
            from clapkit.datamodules.model_preprocessing import apply_model_preprocessing

            config = self.config[self.subcommand] if self.subcommand else self.config
            apply_model_preprocessing(config, given)
            note = wandb_offline_fallback(config.get("trainer"))
            if note and os.environ.get("RANK", "0") == "0":
                print(note, file=sys.stderr)

        def instantiate_classes(self) -> None:
            from clapkit.commands.trainer_errors import config_error_line, is_config_error

            try:
                super().instantiate_classes()
            except (ValueError, TypeError) as exc:
                # jsonargparse wraps a constructor's error in its whole union report
                # (~100 lines); the user needs the file, the key and the innermost cause.
                if not is_config_error(exc):
                    raise
                raise CommandError(config_error_line(str(exc), given)) from None

    register_classes()
    if args is not None:
        args = _native_model_args(list(args))
    elif any(a == "--model" or a.startswith("--model=") for a in sys.argv[1:]):
        args = _native_model_args(sys.argv[1:])
    given = list(sys.argv[1:] if args is None else args)  # what the user set explicitly
    # Abbreviated options are refused, not guessed: `--trainer.max_step 3` would otherwise
    # silently become max_steps. Parse errors raise (one line in main) instead of a usage dump.
    strict = {"exit_on_error": False, "allow_abbrev": False}
    import warnings

    with warnings.catch_warnings():
        # `clapkit demo` and tests pass explicit args while sys.argv holds their own command
        # line; LightningCLI warns about that pairing, which is intended here.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return ClapkitCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={**strict, **{name: dict(strict) for name in TRAINER_COMMANDS}},
            trainer_defaults={"callbacks": [LastCheckpoint()]},  # every fit ends with last.ckpt
            args=args,
            run=run,
            auto_configure_optimizers=False,
        )


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


def _check_task_matches_data(model, datamodule, source: str | None) -> None:
    """A separation model evaluated on clip data (or a CLAP on mixtures) fails deep inside the
    loop; say so up front, naming the model."""
    from clapkit.encoders.separation.network import SeparationNetwork

    try:
        from clapkit.datamodules.mixtures import MixtureDataModule
    except ImportError:  # pragma: no cover
        return
    if datamodule is None:
        return
    separation = isinstance(getattr(model, "model", None), SeparationNetwork)
    mixtures = isinstance(datamodule, MixtureDataModule)
    if separation != mixtures:
        name = source or type(model).__name__
        if separation:
            raise CommandError(f"{name}: a separation model (SeparationTask) cannot run on "
                               f"{type(datamodule).__name__} data; use a config whose data is a MixtureDataModule")
        raise CommandError(f"{name}: a {type(model).__name__} cannot run on mixtures ({type(datamodule).__name__}); "
                           "a separation model (SeparationTask) is needed")


if __name__ == "__main__":
    sys.exit(main())
