"""Map-style clip sets (files on disk listed by a metadata table) and their DataModule base.

A reader (ESC-50, UrbanSound8K, FSD50K, AudioSet, AudioCaps, Clotho) turns an official
layout into a :class:`ClipSet`: a list of :class:`ClipRecord` (path, captions, label) plus
the class names. :class:`ClipDataset` decodes records in workers through an
:class:`~clapkit.datamodules.pipeline.AudioPolicy`; bad files become ``Skipped`` markers that
:func:`~clapkit.datamodules.pipeline.collate_with_skips` counts. :class:`ClipDataModule`
holds what every such datamodule shares (loaders, collate, ``class_names``); subclasses only
say which records belong to which stage.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from clapkit.audio.preprocess import InferenceConfig
from clapkit.datamodules.augment import WaveformAugment
from clapkit.datamodules.base import AudioDataModule
from clapkit.datamodules.pipeline import AudioPolicy, Skipped, Stage, collate_with_skips, worker_rng


class LayoutError(ValueError):
    """A dataset folder does not have the official layout; the message names the file."""


@dataclass
class ClipRecord:
    """One clip of a metadata table.

    Attributes:
        path: audio file.
        texts: captions (empty for label-only sets unless templated).
        label: class index (single-label), list of indices (multi-label) or ``None``.
        key: identifier (usually the file stem).
        meta: fold, split, source ids.
    """

    path: Path
    texts: list[str] = field(default_factory=list)
    label: int | list[int] | None = None
    key: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClipSet:
    """Records of one split plus the label vocabulary.

    Attributes:
        records: the clips.
        class_names: display names, index = label id (empty for caption-only sets).
        multi_label: labels are lists of indices (multi-hot targets).
        left_out: clips of the metadata table left out when the set was built, by reason
            (``missing``: no audio file); logged with the loader's skip counts, so the
            ``data/<stage>_skipped_<reason>`` metrics agree with the setup warning.
        problem: why the set is empty although its table lists clips (no audio file found);
            raised as a :class:`LayoutError` when a stage uses the set, so a split that is not
            needed (training clips not downloaded for an evaluation) does not stop the run.
    """

    records: list[ClipRecord]
    class_names: list[str] = field(default_factory=list)
    multi_label: bool = False
    left_out: Counter = field(default_factory=Counter)
    problem: str | None = None

    def __len__(self) -> int:
        return len(self.records)


class ClipDataset(Dataset):
    """Decodes :class:`ClipRecord` items; returns a ``Sample`` or a ``Skipped`` marker.

    Args:
        records: the clips to serve.
        audio: decode/crop policy.
        stage: ``train`` (random crops) or ``eval`` (deterministic crops).
        with_text: attach captions (``False`` turns a labelled set into a pure zero-shot set).
        max_replacements: training only: random stand-ins tried for a bad clip before giving up.
        augment: training only: waveform augmentation applied after decoding.
    """

    def __init__(self, records: list[ClipRecord], audio: AudioPolicy, stage: Stage, with_text: bool = True,
                 max_replacements: int = 8, augment: WaveformAugment | None = None):
        self.records = records
        self.augment = augment
        self.audio = audio
        self.stage = stage
        self.with_text = with_text
        self.max_replacements = max_replacements

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        if self.stage != "train":
            return self._load(index, None)
        # Training keeps batches full: a bad clip is replaced by a random other one, and the
        # replacement carries the reasons so the skip counts stay exact.
        rng = worker_rng(index)
        replaced: list[str] = []
        for _ in range(self.max_replacements + 1):
            item = self._load(index, rng)
            if not isinstance(item, Skipped):
                item.meta["replaced"] = replaced
                if self.augment is not None:
                    item.waveform = self.augment(item.waveform, train=True, rng=rng)
                return item
            replaced.append(item.reason)
            index = int(rng.integers(len(self.records)))
        return Skipped(replaced[-1], item.key, also=tuple(replaced[:-1]))

    def _load(self, index: int, rng):
        rec = self.records[index]
        texts = rec.texts if self.with_text else []
        if self.with_text and not texts:
            return Skipped("no_text", rec.key)
        return self.audio.load(
            rec.path, key=rec.key, stage=self.stage, texts=texts, label=rec.label, meta=rec.meta, rng=rng
        )


class ClipDataModule(AudioDataModule):
    """Base for datamodules over :class:`ClipSet` readers.

    Subclasses implement :meth:`build_sets` returning ``{stage: ClipSet}`` for the stages
    they support (``fit``, ``validate``, ``test``, ``predict``). Exposes ``class_names``
    (zero-shot evaluation reads it) and ``multi_label``.

    Args:
        audio: decode/crop policy (model rate, window, pad/crop modes).
        batch_size: clips per batch.
        num_workers: DataLoader worker processes (decoding runs there).
        eval_captions: also attach captions to validation/test batches of a labelled set
            (turns on retrieval metrics besides zero-shot ones).
        augment: waveform augmentation of training clips (AudioCLIP's policy); ``None``: off.
    """

    def __init__(
        self,
        audio: AudioPolicy | None = None,
        batch_size: int = 32,
        num_workers: int = 4,
        eval_captions: bool = False,
        augment: WaveformAugment | None = None,
    ):
        super().__init__()
        self.augment = augment
        self.audio = audio or AudioPolicy()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.eval_captions = eval_captions
        self.sets: dict[str, ClipSet] = {}

    def inference_config(self) -> InferenceConfig:
        """The evaluation path of :attr:`audio` (:meth:`AudioPolicy.inference_config`)."""
        return self.audio.inference_config()

    # -- to implement -------------------------------------------------------------------
    def build_sets(self) -> dict[str, ClipSet]:
        raise NotImplementedError

    def train_sampler(self, clip_set: ClipSet) -> Sampler | None:
        """Override to return a custom training sampler (AudioSet balancing)."""
        return None

    # -- Lightning hooks ----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if not self.sets:
            self.sets = self.build_sets()

    @property
    def class_names(self) -> list[str]:
        self.setup()
        for clip_set in self.sets.values():
            if clip_set.class_names:
                return clip_set.class_names
        return []

    @property
    def multi_label(self) -> bool:
        self.setup()
        return any(s.multi_label for s in self.sets.values())

    def train_dataloader(self) -> DataLoader:
        clip_set = self._set("fit")
        sampler = self.train_sampler(clip_set)
        return self._loader(clip_set, "train", with_text=True, shuffle=sampler is None, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._set("validate"), "eval", with_text=self._eval_text("validate"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._set("test"), "eval", with_text=self._eval_text("test"))

    def predict_dataloader(self) -> DataLoader:
        name = "predict" if "predict" in self.sets else "test"
        return self._loader(self._set(name), "eval", with_text=False)

    def left_out(self, stage: str) -> dict[str, int]:
        """Clips of ``stage``'s table left out at setup, by reason (``stage``: ``train``,
        ``val``, ``test``, or a set name); :class:`~clapkit.callbacks.data_health.DataHealth`
        adds them to the epoch's skip counts."""
        self.setup()
        name = {"train": "fit", "val": "validate"}.get(stage, stage)
        clip_set = self.sets.get(name)
        return dict(clip_set.left_out) if clip_set is not None else {}

    # -- helpers ------------------------------------------------------------------------
    def _eval_text(self, name: str) -> bool:
        clip_set = self._set(name)
        return self.eval_captions or not clip_set.class_names

    def _set(self, name: str) -> ClipSet:
        self.setup()
        if name not in self.sets:
            raise LayoutError(f"{type(self).__name__} has no {name!r} split (configured: {sorted(self.sets)})")
        clip_set = self.sets[name]
        if clip_set.problem and not clip_set.records:
            raise LayoutError(clip_set.problem)
        return clip_set

    def _loader(self, clip_set: ClipSet, stage: Stage, with_text: bool, shuffle: bool = False,
                sampler: Sampler | None = None) -> DataLoader:
        num_classes = len(clip_set.class_names) if clip_set.multi_label else None
        collate = partial(
            collate_with_skips,
            num_classes=num_classes,
            pick_text="random" if stage == "train" else "first",
        )
        return DataLoader(
            ClipDataset(clip_set.records, self.audio, stage, with_text=with_text,
                        augment=self.augment if stage == "train" else None),
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            # A set smaller than one batch (a first fine-tune on a handful of clips) still trains.
            drop_last=stage == "train" and len(clip_set) >= self.batch_size,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )


def read_csv(path: Path, required: tuple[str, ...], *, skip_comments: bool = False) -> list[dict[str, str]]:
    """Read a CSV with a header, checking that ``required`` columns exist (clear error if not).

    Values are kept byte for byte (Clotho has file names that begin with a space); only the
    header names are stripped. The table is decoded as UTF-8 (a BOM is dropped) and, when it is
    not valid UTF-8, as Latin-1, the encoding some published metadata files use.
    """
    if not path.is_file():
        raise LayoutError(f"{path}: file not found (expected the official metadata table)")
    text = decode_table(path)
    lines = (line for line in text.splitlines(keepends=True) if not (skip_comments and line.startswith("#")))
    reader = csv.DictReader(lines)
    if reader.fieldnames is not None:
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise LayoutError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
    return list(reader)


def decode_table(path: Path) -> str:
    """Text of a metadata file: UTF-8 (BOM dropped), else Latin-1 (which decodes any byte)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def select_folds(records: list[ClipRecord], folds: list[int] | None, exclude: list[int] | None = None):
    """Keep records whose ``meta['fold']`` is in ``folds`` (all if None) and not in ``exclude``."""
    keep = set(folds) if folds else None
    drop = set(exclude or [])
    return [r for r in records if (keep is None or r.meta["fold"] in keep) and r.meta["fold"] not in drop]
