"""Build an on-disk faiss index of an embeddings parquet for ``clapkit retrieve --index``.

EMBEDDINGS is a ``.parquet`` written by ``clapkit embed``. It is read in record batches:
a random sample trains the index (k-means lists, quantisers), then the vectors are added
batch by batch, so the build never holds the whole [N, D] float32 matrix. The kind follows
the size and --memory-budget (the size the finished index may take): exact below 20,000
rows; else IVF with float32 vectors (4 D + 8 bytes per vector) if that fits, else IVF with
8-bit scalar codes (D + 8), else IVF with product codes (D/2, D/4, ... bytes); HNSW only with
--kind hnsw. The search depth (IVF lists visited, HNSW efSearch) is tuned at build time to
reach --target-recall (recall@10 against exact search, on sample queries drawn from the
embeddings) and stored with the index; the summary prints it with the bytes per vector.

The output is a folder (index.faiss, paths.parquet with the file of each row, index.json with
the kind, tuned depth and the embedding model's fingerprint), published by a rename when
complete. At query time the vectors' codes are memory-mapped, not read into memory.

example:
  clapkit embed --model models/clap corpus/ -o corpus.parquet
  clapkit index corpus.parquet -o corpus.index --memory-budget 2G
  clapkit retrieve --model models/clap --index corpus.index --query "a dog barking"
"""

from __future__ import annotations

from pathlib import Path

from clapkit.commands import CommandError, _shared
from clapkit.inference.search_index import (
    KINDS,
    SearchIndexError,
    build_index,
    describe_embeddings,
    parse_bytes,
)
from clapkit.utils.atomic import check_not_input


def build_parser():
    parser = _shared.make_parser("index", __doc__)
    parser.add_argument("embeddings", help="embeddings .parquet written by clapkit embed")
    parser.add_argument("-o", "--output", required=True, help="index folder to write")
    parser.add_argument("--memory-budget", default="1G",
                        help="size the finished index may take in memory or on disk (e.g. 800M, 4G)")
    parser.add_argument("--kind", default="auto", choices=KINDS, help="index kind (auto: by size and budget)")
    parser.add_argument("--target-recall", type=float, default=0.95,
                        help="recall@10 against exact search the tuned search depth aims for")
    parser.add_argument("--queries", type=int, default=200, help="sample queries for tuning (0: no tuning)")
    parser.add_argument("--overwrite", action="store_true", help="replace an index folder already there")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    source = Path(args.embeddings)
    if source.suffix.lower() != ".parquet":
        raise CommandError(f"{source}: expected a .parquet written by clapkit embed "
                           "(convert a .npy by embedding to .parquet)")
    try:
        budget = parse_bytes(args.memory_budget)
    except ValueError as exc:
        raise CommandError(f"--memory-budget: {exc}") from None
    if not 0 < args.target_recall <= 1:
        raise CommandError(f"--target-recall must be in (0, 1], got {args.target_recall}")
    _shared.check_writable_folder(Path(args.output).parent)
    check_not_input(args.output, [args.embeddings])
    try:
        total = describe_embeddings(source)[0]
        with _shared.progress_bar(total, "indexing", args.quiet) as advance:
            info = build_index(source, args.output, memory_budget=budget, kind=args.kind,
                               target_recall=args.target_recall, queries=args.queries,
                               overwrite=args.overwrite, progress=advance)
    except SearchIndexError as exc:
        raise CommandError(str(exc)) from None
    if not args.quiet:
        depth = (f"efSearch {info.ef_search}" if info.kind == "hnsw" else
                 f"nprobe {info.nprobe}" if info.nprobe else "exact")
        recall = f", recall@10 {info.recall_at_10:.3f} on {min(args.queries, info.count)} sample queries" \
            if args.queries else ""
        _shared.eprint(f"indexed {info.count} vectors of dim {info.dim} -> {args.output} "
                       f"({info.kind}: {info.factory}, {info.bytes_per_vector:.1f} bytes/vector, {depth}{recall})")
    return 0
