"""Export a clapkit CLAP model as a Hugging Face transformers ClapModel directory.

MODEL_DIR is a native clapkit model (``clapkit convert``, a training export; or an official
LAION-CLAP ``.pt`` with ``--text-model DIR``, converted on the way) with an HTSAT
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
  clapkit export hf 630k-audioset-best.pt --text-model hf/roberta-base -o hf/clap-630k
  python -c "from transformers import ClapModel; ClapModel.from_pretrained('hf/my-clap')"
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from clapkit.commands import CommandError, _shared


def _native(args, scratch: Path) -> str:
    """The model as a native directory: an official checkpoint is converted (with ``--text-model``) first."""
    from clapkit.hub.convert import save_converted
    from clapkit.hub.directory import is_native
    from clapkit.interop.registry import convert_checkpoint

    model = Path(args.model)
    if is_native(model) or not model.is_file():
        return str(model)
    converted = convert_checkpoint(model, text_model=args.text_model, trust_pickle=args.trust_checkpoint)
    return str(save_converted(converted, scratch))


def build_parser():
    parser = _shared.make_parser("export hf", __doc__)
    _shared.add_model_alias(parser, "native clapkit model directory, or an official LAION-CLAP checkpoint")
    parser.add_argument("-o", "--output", required=True, help="ClapModel directory to create")
    parser.add_argument("--text-model", default=None,
                        help="official checkpoints only: local directory of the text tower's tokenizer + config")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="official checkpoints only: allow unpickling code (only for files you trust)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return parser


def main(argv: list[str]) -> int:
    from clapkit.export.hf import export_hf_clap
    from clapkit.io.errors import PretrainedError

    args = build_parser().parse_args(argv)
    args.model = _shared.model_argument(args.model, args.model_arg, "clapkit export hf --model MODEL_DIR -o DIR")
    _shared.refuse_training_checkpoint(args.model, "export hf")
    with tempfile.TemporaryDirectory(prefix="clapkit-export-hf-") as scratch:
        try:
            source = _native(args, Path(scratch) / "model")
            result = export_hf_clap(source, args.output, overwrite=args.overwrite)
        except (PretrainedError, FileNotFoundError) as exc:
            raise CommandError(_shared.cli_message(str(exc))) from None
    if not args.quiet:
        _shared.eprint(f"{args.model}: {result.description} -> {result.path}")
        for note in result.notes:
            _shared.eprint(f"note: {note}")
    return 0
