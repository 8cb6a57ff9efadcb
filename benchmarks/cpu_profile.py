"""Where CPU inference time goes: top operators per precision, FLOPs, and the matmul peak.

HTSAT-tiny audio tower + projection (LAION-CLAP geometry, random weights), one batch of 10 s
clips at 48 kHz through :class:`clapkit.inference.clap.CLAPModel` in each precision. Prints, per
precision, the median wall time over ``--repeats`` (precisions interleaved), the achieved
GFLOP/s (FLOPs counted once with ``torch.utils.flop_counter``) and the ``torch.profiler`` top
operators by self CPU time; then the machine's measured matmul peak (a square ``--n`` matmul,
fp32 and bf16) so the achieved figure can be read against it.

    python benchmarks/cpu_profile.py --batch-size 8 --repeats 3 --json outputs/bench/cpu_profile.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def matmul_peak(n: int, dtype: torch.dtype, repeats: int = 5) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", nargs="+", default=["32", "bf16", "bf16-true"])
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--n", type=int, default=2048, help="matmul side for the peak")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode
    from train_step import build_clapkit

    from clapkit.audio.preprocess import InferenceConfig
    from clapkit.inference.clap import CLAPModel

    torch.manual_seed(0)
    wave = 0.1 * torch.randn(args.batch_size, 480000)
    models = {}
    for precision in args.precision:
        torch.manual_seed(0)
        task = build_clapkit("tiny", 1, 480000)
        models[precision] = CLAPModel(task.model, InferenceConfig(), precision=precision)
    reference = models[args.precision[0]]._embed("audio", wave)
    counter = FlopCounterMode(display=False)
    with counter:
        models[args.precision[0]]._embed("audio", wave)
    flops = counter.get_total_flops()
    times: dict[str, list[float]] = {p: [] for p in models}
    cosine = {}
    for precision, model in models.items():
        out = model._embed("audio", wave)  # warm-up
        cosine[precision] = float(torch.nn.functional.cosine_similarity(out, reference).min())
    for _ in range(args.repeats):
        for precision, model in models.items():
            start = time.perf_counter()
            model._embed("audio", wave)
            times[precision].append(time.perf_counter() - start)
    result: dict = {"batch_size": args.batch_size, "flops_per_batch": flops, "threads": torch.get_num_threads(),
                    "peak_gflops": {"fp32": matmul_peak(args.n, torch.float32), "bf16": matmul_peak(args.n, torch.bfloat16)},
                    "precisions": {}}
    for precision, model in models.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model._embed("audio", wave)
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[: args.top]
        median = statistics.median(times[precision])
        result["precisions"][precision] = {
            "median_s": median, "all_s": times[precision], "clips_per_s": args.batch_size / median,
            "achieved_gflops": flops / median / 1e9, "min_cosine_vs_first": cosine[precision],
            "top_ops": [{"op": e.key, "self_share": e.self_cpu_time_total / total, "calls": e.count} for e in top],
        }
    print(json.dumps(result, indent=1))
    if args.json:
        from clapkit.utils.atomic import write_text

        write_text(args.json, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
