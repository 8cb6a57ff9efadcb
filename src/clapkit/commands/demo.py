"""``clapkit demo [clap|audioclip|clapsep|avsa]``: train a quick start, evaluate, print a table, draw.

Runs exactly what ``clapkit fit --config ...`` runs (LightningCLI builds the model, the
datamodule and the trainer from the same YAML), then ``trainer.test`` on held-out data, and
prints the held-out figures beside their chance levels, the pictures it drew (beside the
checkpoint) and where the checkpoint and the resolved config were written.

    clapkit demo                    # CLAP (what `make demo` runs)
    clapkit demo clapsep            # CLAPSep; also exports a model `clapkit separate` runs
    clapkit demo --config my.yaml   # any ContrastiveTask / SeparationTask / SpatialAlignmentTask config

Extra arguments are LightningCLI overrides, e.g. ``--trainer.max_epochs=2``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from clapkit.commands import CommandError


@dataclass(frozen=True)
class Row:
    """One line of the results table: a test metric, its chance level and its target.

    ``chance`` is a number, or ``None`` to read ``<metric>_chance`` from the task's
    ``eval_results``. ``target`` is a multiple of chance (``ratio``) or an absolute value.
    """

    key: str
    label: str
    target: float
    chance: float | None = None
    ratio: bool = True


CLAP_ROWS = (  # the quick start's targets, absolute
    Row("zeroshot_top1", "zero-shot top-1 (held-out classes)", 0.85, ratio=False),
    Row("t2a_R@1", "text -> audio R@1", 0.35, ratio=False),
    Row("a2t_R@1", "audio -> text R@1", 0.35, ratio=False),
)
AUDIOCLIP_ROWS = (
    Row("zeroshot_top1", "zero-shot top-1 (audio vs class prompts)", 3.0),
    Row("t2a_R@1", "text -> audio R@1", 3.0),
    Row("query_a2i_R@1", "audio -> image querying R@1", 3.0),
)
CLAPSEP_ROWS = (
    # Chance: returning the mixture unchanged improves nothing (0 dB).
    Row("si_sdri", "SI-SDR improvement (dB), 2 sources at 0 dB", 15.0, chance=0.0, ratio=False),
    Row("sdri", "SDR improvement (dB)", 0.0, chance=0.0, ratio=False),
)
AVSA_ROWS = (
    Row("avsa_acc", "spatial alignment: right view of 4 (top-1)", 2.0, chance=0.25),
)


@dataclass(frozen=True)
class Family:
    config: str
    rows: tuple[Row, ...]
    title: str


FAMILIES = {
    "clap": Family("configs/quickstart/clap.yaml", CLAP_ROWS, "CLAP"),
    "audioclip": Family("configs/quickstart/audioclip.yaml", AUDIOCLIP_ROWS, "AudioCLIP"),
    "clapsep": Family("configs/quickstart/clapsep.yaml", CLAPSEP_ROWS, "CLAPSep"),
    "avsa": Family("configs/quickstart/avsa.yaml", AVSA_ROWS, "spatial audio-visual alignment"),
}


# The quick starts' figures depend on how CPU reductions are split between threads (a CLAP
# run gave zero-shot 0.811 with 2 threads and 0.989 with 1): a fixed count makes them the same
# on every machine, a 1-core one just runs slower. Two: the documented figures used two threads.
DEMO_THREADS = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clapkit demo",
        usage=f"clapkit demo [{'|'.join(FAMILIES)}] [options] [LightningCLI overrides]",
        description="Train a quick start on synthetic data (CPU, offline), evaluate on held-out data, "
        "print a results table and draw pictures. Unknown arguments are passed to LightningCLI.",
    )
    parser.add_argument("--config", default=None, help="LightningCLI YAML to train (default: the family's quick start)")
    parser.add_argument(
        "-o", "--output-dir", default=None,
        help="where logs, checkpoint and config go (default: the config's); a training run folder, like "
        "fit's: a rerun adds a new version there instead of replacing the last one"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the pictures")
    parser.add_argument("--pictures", default=None, metavar="DIR",
                        help="write the pictures here instead of beside the checkpoint (make docs-images)")
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when a result misses its target"
    )
    parser.add_argument(
        "--threads", type=int, default=DEMO_THREADS, metavar="N",
        help=f"torch intra-op CPU threads (default {DEMO_THREADS}: the quick starts' documented figures are "
        "computed with this many and change with the count; 0 keeps torch's own choice)",
    )
    return parser


def _find_metric(results: dict[str, float], stage: str, key: str) -> tuple[float, float | None] | None:
    """``(value, chance)`` of ``key`` in ``results``, whether or not it carries a set suffix."""
    for name, value in results.items():
        parts = name.split("/")
        if len(parts) >= 2 and parts[0] == stage and parts[1] == key:
            chance_name = "/".join([stage, f"{key}_chance", *parts[2:]])
            return value, results.get(chance_name)
    return None


# A config given with --config is told apart by its task (the table and title of its family).
FAMILY_OF_TASK = {"ContrastiveTask": "clap", "AudioCLIPTask": "audioclip", "SeparationTask": "clapsep",
                  "SpatialAlignmentTask": "avsa"}


def _family_for(model, family: str | None) -> str | None:
    return family or FAMILY_OF_TASK.get(type(model).__name__)


def _resolve_config(path: str) -> Path:
    config = Path(path)
    if config.is_file():
        return config
    # Outside a checkout (an installed wheel) the quick-start configs ship in the package.
    from clapkit.utils.resources import packaged_config

    try:
        return packaged_config(path)
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from None


def main(argv: list[str]) -> int:
    # The family is the first word only: a positional argparse argument would swallow the
    # value of an override written as two words (`--trainer.enable_progress_bar false`).
    family = "clap"
    if argv and not argv[0].startswith("-"):
        if argv[0] not in FAMILIES:
            raise CommandError(f"unknown demo {argv[0]!r}; choose one of {', '.join(FAMILIES)}")
        family, argv = argv[0], argv[1:]
    args, overrides = _parser().parse_known_args(argv)
    if args.threads < 0:
        raise CommandError(f"--threads must be 0 (torch's default) or a positive count, got {args.threads}")
    family = None if args.config else family
    config = _resolve_config(args.config or FAMILIES[family].config)

    from lightning.pytorch.utilities import rank_zero_only
    from rich.console import Console

    from clapkit.commands.lightning_cli import lightning_main

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    # Frozen teacher towers sit in eval mode on purpose; Lightning's reminder is noise here.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    cli_args = ["--config", str(config)]
    if args.output_dir:
        cli_args.append(f"--trainer.default_root_dir={args.output_dir}")
    cli = lightning_main([*cli_args, *overrides], run=False)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    kind = type(model).__name__
    separation = kind == "SeparationTask"
    if not (hasattr(model, "eval_results") or separation or kind == "SpatialAlignmentTask"):
        raise CommandError(f"{config}: the demo needs a ContrastiveTask, SeparationTask or "
                           f"SpatialAlignmentTask model, got {kind}")
    if separation and not getattr(model, "export_dir", None):
        # The demo ends with a model `clapkit separate` runs: export beside the run's logs.
        model.export_dir = str(Path(trainer.log_dir or trainer.default_root_dir) / "model")

    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    tested = trainer.test(model, datamodule=datamodule, verbose=False)
    total_seconds = time.perf_counter() - start
    if not rank_zero_only.rank == 0:
        return 0

    results: dict[str, float] = {}
    for metrics in tested:
        results.update({k: float(v) for k, v in metrics.items()})
    results.update(getattr(model, "eval_results", {}).get("test", {}))
    console = Console()
    family = _family_for(model, family)
    title, rows = (FAMILIES[family].title, FAMILIES[family].rows) if family else (kind, CLAP_ROWS)
    table, missed = results_table(results, rows, f"clapkit demo ({title}): held-out test results")
    console.print(table)
    console.print(f"training {fit_seconds:.0f} s, training + evaluation {total_seconds:.0f} s")
    if not args.no_plots:
        for path in _pictures(model, datamodule, trainer, kind, console, args.pictures):
            console.print(f"picture: {path}", soft_wrap=True)
    checkpoint = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    config_path = Path(trainer.log_dir or trainer.default_root_dir) / "config.yaml"
    console.print(f"checkpoint: {checkpoint or '(checkpointing disabled)'}", soft_wrap=True)
    console.print(f"resolved config: {config_path if config_path.is_file() else '(not saved)'}", soft_wrap=True)
    if separation and model.export_dir:
        console.print(f"exported model: {model.export_dir}  (clapkit separate --model {model.export_dir} "
                      "--query \"...\" in.wav -o out.wav)", soft_wrap=True)
    if missed:
        console.print(f"[red]below target:[/red] {', '.join(missed)}")
    return 1 if (missed and args.strict) else 0


def results_table(results: dict[str, float], rows: tuple[Row, ...], title: str):
    """A rich table of ``rows`` read from ``results`` (``test/<key>``), and the labels below target."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("metric", "value", "chance", "x chance", "target"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    missed = []
    for row in rows:
        found = _find_metric(results, "test", row.key)
        target_text = f">= {row.target:g}x" if row.ratio else f">= {row.target:g}"
        if found is None:
            table.add_row(row.label, "n/a", "", "", target_text)
            missed.append(row.label)
            continue
        value, chance = found
        chance = row.chance if row.chance is not None else chance
        ratio = value / chance if chance else None
        ok = (ratio is not None and ratio >= row.target) if row.ratio else value >= row.target
        missed += [] if ok else [row.label]
        table.add_row(row.label, f"{value:.3f}", "" if chance is None else f"{chance:.3f}",
                      "" if ratio is None else f"{ratio:.1f}x", f"[{'green' if ok else 'red'}]{target_text}")
    return table, missed


def _pictures(model, datamodule, trainer, kind: str, console, out_dir: str | None = None) -> list[Path]:
    """Draw the family's pictures; a missing matplotlib is one line, not a failed demo."""
    from clapkit.commands import quickstart
    from clapkit.utils.deps import DependencyError

    try:
        if kind == "SeparationTask":
            return quickstart.separation_pictures(model, datamodule, trainer, out_dir)
        if kind == "SpatialAlignmentTask":
            return quickstart.curve_pictures(trainer, ("val/avsa_acc",), out_dir)
        if hasattr(model, "eval_results") and hasattr(datamodule, "class_names"):
            if kind == "ContrastiveTask":
                return quickstart.contrastive_pictures(model, datamodule, trainer, out_dir)
            return quickstart.curve_pictures(trainer, ("val/zeroshot_top1", "val/t2a_R@1"), out_dir)
    except DependencyError as exc:
        console.print(f"no pictures: {exc}")
    return []
