"""Reading a make-shards manifest (CSV or JSONL of audio paths and captions) one row at a time.

The manifest can have millions of rows: nothing here holds more than one. :func:`scan_manifest`
counts the rows in one pass (the key width depends on the count, and a manifest with no usable
row is refused before anything is written), :func:`iter_manifest` yields them again, and
:func:`plan_rows` turns each into the :class:`Row` a shard writer takes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clapkit.commands import CommandError
from clapkit.utils.tables import MissingColumns, TableRow, cell_list, iter_table


@dataclass
class Row:
    key: str
    path: str
    source: str
    meta: dict[str, Any]


def _listish(value: Any, split: str | None) -> list[str] | str:
    if isinstance(value, list):
        return [str(v) for v in value]
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
            if isinstance(parsed, list):
                return [str(v) for v in parsed]
        except ValueError:
            pass
    if split is not None:
        return [t.strip() for t in text.split(split) if t.strip()]
    return text


def read_manifest(path: Path, audio_column: str = "audio", text_column: str = "text") -> list[dict[str, Any]]:
    """The usable rows of a CSV or JSONL manifest (see :func:`iter_manifest`)."""
    return [row for row, _ in iter_manifest(path, audio_column, text_column) if row is not None]


def read_manifest_rows(path: Path, audio_column: str = "audio", text_column: str = "text",
                       ) -> tuple[list[dict[str, Any] | None], list[tuple[str, str]]]:
    """Rows of a manifest (``None`` at a skipped row's position) and the skipped rows with their
    reasons, as lists; :func:`iter_manifest` reads them one at a time."""
    scan_manifest(path, audio_column, text_column)
    rows: list[dict[str, Any] | None] = []
    skipped: list[tuple[str, str]] = []
    for row, skip in iter_manifest(path, audio_column, text_column):
        rows.append(row)
        if skip is not None:
            skipped.append(skip)
    return rows, skipped


@dataclass
class ManifestScan:
    """What one streaming pass over a manifest counted."""

    positions: int  # rows, skipped ones included (they keep their numbers, so keys stay stable)
    usable: int


def scan_manifest(path: Path, audio_column: str = "audio", text_column: str = "text") -> ManifestScan:
    """Count a manifest's rows in one streaming pass, refusing a manifest with no usable row."""
    positions = usable = 0
    first_skip = None
    for row, skip in iter_manifest(path, audio_column, text_column):
        positions += 1
        usable += row is not None
        first_skip = first_skip or skip
    if not positions:
        raise CommandError(f"{path}: manifest has no rows")
    if not usable:
        raise CommandError(f"{path}: no usable row ({positions} skipped, first: {first_skip[1]})")
    return ManifestScan(positions, usable)


def iter_manifest(path: Path, audio_column: str = "audio", text_column: str = "text") -> Iterator[tuple[dict[str, Any] | None, tuple[str, str] | None]]:
    """Each row of a CSV or JSONL manifest, read one at a time: ``(row, None)`` for a usable
    row, ``(None, (where, reason))`` for a skipped one.

    A row that is not UTF-8, not valid JSON, or lacks ``audio`` or ``text`` is skipped and
    counted (it keeps its position, so the other rows keep their keys), like a bad audio
    file; a manifest that cannot be read at all (missing, no header columns) is refused
    naming the file. Rows are streamed: memory does not grow with the manifest.

    ``audio_column`` / ``text_column`` name the manifest's columns for the audio path and the
    caption (``file``, ``caption``...); rows come back with them as ``audio`` and ``text``.
    """
    if not path.is_file():
        raise CommandError(f"{path}: manifest not found")
    position = 0
    renamed = (audio_column, text_column) != ("audio", "text")
    for row, skip in _raw_rows(path, audio_column, text_column):
        if row is not None and renamed:
            row = {k: v for k, v in row.items() if k not in ("audio", "text", audio_column, text_column)} | {
                "audio": row.get(audio_column), "text": row.get(text_column)}
        if row is not None and (not row.get("audio") or not _has_caption(row.get("text"))):
            what = "audio" if not row.get("audio") else "text"
            row, skip = None, (str(row.get("audio") or f"{path}: row {position + 1}"), f"manifest row has no {what}")
        position += 1
        yield row, skip


def _raw_rows(path: Path, audio_column: str, text_column: str) -> Iterator[TableRow]:
    try:
        yield from iter_table(path, (audio_column, text_column))
    except MissingColumns as exc:
        raise CommandError(f"{path}: needs columns {audio_column!r} and {text_column!r}; found {exc.found} "
                           "(--audio-column / --text-column name other columns)") from None


def _has_caption(text: Any) -> bool:
    return bool(cell_list(text))


def plan_rows(manifest: Iterable[dict[str, Any] | None], audio_root: Path, width: int | None = None) -> Iterator[Row]:
    """The :class:`Row` of each usable manifest position, one at a time; keys are the positions
    zero-padded to ``width`` digits (default: enough for the manifest, at least 6)."""
    if width is None:
        manifest = list(manifest)
        width = max(6, len(str(len(manifest))))
    for i, entry in enumerate(manifest):
        if entry is None:  # a skipped manifest row keeps its number, so later keys stay stable
            continue
        entry = dict(entry)
        source = str(entry.pop("audio"))
        meta: dict[str, Any] = {"text": _listish(entry.pop("text"), None)}
        tags = entry.pop("tags", None) or entry.pop("tag", None)
        if tags:
            meta["tag"] = _listish(tags, ";")
        meta.update({k: v for k, v in entry.items() if v not in (None, "")})
        meta["original_filename"] = source
        # os.path, not Path: pathlib interns every component it parses, a table that grows
        # with the number of distinct file names in the manifest.
        path = source if os.path.isabs(source) else os.path.join(audio_root, source)
        yield Row(f"{i:0{width}d}", path, source, meta)
