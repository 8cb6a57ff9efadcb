"""Embed audio files with a CLAP model and write the embeddings with their file paths.

INPUTS are audio files and/or folders (searched recursively for .wav .flac .ogg .mp3 .opus
.aiff); the model is ``--model`` (``clapkit embed MODEL INPUTS...``, the model as the first
positional argument, is accepted too). Every file is resampled to the model's rate and padded, cropped (deterministically)
or fused as the model requires; embeddings are L2-normalised.

Output: ``.parquet`` (columns ``path`` and ``embedding``; usable as ``clapkit retrieve
--index``) or ``.npy`` (the [N, D] float32 array, plus ``<stem>.paths.txt`` with one path per
row and ``<stem>.meta.json``). Outputs are written atomically; an existing output is refused
unless ``--overwrite``.

Bad files (unreadable, truncated, empty, NaN or Inf samples, or an embedding that overflows)
found inside a folder are skipped: each is printed on stderr with its reason and listed in
``<output>.skipped.csv`` (columns path, reason), the output holds every good file in order,
and the exit status is 3 ("done, N files skipped"; 0 when nothing was skipped). ``--strict``
refuses the run at the first bad file instead (exit 2, nothing written); a bad file named on
the command line itself is always refused. A part that skipped files records them, so a
resumed run does not decode them again (``--no-resume`` retries them).

Large folders: embeddings stream to parquet parts in ``<output>.parts/`` (``--part-size``
files each) while worker processes decode ahead of the model. With a native model directory
the first files are decoded while torch and the model load. A rerun of a killed job skips
the parts already done. Under ``torchrun`` / ``srun`` / a SLURM array each process embeds its
share of the parts (rank and world size from the environment) and the last one to finish
merges them into the output. ``--engine ray`` runs the same job on Ray Data instead (decode
tasks, an actor pool of models, GPU actors where the cluster has GPUs; a local Ray instance,
or a cluster with ``--ray-address auto``): the same parts, the same output, failures retried by
Ray (docs/SCALING.md).

``--runtime onnx`` runs an ONNX export (``clapkit export onnx MODEL -o DIR``; MODEL is then DIR)
with onnxruntime on the CPU instead of PyTorch: same preprocessing, same embeddings to float
rounding; clips longer than the window of a fusion model are refused there.

example:
  clapkit embed --model models/clap recordings/ extra.wav -o embeddings.parquet --device cuda --precision bf16
  clapkit embed --runtime onnx --model models/clap-onnx recordings/ -o embeddings.npy
  sbatch --array=0-7 --wrap "clapkit embed --model models/clap corpus/ -o corpus.parquet --device cuda"
  clapkit embed --model models/clap corpus/ -o corpus.parquet --engine ray --ray-address auto
"""

from __future__ import annotations

import functools

from clapkit.audio.preprocess import prepare_audio
from clapkit.audio.skips import PARTIAL, Skipped
from clapkit.commands import CommandError, _ray, _shared, _skipping
from clapkit.hub.directory import read_inference
from clapkit.inference.decoding import EarlyDecoder
from clapkit.inference.embedding import (
    EmbeddingInputError,
    decode_order,
    device_for_rank,
    embed_corpus,
    rank_from_env,
)
from clapkit.inference.embeddings import model_metadata, write_embeddings

#: Embedding audio files needs the audio tower only: the text tower is neither built nor read.
AUDIO_ONLY = ("audio",)


def build_parser():
    parser = _shared.make_parser("embed", __doc__)
    _shared.add_model_and_inputs(parser, "audio files and/or folders (without --model, the first one is the model)")
    parser.add_argument("-o", "--output", required=True, help="embeddings file: .parquet or .npy")
    parser.add_argument("--part-size", type=int, default=1024,
                        help="files per streamed part (the unit of resuming and of data-parallel slices)")
    parser.add_argument("--no-resume", action="store_true", help="redo parts a killed run left behind")
    _shared.add_overwrite_option(parser)
    _skipping.add_strict_option(parser)
    _shared.add_model_options(parser)
    parser.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                        help="onnx: MODEL is a `clapkit export onnx` directory, run with onnxruntime")
    _ray.add_engine_options(parser)
    return parser


def _load_onnx(path, args):
    from clapkit.inference.onnx import OnnxCLAPModel
    from clapkit.io.errors import PretrainedError

    try:
        model = OnnxCLAPModel(path, batch_size=16 if args.batch_size is None else args.batch_size)
    except (PretrainedError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    model.max_seconds = args.max_decode_seconds
    return model


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.model is None:  # the older spelling: clapkit embed MODEL INPUTS...
        if len(args.inputs) < 2:
            raise CommandError("give the model and the audio: clapkit embed --model MODEL INPUTS... -o OUT")
        args.model, args.inputs = args.inputs[0], args.inputs[1:]
    elif not args.inputs:
        raise CommandError("no audio INPUTS given")
    # An unfinished run's parts live in <output>.parts/ and the output itself does not exist
    # yet, so refusing an existing output never blocks resuming.
    output = _shared.check_output(args.output, _shared.EMBEDDING_SUFFIXES, overwrite=args.overwrite)
    if args.part_size < 1:
        raise CommandError(f"--part-size must be at least 1, got {args.part_size}")
    _ray.check_engine_options(args)
    files, skips = _skipping.usable_files(args.inputs, args.strict)
    if not files:
        raise CommandError(f"no usable audio file: {skips.summary(skips.report(output, args.quiet))}")
    ranks = rank_from_env()
    early_start = args.runtime == "torch" and args.workers > 1 and args.engine == "plain"
    spec = read_inference(args.model) if early_start else None
    lengths = _lengths(spec, files)
    # Still no torch here: the early worker forks from a process without torch's threads.
    early = EarlyDecoder(functools.partial(prepare_audio, spec=spec, max_seconds=args.max_decode_seconds),
                         decode_order(files, part_size=args.part_size, ranks=ranks,
                                      lengths=lengths)) if spec is not None else None
    try:
        args.device = device_for_rank(args.device)
        if args.runtime == "onnx":
            model = _load_onnx(args.model, args)
        else:
            model = _shared.load_model(args.model, args, towers=AUDIO_ONLY)
        if model.inference != spec:  # no early start, or the model prepares audio otherwise
            if early is not None:
                early.close()  # decode again
                early = None
            lengths = _lengths(model.inference, files)
        from clapkit.io.checkpoint import PretrainedError

        with _shared.progress_bar(len(files), "embedding", args.quiet) as advance:
            try:
                if args.engine == "ray":
                    run = _ray.embed_with_ray(model, args, files, output, lengths=lengths, progress=advance,
                                              may_skip=skips.may_skip)
                else:
                    run = embed_corpus(model, files, output, part_size=args.part_size, workers=args.workers,
                                       ranks=ranks, resume=not args.no_resume, lengths=lengths,
                                       progress=advance, early=early, may_skip=skips.may_skip)
            except EmbeddingInputError as exc:
                raise CommandError(str(exc)) from None
            except PretrainedError as exc:  # the model refused the input (an ONNX graph's shapes)
                raise CommandError(str(exc)) from None
    finally:
        if early is not None:
            early.close()
    if run.embeddings is None:
        if not args.quiet:
            _shared.eprint(f"rank {ranks.rank}/{ranks.world_size}: parts done in {run.store.directory}; "
                           f"the last rank to finish writes {output}")
        return 0
    skips.extend([Skipped(path, reason) for path, reason in run.skipped])
    left_out = {path for path, _ in run.skipped}
    keep = [i for i, f in enumerate(files) if str(f) not in left_out]
    if not keep:
        raise CommandError(f"no usable audio file: {skips.summary(skips.report(output, args.quiet))}")
    written = write_embeddings(output, [str(files[i]) for i in keep], run.embeddings[keep],
                               model_metadata(model, args.model))
    run.store.remove()
    listed = skips.report(output, args.quiet)
    if not args.quiet:
        resumed = f" ({run.parts_skipped} of {run.num_parts} parts resumed)" if run.parts_skipped else ""
        _shared.eprint(f"wrote {len(keep)} embeddings of dim {run.embeddings.shape[1]} to {written[0]}{resumed}")
        if skips:
            _shared.eprint(skips.summary(listed))
    return PARTIAL if skips else 0


def _lengths(spec, files):
    """Durations from the headers when the model takes clips whole (fusion), for length buckets."""
    if not getattr(spec, "fusion", False):
        return None
    from clapkit.audio import audio_info

    return [audio_info(f).duration for f in files]
