"""Cross-modal search with a tri-modal model (AudioCLIP): one query, ranked items of another modality.

The query is a text (``--text`` or ``--query``), an image file (``--image`` or ``--query-image``) or
an audio file (``--query-audio``; the older ``--audio`` still works but is deprecated, since
every other command's ``--audio`` names input files).
The items are the audio or image files of FOLDER (or ``--folder``; searched recursively; which modality
is decided by ``--target`` or, by default, by the files found) or the lines of ``--texts``
(one candidate text per line). Items are ranked by cosine similarity of the model's
embeddings; the top-k are printed (``rank<TAB>score<TAB>item``) and, with ``-o``, written
atomically as CSV (``rank, item, score``; an existing CSV is refused unless ``--overwrite``).

Bad audio files in FOLDER (unreadable, truncated, empty, NaN or Inf samples) are skipped:
each is printed on stderr with its reason (and listed in ``<output>.skipped.csv`` with
``-o``), the others are ranked, and the exit status is 3 (0 when nothing was skipped).
``--strict`` refuses the run at the first bad file instead (exit 2).

example:
  clapkit convert audioclip AudioCLIP-Full-Training.pt -o models/audioclip
  clapkit query --model models/audioclip --text "a dog barking" recordings/
  clapkit query --model models/audioclip --query-audio bark.wav photos/ --top-k 5
  clapkit query --model models/audioclip --image cat.jpg --texts labels.txt -o ranked.csv
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from clapkit.audio import AudioLoadError
from clapkit.audio.io import AUDIO_EXTENSIONS
from clapkit.audio.skips import SkipList
from clapkit.commands import CommandError, _shared, _skipping
from clapkit.utils.atomic import write_csv
from clapkit.utils.finite import NonFiniteError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def build_parser():
    parser = _shared.make_parser("query", __doc__)
    parser.add_argument("--model", required=True, help="native model directory (or official checkpoint)")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", "--query", dest="text", help="text query")
    query.add_argument("--image", "--query-image", dest="image", metavar="FILE", help="image file query")
    query.add_argument("--query-audio", dest="audio", metavar="FILE", help="audio file query")
    # `--audio` names the input files in every other command; here it was the query clip.
    query.add_argument("--audio", dest="old_audio", metavar="FILE",
                       help="deprecated spelling of --query-audio (elsewhere --audio means input files)")
    parser.add_argument("inputs", nargs="?", default=None, metavar="FOLDER",
                        help="folder of audio or image files to rank")
    items = parser.add_mutually_exclusive_group()
    items.add_argument("--folder", help="the same as FOLDER (kept for older command lines)")
    items.add_argument("--texts", help="text file with one candidate text per line (instead of FOLDER)")
    parser.add_argument("--target", choices=["auto", "audio", "image"], default="auto",
                        help="modality of --folder files (auto: whichever kind the folder holds)")
    parser.add_argument("--top-k", type=int, default=10, help="results to show and write")
    parser.add_argument("-o", "--output", default=None, help="also write the ranking to this CSV")
    _shared.add_overwrite_option(parser)
    _skipping.add_strict_option(parser)
    _shared.add_model_options(parser)
    return parser


def _files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in extensions)


def _items(args) -> tuple[str, list[str]]:
    """``(modality, items)``: file paths for audio/image, lines for text."""
    if args.texts is not None:
        path = Path(args.texts)
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise CommandError(f"{path}: no candidate texts (one per line expected)")
        return "text", lines
    folder = Path(args.folder)
    if not folder.is_dir():
        raise CommandError(f"{folder}: not a folder")
    found = {"audio": _files(folder, AUDIO_EXTENSIONS), "image": _files(folder, IMAGE_EXTENSIONS)}
    if args.target == "auto":
        kinds = [kind for kind, files in found.items() if files]
        if len(kinds) != 1:
            what = "both audio and image files" if kinds else "no audio or image files"
            raise CommandError(f"{folder}: holds {what}; pass --target audio or --target image")
        target = kinds[0]
    else:
        target = args.target
    if not found[target]:
        raise CommandError(f"{folder}: no {target} files ({', '.join(AUDIO_EXTENSIONS if target == 'audio' else IMAGE_EXTENSIONS)})")
    return target, [str(p) for p in found[target]]


class _Embedder:
    """Embeds any modality with a loaded model (a :class:`~clapkit.inference.clap.CLAPModel`)."""

    def __init__(self, model, batch_size: int):
        self.model = model
        self.batch_size = batch_size
        towers = getattr(model.model, "towers", {})
        self.available = set(towers)

    def require(self, modality: str, role: str) -> None:
        if modality not in self.available:
            raise CommandError(f"the model has no {modality} tower for the {role} "
                               f"(towers: {', '.join(sorted(self.available)) or 'none'})")

    def __call__(self, modality: str, items: list[str]) -> torch.Tensor:
        if modality == "text":
            return self.model.embed_text(items)
        if modality == "audio":
            try:
                return self.model.embed_audio(items)
            except (AudioLoadError, NonFiniteError) as exc:
                raise CommandError(str(exc)) from None
        try:
            return self.model.embed_image(items, batch_size=self.batch_size)
        except (FileNotFoundError, ValueError) as exc:  # NonFiniteError is a ValueError
            raise CommandError(str(exc)) from None


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.old_audio is not None:
        _shared.deprecated_alias("--audio", "--query-audio")
        args.audio = args.old_audio
    if args.inputs is not None:
        if args.folder is not None or args.texts is not None:
            raise CommandError("give the items once: FOLDER, --folder or --texts")
        args.folder = args.inputs
    if args.folder is None and args.texts is None:
        raise CommandError("give the items to rank: FOLDER (or --folder) or --texts FILE")
    if args.top_k < 1:
        raise CommandError(f"--top-k must be at least 1, got {args.top_k}")
    output = _shared.check_output(args.output, (".csv",), overwrite=args.overwrite) if args.output else None
    if args.text is not None:
        if not args.text.strip():
            raise CommandError("--text is empty")
        query_modality, query = "text", args.text
    elif args.image is not None:
        query_modality, query = "image", args.image
        if not Path(query).is_file():
            raise CommandError(f"{query}: no such file")
    else:
        query_modality, query = "audio", args.audio
        if not Path(query).is_file():
            raise CommandError(f"{query}: no such file")
    target, items = _items(args)
    if target == query_modality:
        raise CommandError(f"query and items are both {target}; query another modality")
    model = _shared.load_model(args.model, args)
    embed = _Embedder(model, args.batch_size)
    embed.require(query_modality, "query")
    embed.require(target, "items")
    query_embedding = F.normalize(embed(query_modality, [query]).float(), dim=-1)
    skips = SkipList(strict=args.strict)
    if target == "audio":  # bad files of the folder are skipped, listed and counted
        files = _skipping.screen([Path(i) for i in items], skips)
        _skipping.refuse_if_none(files, skips, output, args.quiet)
        kept, audio = _skipping.embed_files_skipping(model, files, skips, workers=args.workers, quiet=args.quiet)
        _skipping.refuse_if_none(kept, skips, output, args.quiet)
        items, item_embeddings = [str(p) for p in kept], F.normalize(audio.float(), dim=-1)
    else:
        item_embeddings = F.normalize(embed(target, items).float(), dim=-1)
    scores = (query_embedding @ item_embeddings.T)[0]
    k = min(args.top_k, len(items))
    top = torch.topk(scores, k)
    rows = [[rank, items[j], f"{score:.6f}"]
            for rank, (score, j) in enumerate(zip(top.values.tolist(), top.indices.tolist()), start=1)]
    for rank, item, score in rows:
        print(f"{rank}\t{score}\t{item}")
    if output is not None:
        write_csv(output, ["rank", "item", "score"], rows)
    return _skipping.finish(skips, output, args.quiet)

