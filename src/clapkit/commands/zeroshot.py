"""Zero-shot tagging: score audio files against text labels and write the top-k as CSV.

Each label becomes a prompt through ``--template`` (``{}`` is replaced by the label); audio
and prompts are embedded and each file gets a softmax over the labels of the model's scaled
cosine similarities. Labels come from ``--labels FILE`` (one per line; blank lines and lines
starting with ``#`` are skipped) and/or repeated ``--label``. INPUTS are audio files and/or
folders (``--audio INPUT...`` is accepted too).

The CSV has one row per (file, rank): ``path, rank, label, probability, similarity``
(rank 1 is the best label; similarity is the raw cosine). It is written atomically.

Bad files inside a folder (unreadable, truncated, empty, NaN or Inf samples) are skipped:
each is printed on stderr with its reason and listed in ``<output>.skipped.csv``, every good
file is tagged, and the exit status is 3 (0 when nothing was skipped). ``--strict`` refuses
the run at the first bad file (exit 2, nothing written), as does a bad file named directly.

example:
  clapkit zeroshot --model models/clap --labels labels.txt recordings/ -o tags.csv --top-k 5
"""

from __future__ import annotations

from pathlib import Path

import torch

from clapkit.atomic import write_csv
from clapkit.commands import CommandError, _shared, _skipping


def build_parser():
    parser = _shared.make_parser("zeroshot", __doc__)
    _shared.add_model_and_inputs(parser)
    parser.add_argument("--audio", nargs="+", default=[], metavar="INPUT",
                        help="audio files and/or folders (the same as INPUTS; kept for older command lines)")
    parser.add_argument("--labels", help="text file with one label per line")
    parser.add_argument("--label", action="append", default=[], help="a label (repeatable)")
    parser.add_argument("--template", default="This is a sound of {}.", help="prompt; {} is replaced by the label")
    parser.add_argument("--top-k", type=int, default=5, help="labels kept per file")
    parser.add_argument("-o", "--output", required=True, help="CSV file to write")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="bar chart of the top labels of each file (the first 12 files)")
    _skipping.add_strict_option(parser)
    _shared.add_model_options(parser)
    return parser


def read_labels(path: str | None, extra: list[str]) -> list[str]:
    """Labels from a file (one per line, ``#`` comments) followed by ``--label`` values, deduplicated."""
    labels: list[str] = []
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise CommandError(f"{file}: no such labels file")
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise CommandError(f"{file}: labels file is not UTF-8 text") from None
        labels += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not labels:
            raise CommandError(f"{file}: no labels in the file")
    labels += [label.strip() for label in extra if label.strip()]
    unique = list(dict.fromkeys(labels))
    if not unique:
        raise CommandError("no labels: give --labels FILE and/or --label TEXT")
    return unique


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.model is None:
        raise CommandError("--model is required")
    args.audio = [*args.inputs, *args.audio]
    if not args.audio:
        raise CommandError("no audio INPUTS given")
    if args.top_k < 1:
        raise CommandError(f"--top-k must be at least 1, got {args.top_k}")
    if "{}" not in args.template:
        raise CommandError(f"--template {args.template!r} has no {{}} placeholder for the label")
    output = _shared.check_output(args.output, (".csv",))
    if args.plot:
        from clapkit.plots import check_plot_path

        try:
            check_plot_path(args.plot)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    labels = read_labels(args.labels, args.label)
    files, skips = _skipping.usable_files(args.audio, args.strict)
    _shared.refuse_overwriting_inputs([output], [args.labels, *files])
    _skipping.refuse_if_none(files, skips, output, args.quiet)
    model = _shared.load_model(args.model, args)
    text = model.embed_text([args.template.replace("{}", label) for label in labels])
    files, audio = _skipping.embed_files_skipping(model, files, skips, workers=args.workers, quiet=args.quiet)
    _skipping.refuse_if_none(files, skips, output, args.quiet)
    similarity = model.similarity(audio, text)
    probability = model.classify(audio, text)
    k = min(args.top_k, len(labels))
    top = torch.topk(probability, k, dim=-1)
    rows = []
    for i, path in enumerate(files):
        for rank, (p, j) in enumerate(zip(top.values[i].tolist(), top.indices[i].tolist()), start=1):
            rows.append([str(path), rank, labels[j], f"{p:.6f}", f"{float(similarity[i, j]):.6f}"])
    write_csv(output, ["path", "rank", "label", "probability", "similarity"], rows)
    if args.plot:
        from clapkit.plots import top_labels

        top_labels([str(p) for p in files], [[labels[j] for j in row] for row in top.indices.tolist()],
                   top.values.tolist(), args.plot)
        if not args.quiet:
            _shared.eprint(f"plot -> {args.plot}")
    if not args.quiet:
        _shared.eprint(f"tagged {len(files)} files with {len(labels)} labels -> {output}")
    return _skipping.finish(skips, output, args.quiet)
