"""Embed audio files with a CLAP model and write the embeddings with their file paths.

INPUTS are audio files and/or folders (searched recursively for .wav .flac .ogg .mp3 .opus
.aiff); the model is ``--model`` (``clapkit embed MODEL INPUTS...``, the model as the first
positional argument, is accepted too). Every file is resampled to the model's rate and padded, cropped (deterministically)
or fused as the model requires; embeddings are L2-normalised.

Output: ``.parquet`` (columns ``path`` and ``embedding``; usable as ``clapkit retrieve
--index``) or ``.npy`` (the [N, D] float32 array, plus ``<stem>.paths.txt`` with one path per
row and ``<stem>.meta.json``). Outputs are written atomically; a corrupt or empty audio file
stops the command before anything is written.

``--runtime onnx`` runs an ONNX export (``clapkit export onnx MODEL -o DIR``; MODEL is then DIR)
with onnxruntime on the CPU instead of PyTorch: same preprocessing, same embeddings to float
rounding; clips longer than the window of a fusion model are refused there.

example:
  clapkit embed --model models/clap recordings/ extra.wav -o embeddings.parquet --device cuda --precision bf16
  clapkit embed --runtime onnx --model models/clap-onnx recordings/ -o embeddings.npy
"""

from __future__ import annotations

from clapkit.commands import CommandError, _shared


def build_parser():
    parser = _shared.make_parser("embed", __doc__)
    _shared.add_model_and_inputs(parser, "audio files and/or folders (without --model, the first one is the model)")
    parser.add_argument("-o", "--output", required=True, help="embeddings file: .parquet or .npy")
    _shared.add_model_options(parser)
    parser.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                        help="onnx: MODEL is a `clapkit export onnx` directory, run with onnxruntime")
    return parser


def _load_onnx(path, args):
    from clapkit.interop.onnx import OnnxCLAPModel
    from clapkit.pretrained import PretrainedError

    try:
        return OnnxCLAPModel(path, batch_size=args.batch_size)
    except (PretrainedError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.model is None:  # the older spelling: clapkit embed MODEL INPUTS...
        if len(args.inputs) < 2:
            raise CommandError("give the model and the audio: clapkit embed --model MODEL INPUTS... -o OUT")
        args.model, args.inputs = args.inputs[0], args.inputs[1:]
    elif not args.inputs:
        raise CommandError("no audio INPUTS given")
    output = _shared.check_output(args.output, _shared.EMBEDDING_SUFFIXES)
    files = _shared.discover_audio(args.inputs)
    _shared.check_headers(files)
    model = _load_onnx(args.model, args) if args.runtime == "onnx" else _shared.load_model(args.model, args)
    if getattr(model, "refusal", None):  # a tagger: class scores, no embedding
        raise CommandError(f"{args.model}: {model.refusal}")
    embeddings = _shared.embed_files(model, files, workers=args.workers, quiet=args.quiet)
    written = _shared.write_embeddings(output, [str(f) for f in files], embeddings,
                                       _shared.model_metadata(model, args.model))
    if not args.quiet:
        _shared.eprint(f"wrote {len(files)} embeddings of dim {embeddings.shape[1]} to {written[0]}")
    return 0
