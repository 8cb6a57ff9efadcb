"""Extract the sound a query describes from mixtures (CLAPSep).

    clapkit separate --model sep/ --query "dog barking" --negative "speech" in.wav -o out.wav
    clapkit separate --model sep/ --query-audio bark.wav recordings/ -o separated/

The query is a positive description (what to keep) and/or a negative one (what to remove),
as text (``--query``, ``--negative``) and/or example audio (``--query-audio``,
``--negative-audio``; several files are averaged). When a side has both, the embeddings are
mixed with ``--audio-weight``.

Inputs of any length, sample rate and channel count: each channel is resampled to the
model's rate, cut into model-length chunks (10 s for CLAPSep) with 50 % overlap, separated,
overlap-added with complementary Hann windows, resampled back and written with the input's
rate, channels and length. A folder is processed recursively into ``-o`` (a folder), keeping
relative paths. Inputs are read one at a time; every input header is checked before any model
work, and outputs are staged and moved into place at the end.

Bad files inside a folder (unreadable, truncated, empty, NaN or Inf samples, or samples that
overflow the model) are skipped: each is printed on stderr with its reason and listed in
``<output>.skipped.csv``, every good file is separated, and the exit status is 3 (0 when
nothing was skipped). ``--strict`` refuses the run at the first bad file with nothing
written, as does a bad file named directly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from clapkit.audio import AudioLoadError, load_audio, save_audio
from clapkit.audio.io import AUDIO_EXTENSIONS
from clapkit.commands import CommandError, _skipping
from clapkit.commands._shared import (
    add_decode_cap_option,
    add_precision_option,
    check_writable_folder,
    make_parser,
    progress_bar,
)
from clapkit.utils.atomic import check_not_input, writing
from clapkit.utils.finite import NonFiniteError


def build_parser():
    parser = make_parser("separate", __doc__)
    parser.add_argument("inputs", nargs="+", help="audio files or folders (searched recursively)")
    parser.add_argument("-o", "--output", required=True,
                        help="output file (one input) or folder; outputs keep the input's name as .wav")
    parser.add_argument("--model", required=True, help="separation model directory (clapkit native format)")
    parser.add_argument("--query", default=None, help="text describing the sound to keep")
    parser.add_argument("--negative", default=None, help="text describing the sound to remove")
    parser.add_argument("--query-audio", nargs="+", default=[], metavar="FILE",
                        help="example recordings of the sound to keep (put INPUTs first or end the list with --)")
    parser.add_argument("--negative-audio", nargs="+", default=[], metavar="FILE",
                        help="example recordings of the sound to remove")
    parser.add_argument("--audio-weight", type=float, default=0.5,
                        help="weight of the audio query when a side has text and audio (0..1)")
    parser.add_argument("--overlap", type=float, default=0.5,
                        help="chunk overlap fraction in [0, 1) (0: no overlap; 0.5: Hann windows that sum to 1)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    add_precision_option(parser)
    parser.add_argument("--batch-size", type=int, default=4, help="chunks per forward pass")
    add_decode_cap_option(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="draw mixture / estimate (/ --reference) spectrograms of the first input here")
    parser.add_argument("--reference", default=None, metavar="FILE",
                        help="the true source of the first input, drawn beside it with --plot")
    _skipping.add_strict_option(parser)
    return parser


def check_plot(args) -> None:
    """Refuse an unusable ``--plot`` / ``--reference`` before any model work."""
    if args.reference and not args.plot:
        raise CommandError("--reference is only drawn with --plot PNG")
    if args.plot:
        from clapkit.utils.plots import check_plot_path

        try:
            check_plot_path(args.plot)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    if args.reference and not Path(args.reference).is_file():
        raise CommandError(f"{args.reference}: no such reference file")


def draw_plot(args, wave, rate: int, estimate) -> Path:
    """Spectrograms of the first input, its estimate and the reference when given."""
    from clapkit.utils import plots

    waves = {"mixture": wave, "estimate": estimate}
    if args.reference:
        try:
            waves["reference"] = tuple(load_audio(args.reference, mono=True))
        except AudioLoadError as exc:
            raise CommandError(str(exc)) from None
    return plots.spectrograms(waves, rate, args.plot, title=f"query: {args.query or args.negative or 'audio'}")


# --------------------------------------------------------------------------- files


def output_paths(files: Sequence[Path], inputs: Sequence[str], output: str) -> list[Path]:
    """Where each input's result goes (a file for a single file input, else under a folder)."""
    out = Path(output)
    single = len(inputs) == 1 and Path(inputs[0]).is_file()
    if single and out.suffix.lower() in AUDIO_EXTENSIONS:
        return [out]
    paths = []
    for file in files:
        root = next((Path(i) for i in inputs if Path(i).is_dir() and Path(i) in file.parents), None)
        relative = file.relative_to(root) if root is not None else Path(file.name)
        paths.append(out / relative.with_suffix(".wav"))
    if len(set(paths)) != len(paths):
        raise CommandError("several inputs map to the same output name; separate them into folders")
    return paths


@contextlib.contextmanager
def staged_outputs(targets: Sequence[Path]):
    """Yield ``stage(target) -> temporary path``; on success every staged file is moved onto its
    target (directories created then), on any error the staging directory is removed and no
    target is touched."""
    anchor = Path(os.path.commonpath([str(t.resolve().parent) for t in targets]))
    while not anchor.exists():
        anchor = anchor.parent
    staging = Path(tempfile.mkdtemp(dir=anchor, prefix=".clapkit-separate-"))
    staged: list[tuple[Path, Path]] = []

    def stage(target: Path) -> Path:
        path = staging / f"{len(staged)}{target.suffix}"
        staged.append((path, target))
        return path

    try:
        yield stage
        for path, target in staged:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _load_model(args):
    from clapkit.commands._shared import check_device, check_model_path
    from clapkit.encoders.separation.network import SeparationNetwork
    from clapkit.hub.plain import load_plain
    from clapkit.inference.load import PretrainedError
    from clapkit.inference.separation import SeparationModel

    check_device(args.device)
    check_model_path(args.model)
    try:
        model, config, inference = load_plain(args.model)
    except (PretrainedError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None
    if not isinstance(model, SeparationNetwork):
        kind = str(config.get("class_path", type(model).__name__)).rpartition(".")[2]
        raise CommandError(f"{args.model}: a {kind}, not a separation model (SeparationTask)")
    return SeparationModel(model, inference, device=args.device, batch_size=args.batch_size, overlap=args.overlap,
                           precision=args.precision, max_seconds=args.max_decode_seconds)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 0.0 <= args.overlap < 1.0:
        raise CommandError(f"--overlap must be in [0, 1), got {args.overlap}")
    if not (args.query or args.negative or args.query_audio or args.negative_audio):
        raise CommandError("give a query: --query, --negative, --query-audio or --negative-audio")
    check_plot(args)
    files, skips = _skipping.usable_files(args.inputs, args.strict)
    _skipping.refuse_if_none(files, skips, args.output, args.quiet)
    targets = output_paths(files, args.inputs, args.output)
    for target in targets:
        check_not_input(target, [*files, *args.query_audio, *args.negative_audio], folder=False)
    for folder in sorted({t.parent for t in targets}):
        check_writable_folder(folder)
    existing = [str(p) for p in targets if p.exists()]
    if existing and not args.overwrite:
        raise CommandError(f"{existing[0]}: already exists (pass --overwrite to replace)")
    model = _load_model(args)
    try:
        condition = model.condition(args.query, args.negative, args.query_audio, args.negative_audio,
                                    audio_weight=args.audio_weight)
    except AudioLoadError as exc:
        raise CommandError(f"query audio {exc}") from None
    except NonFiniteError as exc:
        raise CommandError(f"query: {exc.reason}") from None
    first = None
    # One file at a time (a folder of long recordings never sits in memory at once); outputs
    # are staged and moved into place at the end, so a file that may not be skipped (named
    # directly, or --strict) whose header was fine but whose data is not still stops the run
    # with nothing written.
    written = 0
    with staged_outputs(targets) as stage, progress_bar(len(files), "separating", args.quiet) as advance:
        for file, target in zip(files, targets):
            try:
                wave, rate = load_audio(file, mono=False, max_seconds=args.max_decode_seconds)
                estimate = model.separate(wave, rate, condition=condition)
            except (AudioLoadError, NonFiniteError) as exc:  # NaN samples; huge ones overflow the model
                message = str(exc.named(str(file))) if isinstance(exc, NonFiniteError) else str(exc)
                if not skips.may_skip(file):
                    raise CommandError(message) from None
                skips.add(file, message)
                advance(1)
                continue
            subtype = "FLOAT" if target.suffix.lower() == ".wav" else None
            with writing(target):  # disk full names the output, not the staging file
                save_audio(stage(target), estimate if estimate.shape[0] > 1 else estimate[0], rate, subtype=subtype)
            first = first or (wave, rate, estimate)
            written += 1
            advance(1)
        _skipping.refuse_if_none(files[:written], skips, args.output, args.quiet)
    if args.plot:
        picture = draw_plot(args, first[0], first[1], first[2])
        if not args.quiet:
            print(f"plot: {picture}")
    if not args.quiet:
        print(f"wrote {written} file(s) under {os.path.commonpath([str(t.parent) for t in targets])}")
    return _skipping.finish(skips, args.output, args.quiet)
