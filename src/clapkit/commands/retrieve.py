"""Text-to-audio retrieval: rank an embedded folder against text queries.

``--index`` is an embeddings file written by ``clapkit embed`` with the same model (``.parquet``,
or ``.npy`` with its ``.paths.txt``), or an index folder written by ``clapkit index`` (searched
memory-mapped, with the search depth tuned at build time unless ``--nprobe`` is given). Each ``--query`` is embedded with the model's text tower
and the top-k files by cosine similarity are printed (``query<TAB>rank<TAB>score<TAB>path``)
and, with ``-o``, written atomically as CSV (``query, rank, path, score``; an existing CSV is
refused unless ``--overwrite``). The model may also be given first, without ``--model``.

Search is exact below 100k embeddings; above (or with ``--search ann``) a faiss IVF index is
built once, cached next to the index file (``<index>.<key>.faiss``) and searched with
``--nprobe`` lists per query (the ``index`` extra installs faiss).

example:
  clapkit embed --model models/clap recordings/ -o index.parquet
  clapkit retrieve --model models/clap --index index.parquet --query "a dog barking" --top-k 10
"""

from __future__ import annotations

from clapkit.commands import CommandError, _shared
from clapkit.inference.search import NearestNeighbours
from clapkit.inference.search_index import SearchIndex, SearchIndexError, is_index_dir
from clapkit.utils.atomic import check_not_input, write_csv
from clapkit.utils.finite import NonFiniteError, nonfinite_rows


def build_parser():
    parser = _shared.make_parser("retrieve", __doc__)
    _shared.add_model_alias(parser, "native model directory or official checkpoint (as in clapkit embed MODEL ...)")
    parser.add_argument("--index", required=True,
                        help="embeddings written by clapkit embed (.parquet or .npy), or a clapkit index folder")
    parser.add_argument("--query", action="append", required=True, help="text query (repeatable)")
    parser.add_argument("--top-k", type=int, default=10, help="results per query")
    parser.add_argument("-o", "--output", default=None, help="also write the results to this CSV")
    _shared.add_overwrite_option(parser)
    parser.add_argument("--search", default="auto", choices=["auto", "exact", "ann"],
                        help="exact top-k, or a faiss IVF index (auto: ann from 100k embeddings)")
    parser.add_argument("--nprobe", type=int, default=None,
                        help="ann: inverted lists visited per query (default 32; an index folder: its tuned value)")
    _shared.add_model_options(parser)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.model = _shared.model_argument(args.model, args.model_arg,
                                        "clapkit retrieve --model MODEL --index EMBEDDINGS --query TEXT")
    if args.top_k < 1:
        raise CommandError(f"--top-k must be at least 1, got {args.top_k}")
    output = _shared.check_output(args.output, (".csv",)) if args.output else None
    queries = [q for q in args.query if q.strip()]
    if not queries:
        raise CommandError("--query is empty")
    if output is not None:
        check_not_input(output, [args.index], folder=False)
        _shared.refuse_existing(output, args.overwrite)
    if args.nprobe is not None and args.nprobe < 1:
        raise CommandError(f"--nprobe must be at least 1, got {args.nprobe}")
    if is_index_dir(args.index):
        return _search_index_dir(args, queries, output)
    paths, index, metadata = _shared.read_embeddings(args.index)
    if not paths:
        raise CommandError(f"{args.index}: the index is empty")
    model = _shared.load_model(args.model, args)
    _check_model(args.index, index.shape[1], metadata, model)
    bad = nonfinite_rows(index)
    if bad:
        # A NaN score would rank first (topk puts NaN above every number): refuse the index.
        names = ", ".join(paths[i] for i in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CommandError(f"{args.index}: {len(bad)} non-finite embedding(s) (NaN or Inf) for {names}; "
                           "re-embed those files")
    try:
        text = model.embed_text(queries)
    except NonFiniteError as exc:
        raise CommandError(f"--query {exc}") from None
    searcher = NearestNeighbours(index, args.search, nprobe=args.nprobe or 32, cache=args.index)
    _report(queries, searcher.search(text.numpy(), args.top_k), paths, output)
    return 0


def _search_index_dir(args, queries, output) -> int:
    """``--index`` is a folder written by ``clapkit index``: search it memory-mapped."""
    try:
        searcher = SearchIndex(args.index, nprobe=args.nprobe)
    except SearchIndexError as exc:
        raise CommandError(str(exc)) from None
    model = _shared.load_model(args.model, args)
    _check_model(args.index, searcher.dim, searcher.metadata, model)
    try:
        text = model.embed_text(queries)
    except NonFiniteError as exc:
        raise CommandError(f"--query {exc}") from None
    _report(queries, searcher.search(text.numpy(), args.top_k), searcher.paths, output)
    return 0


def _check_model(index, dim: int, metadata: dict, model) -> None:
    """Refuse embeddings of another width or another model's fingerprint."""
    if dim != model.embedding_dim:
        raise CommandError(f"{index}: embeddings have dim {dim} but the model's is "
                           f"{model.embedding_dim}; embed the folder with this model first")
    made_by = metadata.get("fingerprint")
    if made_by and getattr(model, "fingerprint", "") and made_by != model.fingerprint:
        from clapkit.io.identity import is_exact

        if not is_exact(made_by):  # an older clapkit's sampled hash: it cannot prove the same weights
            raise CommandError(f"{index}: was embedded by an older clapkit whose model fingerprint ({made_by}) "
                               "does not cover every weight; re-embed the folder with this model")
        raise CommandError(f"{index}: was embedded with a different model ({metadata.get('model', '?')}, "
                           f"fingerprint {made_by[:23]}...; the model is {model.fingerprint[:23]}...); "
                           "re-embed the folder with this model")


def _report(queries, hits, paths, output) -> None:
    """Print ``query, rank, score, path`` lines and write the CSV."""
    rows = []
    for qi, query in enumerate(queries):
        found = [(s, j) for s, j in zip(hits.scores[qi].tolist(), hits.indices[qi].tolist()) if j >= 0]
        for rank, (score, j) in enumerate(found, start=1):
            rows.append([query, rank, paths[j], f"{score:.6f}"])
    for query, rank, path, score in rows:
        print(f"{query}\t{rank}\t{score}\t{path}")
    if output is not None:
        write_csv(output, ["query", "rank", "path", "score"], rows)
