"""Log-mel front-end speed: clapkit's front ends against torchlibrosa's on the same input.

LAION-CLAP's parameters (48 kHz, n_fft 1024, hop 480, 64 Slaney mels 50-14000 Hz, power,
10*log10 with amin 1e-10, no top_db) on a batch of 10 s clips, fp32, forward only under
``torch.inference_mode``:

- ``clapkit LogMel``: torchaudio ``MelSpectrogram`` (FFT-based STFT) + log;
- ``clapkit ConvLogMel``: the conv-STFT parity front end (what converted checkpoints use);
- ``torchlibrosa``: ``Spectrogram`` + ``LogmelFilterBank`` (what laion-clap runs), when installed.

Reports the median time per batch over ``--repeats`` after ``--warmup`` calls, clips/s, and the
largest difference from torchlibrosa in dB (a parity check on the same input).

example:
  python benchmarks/frontend.py --batch-size 16 --repeats 5
  python benchmarks/frontend.py --device cuda --batch-size 64 --repeats 50
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch

from clapkit.encoders.frontends import ConvLogMel, LogMel

RATE, N_FFT, HOP, MELS, FMIN, FMAX = 48000, 1024, 480, 64, 50.0, 14000.0


def torchlibrosa_frontend() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torchlibrosa's Spectrogram + LogmelFilterBank, output ``[B, mels, frames]``; ``None`` if absent."""
    try:
        from torchlibrosa.stft import LogmelFilterBank, Spectrogram
    except ImportError:
        return None
    spec = Spectrogram(n_fft=N_FFT, hop_length=HOP, win_length=N_FFT, window="hann", center=True,
                       pad_mode="reflect", freeze_parameters=True)
    logmel = LogmelFilterBank(sr=RATE, n_fft=N_FFT, n_mels=MELS, fmin=FMIN, fmax=FMAX, ref=1.0, amin=1e-10,
                              top_db=None, freeze_parameters=True)
    module = torch.nn.Sequential(spec, logmel)

    def run(x: torch.Tensor) -> torch.Tensor:
        return module(x)[:, 0].transpose(1, 2)  # [B, 1, T, F] -> [B, F, T]

    run.module = module  # type: ignore[attr-defined]
    return run


def timed(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, warmup: int, repeats: int) -> list[float]:
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            sync()
            times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = 0.1 * torch.randn(args.batch_size, int(args.seconds * RATE), device=device)

    candidates: dict[str, Callable] = {
        "clapkit LogMel (torchaudio STFT)": LogMel().to(device),
        "clapkit ConvLogMel (conv STFT)": ConvLogMel().to(device),
    }
    reference = torchlibrosa_frontend()
    if reference is not None:
        reference.module.to(device)  # type: ignore[attr-defined]
        candidates["torchlibrosa Spectrogram+LogmelFilterBank"] = reference
    with torch.inference_mode():
        ref_out = reference(x) if reference is not None else None
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
               "threads": torch.get_num_threads(), "batch_size": args.batch_size, "seconds": args.seconds,
               "torch": torch.__version__, "frontends": {}}
    for name, fn in candidates.items():
        times = timed(fn, x, args.warmup, args.repeats)
        median = statistics.median(times)
        entry = {"ms_per_batch": 1000 * median, "clips_per_s": args.batch_size / median}
        if ref_out is not None:
            with torch.inference_mode():
                entry["max_abs_diff_db_vs_torchlibrosa"] = float((fn(x) - ref_out).abs().max())
        results["frontends"][name] = entry
    if reference is not None:
        base = results["frontends"]["torchlibrosa Spectrogram+LogmelFilterBank"]["ms_per_batch"]
        for entry in results["frontends"].values():
            entry["speedup_vs_torchlibrosa"] = base / entry["ms_per_batch"]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"device={results['device']} threads={results['threads']} batch={args.batch_size} x {args.seconds:g} s "
              f"@ {RATE} Hz, median of {args.repeats}")
        for name, entry in results["frontends"].items():
            extra = ""
            if "speedup_vs_torchlibrosa" in entry:
                extra = (f"  x{entry['speedup_vs_torchlibrosa']:.2f} vs torchlibrosa"
                         f"  max|diff| {entry['max_abs_diff_db_vs_torchlibrosa']:.2e} dB")
            print(f"  {name:<44} {entry['ms_per_batch']:9.1f} ms/batch {entry['clips_per_s']:9.1f} clips/s{extra}")
    return results


if __name__ == "__main__":
    main()
