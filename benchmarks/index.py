"""``clapkit index`` at scale: build time, the build's peak RSS, bytes per vector and query
latency at recall@10 >= 0.95, on clustered unit vectors (a Gaussian mixture, normalised).

The embeddings parquet is generated part by part on disk first (``--chunk`` rows at a time,
one row group each), so neither this process nor the build holds the [N, D] float32 matrix.
The build runs as ``clapkit index`` in a child process; its peak RSS is the child's
``ru_maxrss``. Queries are fresh draws from the same mixture (not rows of the index); their
exact top-10 comes from one streamed pass over the parquet. For each ``nprobe`` the recall@10
and the median latency of one query at a time (and of the whole batch) are printed.

example:
  python benchmarks/index.py --rows 1000000 --dim 512 --centres 1000 --workdir /tmp/index-bench
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from clapkit.inference.search_index import SearchIndex, exact_top_k, recall_at_k  # noqa: E402
from helpers.vectors import clustered_unit_vectors, write_clustered_parquet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--centres", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=16_384,
                        help="rows generated and written at a time (one row group each, as clapkit embed writes)")
    parser.add_argument("--memory-budget", default="1G")
    parser.add_argument("--kind", default="auto")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--workdir", default="/tmp/clapkit-index-bench")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    source = work / f"emb_{args.rows}x{args.dim}_{args.centres}.parquet"
    if not source.is_file():
        start = time.perf_counter()
        write_clustered_parquet(source, args.rows, args.dim, args.centres, chunk=args.chunk)
        print(f"generated {source} in {time.perf_counter() - start:.1f} s", flush=True)
    index_dir = work / "index"
    build = [sys.executable, "-m", "clapkit", "index", str(source), "-o", str(index_dir), "--overwrite", "-q",
             "--memory-budget", args.memory_budget, "--kind", args.kind, "--queries", str(args.queries)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    subprocess.run(build, check=True, env=env)
    build_s = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    info = json.loads((index_dir / "index.json").read_text())
    matrix_mb = args.rows * args.dim * 4 / 2**20
    print(f"build: {build_s:.1f} s, peak RSS {peak_mb:.0f} MiB (fp32 matrix {matrix_mb:.0f} MiB, "
          f"limit {matrix_mb / 2:.0f} MiB), {info['factory']}, {info['bytes_per_vector']:.1f} bytes/vector, "
          f"tuned nprobe {info['nprobe']} (build-time recall@10 {info['recall_at_10']:.3f})", flush=True)

    # Fresh queries from the same mixture (rows past the end of the set, so not in the index).
    queries = clustered_unit_vectors(args.queries, args.dim, args.centres, seed=0, start=args.rows + 10_000_000)
    truth = exact_top_k(source, args.dim, queries, 10)
    results = []
    for nprobe in sorted({1, 2, 4, 8, 16, 32, 64, 128, info["nprobe"] or 1}):
        index = SearchIndex(index_dir, nprobe=nprobe)
        found = index.search(queries, 10).indices
        recall = recall_at_k(found, truth)
        single = []
        for q in queries[:100]:
            t0 = time.perf_counter()
            index.search(q[None], 10)
            single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        index.search(queries, 10)
        batch_ms = (time.perf_counter() - t0) * 1000 / len(queries)
        row = {"nprobe": nprobe, "recall_at_10": recall, "single_query_ms": statistics.median(single) * 1000,
               "batched_ms_per_query": batch_ms}
        results.append(row)
        print(f"nprobe {nprobe:4d}: recall@10 {recall:.3f}, one query {row['single_query_ms']:.2f} ms "
              f"(median of 100), batch of {len(queries)}: {batch_ms:.3f} ms/query", flush=True)
        if info["kind"] == "flat":
            break
    summary = {"rows": args.rows, "dim": args.dim, "centres": args.centres, "build_s": build_s,
               "build_peak_rss_mib": peak_mb, "fp32_matrix_mib": matrix_mb, "index": info, "search": results}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
