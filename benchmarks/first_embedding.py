"""Time to the first embedding of ``clapkit embed`` on a native model directory:
how long a user waits before the first file is embedded.

Setup: :func:`embed.setup` (``benchmarks/embed.py``): a LAION-CLAP HTSAT-tiny + RoBERTa-base
model with random weights converted with ``clapkit convert laion-clap``, and ten-second stereo
44.1 kHz FLAC files; reused from ``--root`` when present.

Each contender is a ``src`` directory holding a clapkit (this checkout's ``src`` and, with
``--compare-src``, another one such as the main branch's), run in fresh processes, interleaved
in every repeat, medians kept. After one untimed warm-up run of each (so the files and the
Python bytecode are in the page cache: "imports warm"), per repeat:

- ``command_s``: the whole ``clapkit embed MODEL ONE.flac -o out.parquet`` (process start to
  the embedding written; with one file the first embedding is the output);
- a child process that imports what the command imports before it loads the model
  (``clapkit.cli``, ``clapkit.commands.embed``: ``import_s``), then times the load as the
  command does it (``clapkit.load``, audio tower only where the contender supports
  ``towers=``; lazy imports such as Lightning count here: ``load_s``) and one embedding of one
  file (``embed_s``); ``first_s = load_s + embed_s`` is the time to the first embedding after
  the imports. The same child then repeats load + embed with everything already imported
  (``again_s``).

examples:
  python benchmarks/first_embedding.py --root /tmp/embed_bench --repeats 5 --compare-src /work/main/src
  python benchmarks/first_embedding.py --root /tmp/first_smoke --files 1 --repeats 1 --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
start = time.perf_counter()
import clapkit.cli, clapkit.commands.embed  # what `clapkit embed` imports before loading
import clapkit.inference.load, inspect
imported = time.perf_counter()
model_dir, audio = sys.argv[1], sys.argv[2]
kwargs = {"towers": ("audio",)} if "towers" in inspect.signature(clapkit.inference.load.load).parameters else {}

def first():
    t0 = time.perf_counter()
    model = clapkit.load(model_dir, precision="auto", **kwargs)
    t1 = time.perf_counter()
    embedding = model.embed_audio(audio)
    t2 = time.perf_counter()
    return model, embedding, t1 - t0, t2 - t1

model, embedding, load_s, embed_s = first()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "torchmetrics"))
del model
_, _, load2, embed2 = first()
print(json.dumps({"import_s": imported - start, "load_s": load_s, "embed_s": embed_s, "first_s": load_s + embed_s,
                  "again_s": load2 + embed2, "towers_kwarg": bool(kwargs), "lightning_imported": bool(heavy),
                  "dim": int(embedding.shape[-1])}))
"""


def _env(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def run_command(src: Path, model_dir: Path, audio: Path, out: Path) -> float:
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clapkit", "embed", str(model_dir), str(audio), "-o", str(out), "-q",
                    "--device", "cpu"], check=True, env=_env(src))
    elapsed = time.perf_counter() - start
    assert out.is_file()
    return elapsed


def run_child(src: Path, model_dir: Path, audio: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(model_dir), str(audio)], check=True,
                            capture_output=True, text=True, env=_env(src))
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/tmp/clapkit_embed_bench")
    parser.add_argument("--files", type=int, default=48, help="FLAC files the shared setup writes (one is used)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--text-layers", type=int, default=12)
    parser.add_argument("--compare-src", nargs="*", default=[], help="other clapkit src directories to time too")
    parser.add_argument("--smoke", action="store_true", help="tiny text tower, for a dry run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import embed

    _, _, model_dir, files = embed.setup(Path(args.root), args.files, 1 if args.smoke else args.text_layers)
    audio, out = files[0], Path(args.root) / "first.parquet"
    contenders = {"this checkout": ROOT / "src", **{f"other {i}: {p}": Path(p) for i, p in enumerate(args.compare_src)}}
    results: dict = {"model_dir": str(model_dir), "audio": str(audio), "cpu_count": os.cpu_count(),
                     "load_average_before": os.getloadavg(), "repeats": args.repeats, "contenders": {}}
    for src in contenders.values():  # warm-up: page cache, bytecode
        run_command(src, model_dir, audio, out)
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, src in contenders.items():
            row = run_child(src, model_dir, audio)
            row["command_s"] = run_command(src, model_dir, audio, out)
            runs[name].append(row)
    for name, rows in runs.items():
        summary = {key: statistics.median(r[key] for r in rows)
                   for key in ("command_s", "import_s", "load_s", "embed_s", "first_s", "again_s")}
        summary.update({"towers_kwarg": rows[0]["towers_kwarg"], "lightning_imported": rows[0]["lightning_imported"],
                        "all": rows})
        results["contenders"][name] = summary
    results["load_average_after"] = os.getloadavg()
    print(json.dumps({n: {k: v for k, v in s.items() if k != "all"} for n, s in results["contenders"].items()},
                     indent=2))
    if args.json:
        from clapkit.utils.atomic import write_text

        write_text(args.json, json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
