"""``clapkit demo``: train the quick-start CLAP, evaluate it, print a results table.

Runs exactly what ``clapkit fit --config ...`` runs (LightningCLI builds the model, the
datamodule and the trainer from the same YAML), then ``trainer.test`` on the held-out test
splits, and prints zero-shot top-1 on held-out classes and R@1 in both directions beside
their chance levels, plus where the checkpoint and the resolved config were written.

Extra arguments are LightningCLI overrides, e.g. ``--trainer.max_epochs=2``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

from clapkit.commands import CommandError

# (metric key in ContrastiveTask.eval_results, label, target as a multiple of chance)
ROWS = (
    ("zeroshot_top1", "zero-shot top-1 (held-out classes)", 3.0),
    ("t2a_R@1", "text -> audio R@1", 5.0),
    ("a2t_R@1", "audio -> text R@1", 5.0),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clapkit demo",
        description="Train the quick-start CLAP on the synthetic corpus (CPU, offline), evaluate on "
        "held-out data and print a results table. Unknown arguments are passed to LightningCLI.",
    )
    parser.add_argument("--config", default="configs/quickstart/clap.yaml", help="LightningCLI YAML to train")
    parser.add_argument(
        "--output-dir", default=None, help="where logs, checkpoint and config go (default: the config's)"
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when a result misses its target multiple of chance"
    )
    return parser


def _find_metric(results: dict[str, float], stage: str, key: str) -> tuple[float, float] | None:
    """``(value, chance)`` of ``key`` in ``results``, whether or not it carries a set suffix."""
    for name, value in results.items():
        parts = name.split("/")
        if parts[0] == stage and parts[1] == key:
            chance_name = "/".join([stage, f"{key}_chance", *parts[2:]])
            if chance_name in results:
                return value, results[chance_name]
    return None


def main(argv: list[str]) -> int:
    args, overrides = _parser().parse_known_args(argv)
    config = Path(args.config)
    if not config.is_file():
        # Outside a checkout (an installed wheel) the quick-start configs ship in the package.
        from clapkit.resources import packaged_config

        try:
            config = packaged_config(args.config)
        except FileNotFoundError as exc:
            raise CommandError(str(exc)) from None

    from lightning.pytorch.utilities import rank_zero_only
    from rich.console import Console
    from rich.table import Table

    from clapkit.cli import lightning_main

    # Frozen teacher towers sit in eval mode on purpose; Lightning's reminder is noise here.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    cli_args = ["--config", str(config)]
    if args.output_dir:
        cli_args.append(f"--trainer.default_root_dir={args.output_dir}")
    cli = lightning_main([*cli_args, *overrides], run=False)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    if not hasattr(model, "eval_results"):
        raise CommandError(f"{config}: the demo needs a ContrastiveTask model, got {type(model).__name__}")

    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    trainer.test(model, datamodule=datamodule, verbose=False)
    total_seconds = time.perf_counter() - start
    if not rank_zero_only.rank == 0:
        return 0

    results = model.eval_results.get("test", {})
    table = Table(title="clapkit quick start: held-out test results")
    for column in ("metric", "value", "chance", "x chance", "target"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    missed = []
    for key, label, target in ROWS:
        found = _find_metric(results, "test", key)
        if found is None:
            table.add_row(label, "n/a", "", "", f">= {target:g}x")
            missed.append(label)
            continue
        value, chance = found
        ratio = value / chance if chance > 0 else float("inf")
        ok = ratio >= target
        missed += [] if ok else [label]
        table.add_row(label, f"{value:.3f}", f"{chance:.3f}", f"{ratio:.1f}x", f"[{'green' if ok else 'red'}]>= {target:g}x")
    console = Console()
    console.print(table)
    checkpoint = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    config_path = Path(trainer.log_dir or trainer.default_root_dir) / "config.yaml"
    console.print(f"training {fit_seconds:.0f} s, training + evaluation {total_seconds:.0f} s")
    console.print(f"checkpoint: {checkpoint or '(checkpointing disabled)'}", soft_wrap=True)
    console.print(f"resolved config: {config_path if config_path.is_file() else '(not saved)'}", soft_wrap=True)
    if missed:
        console.print(f"[red]below target:[/red] {', '.join(missed)}")
    return 1 if (missed and args.strict) else 0
