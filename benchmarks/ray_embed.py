"""``clapkit embed`` with the plain engine against ``--engine ray`` (a local Ray instance), same files.

Setup (in ``--root``, reused when present): a small CLAP with random weights (the test suite's
tiny Cnn6 + BERT geometry, reading whole ten-second windows at 16 kHz) in clapkit's native
format, and ``--files`` ten-second mono 32 kHz WAV files (tones + noise; each is resampled to the
model's 16 kHz, as a real corpus would be).

Each repeat runs both commands in fresh processes, in turn (interleaved, the order alternating),
on the same files; the outputs are compared byte for byte. Reported: the median wall time of
each and the median of the per-repeat ratios ``ray / plain`` (Ray's start-up included: that is
what a user waits for).

examples:
  python benchmarks/ray_embed.py --root /tmp/ray_bench --files 2000 --repeats 3
  python benchmarks/ray_embed.py --root /tmp/ray_smoke --files 40 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny model builders (helpers.models)

SECONDS, FILE_RATE, MODEL_RATE = 10.0, 32000, 16000


def build_model(path: Path) -> Path:
    """The test suite's tiny CLAP, reading a whole ten-second window."""
    if (path / "config.yaml").is_file():
        return path
    import torch

    from clapkit.inference.load import InferenceConfig, instantiate_model, save_pretrained
    from helpers.models import randomize_norm_stats, tiny_clap_config

    config = tiny_clap_config(sample_rate=MODEL_RATE)
    torch.manual_seed(0)
    task = instantiate_model(config)
    randomize_norm_stats(task, 0)
    inference = InferenceConfig(sample_rate=MODEL_RATE, clip_samples=int(SECONDS * MODEL_RATE), pad="repeatpad")
    return save_pretrained(task, path, inference, config)


def build_files(folder: Path, count: int) -> Path:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(SECONDS * FILE_RATE)) / FILE_RATE
    for i in range(count):
        path = folder / f"clip{i:05d}.wav"
        if path.exists():
            continue
        rng = np.random.default_rng(i)
        wave = 0.3 * np.sin(2 * np.pi * (110 + 7 * i % 2000) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(path, wave.astype(np.float32), FILE_RATE, subtype="PCM_16")
    return folder


def run(argv: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clapkit", "embed", *argv], check=False, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/tmp/ray_bench"))
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ray-actors", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    model = build_model(args.root / "model")
    folder = build_files(args.root / f"clips{args.files}", args.files)
    common = ["--model", str(model), str(folder), "--device", "cpu", "-q", "--overwrite"]
    ray_extra = ["--engine", "ray"] + (["--ray-actors", str(args.ray_actors)] if args.ray_actors else [])
    contenders = {"plain": [], "ray": ray_extra}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for repeat in range(args.repeats):
        order = list(contenders) if repeat % 2 == 0 else list(reversed(contenders))
        for name in order:
            out = args.root / f"{name}.parquet"
            times[name].append(run([*common, *contenders[name], "-o", str(out)]))
            print(f"repeat {repeat} {name}: {times[name][-1]:.1f} s", flush=True)
        same = (args.root / "plain.parquet").read_bytes() == (args.root / "ray.parquet").read_bytes()
        if not same:
            raise SystemExit("the two engines wrote different parquet files")
    ratios = [r / p for r, p in zip(times["ray"], times["plain"])]
    result = {
        "files": args.files, "repeats": args.repeats, "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "plain_s": statistics.median(times["plain"]), "ray_s": statistics.median(times["ray"]),
        "ratio_ray_over_plain": statistics.median(ratios), "times": times, "identical_output": True,
    }
    print(json.dumps(result, indent=1))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
