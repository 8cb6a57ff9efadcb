"""Folder runs that skip bad files: the screening, embedding and report steps the inference
commands share (the rule itself is documented in :mod:`clapkit.audio.skips`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from clapkit.audio.skips import PARTIAL, SkipList, screen_headers
from clapkit.commands import CommandError, _shared

if TYPE_CHECKING:
    import torch


def add_strict_option(parser: argparse.ArgumentParser) -> None:
    """``--strict``: refuse the run at the first bad file (the default skips and lists it)."""
    parser.add_argument("--strict", action="store_true",
                        help="refuse the whole run at the first bad file instead of skipping it "
                             "(exit 2, nothing written); by default bad files inside a folder are skipped, "
                             "listed in <output>.skipped.csv and the exit status is 3")


def usable_files(inputs: Sequence[str], strict: bool) -> tuple[list[Path], SkipList]:
    """The audio files of INPUTS whose header is readable, and the skip list of the others
    (a bad file named directly, or any with ``strict``, is refused in one line)."""
    skips = SkipList.for_inputs(inputs, strict=strict)
    return screen(_shared.discover_audio(inputs), skips), skips


def screen(files: Sequence[Path], skips: SkipList) -> list[Path]:
    """:func:`clapkit.audio.skips.screen_headers`, a refusal as a :class:`CommandError`."""
    from clapkit.audio import AudioLoadError

    try:
        return screen_headers(files, skips)
    except AudioLoadError as exc:
        raise CommandError(str(exc)) from None


def refuse_if_none(files: Sequence[Path], skips: SkipList, output, quiet: bool) -> None:
    """No usable file at all: list the skipped ones and refuse the run."""
    if not files:
        raise CommandError(f"no usable audio file: {skips.summary(skips.report(output, quiet))}")


def finish(skips: SkipList, output, quiet: bool) -> int:
    """Write the skip list, print its summary; the exit status (0, or :data:`PARTIAL`)."""
    listed = skips.report(output, quiet)
    if skips and not quiet:
        _shared.eprint(skips.summary(listed))
    return PARTIAL if skips else 0


def embed_files_skipping(model, files: Sequence[Path], skips: SkipList, *, workers: int = 1,
                         quiet: bool = False) -> tuple[list[Path], torch.Tensor]:
    """Embed ``files``, skipping those that cannot be decoded or whose embedding is not finite.

    Decoding runs ahead of the model in ``workers`` processes (the decoder of ``clapkit embed``,
    :class:`~clapkit.inference.decoding.Decoder`). Returns the files embedded (in order) and
    their embeddings. A file that may not be skipped (named on the command line, or
    ``--strict``) stops the run with a :class:`CommandError`.
    """
    import torch

    from clapkit.inference.decoding import Decoder
    from clapkit.inference.embedding import EmbeddingInputError, embed_files

    paths = [str(f) for f in files]
    with _shared.progress_bar(len(files), "embedding", quiet) as advance, \
            Decoder(model.prepare_audio, workers) as decoder:
        try:
            done = embed_files(model, paths, decoder, may_skip=skips.may_skip, progress=advance)
        except EmbeddingInputError as exc:
            raise CommandError(str(exc)) from None
    for path, reason in done.skipped:
        skips.add(path, reason)
    left_out = {path for path, _ in done.skipped}
    keep = [i for i, path in enumerate(paths) if path not in left_out]
    return [files[i] for i in keep], torch.from_numpy(done.embeddings[keep])
