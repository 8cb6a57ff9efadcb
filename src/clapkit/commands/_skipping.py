"""Folder runs that skip bad files: the screening, embedding and report steps the inference
commands share (the rule itself is documented in :mod:`clapkit.audio.skips`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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

    Returns the files embedded (in order) and their embeddings. A file that may not be skipped
    (named on the command line, or ``--strict``) stops the run with a :class:`CommandError`.
    """
    from clapkit.audio import AudioLoadError
    from clapkit.inference.embedding import Unusable, prefetched
    from clapkit.utils.finite import NonFiniteError

    def prepare(path: Path):
        try:
            return model.prepare_audio(path)
        except (AudioLoadError, ValueError) as exc:
            message = str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
            if not skips.may_skip(path):
                raise CommandError(message) from None
            return Unusable(message)

    bad: set[Path] = set()
    with _shared.progress_bar(len(files), "embedding", quiet) as advance:
        while True:
            wanted = [f for f in files if f not in bad]
            kept: list[Path] = []

            def clips(pool, wanted=wanted, kept=kept):
                results = (prefetched(lambda p: pool.submit(prepare, p), wanted, max(workers, 2 * model.batch_size))
                           if pool is not None else (prepare(p) for p in wanted))
                for path, clip in zip(wanted, results):
                    if isinstance(clip, Unusable):
                        skips.add(path, clip.reason)
                        bad.add(path)
                        advance(1)
                        continue
                    kept.append(path)
                    yield clip

            try:
                if workers <= 1:
                    embedded = model.embed_prepared(clips(None), progress=advance)
                else:
                    with ThreadPoolExecutor(max_workers=workers) as pool:
                        embedded = model.embed_prepared(clips(pool), progress=advance)
            except NonFiniteError as exc:
                path = kept[exc.index] if exc.index is not None else None
                if path is None or not skips.may_skip(path):
                    raise CommandError(str(exc.named(str(path)))) from None
                skips.add(path, str(exc.named(str(path))))
                bad.add(path)  # files skipped so far are left out of the retry, so none is listed twice
                continue
            return kept, embedded
