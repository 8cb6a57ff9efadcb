"""A CSV or JSONL table of someone else's, read one row at a time with its bad rows named.

Used for the tables a user hands over: make-shards manifests (which can have millions of rows)
and the caption tables of fine-tuning. Nothing here holds more than one row. A row that is not
UTF-8, not valid JSON or not a JSON object is skipped with its place and reason (the caller
counts it and goes on); a CSV without the required columns is refused with
:class:`MissingColumns`, which the caller turns into its own one-line error.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

#: File endings read as JSON lines (one object per line); anything else is CSV with a header.
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")

#: ``(row, None)`` for a readable row, ``(None, (where, reason))`` for a skipped one.
TableRow = tuple[dict[str, Any] | None, tuple[str, str] | None]


class MissingColumns(ValueError):
    """A CSV table's header lacks required columns.

    Args:
        path: the table.
        missing: required columns not in the header.
        found: the header's columns.
    """

    def __init__(self, path: str | os.PathLike, missing: Sequence[str], found: Sequence[str]):
        self.path, self.missing, self.found = os.fspath(path), list(missing), list(found)
        super().__init__(f"{self.path}: missing column(s) {self.missing}; found {self.found}")


def iter_table(path: str | os.PathLike, required: Sequence[str] = ()) -> Iterator[TableRow]:
    """Each row of a CSV (header row; a UTF-8 BOM is dropped, header names stripped) or JSONL
    table (see :data:`JSONL_SUFFIXES`), read one at a time; ``required`` columns are checked
    against a CSV header (a JSONL row is free-form: the caller checks its keys)."""
    path = os.fspath(path)
    if path.lower().endswith(JSONL_SUFFIXES):
        with open(path, "rb") as handle:
            line_no = 0
            for chunk in handle:
                for raw in chunk.splitlines():  # a lone "\r" ends a line too
                    line_no += 1
                    if raw.strip():
                        yield _json_row(raw, f"{path}:line {line_no}")
        return
    # surrogateescape keeps undecodable bytes inside their cell, so one bad byte costs one row.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is not None:
            reader.fieldnames = [name.strip() for name in reader.fieldnames]
        columns = reader.fieldnames or []
        missing = [c for c in required if c not in columns]
        if missing:
            raise MissingColumns(path, missing, columns)
        for record in reader:
            row = dict(record)
            values = [v for v in row.values() if isinstance(v, str)] + [k for k in row if isinstance(k, str)]
            if any(_has_surrogates(v) for v in values):
                yield None, (f"{path}:line {reader.line_num}", "row is not UTF-8 text")
            else:
                yield row, None


def cell_list(value: Any) -> list[str]:
    """The non-empty strings of a cell holding one value or a list of them (a JSON list in a
    CSV cell, a list in JSONL): ``"a dog"`` -> ``["a dog"]``, ``'["rain", ""]'`` -> ``["rain"]``."""
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    text = "" if value is None else str(value).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            return [str(v).strip() for v in parsed if str(v).strip()]
    return [text] if text else []


def _json_row(raw: bytes, where: str) -> TableRow:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, (where, "row is not UTF-8 text")
    try:
        row = json.loads(line)
    except ValueError as exc:
        return None, (where, f"row is not valid JSON ({exc})")
    if not isinstance(row, dict):
        return None, (where, "row is not a JSON object")
    return row, None


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
