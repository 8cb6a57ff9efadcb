"""Convert an official checkpoint to clapkit's native format (config.yaml + model.safetensors).

FORMAT is the checkpoint family: ``laion-clap`` (the 630k/music/speech ``.pt`` files),
``msclap`` (``CLAP_weights_2022.pth`` / ``CLAP_weights_2023.pth``), ``audioclip``
(``AudioCLIP-*.pt``, ``ESRNXFBSP.pt``); ``auto`` detects it from the keys. The audio model,
fusion and text tower are read from the checkpoint's keys and shapes. ``--text-model`` is
the local directory holding the text tower's Hugging Face tokenizer and config
(``roberta-base`` for LAION-CLAP, ``bert-base-uncased`` for MS-CLAP 2022, ``gpt2`` for
MS-CLAP 2023; AudioCLIP needs none); its tokenizer and config are copied into the output,
the weights come from the checkpoint. Every checkpoint weight must be used and every model
weight filled, or the command fails listing both. Checkpoints are read with
``torch.load(weights_only=True)``.

``hf-clap`` converts a Hugging Face transformers ``ClapModel`` directory (``laion/clap-htsat-*``,
``laion/larger_clap_*``: ``config.json``, ``model.safetensors``, tokenizer,
``preprocessor_config.json``) given as CHECKPOINT; its tokenizer comes with it and its
feature extractor settings become the model's preprocessing (``auto`` detects it too).

``clapsep`` converts the released CLAPSep separator (``best_model.ckpt``) instead: the model
is built from ``--config`` (a LightningCLI config such as ``configs/clapsep/base.yaml``), its
query network being ``--clap`` (a converted LAION-CLAP directory, or the official ``.pt`` with
``--text-model``; default: the path the config names), the checkpoint is loaded into it with
full key coverage, and the result is a self-contained directory for ``clapkit separate``.
Weights the file does not hold are copied from the CLAP's audio encoder and listed; a file
missing a weight CLAPSep tunes (a LoRA'd layer's ``attn.qkv`` / ``attn.proj`` bias) is
refused unless ``--allow-partial``.

example:
  clapkit convert laion-clap 630k-audioset-best.pt --text-model hf/roberta-base -o models/clap
  clapkit convert laion-clap music_audioset_epoch_15_esc_90.14.pt --text-model hf/roberta-base \\
      -o checkpoints/clap_htsat_base
  clapkit convert hf-clap hf/clap-htsat-fused -o models/clap-htsat-fused
  clapkit convert laion-clap --model 630k-audioset-best.pt --text-model hf/roberta-base -o models/clap
  clapkit convert clapsep best_model.ckpt --config configs/clapsep/base.yaml --clap models/clap_htsat_base \
      -o models/clapsep
"""

from __future__ import annotations

from pathlib import Path

from clapkit.commands import CommandError, _shared
from clapkit.utils.atomic import check_target


def build_parser():
    from clapkit.interop.registry import CHECKPOINT_FORMATS

    parser = _shared.make_parser("convert", __doc__)
    parser.add_argument("format", choices=[*CHECKPOINT_FORMATS, "hf-clap", "clapsep", "auto"], help="checkpoint family")
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="official checkpoint file (hf-clap: the ClapModel directory); or --model")
    parser.add_argument("--model", default=None, metavar="CHECKPOINT", help="the same as CHECKPOINT")
    parser.add_argument("--text-model", help="local directory with the text tower's tokenizer and config "
                        "(LAION-CLAP and MS-CLAP; AudioCLIP's CLIP tokenizer ships with open_clip)")
    parser.add_argument("--config", help="clapsep: LightningCLI config whose model section builds the separator")
    parser.add_argument("--clap", help="clapsep: the query CLAP (converted directory, or official .pt with "
                        "--text-model); default: the config's query path")
    parser.add_argument("--allow-partial", action="store_true",
                        help="clapsep: accept a checkpoint missing tuned weights (filled from the CLAP, untuned)")
    parser.add_argument("-o", "--output", required=True, help="model directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow unpickling code from the checkpoint (only for files you trust)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return parser


def main(argv: list[str]) -> int:
    from clapkit.hub.convert import save_converted
    from clapkit.interop.registry import convert_checkpoint
    from clapkit.io.errors import PretrainedError

    parser = build_parser()
    args = parser.parse_args(argv)
    args.checkpoint = _shared.model_argument(args.model, args.checkpoint,
                                             "clapkit convert FORMAT CHECKPOINT -o DIR (or --model CHECKPOINT)")
    # Before any work: the output may not be, contain or lie inside an input, and --overwrite
    # replaces only a model directory (clapkit.utils.atomic.check_target; checked again under its lock).
    check_target(args.output, inputs=_inputs(args), overwrite=args.overwrite)
    if args.format == "clapsep":
        if args.config is None:
            parser.error("clapsep needs --config (the separator's LightningCLI config)")
        return _convert_clapsep(args)
    if args.format == "hf-clap" or (args.format == "auto" and Path(args.checkpoint).is_dir()):
        return _convert_hf_clap(args)
    _refuse_directory(args.format, Path(args.checkpoint))
    try:
        converted = convert_checkpoint(args.checkpoint, format=None if args.format == "auto" else args.format,
                                       text_model=args.text_model, trust_pickle=args.trust_checkpoint)
        out = save_converted(converted, args.output, overwrite=args.overwrite, inputs=_inputs(args))
    except (PretrainedError, FileNotFoundError) as exc:
        raise CommandError(_shared.cli_message(str(exc))) from None
    if not args.quiet:
        _shared.eprint(f"{args.checkpoint}: {converted.description} -> {out}")
    return 0


def _inputs(args) -> list[str | None]:
    """What this conversion reads: the output may not be, contain or lie inside any of it."""
    return [args.checkpoint, args.text_model, args.config, args.clap]


def _refuse_directory(format: str, checkpoint: Path) -> None:
    """The official formats are single files; a directory given there is usually another layout."""
    from clapkit.hub.directory import is_native

    if not checkpoint.is_dir():
        return
    if is_native(checkpoint):
        raise CommandError(f"{checkpoint}: already a clapkit model directory; use it as --model directly")
    if (checkpoint / "config.json").is_file():
        raise CommandError(f"{checkpoint}: a directory, not a {format} checkpoint file; a Hugging Face "
                           f"ClapModel directory converts with: clapkit convert hf-clap {checkpoint} -o DIR")
    raise CommandError(f"{checkpoint}: a directory, not a {format} checkpoint file")


def _convert_clapsep(args) -> int:
    import tempfile

    from clapkit.hub.native import instantiate_model, read_model_section, save_pretrained
    from clapkit.interop.clapsep import load_clapsep_report
    from clapkit.io.errors import PretrainedError

    with tempfile.TemporaryDirectory(prefix="clapkit-clap-") as scratch:
        try:
            model_config = read_model_section(args.config)
            if args.clap is not None:
                query = model_config.setdefault("init_args", {}).setdefault("query", {})
                query.setdefault("init_args", {})["path"] = _clap_directory(args, Path(scratch) / "clap")
            task = instantiate_model(model_config)  # a SeparationTask config: its model is what is saved
            network = task.model
            report = load_clapsep_report(args.checkpoint, network, trust_pickle=args.trust_checkpoint,
                                         allow_partial=args.allow_partial)
            save_pretrained(network, args.output, network.inference, task.saved_model_config(model_config),
                            overwrite=args.overwrite, inputs=_inputs(args))
        except (PretrainedError, FileNotFoundError, ValueError) as exc:
            raise CommandError(str(exc)) from None
    if report.tuned_from_clap:
        _shared.eprint(f"warning: {len(report.tuned_from_clap)} tuned keys missing from {args.checkpoint} were "
                       f"filled with the CLAP's untuned values (--allow-partial): {', '.join(report.tuned_from_clap)}")
    if not args.quiet:
        if report.filled_from_clap:
            _shared.eprint(f"{len(report.filled_from_clap)} separator-encoder keys not in the file were copied from "
                           f"the CLAP: {', '.join(report.filled_from_clap)}")
        _shared.eprint(f"{args.checkpoint}: CLAPSep separator -> {args.output}")
    return 0


def _clap_directory(args, scratch: Path) -> str:
    """``--clap`` as a native directory: converted on the fly when it is an official checkpoint."""
    from clapkit.hub.convert import save_converted
    from clapkit.hub.directory import is_native
    from clapkit.interop.registry import convert_checkpoint

    clap = Path(args.clap)
    if is_native(clap):
        return str(clap.resolve())
    if not clap.is_file():
        raise CommandError(f"{clap}: --clap is neither a clapkit model directory nor a checkpoint file")
    converted = convert_checkpoint(clap, text_model=args.text_model, trust_pickle=args.trust_checkpoint)
    return str(save_converted(converted, scratch))


def _convert_hf_clap(args) -> int:
    import shutil

    from clapkit.hub.convert import save_converted
    from clapkit.interop.hf_clap import TEXT_ASSET, convert_hf_clap
    from clapkit.io.errors import PretrainedError

    try:
        converted = convert_hf_clap(args.checkpoint)
        try:
            out = save_converted(converted, args.output, overwrite=args.overwrite, inputs=_inputs(args))
        finally:
            shutil.rmtree(converted.assets[TEXT_ASSET], ignore_errors=True)  # copied into the output
    except (PretrainedError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None
    if not args.quiet:
        _shared.eprint(f"{args.checkpoint}: {converted.description} -> {out}")
    return 0
