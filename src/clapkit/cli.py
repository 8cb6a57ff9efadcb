"""``clapkit`` command line: LightningCLI for training, typed subcommands for inference.

``clapkit fit|validate|test|predict --config x.yaml`` are LightningCLI subcommands (subclass
mode: model and data are chosen by ``class_path``). Every other subcommand lives in its own
module under :mod:`clapkit.commands` and is imported only when called, so ``clapkit --help``
stays fast and one broken optional dependency never takes the trainer down.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

from clapkit.commands import CommandError
from clapkit.deps import DependencyError

TRAINER_COMMANDS = ("fit", "validate", "test", "predict")

# name -> (module under clapkit.commands, one-line help)
INFERENCE_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "train + evaluate the quick-start CLAP and print a results table"),
    "embed": ("embed", "embed audio files or folders to .npy / parquet"),
    "zeroshot": ("zeroshot", "zero-shot tag audio files with a list of labels, write CSV"),
    "retrieve": ("retrieve", "rank an embedded folder against a text query"),
    "convert": ("convert", "convert an official checkpoint to clapkit's native format"),
    "export": ("export", "training checkpoint -> model directory; model -> ONNX or Hugging Face"),
    "make-shards": ("make_shards", "write webdataset shards from a manifest of audio + text"),
    "separate": ("separate", "extract the sound a query describes from mixtures"),
    "query": ("query", "cross-modal search (text, image or audio query) over a folder"),
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
    from clapkit.pretrained import is_native, native_model_tree

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
            from clapkit.pretrained import load_weights_into

            weights = self.config[self.subcommand].get("weights") if self.subcommand else None
            if weights:
                load_weights_into(self.model, weights)

        before_fit = before_validate = before_test = before_predict = _load_weights

        def before_instantiate_classes(self) -> None:
            # A native model directory's own preprocessing beats the data config's audio values.
            from clapkit.model_preprocessing import apply_model_preprocessing

            apply_model_preprocessing(self.config[self.subcommand] if self.subcommand else self.config, given)

    register_classes()
    if args is not None:
        args = _native_model_args(list(args))
    elif any(a == "--model" or a.startswith("--model=") for a in sys.argv[1:]):
        args = _native_model_args(sys.argv[1:])
    given = list(sys.argv[1:] if args is None else args)  # what the user set explicitly
    # Explicit args replace the command line; LightningCLI warns when sys.argv also holds
    # arguments (always true under `clapkit demo ...`), so it sees the program name only.
    from unittest import mock

    with mock.patch.object(sys, "argv", sys.argv[:1] if args is not None else sys.argv):
        return ClapkitCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
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


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``clapkit`` console script and ``python -m clapkit``."""
    _offline_defaults()
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from clapkit.deps import versions

        print(" ".join(f"{name} {version}" for name, version in versions().items()))
        return 0
    command = argv[0]
    if command in INFERENCE_COMMANDS:
        module = importlib.import_module(f"clapkit.commands.{INFERENCE_COMMANDS[command][0]}")
        try:
            return int(module.main(argv[1:]) or 0)
        except (CommandError, DependencyError) as exc:
            print(f"clapkit {command}: error: {exc}", file=sys.stderr)
            return 2
    if command not in TRAINER_COMMANDS and not command.startswith("-"):
        print(f"clapkit: error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    # LightningCLI reads sys.argv itself when given None; passing it both warns.
    lightning_main(None if args is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
