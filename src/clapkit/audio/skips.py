"""Files a folder run skipped, with their reasons: one line each on stderr, a CSV beside the
output, a count in the summary, and the exit status :data:`PARTIAL`.

The commands that read a folder of audio (``embed``, ``zeroshot``, ``separate``) process every
good file and skip the bad ones (unreadable, truncated, empty, NaN or Inf samples, samples that
overflow the model) instead of refusing the whole run. The rule, the same for each:

* exit 0: every file was processed;
* exit :data:`PARTIAL` (3): the outputs are written for the good files, and
  ``<output>.skipped.csv`` (columns ``path, reason``) lists the others;
* exit 2 (refused, nothing written): ``--strict`` and any bad file, a bad file named on the
  command line itself (not found inside a folder), or no usable file at all.

``make-shards`` streams its own ``skipped.csv`` into its output folder (columns ``audio, reason``),
counted and summarised by the same :class:`SkipList`.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clapkit.audio.io import AudioLoadError, audio_info
from clapkit.utils.atomic import write_csv

__all__ = ["PARTIAL", "SkipList", "Skipped", "screen_headers", "skipped_csv"]

#: Exit status of a run that wrote its outputs for the good files and skipped some bad ones.
PARTIAL = 3


@dataclass(frozen=True)
class Skipped:
    """One file left out of a run: its path and why (one line)."""

    path: str
    reason: str


def skipped_csv(output: str | os.PathLike) -> Path:
    """Where a run's skip list goes: ``<output>.skipped.csv`` beside the output."""
    output = Path(output)
    return output.with_name(output.name + ".skipped.csv")


@dataclass
class SkipList:
    """The bad files of a run, in the order they were met, counted by reason.

    Args:
        named: files given on the command line by name: a bad one is refused, not skipped.
        strict: refuse at the first bad file (``--strict``), as before skipping existed.
        keep: how many skipped files to hold (``None``: all). A run that streams its list to a
            CSV itself (``make-shards``: a manifest may have millions of bad rows) keeps only
            the first few for its summary; every skip is still counted, but :meth:`report`
            needs them all.
    """

    named: frozenset[str] = frozenset()
    strict: bool = False
    items: list[Skipped] = field(default_factory=list)
    keep: int | None = None
    total: int = 0
    reasons: Counter = field(default_factory=Counter)

    @classmethod
    def for_inputs(cls, inputs: Sequence[str | os.PathLike], strict: bool = False) -> SkipList:
        """A list whose ``named`` files are the INPUTS that are files (not folders)."""
        return cls(frozenset(str(Path(i)) for i in inputs if not Path(i).is_dir()), strict)

    def may_skip(self, path: str | os.PathLike) -> bool:
        """Whether a bad ``path`` is skipped (else the command refuses it in one line)."""
        return not self.strict and str(Path(path)) not in self.named

    def add(self, path: str | os.PathLike, reason: str) -> Skipped:
        """Record a skipped file; ``reason`` may start with the path (it is removed)."""
        text = str(reason).strip().splitlines()[0] if str(reason).strip() else "unusable"
        prefix = f"{path}: "
        item = Skipped(str(path), text[len(prefix):] if text.startswith(prefix) else text)
        self.total += 1
        self.reasons[item.reason.split(":")[0].split(" (")[0]] += 1
        if self.keep is None or len(self.items) < self.keep:
            self.items.append(item)
        return item

    def extend(self, items: Sequence[Skipped]) -> None:
        for item in items:
            self.add(item.path, item.reason)

    @property
    def paths(self) -> set[str]:
        return {s.path for s in self.items}

    def __len__(self) -> int:
        return self.total

    def __bool__(self) -> bool:
        return self.total > 0

    def report(self, output: str | os.PathLike | None, quiet: bool = False) -> Path | None:
        """Write ``<output>.skipped.csv`` (atomically) and print one line per file on stderr.

        Returns the CSV's path, or ``None`` when nothing was skipped (a stale list from an
        earlier run of the same output is removed then, so it cannot be mistaken for this run's)
        or there is no output file (``output=None``: the stderr lines only).
        """
        if len(self.items) < self.total:
            raise ValueError(f"this skip list holds {len(self.items)} of its {self.total} files (keep={self.keep})")
        target = skipped_csv(output) if output is not None else None
        if not self.items:
            if target is not None and _is_skip_list(target):  # a stale list of an earlier run only
                target.unlink()
            return None
        if target is not None:
            write_csv(target, ["path", "reason"], [(s.path, s.reason) for s in self.items])
        if not quiet:
            for item in self.items:
                print(f"skipped {item.path}: {item.reason}", file=sys.stderr)
        return target

    def summary(self, csv_path: Path | None) -> str:
        """``skipped 3 files (2 unreadable, 1 contains NaN or Inf samples; list in X)``, or ``""``."""
        if not self.total:
            return ""
        counts = ", ".join(f"{n} {reason}" for reason, n in self.reasons.most_common())
        where = f"; list in {csv_path}" if csv_path is not None else ""
        return f"skipped {self.total} file{'s' if self.total != 1 else ''} ({counts}{where})"


def _is_skip_list(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().strip() == "path,reason"
    except (OSError, UnicodeDecodeError):
        return False


def screen_headers(files: Sequence[Path], skips: SkipList) -> list[Path]:
    """The files whose header is readable and not empty; the others are skipped (recorded in
    ``skips``) or, when ``skips`` may not skip them, refused with :class:`AudioLoadError`."""
    good = []
    for path in files:
        try:
            if audio_info(path).frames == 0:
                raise AudioLoadError(path, "empty (no samples)")
        except AudioLoadError as exc:
            if not skips.may_skip(path):
                raise
            skips.add(path, str(exc))
            continue
        good.append(path)
    return good
