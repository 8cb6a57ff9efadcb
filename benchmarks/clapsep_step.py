"""CLAPSep training steps per second: the quick-start config through LightningCLI, N steps.

The model is ``configs/quickstart/clapsep.yaml``'s (LoRA-tuned HTSAT encoder, frozen text query
tower, patch-expanding decoder + MaskNet) on its synthetic mixtures. The reference repository's
model cannot be installed offline, so this measures clapkit only; the first step (data and
model set-up, cuDNN autotuning) is timed separately from the rest.

    python benchmarks/clapsep_step.py --accelerator gpu --precision bf16-mixed --max-steps 50 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quickstart/clapsep.yaml")
    parser.add_argument("--max-steps", type=int, default=50)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--root", default=None, help="trainer root (default: a temporary folder)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import lightning.pytorch as pl

    from clapkit.cli import lightning_main

    class StepTimer(pl.Callback):
        def __init__(self):
            self.times: list[float] = []

        def on_train_batch_end(self, trainer, *rest):
            self.times.append(time.perf_counter())

    root = args.root or tempfile.mkdtemp(prefix="clapsep_step_")
    cli = lightning_main(["--config", args.config, "--trainer.default_root_dir", root,
                          "--trainer.enable_progress_bar", "false", "--trainer.max_steps", str(args.max_steps),
                          "--trainer.max_time", "null", "--trainer.accelerator", args.accelerator,
                          "--trainer.precision", args.precision, "--trainer.limit_val_batches", "0",
                          "--trainer.logger", "false", "--trainer.enable_checkpointing", "false"], run=False)
    timer = StepTimer()
    cli.trainer.callbacks.append(timer)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit = time.perf_counter() - start
    later = timer.times[-1] - timer.times[0] if len(timer.times) > 1 else None
    result = {"config": args.config, "accelerator": args.accelerator, "precision": args.precision,
              "steps": cli.trainer.global_step, "fit_seconds": fit,
              "first_step_seconds": timer.times[0] - start if timer.times else None,
              "steps_per_s": (len(timer.times) - 1) / later if later else None}
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return result


if __name__ == "__main__":
    main()
