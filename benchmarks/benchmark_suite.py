"""``clapkit benchmark`` on a CPU: the whole suite on the published-layout replicas, and the
zero-shot part per 1,000 clips, with a converted LAION-CLAP HTSAT-tiny model.

Setup (in ``--root``, reused when present): a LAION-CLAP HTSAT-tiny + RoBERTa model with random
weights in the official layout, converted with ``clapkit convert laion-clap`` (see
``benchmarks/embed.py``; nothing is downloaded); the seven dataset replicas of
``tests/helpers/layouts.py``; an ESC-50-layout folder of ``--clips`` five-second 44.1 kHz clips.

Measurements (medians over ``--repeats``):

- ``suite_cold``: ``clapkit benchmark --model M REPLICAS -o OUT`` in a fresh process with an
  empty cache (imports, model load, every task), wall time and peak resident memory
  (``VmHWM`` of that process; decoding inline, ``--workers 1``);
- ``suite_warm``: the same command again on the filled cache (0 clips embedded);
- ``zeroshot``: ``run_benchmark(model, ..., tasks=["zeroshot-esc50"])`` on the ESC-50-layout
  folder with an empty cache, model loaded beforehand; reported per 1,000 clips.

example:
  python benchmarks/benchmark_suite.py --root /tmp/bench_suite --clips 100 --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

# Peak memory is VmHWM of the process's own address space: ru_maxrss survives execve on Linux,
# so a child started by a big parent would report the parent's peak.
SUITE = """
import json, sys, time
start = time.perf_counter()
from clapkit.cli import main
rc = main(sys.argv[1:])
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - start, "max_rss_mb": int(hwm.split()[1]) / 1024}))
"""


def setup(root: Path, clips: int, layers: int) -> tuple[Path, Path, Path]:
    """``(model dir, replicas root, ESC-50-layout folder)``, created once."""
    import numpy as np
    import soundfile as sf
    from embed import converted_htsat_tiny

    from helpers import layouts

    _, _, model_dir = converted_htsat_tiny(root, layers)
    replicas = root / "replicas"
    if not replicas.is_dir():
        for folder, build in (("ESC-50-master", layouts.esc50), ("UrbanSound8K", layouts.urbansound8k),
                              ("vggsound", layouts.vggsound), ("FSD50K", layouts.fsd50k),
                              ("audioset", layouts.audioset), ("AudioCaps", layouts.audiocaps),
                              ("clotho", layouts.clotho)):
            build(replicas / folder)
    esc = root / f"esc50_{clips}"
    if not (esc / "meta" / "esc50.csv").is_file():
        rng = np.random.default_rng(0)
        rows = []
        for i in range(clips):
            target, fold = i % 50, 1 + (i // 50) % 5
            name = f"{fold}-{100000 + i}-A-{target}.wav"
            t = np.arange(5 * 44100) / 44100
            wave = 0.3 * np.sin(2 * np.pi * (150 + 17 * i) * t) + 0.05 * rng.standard_normal(t.size)
            (esc / "audio").mkdir(parents=True, exist_ok=True)
            sf.write(esc / "audio" / name, wave.astype(np.float32), 44100, subtype="PCM_16")
            rows.append([name, fold, target, f"class_{target:02d}", "False", 100000 + i, "A"])
        layouts.write_table(esc / "meta" / "esc50.csv", ["filename", "fold", "target", "category", "esc10",
                                                           "src_file", "take"], rows)
    return model_dir, replicas, esc


def run_suite(model_dir: Path, replicas: Path, out: Path, cache: Path) -> dict:
    args = ["benchmark", "--model", str(model_dir), str(replicas), "-o", str(out), "--cache", str(cache),
            "--device", "cpu", "--workers", "1", "-q", "--overwrite"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", SUITE, *args], capture_output=True, text=True, env=env, check=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["rc"] == 0, result.stderr[-2000:]
    return measured


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "clapkit_bench_suite")
    parser.add_argument("--clips", type=int, default=100, help="clips of the zero-shot measurement")
    parser.add_argument("--layers", type=int, default=12, help="RoBERTa layers of the text tower")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--parts", nargs="+", default=["suite", "zeroshot"], choices=["suite", "zeroshot"])
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    model_dir, replicas, esc = setup(args.root, args.clips, args.layers)
    cold, warm, zeroshot = [], [], []
    for _ in range(args.repeats if "suite" in args.parts else 0):
        cache = args.root / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        cold.append(run_suite(model_dir, replicas, args.root / "report", cache))
        warm.append(run_suite(model_dir, replicas, args.root / "report", cache))

    import clapkit
    from clapkit.benchmark import run_benchmark

    model = clapkit.load(model_dir, device="cpu")
    for _ in range(args.repeats if "zeroshot" in args.parts else 0):
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            report = run_benchmark(model, esc, tasks=["zeroshot-esc50"], cache_dir=cache)
            zeroshot.append(time.perf_counter() - start)
            assert report.results[0].clips == args.clips and report.embeddings.audio_embedded == args.clips
    def median(values):
        values = list(values)
        return statistics.median(values) if values else None

    out = {
        "suite_cold_s": median(m["seconds"] for m in cold),
        "suite_cold_peak_rss_mb": median(m["max_rss_mb"] for m in cold),
        "suite_warm_s": median(m["seconds"] for m in warm),
        "suite_warm_peak_rss_mb": median(m["max_rss_mb"] for m in warm),
        "zeroshot_clips": args.clips,
        "zeroshot_s": median(zeroshot),
        "zeroshot_s_per_1000": median(zeroshot) / args.clips * 1000 if zeroshot else None,
        "precision": model.precision,
        "runs": {"cold": cold, "warm": warm, "zeroshot": zeroshot},
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
