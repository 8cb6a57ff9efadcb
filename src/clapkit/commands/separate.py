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
relative paths; outputs are written atomically, and every input header is checked before any
model work, so a corrupt file stops the run with nothing written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from clapkit.audio import AudioLoadError, load_audio, resample, save_audio
from clapkit.audio.io import AUDIO_EXTENSIONS
from clapkit.commands import CommandError
from clapkit.commands._shared import check_headers, discover_audio, make_parser, progress_bar


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
    parser.add_argument("--overlap", type=float, default=0.5, help="chunk overlap fraction (0 or 0.5)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--batch-size", type=int, default=4, help="chunks per forward pass")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


# --------------------------------------------------------------------------- chunking


def chunk_windows(total: int, chunk: int, hop: int) -> list[tuple[int, np.ndarray]]:
    """``(start, weight)`` per chunk; weights sum to 1 at every sample of ``[0, total)``.

    Interior chunks use a periodic Hann window (which sums to 1 at 50 % overlap); the first
    chunk is flat on its leading half and the last on its trailing half, so the signal edges
    keep full weight. Without overlap the weights are rectangular.
    """
    if total <= chunk:
        return [(0, np.ones(chunk, dtype=np.float64))]
    starts = list(range(0, total - chunk, hop)) + [total - chunk]
    starts = sorted(set(starts))
    weights = []
    for i, start in enumerate(starts):
        if hop >= chunk:
            w = np.ones(chunk)
        else:
            w = np.hanning(chunk + 1)[:-1] if chunk % 2 == 0 else np.hanning(chunk)
            w = w.astype(np.float64)
            if i == 0:
                w[: chunk // 2] = 1.0
            if i == len(starts) - 1:
                w[chunk // 2 :] = 1.0
        weights.append((start, w))
    norm = np.zeros(total)
    for start, w in weights:
        norm[start : start + chunk] += w
    return [(start, w / norm[start : start + chunk]) for start, w in weights]


@torch.inference_mode()
def separate_waveform(task, wave: np.ndarray, condition: torch.Tensor, chunk: int, *, overlap: float = 0.5,
                      batch_size: int = 4) -> np.ndarray:
    """Separate ``wave`` (``[C, T]`` at the model's rate) chunk by chunk; returns ``[C, T]``."""
    channels, total = wave.shape
    hop = max(1, int(round(chunk * (1.0 - overlap))))
    plan = chunk_windows(total, chunk, hop)
    padded = np.pad(wave, ((0, 0), (0, max(0, chunk - total))))
    items = [(c, start, w) for c in range(channels) for start, w in plan]
    out = np.zeros((channels, max(total, chunk)), dtype=np.float64)
    device = next(task.parameters()).device
    for i in range(0, len(items), batch_size):
        group = items[i : i + batch_size]
        batch = torch.from_numpy(np.stack([padded[c, s : s + chunk] for c, s, _ in group])).float().to(device)
        est = task(batch, condition.to(device).expand(len(group), -1)).waveform.float().cpu().numpy()
        for (c, s, w), row in zip(group, est):
            out[c, s : s + chunk] += w * row
    return out[:, :total].astype(np.float32)


# --------------------------------------------------------------------------- queries


def _embed_audio_files(task, files: Sequence[str]) -> torch.Tensor | None:
    if not files:
        return None
    query = task.query
    embeddings = []
    for file in files:
        try:
            wave, _ = load_audio(file, sample_rate=query.sample_rate)
        except AudioLoadError as exc:
            raise CommandError(f"query audio {exc}") from None
        embeddings.append(query.embed_audio(torch.from_numpy(wave)[None]))
    return torch.cat(embeddings).mean(0, keepdim=True)


def build_query(task, args) -> torch.Tensor:
    """The ``[1, 2D]`` condition from the command-line queries."""
    from clapkit.encoders.separation import build_condition, interpolate_queries

    sides = []
    for text, files in ((args.query, args.query_audio), (args.negative, args.negative_audio)):
        text_emb = task.query.embed_text([text]) if text else None
        audio_emb = _embed_audio_files(task, files)
        sides.append(None if text_emb is None and audio_emb is None
                     else interpolate_queries(audio_emb, text_emb, args.audio_weight))
    if sides[0] is None and sides[1] is None:
        raise CommandError("give a query: --query, --negative, --query-audio or --negative-audio")
    return build_condition(*sides)


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


def _load_task(path: str, device: str):
    from clapkit.inference import resolve_device
    from clapkit.lightning_modules.separation import SeparationTask
    from clapkit.pretrained import PretrainedError, load_native

    try:
        model, _, inference = load_native(path)
    except (PretrainedError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None
    if not isinstance(model, SeparationTask):
        raise CommandError(f"{path}: a {type(model).__name__}, not a separation model (SeparationTask)")
    return model.to(resolve_device(device)).eval(), inference


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 0.0 <= args.overlap < 1.0:
        raise CommandError(f"--overlap must be in [0, 1), got {args.overlap}")
    if not (args.query or args.negative or args.query_audio or args.negative_audio):
        raise CommandError("give a query: --query, --negative, --query-audio or --negative-audio")
    files = discover_audio(args.inputs)
    check_headers(files)
    targets = output_paths(files, args.inputs, args.output)
    existing = [str(p) for p in targets if p.exists()]
    if existing and not args.overwrite:
        raise CommandError(f"{existing[0]}: already exists (pass --overwrite to replace)")
    task, inference = _load_task(args.model, args.device)
    rate = task.separator.sample_rate
    chunk = int(round(inference.clip_samples * rate / inference.sample_rate))
    condition = build_query(task, args)
    # Decode everything first: a file whose header was fine but whose data is not must
    # stop the run before anything is written.
    decoded = []
    for file in files:
        try:
            decoded.append(load_audio(file, mono=False))
        except AudioLoadError as exc:
            raise CommandError(str(exc)) from None
    with progress_bar(len(files), "separating", args.quiet) as advance:
        for (wave, orig_rate), target in zip(decoded, targets):
            at_model = resample(wave, orig_rate, rate)
            est = separate_waveform(task, np.atleast_2d(at_model), condition, chunk, overlap=args.overlap,
                                    batch_size=args.batch_size)
            est = resample(est, rate, orig_rate)
            est = np.pad(est, ((0, 0), (0, max(0, wave.shape[-1] - est.shape[-1]))))[:, : wave.shape[-1]]
            subtype = "FLOAT" if target.suffix.lower() == ".wav" else None
            save_audio(target, est if est.shape[0] > 1 else est[0], orig_rate, subtype=subtype)
            advance(1)
    if not args.quiet:
        print(f"wrote {len(targets)} file(s) under {os.path.commonpath([str(t.parent) for t in targets])}")
    return 0
