"""Clip sources for on-the-fly mixing: anything that yields captioned or labelled clips.

A *mix source* is a map-style collection of :class:`~clapkit.datamodules.base.Sample`
(``len`` + ``[index]``). The synthetic corpus already is one; the adapters here turn other
inputs into one:

- :class:`FileListSource`: a CSV of ``file,caption`` (or ``file,label``) rows.
- :class:`ClipSetSource`: the records of a :class:`~clapkit.datamodules.clips.ClipSet`, or of
  one split of any :class:`~clapkit.datamodules.clips.ClipDataModule` (ESC-50, FSD50K,
  AudioCaps, Clotho ...), labels becoming "the sound of <class>" captions when a clip has
  no caption.
- :class:`BufferedSource`: the first ``max_items`` samples of an iterable (webdataset shards,
  a generator), held in memory so they can be drawn at random.

Files are decoded on access; a caption is the first of a clip's texts. A source may also
offer ``metadata()`` (key, caption and group of every clip, from what it already holds): the
mixture datasets then index a corpus of any size without decoding a single clip
(:func:`source_metadata`).
"""

from __future__ import annotations

import csv
import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from clapkit.audio import load_audio
from clapkit.datamodules.base import Sample


class MixSource(Protocol):
    """What :class:`~clapkit.datamodules.mixtures.MixtureDataModule` draws clips from."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


@dataclass(frozen=True)
class ClipMeta:
    """What mixing needs to know about a clip before decoding it.

    Attributes:
        key: the clip's key (evaluation specs and CSVs name clips by it).
        caption: its text query (:func:`sample_caption`).
        group: what makes two clips "the same sound" (:func:`sample_group`).
    """

    key: str
    caption: str
    group: str


def source_metadata(source: MixSource) -> list[ClipMeta]:
    """:class:`ClipMeta` of every clip: from ``source.metadata()`` when the source has it (no
    audio decoded), else by reading each sample once."""
    describe = getattr(source, "metadata", None)
    if callable(describe):
        return list(describe())
    metas = []
    for i in range(len(source)):
        sample = source[i]
        metas.append(ClipMeta(sample.key, sample_caption(sample), sample_group(sample)))
    return metas


def sample_caption(sample: Sample) -> str:
    """The caption a clip contributes as a text query (its first text, else its key)."""
    return sample.texts[0] if sample.texts else sample.key


def sample_group(sample: Sample) -> str:
    """What makes two clips "the same sound" (never mixed with each other): the class name in
    ``meta`` (synthetic corpus), else the label, else the caption."""
    if sample.meta.get("class_name"):
        return str(sample.meta["class_name"])
    if sample.label is not None:
        return f"label:{sample.label}"
    return sample_caption(sample)


class FileListSource:
    """Audio files listed in a CSV with a ``file`` column and a ``caption`` or ``label`` column.

    Args:
        csv_path: the table (header row required).
        audio_root: directory ``file`` is relative to (default: the CSV's directory).
        caption_template: turns a ``label`` into a caption when there is no ``caption``.
    """

    def __init__(self, csv_path: str | Path, audio_root: str | Path | None = None,
                 caption_template: str = "the sound of {}"):
        path = Path(csv_path)
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            rows = list(reader)
        if not rows or "file" not in header or not ({"caption", "label"} & set(header)):
            raise ValueError(f"{path}: expected a header with 'file' and 'caption' or 'label' columns")
        root = os.fspath(audio_root if audio_root is not None else path.parent)
        col = {name: i for i, name in enumerate(header)}
        file_col, caption_col, label_col = col["file"], col.get("caption"), col.get("label")

        def cell(row, i):
            return row[i] if i is not None and i < len(row) else ""

        # Plain strings, not Path objects: a corpus-sized list is read in a fraction of the time.
        self.items: list[tuple[str, str]] = [
            (os.path.join(root, row[file_col]),
             cell(row, caption_col) or caption_template.format(cell(row, label_col).replace("_", " ")))
            for row in rows
        ]

    def __len__(self) -> int:
        return len(self.items)

    def metadata(self) -> list[ClipMeta]:
        """Key, caption and group of every row, from the CSV alone."""
        return [ClipMeta(os.path.basename(path), caption, caption) for path, caption in self.items]

    def __getitem__(self, index: int) -> Sample:
        path, caption = self.items[index]
        wave, rate = load_audio(path)
        return Sample(waveform=wave, sample_rate=rate, texts=[caption], key=os.path.basename(path),
                      meta={"path": path})


class ClipSetSource:
    """Records of a clip set (or of one split of a clip datamodule) as a mix source.

    Args:
        clips: a :class:`~clapkit.datamodules.clips.ClipSet`, or a
            :class:`~clapkit.datamodules.clips.ClipDataModule` whose ``split`` is used.
        split: which split of a datamodule (``fit``, ``validate``, ``test``).
        caption_template: caption of a labelled clip without texts.
    """

    def __init__(self, clips: Any, split: str = "fit", caption_template: str = "the sound of {}"):
        if hasattr(clips, "records"):
            clip_set = clips
        else:
            clips.setup()
            clip_set = clips.sets[split]
        self.records = list(clip_set.records)
        self.class_names = list(getattr(clip_set, "class_names", []) or [])
        self.caption_template = caption_template

    def __len__(self) -> int:
        return len(self.records)

    def _texts(self, rec) -> list[str]:
        if rec.texts:
            return list(rec.texts)
        labels = rec.label if isinstance(rec.label, list) else [rec.label]
        names = [self.class_names[i].replace("_", " ") for i in labels if i is not None and i < len(self.class_names)]
        return [self.caption_template.format(" and ".join(names))] if names else []

    def metadata(self) -> list[ClipMeta]:
        """Key, caption and group of every record, from the records alone."""
        metas = []
        for rec in self.records:
            key = rec.key or Path(rec.path).name
            texts = self._texts(rec)
            caption = texts[0] if texts else key
            metas.append(ClipMeta(key, caption, f"label:{rec.label}" if rec.label is not None else caption))
        return metas

    def __getitem__(self, index: int) -> Sample:
        rec = self.records[index]
        wave, rate = load_audio(rec.path)
        return Sample(wave, rate, texts=self._texts(rec), label=rec.label, key=rec.key or Path(rec.path).name,
                      meta={"path": str(rec.path)})


class BufferedSource:
    """The first ``max_items`` samples of an iterable, kept in memory for random access.

    Args:
        samples: any iterable of :class:`Sample` (for example a webdataset pipeline).
        max_items: how many to keep.
    """

    def __init__(self, samples: Iterable[Sample], max_items: int = 10000):
        self.items: Sequence[Sample] = list(itertools.islice(iter(samples), max_items))
        if not self.items:
            raise ValueError("BufferedSource: the iterable yielded no samples")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        return self.items[index]
