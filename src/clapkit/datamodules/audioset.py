"""AudioSet in its official metadata layout, with captions made from labels.

Files (as published by Google):

- segment lists ``balanced_train_segments.csv``, ``unbalanced_train_segments.csv``,
  ``eval_segments.csv``: three ``#`` comment lines (creation date, counts, the column names
  ``YTID, start_seconds, end_seconds, positive_labels``), then rows such as
  ``--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"``;
- ``class_labels_indices.csv``: ``index,mid,display_name`` (527 classes);
- optionally ``ontology.json`` (list of ``{"id": MID, "name": ...}``) for class names.

The audio itself is not distributed; clips are found by ``audio_name``, a template over
``ytid``, ``start`` and ``end`` (default ``Y{ytid}.wav``, the name the PANN download scripts
use), anywhere under ``<root>/<audio_dir>``: PANNs keep the unbalanced set in
``audios/unbalanced_train_segments/unbalanced_train_segments_partNN/``, the Hugging Face copy
(agkphysics/AudioSet) in ``audio/{bal_train,eval,unbal_train}/<ytid>.flac`` (``audio_name:
"{ytid}.flac"``). Segments without a file are left out at setup, reported in the log and
counted in ``data/<stage>_skipped_missing``; a split with no file at all is an error that says
where it looked and which names it expected. Targets are multi-hot; captions are "The sound of A, B and C"
or, when a keyword-to-caption table is given, its captions for those labels.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Literal

from torch.utils.data import Sampler

from clapkit.datamodules.captions import CaptionMaker, CaptionTemplate, load_keyword_captions
from clapkit.datamodules.clips import ClipDataModule, ClipRecord, ClipSet, LayoutError, decode_table, read_csv
from clapkit.datamodules.sampling import ClassBalancedSampler, WeightedLabelSampler

log = logging.getLogger(__name__)

SEGMENT_COLUMNS = ("YTID", "start_seconds", "end_seconds", "positive_labels")


def read_class_index(path: str | Path, ontology: str | Path | None = None) -> tuple[list[str], list[str]]:
    """``(mids, names)`` by class index from ``class_labels_indices.csv`` (+ ontology names)."""
    path = Path(path)
    rows = read_csv(path, ("index", "mid", "display_name"))
    by_index = {int(r["index"]): (r["mid"].strip(), r["display_name"].strip()) for r in rows}
    if sorted(by_index) != list(range(len(by_index))):
        raise LayoutError(f"{path}: indices are not 0..{len(by_index) - 1}")
    mids = [by_index[i][0] for i in range(len(by_index))]
    names = [by_index[i][1] for i in range(len(by_index))]
    if ontology is not None:
        ontology = Path(ontology)
        try:
            nodes = json.loads(ontology.read_text(encoding="utf-8"))
            onto_names = {node["id"]: node["name"] for node in nodes}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LayoutError(f"{ontology}: not an AudioSet ontology.json ({exc})") from None
        names = [onto_names.get(mid, name) for mid, name in zip(mids, names)]
    return mids, names


def read_segments(path: str | Path) -> list[dict[str, str]]:
    """Rows of an official segment CSV (comment header lines skipped, columns checked)."""
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path}: file not found (expected an AudioSet segment list)")
    lines = decode_table(path).splitlines(keepends=True)
    header = [line for line in lines if line.startswith("#")]
    if not header or [c.strip() for c in header[-1].lstrip("#").split(",")] != list(SEGMENT_COLUMNS):
        raise LayoutError(
            f"{path}: expected a comment line '# {', '.join(SEGMENT_COLUMNS)}' before the rows"
        )
    body = (line for line in lines if not line.startswith("#") and line.strip())
    rows = []
    for row_no, row in enumerate(csv.reader(body, skipinitialspace=True), 1):
        if len(row) != 4:
            raise LayoutError(f"{path}: data row {row_no} has {len(row)} fields, expected 4: {row}")
        rows.append(dict(zip(SEGMENT_COLUMNS, row)))
    return rows


def index_audio_folder(audio_dir: Path) -> dict[str, Path]:
    """File name -> path of every file under ``audio_dir``, walked once, recursively (PANNs
    store the unbalanced set in ``unbalanced_train_segments_partNN/`` subfolders)."""
    index: dict[str, Path] = {}
    for folder, _, names in os.walk(audio_dir, followlinks=True):
        for name in names:
            index.setdefault(name, Path(folder) / name)
    return index


def read_audioset(
    segments: str | Path,
    audio_dir: str | Path,
    mids: list[str],
    captions: CaptionMaker,
    audio_name: str = "Y{ytid}.wav",
    drop_missing: bool = True,
) -> ClipSet:
    """Records of one segment list with multi-hot labels and caption options.

    Clips are found anywhere under ``audio_dir`` (the folder is indexed once); an
    ``audio_name`` with a ``/`` is a path relative to ``audio_dir``.
    """
    mid_to_id = {mid: i for i, mid in enumerate(mids)}
    audio_dir = Path(audio_dir)
    rows = read_segments(segments)
    nested = "/" in audio_name
    index = index_audio_folder(audio_dir) if audio_dir.is_dir() and not nested else {}
    records, unknown, missing, expected = [], set(), 0, []
    for row in rows:
        ids = []
        for mid in row["positive_labels"].split(","):
            if mid.strip() in mid_to_id:
                ids.append(mid_to_id[mid.strip()])
            elif mid.strip():
                unknown.add(mid.strip())
        ids = sorted(set(ids))
        try:
            name = audio_name.format(ytid=row["YTID"], start=row["start_seconds"], end=row["end_seconds"])
        except (KeyError, IndexError) as exc:
            raise LayoutError(f"{segments}: audio_name {audio_name!r} uses the field {exc}, which does not "
                              "exist; fields: ytid, start, end") from None
        path = audio_dir / name if nested else index.get(name, audio_dir / name)
        if drop_missing and not (path.is_file() if nested else name in index):
            missing += 1
            if len(expected) < 3:
                expected.append(name)
            continue
        records.append(ClipRecord(
            path=path,
            texts=captions.captions(ids),
            label=ids,
            key=f"{row['YTID']}_{float(row['start_seconds']):g}",
            meta={"start": float(row["start_seconds"]), "end": float(row["end_seconds"])},
        ))
    if unknown:
        log.warning("%s: %d MIDs not in the class index are ignored (e.g. %s)", segments, len(unknown),
                    sorted(unknown)[:3])
    problem = None
    if rows and not records:
        found = "no such folder" if not audio_dir.is_dir() else f"{len(index)} files there" + (
            f", named like {next(iter(index))!r}" if index else "")
        problem = (f"{segments}: none of its {len(rows)} segments has an audio file under {audio_dir} "
                   f"(searched recursively; {found}); expected names like {', '.join(map(repr, expected))} "
                   f"(audio_name {audio_name!r})")
        log.warning("%s", problem)
    elif missing:
        log.warning("%s: %d of %d segments have no audio under %s and are left out", segments, missing,
                    len(rows), audio_dir)
    return ClipSet(records, captions.class_names, multi_label=True,
                   left_out=Counter(missing=missing) if missing else Counter(), problem=problem)


class AudioSetDataModule(ClipDataModule):
    """AudioSet segments with multi-hot labels, captions from labels and a rebalancing sampler.

    The loader arguments (``audio``, ``batch_size``, ``num_workers``, ``eval_captions``,
    ``augment``) are :class:`~clapkit.datamodules.clips.ClipDataModule`'s.

    Args:
        root: folder holding the metadata files and audio folders.
        train_segments: training segment list (relative to ``root``).
        train_audio_dir: folder of the training clips (relative to ``root``).
        val_segments: evaluation segment list (validation and test).
        val_audio_dir: folder of the evaluation clips.
        class_index: ``class_labels_indices.csv`` (relative to ``root``).
        ontology: optional ``ontology.json`` for class names.
        keyword_captions: optional keyword-to-caption CSV (``keyword,caption``) whose captions
            are offered alongside the template one.
        template: caption template for the label names.
        audio_name: clip file name template over ``ytid``, ``start``, ``end``, looked up
            anywhere under the audio folder (``Y{ytid}.wav``: PANNs; ``{ytid}.flac``: the
            Hugging Face copy).
        sampler: ``balanced`` (PANN/LAION class round-robin), ``weighted`` (inverse label
            frequency) or ``none`` (plain shuffle).
        samples_per_epoch: draws per epoch for the rebalancing samplers (default: set size).
        seed: sampler seed.
        drop_missing: leave out segments without an audio file.
    """

    def __init__(
        self,
        root: str,
        train_segments: str | None = "balanced_train_segments.csv",
        train_audio_dir: str = "balanced_train_segments",
        val_segments: str | None = "eval_segments.csv",
        val_audio_dir: str = "eval_segments",
        class_index: str = "class_labels_indices.csv",
        ontology: str | None = None,
        keyword_captions: str | None = None,
        template: CaptionTemplate | None = None,
        audio_name: str = "Y{ytid}.wav",
        sampler: Literal["balanced", "weighted", "none"] = "balanced",
        samples_per_epoch: int | None = None,
        seed: int = 0,
        drop_missing: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.root = Path(root)
        self.train_segments, self.train_audio_dir = train_segments, train_audio_dir
        self.val_segments, self.val_audio_dir = val_segments, val_audio_dir
        self.class_index, self.ontology, self.keyword_captions = class_index, ontology, keyword_captions
        self.template, self.audio_name = template or CaptionTemplate(), audio_name
        self.sampler, self.samples_per_epoch, self.seed = sampler, samples_per_epoch, seed
        self.drop_missing = drop_missing

    def build_sets(self) -> dict[str, ClipSet]:
        mids, names = read_class_index(self.root / self.class_index,
                                       self.root / self.ontology if self.ontology else None)
        table = load_keyword_captions(self.root / self.keyword_captions) if self.keyword_captions else {}
        maker = CaptionMaker(names, self.template, table, aliases=mids)
        sets = {}
        if self.train_segments:
            sets["fit"] = read_audioset(self.root / self.train_segments, self.root / self.train_audio_dir,
                                        mids, maker, self.audio_name, self.drop_missing)
        if self.val_segments:
            val = read_audioset(self.root / self.val_segments, self.root / self.val_audio_dir,
                                mids, maker, self.audio_name, self.drop_missing)
            sets["validate"] = sets["test"] = val
        return sets

    def train_sampler(self, clip_set: ClipSet) -> Sampler | None:
        labels = [rec.label for rec in clip_set.records]
        kinds = {"balanced": ClassBalancedSampler, "weighted": WeightedLabelSampler}
        if self.sampler == "none":
            return None
        return kinds[self.sampler](labels, len(clip_set.class_names), self.samples_per_epoch, self.seed)
