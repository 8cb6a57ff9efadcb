"""Export a model: a training checkpoint to a model directory, or a model directory to ONNX / Hugging Face.

  clapkit export CKPT -o DIR            a Lightning checkpoint of `clapkit fit` -> native model directory
  clapkit export onnx MODEL_DIR -o DIR  audio (waveform or mel in) and text towers as ONNX graphs
  clapkit export hf MODEL_DIR -o DIR    a transformers ClapModel directory (see `clapkit export hf --help`)

(``onnx`` and ``hf`` also take the model as ``--model MODEL_DIR``; a training checkpoint is
exported to a model directory first.)

CKPT: the run's resolved config (``config.yaml``, which ``clapkit fit`` saves in the log
directory) is found beside the checkpoint or up to three folders above it (or given with
``--config``); the model is rebuilt from its ``model:`` section and every checkpoint weight
must fit. The inference window, padding and int16 round trip come from the config's data
section (override with ``--clip-seconds``, ``--pad``, ``--int16``/``--no-int16``); the sample
rate is the audio encoder's. The directory is what ``embed``, ``zeroshot``, ``retrieve`` and
``separate`` take as ``--model`` / MODEL.

onnx: ``audio.onnx`` (waveform ``[batch, clip_samples]`` in), optionally ``audio_mel.onnx``
(front-end log-mel ``[batch, n_mels, frames]`` in), ``text.onnx`` (``input_ids``,
``attention_mask``) with the tokenizer, and ``onnx.json``; batch (and token) axes are dynamic,
outputs are L2-normalised embeddings. ``clapkit embed --runtime onnx DIR ...`` runs it with
onnxruntime.

example:
  clapkit fit --config configs/quickstart/clap.yaml
  clapkit export outputs/quickstart/lightning_logs/version_0/checkpoints/epoch=4-step=640.ckpt -o models/quickstart
  clapkit zeroshot --model models/quickstart --labels labels.txt clips/ -o tags.csv
  clapkit export onnx --model models/quickstart -o models/quickstart-onnx --audio-input waveform mel
  clapkit embed --runtime onnx --model models/quickstart-onnx clips/ -o embeddings.npy
"""

from __future__ import annotations

import argparse
import importlib
import sys

from clapkit.commands import CommandError, _shared
from clapkit.utils.atomic import check_target


def build_parser():
    parser = _shared.make_parser("export", __doc__)
    parser.add_argument("checkpoint", help="Lightning .ckpt of a clapkit fit run (or: onnx / hf, see above)")
    parser.add_argument("-o", "--output", required=True, help="model directory to create")
    parser.add_argument("--config", help="the run's LightningCLI config.yaml (default: found beside the checkpoint)")
    parser.add_argument("--clip-seconds", type=float, help="inference window (default: the data section's)")
    parser.add_argument("--pad", choices=["repeatpad", "repeat", "pad"], help="padding of clips shorter than the window")
    parser.add_argument("--int16", action=argparse.BooleanOptionalAction, default=None,
                        help="quantise inputs to int16 first (None: the data section's setting)")
    parser.add_argument("--allow", action="append", default=[], metavar="MODULE",
                        help="a module the run's model section may name beyond clapkit, torch.nn and torch.optim "
                             "(repeatable; anything else is refused before it is imported)")
    _common(parser, "checkpoint")
    return parser


def build_onnx_parser():
    parser = _shared.make_parser("export onnx", __doc__)
    _shared.add_model_alias(parser, "native CLAP model directory (or a checkpoint clapkit.load reads)")
    parser.add_argument("-o", "--output", required=True, help="directory for the ONNX graphs")
    parser.add_argument("--audio-input", nargs="+", choices=["waveform", "mel"], default=["waveform"],
                        help="audio graphs to write: waveform in (audio.onnx), mel in (audio_mel.onnx)")
    parser.add_argument("--no-text", action="store_true", help="leave the text tower out")
    parser.add_argument("--text-model", default=None,
                        help="official checkpoints only: local directory of the text tower's tokenizer + config")
    _common(parser, "model")
    return parser


def _common(parser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help=f"allow unpickling code from the {what} (only for files you trust)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")


def main(argv: list[str]) -> int:
    if argv and argv[0] == "onnx":
        return _export_onnx(argv[1:])
    if argv and argv[0] == "hf":
        try:
            module = importlib.import_module("clapkit.commands.export_hf")
        except ModuleNotFoundError as exc:
            if exc.name != "clapkit.commands.export_hf":
                raise
            raise CommandError("hf: the Hugging Face exporter (clapkit.commands.export_hf) is not in this "
                               "installation") from None
        return int(module.main(argv[1:]) or 0)
    return _export_checkpoint(argv)


def _export_checkpoint(argv: list[str]) -> int:
    from clapkit.hub.run_export import export_checkpoint
    from clapkit.inference.load import PretrainedError

    args = build_parser().parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint, args.output, config=args.config, clip_seconds=args.clip_seconds,
                                pad=args.pad, int16_roundtrip=args.int16, overwrite=args.overwrite,
                                trust_pickle=args.trust_checkpoint, allow=args.allow)
    except (PretrainedError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None
    if not args.quiet:
        print(f"{args.checkpoint} -> {out}", file=sys.stderr)
    return 0


def _export_onnx(argv: list[str]) -> int:
    from clapkit.inference.load import PretrainedError, load
    from clapkit.interop.onnx import export_onnx

    args = build_onnx_parser().parse_args(argv)
    args.model = _shared.model_argument(args.model, args.model_arg, "clapkit export onnx --model MODEL_DIR -o DIR")
    _shared.refuse_training_checkpoint(args.model, "export onnx")
    inputs = [args.model, args.text_model]
    check_target(args.output, inputs=inputs, overwrite=args.overwrite)  # before the model loads
    try:
        model = load(args.model, text_model=args.text_model, trust_pickle=args.trust_checkpoint)
        result = export_onnx(model, args.output, audio_inputs=args.audio_input, text=not args.no_text,
                             overwrite=args.overwrite, inputs=inputs)
    except (PretrainedError, FileNotFoundError) as exc:
        raise CommandError(_shared.cli_message(str(exc))) from None
    if not args.quiet:
        names = ", ".join(path.name for path in result.files.values())
        print(f"{args.model} -> {result.directory} ({names}; embedding dim {result.embedding_dim})", file=sys.stderr)
    return 0
