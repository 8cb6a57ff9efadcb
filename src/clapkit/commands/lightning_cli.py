"""clapkit's LightningCLI: what ``clapkit fit|validate|test|predict`` and ``clapkit demo`` run.

:func:`lightning_main` registers clapkit's tasks, datamodules and encoders (so short class names
resolve), rewrites ``--model DIR`` (a native model directory) into its config plus ``--weights``,
adds the ``--weights`` option, and turns jsonargparse's nested reports into one line.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import warnings

from clapkit.commands import CommandError

TRAINER_COMMANDS = ("fit", "validate", "test", "predict")


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


def native_model_args(argv: list[str]) -> list[str]:
    """Rewrite ``--model DIR`` (a native clapkit model directory) into the model's own config
    tree plus ``--weights DIR``, so ``clapkit validate --config eval.yaml --model DIR`` evaluates
    a saved or converted model without the user copying its config by hand."""
    from clapkit.hub.directory import is_native
    from clapkit.hub.native import native_model_tree

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
            from clapkit.hub.native import load_weights_into

            weights = self.config[self.subcommand].get("weights") if self.subcommand else None
            if weights:
                load_weights_into(self.model, weights)
                from clapkit.hub.directory import read_inference

                # what the directory knows beyond its data (the text tower's token limit) outlives a fine-tune
                known = read_inference(weights)
                if known is not None and hasattr(self.model, "inference"):
                    self.model.inference = known
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
        args = native_model_args(list(args))
    elif any(a == "--model" or a.startswith("--model=") for a in sys.argv[1:]):
        args = native_model_args(sys.argv[1:])
    given = list(sys.argv[1:] if args is None else args)  # what the user set explicitly
    # Abbreviated options are refused, not guessed: `--trainer.max_step 3` would otherwise
    # silently become max_steps. Parse errors raise (one line in main) instead of a usage dump.
    strict = {"exit_on_error": False, "allow_abbrev": False}
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
