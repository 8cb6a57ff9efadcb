"""Your own (audio, caption) pairs, straight from a CSV / JSONL table or a folder of clips.

The fine-tuning datamodule: no shards, no official layout. A table lists one clip per row; the
column names are configuration (``audio_column: file``, ``caption_column: caption``), so a
table written by another tool is used as it is. A caption cell may hold one caption or a JSON
list of them (one is drawn per training step). Audio paths are relative to ``audio_root``
(default: the table's folder) or absolute.

A folder works too: ``train: clips/`` reads the first of :data:`CAPTION_FILES` inside it, with
paths relative to the folder.

Rows without a caption, rows that cannot be read (not UTF-8, not valid JSON) and clips whose file
is absent are left out at setup, counted by reason (``data/<stage>_skipped_<reason>``) and
reported in one warning; a table that is missing, has
no such columns or no usable row is refused naming the file. Below some tens of thousands of
clips this beats shards: nothing to write first, random access for shuffling.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from clapkit.datamodules.clips import ClipDataModule, ClipRecord, ClipSet, LayoutError
from clapkit.utils.tables import MissingColumns, cell_list, iter_table

log = logging.getLogger(__name__)

#: Names a folder's captions table may have, in the order they are looked for.
CAPTION_FILES = ("captions.csv", "captions.jsonl", "metadata.csv", "metadata.jsonl")


def find_table(source: str | Path) -> Path:
    """The captions table of ``source``: the file itself, or the first of
    :data:`CAPTION_FILES` inside a folder."""
    source = Path(source)
    if source.is_dir():
        for name in CAPTION_FILES:
            if (source / name).is_file():
                return source / name
        raise LayoutError(f"{source}: folder has no captions table (looked for {', '.join(CAPTION_FILES)})")
    if not source.is_file():
        raise LayoutError(f"{source}: no such captions table (a CSV or JSONL file, or a folder with one)")
    return source


def _rows(table: Path, audio_column: str, caption_column: str, left_out: Counter) -> Iterator[dict]:
    """The readable rows of a table, one at a time; unreadable ones are counted in ``left_out``."""
    seen = usable = 0
    first: dict | None = None
    try:
        for row, _ in iter_table(table, (audio_column, caption_column)):
            if row is None:
                left_out["unreadable"] += 1
                continue
            seen += 1
            first = first or row
            usable += audio_column in row and caption_column in row
            yield row
    except MissingColumns as exc:
        raise LayoutError(str(exc)) from None
    if seen and not usable:
        raise LayoutError(f"{table}: no row has the columns {audio_column!r} and {caption_column!r}; "
                          f"first row has {sorted(first or {})}")


def read_caption_table(
    source: str | Path,
    audio_column: str = "audio",
    caption_column: str = "text",
    audio_root: str | Path | None = None,
) -> ClipSet:
    """The clips of a captions table (see the module docstring), absent files left out and counted.

    Args:
        source: CSV / JSONL file, or a folder holding one of :data:`CAPTION_FILES`.
        audio_column: column with the audio path.
        caption_column: column with the caption (or a JSON list of captions).
        audio_root: folder relative audio paths start from (default: the table's folder).
    """
    table = find_table(source)
    root = Path(audio_root) if audio_root is not None else table.parent
    records: list[ClipRecord] = []
    left_out: Counter = Counter()
    for number, row in enumerate(_rows(table, audio_column, caption_column, left_out), 1):
        audio = str(row.get(audio_column) or "").strip()
        texts = cell_list(row.get(caption_column))
        if not audio or not texts:
            left_out["no_audio" if not audio else "no_text"] += 1
            continue
        path = Path(audio) if Path(audio).is_absolute() else root / audio
        records.append(ClipRecord(path, texts, None, f"{table.stem}:{number}", {"source": audio}))
    kept = [r for r in records if r.path.is_file()]
    if len(kept) < len(records):
        left_out["missing"] += len(records) - len(kept)
    problem = None
    if not kept:
        problem = (f"{table}: no usable row ({sum(left_out.values())} left out: "
                   f"{', '.join(f'{n} {reason}' for reason, n in sorted(left_out.items()))}); audio paths "
                   f"are relative to {root}")
    elif left_out:
        first = next((r.path for r in records if not r.path.is_file()), None)
        log.warning("%s: %d of %d rows left out (%s)%s", table, sum(left_out.values()),
                    sum(left_out.values()) + len(kept), ", ".join(f"{n} {r}" for r, n in sorted(left_out.items())),
                    f"; first missing file: {first}" if first else "")
    return ClipSet(kept, left_out=left_out, problem=problem)


class CaptionTableDataModule(ClipDataModule):
    """Fine-tuning data: (audio, caption) rows of a CSV / JSONL table or a folder with one.

    The loader arguments (``audio``, ``batch_size``, ``num_workers``) are
    :class:`~clapkit.datamodules.clips.ClipDataModule`'s; with ``clapkit fit --model DIR`` the
    ``audio`` window, rate and padding are the model directory's own. Validation and test
    batches carry every caption of a clip (retrieval metrics).

    Args:
        train: training table (CSV / JSONL) or folder.
        val: validation table or folder; ``None``: no validation (every step trains).
        test: test table or folder (``clapkit test``); ``None``: none.
        audio_column: column holding the audio path (``file``, ``path``, ...).
        caption_column: column holding the caption (``caption``, ``description``, ...), or a
            JSON list of captions.
        audio_root: folder relative audio paths start from (default: each table's folder).
    """

    def __init__(
        self,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        audio_column: str = "audio",
        caption_column: str = "text",
        audio_root: str | None = None,
        **kwargs,
    ):
        super().__init__(eval_captions=True, augment=None, **kwargs)
        self.tables = {"fit": train, "validate": val, "test": test}
        self.audio_column, self.caption_column, self.audio_root = audio_column, caption_column, audio_root

    def build_sets(self) -> dict[str, ClipSet]:
        return {stage: read_caption_table(source, self.audio_column, self.caption_column, self.audio_root)
                for stage, source in self.tables.items() if source is not None}

    def val_dataloader(self):
        # No validation table: an empty list tells Lightning there is nothing to validate.
        self.setup()
        return super().val_dataloader() if "validate" in self.sets else []
