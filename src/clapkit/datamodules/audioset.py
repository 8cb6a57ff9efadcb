"""AudioSet in its official metadata layout, with captions made from labels.

Files (as published by Google):

- segment lists ``balanced_train_segments.csv``, ``unbalanced_train_segments.csv``,
  ``eval_segments.csv``: three ``#`` comment lines (creation date, counts, the column names
  ``YTID, start_seconds, end_seconds, positive_labels``), then rows such as
  ``--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"``;
- ``class_labels_indices.csv``: ``index,mid,display_name`` (527 classes);
- optionally ``ontology.json`` (list of ``{"id": MID, "name": ...}``) for class names.

The audio itself is not distributed; clips are found as ``<root>/<audio_dir>/<audio_name>``
with ``audio_name`` a template over ``ytid``, ``start`` and ``end`` (default
``Y{ytid}.wav``, the name the PANN download scripts use). Segments without a file are left
out at setup and reported. Targets are multi-hot; captions are "The sound of A, B and C"
or, when a keyword-to-caption table is given, its captions for those labels.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Literal

from torch.utils.data import Sampler

from clapkit.datamodules.augment import WaveformAugment
from clapkit.datamodules.captions import CaptionMaker, CaptionTemplate, load_keyword_captions
from clapkit.datamodules.clips import ClipDataModule, ClipRecord, ClipSet, LayoutError, read_csv
from clapkit.datamodules.pipeline import AudioPolicy
from clapkit.datamodules.sampling import ClassBalancedSampler, WeightedLabelSampler

log = logging.getLogger(__name__)

SEGMENT_COLUMNS = ("YTID", "start_seconds", "end_seconds", "positive_labels")


def read_class_index(path: str | Path, ontology: str | Path | None = None) -> tuple[list[str], list[str]]:
    """``(mids, names)`` by class index from ``class_labels_indices.csv`` (+ ontology names)."""
    path = Path(path)
    rows = read_csv(path, ("index", "mid", "display_name"))
    by_index = {int(r["index"]): (r["mid"], r["display_name"]) for r in rows}
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
    with open(path, newline="", encoding="utf-8") as handle:
        lines = list(handle)
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


def read_audioset(
    segments: str | Path,
    audio_dir: str | Path,
    mids: list[str],
    captions: CaptionMaker,
    audio_name: str = "Y{ytid}.wav",
    drop_missing: bool = True,
) -> ClipSet:
    """Records of one segment list with multi-hot labels and caption options."""
    mid_to_id = {mid: i for i, mid in enumerate(mids)}
    audio_dir = Path(audio_dir)
    present = {p.name for p in audio_dir.iterdir()} if drop_missing and audio_dir.is_dir() else None
    records, unknown, missing = [], set(), 0
    for row in read_segments(segments):
        ids = []
        for mid in row["positive_labels"].split(","):
            if mid.strip() in mid_to_id:
                ids.append(mid_to_id[mid.strip()])
            elif mid.strip():
                unknown.add(mid.strip())
        ids = sorted(set(ids))
        name = audio_name.format(ytid=row["YTID"], start=row["start_seconds"], end=row["end_seconds"])
        if drop_missing and (present is None or name not in present):
            missing += 1
            continue
        records.append(ClipRecord(
            path=audio_dir / name,
            texts=captions.captions(ids),
            label=ids,
            key=f"{row['YTID']}_{float(row['start_seconds']):g}",
            meta={"start": float(row["start_seconds"]), "end": float(row["end_seconds"])},
        ))
    if unknown:
        log.warning("%s: %d MIDs not in the class index are ignored (e.g. %s)", segments, len(unknown),
                    sorted(unknown)[:3])
    if missing:
        log.warning("%s: %d segments have no audio under %s and are left out", segments, missing, audio_dir)
    return ClipSet(records, captions.class_names, multi_label=True)


class AudioSetDataModule(ClipDataModule):
    """AudioSet segments with multi-hot labels, captions from labels and a rebalancing sampler.

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
        audio_name: clip file name template over ``ytid``, ``start``, ``end``.
        sampler: ``balanced`` (PANN/LAION class round-robin), ``weighted`` (inverse label
            frequency) or ``none`` (plain shuffle).
        samples_per_epoch: draws per epoch for the rebalancing samplers (default: set size).
        seed: sampler seed.
        drop_missing: leave out segments without an audio file.
        audio: decode/crop policy.
        batch_size: clips per batch.
        num_workers: decoding worker processes.
        eval_captions: also attach captions to evaluation batches.
        augment: waveform augmentation of training clips (AudioCLIP's policy); ``None``: off.
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
        audio: AudioPolicy | None = None,
        batch_size: int = 32,
        num_workers: int = 4,
        eval_captions: bool = False,
        augment: WaveformAugment | None = None,
    ):
        super().__init__(audio, batch_size, num_workers, eval_captions, augment)
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
