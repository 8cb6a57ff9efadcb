"""Export a clapkit CLAP model as a Hugging Face transformers ClapModel directory.

MODEL_DIR is a native clapkit model (``clapkit convert``, a training export) with an HTSAT
audio tower and a RoBERTa text tower; HF_OUT becomes a directory that
``transformers.ClapModel.from_pretrained`` and ``ClapProcessor.from_pretrained`` load:
``config.json``, ``model.safetensors``, the tokenizer and the ``ClapFeatureExtractor`` settings
(``preprocessor_config.json``) equal to the model's front end. Where transformers'
preprocessing differs from the clapkit model's (int16 round trip, random crops of long clips,
the fused global view's antialiasing), a note says so. A model ``ClapModel`` cannot express
(another audio or text tower, a front end ``ClapFeatureExtractor`` cannot compute) is refused
with the reason.

example:
  clapkit export hf models/clap -o hf/my-clap
  python -c "from transformers import ClapModel; ClapModel.from_pretrained('hf/my-clap')"
"""

from __future__ import annotations

from clapkit.commands import CommandError, _shared


def build_parser():
    parser = _shared.make_parser("export hf", __doc__)
    parser.add_argument("model", help="native clapkit model directory")
    parser.add_argument("-o", "--output", required=True, help="ClapModel directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return parser


def main(argv: list[str]) -> int:
    from clapkit.interop.hf_clap_export import export_hf_clap
    from clapkit.pretrained import PretrainedError

    args = build_parser().parse_args(argv)
    try:
        result = export_hf_clap(args.model, args.output, overwrite=args.overwrite)
    except (PretrainedError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None
    if not args.quiet:
        _shared.eprint(f"{args.model}: {result.description} -> {result.path}")
        for note in result.notes:
            _shared.eprint(f"note: {note}")
    return 0
