"""Shard decoding throughput: decoded + resampled 10 s clips per second per worker.

Writes temporary webdataset shards of synthetic 44.1 kHz audio (tones + noise, 16-bit FLAC,
the LAION-CLAP layout), then streams them through clapkit's training pipeline
(:class:`clapkit.datamodules.webdataset.ShardStream` in a DataLoader: tar read, FLAC decode,
soxr resample to 48 kHz, int16 round trip, random 10 s crop / repeatpad, collate) and reports
clips/s in total and per worker after a warm-up (wall clock), and clips per CPU second of the
decoding processes (what one uncontended core sustains; robust on a shared machine).
``--breakdown`` also times the per-clip stages in CPU time (decode, resample, crop+quantise).

example:
  python benchmarks/dataloader.py --workers 1 --clips 256
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf


def synth_clip(index: int, seconds: float, rate: int) -> np.ndarray:
    rng = np.random.default_rng(index)
    t = np.arange(int(seconds * rate)) / rate
    tones = sum(0.1 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) for f in rng.uniform(80, 4000, size=4))
    return (tones + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def write_shards(root: Path, clips: int, per_shard: int, seconds: float, rate: int) -> int:
    """LAION-CLAP layout shards + sizes.json; returns the bytes written."""
    sizes, total = {}, 0
    for shard in range(0, clips, per_shard):
        name = f"{shard // per_shard:06d}.tar"
        with tarfile.open(root / name, "w") as tar:
            for i in range(shard, min(shard + per_shard, clips)):
                buf = io.BytesIO()
                sf.write(buf, synth_clip(i, seconds, rate), rate, format="FLAC", subtype="PCM_16")
                for ext, data in (("flac", buf.getvalue()), ("json", json.dumps({"text": f"clip {i}"}).encode())):
                    info = tarfile.TarInfo(f"{i:08d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        sizes[name] = min(per_shard, clips - shard)
        total += (root / name).stat().st_size
    (root / "sizes.json").write_text(json.dumps(sizes))
    return total


def run_loader(root: Path, args) -> dict:
    from clapkit.datamodules.pipeline import AudioPolicy
    from clapkit.datamodules.shards import resolve
    from clapkit.datamodules.webdataset import EpochLoader, ShardStream

    policy = AudioPolicy(sample_rate=args.rate, clip_seconds=args.seconds)
    stream = ShardStream([resolve(str(root))], policy, batch_size=args.batch_size, stage="train",
                         samples_per_epoch=args.clips, shuffle_buffer=args.shuffle_buffer)
    loader = EpochLoader(stream, batch_size=None, num_workers=args.workers,
                         prefetch_factor=4 if args.workers else None)
    clips, start, warm = 0, None, 0
    cpu_before = _cpu_seconds(args.workers)
    for i, batch in enumerate(loader):
        if i == args.warmup_batches:
            start, warm = time.perf_counter(), clips
        clips += batch["audio"].shape[0]
        assert batch["audio"].shape[1] == int(args.seconds * args.rate)
    elapsed = time.perf_counter() - start
    del loader  # joins the workers, so their CPU time is accounted
    cpu = _cpu_seconds(args.workers) - cpu_before
    measured = clips - warm
    workers = max(1, args.workers)
    # On a shared machine wall-clock rates depend on the neighbours; CPU seconds spent by the
    # decoding process(es) per clip give the rate one uncontended core would reach.
    return {"clips": measured, "seconds": elapsed, "clips_per_s": measured / elapsed,
            "clips_per_s_per_worker": measured / elapsed / workers,
            "clips_per_cpu_second": clips / cpu if cpu > 0 else None}


def _cpu_seconds(workers: int) -> float:
    """User+system CPU of the decoding processes: finished children (workers) or this process."""
    import resource

    who = resource.RUSAGE_CHILDREN if workers > 0 else resource.RUSAGE_SELF
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def breakdown(root: Path, args) -> dict:
    from clapkit.audio import fit_length, int16_roundtrip, resample

    with tarfile.open(next(root.glob("*.tar"))) as tar:
        blobs = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".flac")][:16]
    timings = {"decode": 0.0, "resample": 0.0, "crop_int16": 0.0}
    clock = time.process_time  # CPU time of this process: robust to a busy machine
    for blob in blobs:
        t0 = clock()
        wave, rate = sf.read(io.BytesIO(blob), dtype="float32")
        t1 = clock()
        wave = resample(wave, rate, args.rate)
        t2 = clock()
        fit_length(int16_roundtrip(wave), int(args.seconds * args.rate), crop="random")
        t3 = clock()
        timings["decode"] += t1 - t0
        timings["resample"] += t2 - t1
        timings["crop_int16"] += t3 - t2
    return {f"cpu_ms_per_clip_{k}": 1000 * v / len(blobs) for k, v in timings.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=256, help="clips per epoch (and written)")
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--source-rate", type=int, default=44100)
    parser.add_argument("--rate", type=int, default=48000, help="model rate to resample to")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shuffle-buffer", type=int, default=64)
    parser.add_argument("--warmup-batches", type=int, default=2)
    parser.add_argument("--breakdown", action="store_true", help="also time decode / resample / crop per clip")
    parser.add_argument("--shards", default=None, help="reuse this folder of shards instead of writing new ones")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="clapkit-bench-") as tmp:
        root = Path(args.shards) if args.shards else Path(tmp)
        if not args.shards:
            t0 = time.perf_counter()
            size = write_shards(root, args.clips, args.shard_size, args.seconds, args.source_rate)
            print(f"wrote {args.clips} x {args.seconds:g} s clips at {args.source_rate} Hz "
                  f"({size / 2**20:.0f} MiB FLAC) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        result = {
            "command": "python benchmarks/dataloader.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                       f"python {platform.python_version()}",
            "workers": args.workers, "batch_size": args.batch_size,
            "source_rate": args.source_rate, "rate": args.rate, "clip_seconds": args.seconds,
        }
        result.update(run_loader(root, args))
        if args.breakdown:
            result.update(breakdown(root, args))
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
