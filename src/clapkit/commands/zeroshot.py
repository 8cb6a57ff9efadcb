"""Zero-shot tagging: score audio files against text labels and write the top-k as CSV.

Each label becomes a prompt through ``--template`` (``{}`` is replaced by the label); audio
and prompts are embedded and each file gets a softmax over the labels of the model's scaled
cosine similarities. Labels come from ``--labels FILE`` (one per line; blank lines and lines
starting with ``#`` are skipped) and/or repeated ``--label``. INPUTS are audio files and/or
folders (``--audio INPUT...`` is accepted too).

The CSV has one row per (file, rank): ``path, rank, label, probability, similarity``
(rank 1 is the best label; similarity is the raw cosine). It is written atomically; an
existing CSV (or ``--plot`` picture) is refused unless ``--overwrite``.

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

from clapkit.commands import CommandError, _shared, _skipping
from clapkit.utils.atomic import check_not_input, write_csv


def build_parser():
    parser = _shared.make_parser("zeroshot", __doc__)
    _shared.add_model_and_inputs(parser)
    parser.add_argument("--audio", nargs="+", default=[], metavar="INPUT",
                        help="audio files and/or folders (the same as INPUTS; kept for older command lines)")
    parser.add_argument("--labels", metavar="FILE", help="text file with one label per line")
    parser.add_argument("--label", action="append", default=[], help="a label (repeatable)")
    parser.add_argument("--template", default="This is a sound of {}.", help="prompt; {} is replaced by the label")
    parser.add_argument("--top-k", type=int, default=5, help="labels kept per file")
    parser.add_argument("-o", "--output", required=True, help="CSV file to write")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="bar chart of the top labels of each file (the first 12 files)")
    _shared.add_overwrite_option(parser)
    _skipping.add_strict_option(parser)
    _shared.add_model_options(parser)
    return parser


#: Prompts per text forward pass (at least the model's batch size): many labels embed in
#: batches of this many, so memory stays one batch's activations whatever the label count.
TEXT_BATCH = 64
#: Label counts from which embedding them shows its own progress bar.
LABELS_BAR = 256
#: Similarities held at once when ranking (files x labels), so many files times many labels
#: never make one matrix.
SCORE_CELLS = 1 << 22


def top_labels(model, audio: torch.Tensor, text: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per file, the ``k`` most probable labels: ``(probabilities, label indices, similarities)``,
    each ``[N, k]``, computed a block of files at a time (the same values as one softmax over
    the whole ``[N, labels]`` matrix: each file's softmax is over its own row)."""
    rows = max(1, SCORE_CELLS // max(text.shape[0], 1))
    values, indices, similarity = [], [], []
    for start in range(0, audio.shape[0], rows):
        block = audio[start:start + rows]
        sim = model.similarity(block, text)
        top = torch.topk(model.classify(block, text), k, dim=-1)
        values.append(top.values)
        indices.append(top.indices)
        similarity.append(torch.gather(sim, 1, top.indices))
    return torch.cat(values), torch.cat(indices), torch.cat(similarity)


def read_labels(path: str | None, extra: list[str]) -> list[str]:
    """Labels from a file (one per line, ``#`` comments) followed by ``--label`` values, deduplicated."""
    labels: list[str] = []
    if path is not None:
        file = Path(path)
        if file.is_dir():
            raise CommandError(f"{file}: is a directory; --labels takes a text file with one label per line "
                               "(audio folders are INPUTS)")
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


def case_duplicates(labels: list[str]) -> list[list[str]]:
    """Groups of labels that differ only in case (``Dog`` / ``dog``): each is kept and scored,
    so they split one sound's probability between them."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(label.casefold(), []).append(label)
    return [group for group in groups.values() if len(group) > 1]


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.model is None:
        raise CommandError("--model is required: clapkit zeroshot --model MODEL --labels FILE INPUTS... -o OUT.csv")
    args.audio = [*args.inputs, *args.audio]
    if not args.audio:
        raise CommandError("no audio INPUTS given")
    if args.top_k < 1:
        raise CommandError(f"--top-k must be at least 1, got {args.top_k}")
    if "{}" not in args.template:
        raise CommandError(f"--template {args.template!r} has no {{}} placeholder for the label")
    output = _shared.check_output(args.output, (".csv",))
    if args.plot:
        from clapkit.utils.plots import check_plot_path

        try:
            check_plot_path(args.plot)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        _shared.refuse_existing(args.plot, args.overwrite)
    labels = read_labels(args.labels, args.label)
    for group in case_duplicates(labels):
        _shared.eprint(f"clapkit zeroshot: warning: labels {' and '.join(map(repr, group))} differ only in case; "
                       "both are kept and split the probability between them")
    files, skips = _skipping.usable_files(args.audio, args.strict)
    check_not_input(output, [args.labels, *files], folder=False)
    _shared.refuse_existing(output, args.overwrite)
    _skipping.refuse_if_none(files, skips, output, args.quiet)
    model = _shared.load_model(args.model, args)
    for label in getattr(model, "unknown_only", lambda labels: [])(labels):
        # Inside the template the prompt has known words, so embed_text cannot tell; the label itself can.
        _shared.eprint(f"clapkit zeroshot: warning: label {label!r} tokenizes to nothing but the unknown token; "
                       "it scores the same as any other label the tokenizer knows no symbol of")
    prompts = [args.template.replace("{}", label) for label in labels]
    with _shared.progress_bar(len(prompts), "labels", args.quiet or len(prompts) < LABELS_BAR) as advance:
        text = model.embed_text(prompts, batch_size=max(model.batch_size, TEXT_BATCH), progress=advance)
    files, audio = _skipping.embed_files_skipping(model, files, skips, workers=args.workers, quiet=args.quiet)
    _skipping.refuse_if_none(files, skips, output, args.quiet)
    k = min(args.top_k, len(labels))
    top_values, top_indices, top_similarity = top_labels(model, audio, text, k)
    rows = []
    for i, path in enumerate(files):
        for rank, (p, j, sim) in enumerate(zip(top_values[i].tolist(), top_indices[i].tolist(),
                                               top_similarity[i].tolist()), start=1):
            rows.append([str(path), rank, labels[j], f"{p:.6f}", f"{sim:.6f}"])
    write_csv(output, ["path", "rank", "label", "probability", "similarity"], rows)
    if args.plot:
        from clapkit.utils.plots import top_labels as plot_top_labels

        plot_top_labels([str(p) for p in files], [[labels[j] for j in row] for row in top_indices.tolist()],
                        top_values.tolist(), args.plot)
        if not args.quiet:
            _shared.eprint(f"plot -> {args.plot}")
    if not args.quiet:
        _shared.eprint(f"tagged {len(files)} files with {len(labels)} labels -> {output}")
    return _skipping.finish(skips, output, args.quiet)
