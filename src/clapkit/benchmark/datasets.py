"""Find the benchmark datasets under a data root and read their evaluation splits.

Each dataset is recognised by its published metadata file (``meta/esc50.csv``,
``metadata/UrbanSound8K.csv``, ...) in the root itself or in a folder up to two levels below
it, or is named in a small YAML file (``name: path`` or ``name: {root: path, <reader options>}``).
The splits are read with clapkit's readers of the published layouts
(:mod:`clapkit.datamodules.evalsets`, :mod:`~clapkit.datamodules.captionsets`,
:mod:`~clapkit.datamodules.audioset`). A dataset that is absent, or whose table cannot be read,
becomes one line of the report and the others still run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clapkit.datamodules.clips import ClipSet, LayoutError


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset is found and read.

    Attributes:
        name: key (``esc50``).
        title: display name with the split read.
        markers: files (relative to the dataset folder) any one of which identifies it.
        read: ``(folder, options) -> ClipSet`` of the evaluation split.
        published_clips: clips of the published evaluation split (``None``: not stated here).
        published_captions: captions of that split (retrieval sets).
        captioned: a caption set (its records' texts are human captions, counted in the report;
            a label set's texts are templates).
    """

    name: str
    title: str
    markers: tuple[str, ...]
    read: Callable[[Path, dict[str, Any]], ClipSet]
    published_clips: int | None = None
    published_captions: int | None = None
    captioned: bool = False


def _esc50(root: Path, options: dict[str, Any]) -> ClipSet:
    from clapkit.datamodules.evalsets import read_esc50

    return read_esc50(root)


def _us8k(root: Path, options: dict[str, Any]) -> ClipSet:
    from clapkit.datamodules.evalsets import read_urbansound8k

    return read_urbansound8k(root)


def _fsd50k(root: Path, options: dict[str, Any]) -> ClipSet:
    from clapkit.datamodules.evalsets import read_fsd50k

    return read_fsd50k(root, "eval")


def _vggsound(root: Path, options: dict[str, Any]) -> ClipSet:
    from clapkit.datamodules.evalsets import read_vggsound

    return read_vggsound(root, "test", **options)


def _audioset(root: Path, options: dict[str, Any]) -> ClipSet:
    from clapkit.datamodules.audioset import read_audioset, read_class_index
    from clapkit.datamodules.captions import CaptionMaker

    # PANNs tree (metadata/ + audios/eval_segments/Y<ytid>.wav) or the Hugging Face copy
    # (lists at the root, audio/eval/<ytid>.flac).
    panns = (root / "metadata" / "eval_segments.csv").is_file()
    meta = root / "metadata" if panns else root
    audio_dir = root / options.get("audio_dir", "audios/eval_segments" if panns else "audio/eval")
    audio_name = options.get("audio_name", "Y{ytid}.wav" if panns else "{ytid}.flac")
    mids, names = read_class_index(meta / "class_labels_indices.csv")
    return read_audioset(meta / "eval_segments.csv", audio_dir, mids, CaptionMaker(names), audio_name)


def _audiocaps(root: Path, options: dict[str, Any]) -> ClipSet:
    from clapkit.datamodules.captionsets import read_audiocaps

    return read_audiocaps(root, "test", **options)


def _clotho(root: Path, options: dict[str, Any]) -> ClipSet:
    from clapkit.datamodules.captionsets import read_clotho

    return read_clotho(root, "evaluation")


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("esc50", "ESC-50 (all folds)", ("meta/esc50.csv",), _esc50, 2000),
    DatasetSpec("us8k", "UrbanSound8K (all folds)", ("metadata/UrbanSound8K.csv",), _us8k, 8732),
    DatasetSpec("vggsound", "VGGSound test", ("vggsound.csv",), _vggsound),
    DatasetSpec("fsd50k", "FSD50K eval", ("FSD50K.ground_truth/eval.csv",), _fsd50k, 10231),
    DatasetSpec("audioset", "AudioSet eval segments", ("metadata/eval_segments.csv", "eval_segments.csv"), _audioset),
    DatasetSpec("audiocaps", "AudioCaps test", ("test.csv",), _audiocaps, 975, 4875, True),
    DatasetSpec("clotho", "Clotho v2.1 evaluation", ("clotho_captions_evaluation.csv",), _clotho, 1045, 5225, True),
)}


@dataclass
class LoadedDataset:
    """What was found for one dataset.

    Attributes:
        name: dataset key.
        root: the folder read (``None`` when not found).
        clips: the evaluation split (``None`` when absent or unreadable).
        problem: one line saying what was expected or what is wrong (``None`` when read).
        left_out: clips of the table left out, by reason (``missing``: no audio file).
    """

    name: str
    root: Path | None = None
    clips: ClipSet | None = None
    problem: str | None = None
    left_out: dict[str, int] = field(default_factory=dict)

    @property
    def present(self) -> bool:
        return self.clips is not None and len(self.clips) > 0


def read_paths_file(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{name: {"root": path, **options}}`` from a YAML of per-dataset paths; relative paths are
    relative to the YAML's folder. Unknown names are an error (a typo would silently skip a set)."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise LayoutError(f"{path}: not a readable YAML file ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise LayoutError(f"{path}: expected a mapping of dataset name -> folder")
    out = {}
    for name, value in raw.items():
        if name not in DATASETS:
            raise LayoutError(f"{path}: unknown dataset {name!r}; known: {', '.join(DATASETS)}")
        entry = {"root": value} if isinstance(value, str) else dict(value or {})
        if "root" not in entry:
            raise LayoutError(f"{path}: {name}: needs a folder ('{name}: path' or '{name}: {{root: path}}')")
        entry["root"] = str(path.parent / entry["root"])
        out[name] = entry
    return out


def _subfolders(folder: Path) -> list[Path]:
    # scandir's entry types come from the directory listing: a folder of 200,000 clips is
    # listed, not stat-ed file by file.
    try:
        with os.scandir(folder) as entries:
            return sorted(Path(e.path) for e in entries if e.is_dir())
    except OSError:
        return []


def _find(root: Path, spec: DatasetSpec) -> Path | None:
    """The first folder (the root, then one and two levels below, sorted) holding a marker."""
    levels = [[root]]
    if root.is_dir():
        first = _subfolders(root)
        levels += [first, [q for p in first for q in _subfolders(p)]]
    for level in levels:
        for folder in level:
            if any((folder / marker).is_file() for marker in spec.markers):
                return folder
    return None


def load_datasets(names: list[str], data_root: str | os.PathLike | None,
                  paths: dict[str, dict[str, Any]] | None = None) -> dict[str, LoadedDataset]:
    """Find and read each dataset of ``names``; never raises for a dataset's own problem."""
    paths = paths or {}
    out = {}
    for name in names:
        spec = DATASETS[name]
        options = dict(paths.get(name, {}))
        folder = Path(options.pop("root")) if "root" in options else (
            _find(Path(data_root), spec) if data_root is not None else None)
        loaded = LoadedDataset(name, folder)
        if folder is None:
            where = f"under {data_root}" if data_root is not None else "(no data root given)"
            loaded.problem = f"{spec.title}: not found {where}: expected a folder holding {' or '.join(spec.markers)}"
        else:
            try:
                clips = spec.read(folder, options)
            except (LayoutError, OSError, ValueError, TypeError) as exc:
                loaded.problem = f"{spec.title}: {str(exc).splitlines()[0]}"
            else:
                loaded.left_out = dict(clips.left_out)
                if clips.problem and not clips.records:
                    loaded.problem = f"{spec.title}: {clips.problem}"
                elif not clips.records:
                    loaded.problem = f"{spec.title}: {folder}: the table lists no clip"
                else:
                    loaded.clips = clips
        out[name] = loaded
    return out
