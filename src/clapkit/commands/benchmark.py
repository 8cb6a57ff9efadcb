"""Run the published evaluation protocols on a model and report them beside the papers' figures.

The datasets are found under the data ROOT by their published metadata files (ESC-50,
UrbanSound8K, VGGSound, FSD50K, AudioSet, AudioCaps, Clotho v2.1), or named one by one in a
YAML file (``--datasets``: ``esc50: data/ESC-50-master`` or ``audiocaps: {root: data/ac,
audio_name: "{audiocap_id}.wav"}``). Every task of the protocol whose dataset is present runs;
an absent or broken dataset is reported in one line and the rest still run. Embeddings are
cached per dataset and model fingerprint (``--cache``, default ``REPORT_DIR/cache``), so a rerun
after a crash, or with another protocol, embeds nothing twice.

REPORT_DIR receives results.json, results.md (one table: dataset, protocol, metric, this model,
the published figure of the matching reference model with its source) and results.png.

protocols:
  laion-clap  prompt "This is a sound of {}.": zero-shot ESC-50 (all clips and fold 1),
              US8K, VGGSound, FSD50K and AudioSet mAP; AudioCaps / Clotho retrieval (5
              captions per clip, LAION-CLAP's R@k and mAP@10); linear probes (ESC-50, US8K)
  ms-clap     the same tasks with prompt "this is the sound of {}"
  audioclip   zero-shot and linear probe on ESC-50 and US8K, the class name as prompt
  clapsep     a separation model: mixtures of AudioCaps test clips at 0 dB (5 per target, fixed
              seed, or the published list with --mixtures CSV), text, text + negative and audio
              queries, SDRi and SI-SDRi averaged over all mixtures

example:
  clapkit benchmark --model models/clap-630k data/ -o reports/clap-630k --protocol laion-clap
"""

from __future__ import annotations

from pathlib import Path

from clapkit.commands import CommandError, _shared


def build_parser():
    from clapkit.benchmark.protocols import PROTOCOLS, TASKS

    parser = _shared.make_parser("benchmark", __doc__)
    parser.add_argument("--model", default=None,
                        help="native model directory, or an official LAION-CLAP / MS-CLAP / AudioCLIP checkpoint")
    parser.add_argument("inputs", nargs="?", default=None, metavar="ROOT",
                        help="folder holding the datasets (each found by its published metadata file)")
    parser.add_argument("--data-root", default=None, help="the same as ROOT")
    parser.add_argument("--datasets", default=None, metavar="YAML", help="per-dataset folders (name: path)")
    parser.add_argument("-o", "--output", required=True, metavar="REPORT_DIR", help="folder for the report")
    parser.add_argument("--protocol", default="laion-clap", choices=list(PROTOCOLS),
                        help="the reference's protocol (prompt and tasks)")
    parser.add_argument("--task", action="append", default=None, choices=list(TASKS),
                        help="run only this task (repeatable)")
    parser.add_argument("--reference", default=None,
                        help="reference model whose figures are shown first (keys in reference_figures.yaml)")
    parser.add_argument("--prompt-ensemble", action="store_true",
                        help="average several prompt templates per class (a clapkit option, not a published protocol)")
    parser.add_argument("--mixtures", default=None, metavar="CSV",
                        help="clapsep: fixed mixture list (source_file, positive_caption, noise_file, negative_caption)")
    parser.add_argument("--max-targets", type=int, default=None, help="clapsep: use at most this many target clips")
    parser.add_argument("--cache", default=None, metavar="DIR", help="embeddings cache (default: REPORT_DIR/cache)")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier report")
    _shared.add_model_options(parser)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.model is None:
        raise CommandError("--model is required")
    if args.inputs and args.data_root and Path(args.inputs) != Path(args.data_root):
        raise CommandError(f"two data roots given ({args.inputs} and --data-root {args.data_root}); give one")
    root = args.inputs or args.data_root
    if root is None and args.datasets is None:
        raise CommandError("no data: give the data ROOT and/or --datasets YAML")
    if root is not None and not Path(root).is_dir():
        raise CommandError(f"{root}: no such data folder")
    if args.mixtures is not None and not Path(args.mixtures).is_file():
        raise CommandError(f"{args.mixtures}: no such mixtures file")
    if args.datasets is not None and not Path(args.datasets).is_file():
        raise CommandError(f"{args.datasets}: no such datasets file")
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise CommandError(f"{output}: is a file, expected a report folder")
    from clapkit.benchmark.report import OUTPUT_NAMES

    existing = [name for name in OUTPUT_NAMES if (output / name).exists()]
    if existing and not args.overwrite:
        raise CommandError(f"{output}: already holds {', '.join(existing)}; pass --overwrite to replace them "
                           "(the embeddings cache is kept and reused)")
    _shared.check_writable_folder(output)
    from clapkit.benchmark import BenchmarkError, run_benchmark, write_report
    from clapkit.datamodules.clips import LayoutError

    model = _load(args)
    workers = max(0, args.workers) if args.workers > 1 else 0

    def progress(description: str, total: int):
        return _shared.progress_bar(total, description, args.quiet)

    try:
        report = run_benchmark(model, root, protocol_name=args.protocol, paths=args.datasets, tasks=args.task,
                               reference=args.reference, prompt_ensemble=args.prompt_ensemble,
                               cache_dir=args.cache or output / "cache", mixtures_csv=args.mixtures,
                               max_targets=args.max_targets, workers=workers, progress=progress,
                               log=None if args.quiet else _shared.eprint)
    except (BenchmarkError, LayoutError) as exc:
        raise CommandError(str(exc)) from None
    report.model = str(args.model)
    write_report(report, output)
    if not args.quiet:
        ran = [d for d in report.datasets if not d.problem]
        _shared.eprint(f"{len(report.results)} tasks on {len(ran)} datasets ({report.embeddings.audio_embedded} clips "
                       f"embedded, {report.embeddings.audio_cached} from the cache) -> {output / 'results.md'}")
    return 0


def _load(args):
    """The model: a contrastive one through the shared loader; a separation model (its own
    kind) for ``--protocol clapsep``."""
    if args.protocol != "clapsep":
        try:
            return _shared.load_model(args.model, args)
        except CommandError as exc:
            if "a separation model" in str(exc):
                raise CommandError(f"{args.model}: a separation model; benchmark it with --protocol clapsep") from None
            raise
    from clapkit.inference.load import load
    from clapkit.io.errors import PretrainedError

    _shared.check_device(args.device)
    _shared.check_model_path(args.model)
    try:
        model = load(args.model, device=args.device, precision=args.precision, batch_size=args.batch_size)
    except (PretrainedError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None
    if not hasattr(model, "separate_batch"):
        raise CommandError(f"{args.model}: not a separation model; --protocol clapsep needs one (CLAPSep)")
    return model
