"""Cost of verifying a model's weights hash at load (``clapkit.io.identity``).

Builds a native model directory whose weights are about the size of a released CLAP (a random
BERT-base-sized text tower, 110M parameters, plus a tiny audio tower), then times, each in a
fresh process so no hash is cached:

- ``sha256``: :func:`clapkit.io.identity.file_sha256` of ``model.safetensors`` alone;
- ``load``: ``clapkit.load(DIR)`` as shipped, ``import clapkit`` not counted;
- ``load-unverified``: the same with the verification and the fingerprint stubbed out.

Runs alternate between the two loads; medians are printed.

example:
  python benchmarks/weights_hash.py --dir /tmp/hashbench --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
TESTS = str(Path(__file__).resolve().parents[1] / "tests")

#: name -> (set-up, timed code) run in a fresh process.
CHILD = {
    "sha256": ("from clapkit.io.identity import file_sha256", "file_sha256(DIR + '/model.safetensors')"),
    "load": ("import clapkit", "clapkit.load(DIR)"),
    "load-unverified": (
        "import clapkit, clapkit.hub.native as n, clapkit.inference.load as p\n"
        "n.check_weights = lambda *a, **k: 'x'\n"
        "p.model_fingerprint = lambda path: ''", "clapkit.load(DIR)"),
}


def build(directory: Path) -> None:
    if (directory / "config.yaml").is_file():
        return
    sys.path[:0] = [SRC, TESTS]
    import torch

    from clapkit.audio.preprocess import InferenceConfig
    from clapkit.hub.native import instantiate_model, save_pretrained
    from helpers.models import tiny_clap_config, write_bert_dir

    text = write_bert_dir(directory.parent / f"{directory.name}-bert", hidden=768, layers=12, heads=12)
    config = tiny_clap_config(text_model=str(text), sample_rate=16000)
    torch.manual_seed(0)
    save_pretrained(instantiate_model(config), directory, InferenceConfig(sample_rate=16000, clip_samples=16000),
                    config, assets={"text_model": text})


def timed(what: str, directory: Path) -> float:
    setup, run = CHILD[what]
    code = f"import time; DIR = {str(directory)!r}\n{setup}\nt = time.perf_counter()\n{run}\n" \
           "print(time.perf_counter() - t)"
    done = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": SRC, "OMP_NUM_THREADS": "1",
                                                             "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/tmp/hashbench/model")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    directory = Path(args.dir)
    start = time.perf_counter()
    build(directory)
    size = (directory / "model.safetensors").stat().st_size
    print(f"model.safetensors: {size / 1e6:.1f} MB (built in {time.perf_counter() - start:.1f} s)", flush=True)
    results: dict[str, list[float]] = {name: [] for name in CHILD}
    for _ in range(args.repeats):
        for name in CHILD:
            results[name].append(timed(name, directory))
    summary = {name: {"median_s": round(statistics.median(v), 3), "runs": [round(x, 3) for x in v]}
               for name, v in results.items()}
    summary["sha256_MB_per_s"] = round(size / 1e6 / summary["sha256"]["median_s"], 1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
