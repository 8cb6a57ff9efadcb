"""CLAPSep quick start figure: train `configs/quickstart/clapsep.yaml` on CPU, then test.

Prints the training wall time, steps, and the held-out test metrics (mean SI-SDRi, SDRi,
SNRi in dB over synthetic 2-source mixtures with text queries). Training is a fixed number
of steps (`trainer.max_steps`, no time cap) on 2 torch threads (``--threads``, as `clapkit demo
clapsep`), so the figures are the same on every machine; the step count is sized to about 9
minutes on an idle 2-core CPU (docs/BENCHMARKS.md), and a loaded machine just takes longer.

A control shows the model follows the query rather than a fixed preference: the same test
mixtures with positive and negative captions swapped (``swapped/si_sdri``: measured against
the target, it should be strongly negative; ``swapped/si_sdri_interferer``: measured against
the interferer, it should be about as high as the normal figure).

    .venv/bin/python benchmarks/clapsep_quickstart.py [--root outputs/clapsep_quickstart] [LightningCLI overrides]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quickstart/clapsep.yaml")
    parser.add_argument("--root", default="outputs/clapsep_quickstart")
    parser.add_argument("--overlay", action="append", default=[], help="extra YAML applied over --config")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the figures depend on it)")
    args, overrides = parser.parse_known_args()  # the rest: LightningCLI overrides / --config overlays

    import torch

    torch.set_num_threads(args.threads)

    from clapkit.cli import lightning_main

    start = time.perf_counter()
    cli = lightning_main(
        ["--config", args.config, *[f"--config={path}" for path in args.overlay], "--trainer.default_root_dir", args.root, "--trainer.enable_progress_bar", "false",
         *overrides],
        run=False,
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_seconds = time.perf_counter() - start
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    total = time.perf_counter() - start
    results.update(swapped_queries(cli.model, cli.datamodule))
    print(json.dumps({
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {torch.get_num_threads()} torch threads",
        "load_average_1min": round(os.getloadavg()[0], 2),
        "fit_seconds": round(fit_seconds, 1),
        "total_seconds": round(total, 1),
        "steps": cli.trainer.global_step,
        **{k: round(float(v), 3) for k, v in results.items()},
    }, indent=1))


def swapped_queries(model, datamodule) -> dict[str, float]:
    """Mean SI-SDRi with the positive and negative captions of every test mixture swapped."""
    import torch

    from clapkit.lightning_modules.sep_metrics import improvement, si_sdr

    model.eval()
    to_target, to_interferer = [], []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            swapped = dict(batch, positive_text=batch["negative_text"], negative_text=batch["positive_text"])
            estimate = model(batch["mixture"], model.condition(swapped, model.eval_query)).waveform
            interferer = batch["mixture"] - batch["target"]
            to_target.append(improvement(si_sdr, estimate, batch["mixture"], batch["target"]))
            to_interferer.append(improvement(si_sdr, estimate, batch["mixture"], interferer))
    return {"swapped/si_sdri": torch.cat(to_target).mean().item(),
            "swapped/si_sdri_interferer": torch.cat(to_interferer).mean().item()}


if __name__ == "__main__":
    main()
