"""Captions for labelled clips: templates ("The sound of A, B and C") and keyword tables.

LAION-CLAP trains on AudioSet by turning its labels into text: the names of the positive
classes joined as "The sounds of A, B and C" (``training/data.py: prompt_text``), or, with
"keyword-to-caption" augmentation, a caption written for those keywords. A
:class:`CaptionMaker` does both: it looks labels up in an optional table and falls back to
the template.

Keyword table format (CSV with a header): ``keyword,caption``. ``keyword`` is a class display
name, a MID, or several of either joined by ``;`` (the caption then describes that
combination). A keyword may have several rows; training picks one at random.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def join_names(names: Sequence[str], conjunction: str = "and") -> str:
    """``["A"] -> "A"``, ``["A", "B", "C"] -> "A, B and C"``."""
    names = [n for n in names if n]
    if len(names) <= 1:
        return names[0] if names else ""
    return f"{', '.join(names[:-1])} {conjunction} {names[-1]}"


def pretty_name(name: str) -> str:
    """FSD50K writes labels as ``Electric_guitar``; captions want ``Electric guitar``."""
    return name.replace("_", " ").strip()


@dataclass
class CaptionTemplate:
    """Turns class names into a sentence.

    Args:
        single: template for one class (``{}`` = the name).
        multiple: template for several classes (``{}`` = names joined as "A, B and C").
        lowercase: lower-case the class names first.
    """

    single: str = "The sound of {}"
    multiple: str = "The sound of {}"
    lowercase: bool = False

    def __call__(self, names: Sequence[str]) -> str:
        names = [n.lower() if self.lowercase else n for n in names]
        template = self.single if len(names) == 1 else self.multiple
        return template.format(join_names(names))


def load_keyword_captions(path: str | Path) -> dict[frozenset[str], list[str]]:
    """Read a keyword-to-caption CSV (see module docstring) into ``{keywords: [captions]}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: keyword-to-caption table not found")
    table: dict[frozenset[str], list[str]] = defaultdict(list)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not {"keyword", "caption"} <= set(reader.fieldnames or []):
            raise ValueError(f"{path}: expected columns keyword,caption; found {reader.fieldnames}")
        for row in reader:
            keys = frozenset(k.strip() for k in row["keyword"].split(";") if k.strip())
            if keys and row["caption"].strip():
                table[keys].append(row["caption"].strip())
    return dict(table)


@dataclass
class CaptionMaker:
    """Captions for a clip from its class ids: table captions first, then the template.

    Args:
        class_names: display names by class id.
        template: sentence template for the names.
        table: keyword-to-caption table (keys may be names or ``ids``' aliases such as MIDs).
        aliases: other identifiers of each class id (e.g. AudioSet MIDs) usable as table keys.
    """

    class_names: list[str]
    template: CaptionTemplate = field(default_factory=CaptionTemplate)
    table: dict[frozenset[str], list[str]] = field(default_factory=dict)
    aliases: list[str] | None = None

    def captions(self, label_ids: Sequence[int]) -> list[str]:
        """Every caption for this label combination (table captions, then the template)."""
        names = [self.class_names[i] for i in label_ids]
        found: list[str] = []
        if self.table:
            for keys in (frozenset(names), frozenset(self.aliases[i] for i in label_ids) if self.aliases else None):
                if keys:
                    found += self.table.get(keys, [])
        return found + [self.template(names)] if names else found

    def pick(self, label_ids: Sequence[int], rng: np.random.Generator) -> str:
        options = self.captions(label_ids)
        return options[int(rng.integers(len(options)))]
