"""Caption sets for audio-text retrieval: AudioCaps and Clotho, all captions per clip.

Layouts:

- AudioCaps: ``{train,val,test}.csv`` (audiocap_id,youtube_id,start_time,caption; one row
  per caption). Rows are grouped by ``youtube_id`` so a test clip carries its five captions.
  The audio is not distributed with the captions; clips are looked up as
  ``<root>/<audio_dir>/<audio_name>`` where both are templates over ``split`` and every CSV
  column (default ``<root>/test/<youtube_id>.wav``; download tools also write
  ``{split}/{audiocap_id}.wav``). Clips whose video could not be downloaded are dropped at
  setup, reported in the log and counted in ``data/<stage>_skipped_missing``.
- Clotho (v2): ``clotho_captions_{development,validation,evaluation}.csv``
  (file_name,caption_1..caption_5), clips in ``{development,validation,evaluation}/``.

Evaluation batches carry ``"captions"`` (every caption of each clip) and no labels, which
selects retrieval metrics in the contrastive module.
"""

from __future__ import annotations

import logging
import string
from collections import Counter
from pathlib import Path

from clapkit.datamodules.clips import ClipDataModule, ClipRecord, ClipSet, LayoutError, read_csv

log = logging.getLogger(__name__)

AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
CLOTHO_SPLITS = {"fit": "development", "validate": "validation", "test": "evaluation"}


def read_audiocaps(
    root: str | Path,
    split: str,
    audio_dir: str = "{split}",
    audio_name: str = "{youtube_id}.wav",
    drop_missing: bool = True,
) -> ClipSet:
    """AudioCaps ``split`` (train, val or test) grouped by clip.

    ``audio_dir`` and ``audio_name`` are templates over ``split`` and every column of the
    CSV (``audiocap_id``, ``youtube_id``, ``start_time``, ``caption`` and any other), so the
    layouts download tools write (``{split}/{youtube_id}.wav``, ``{split}/{audiocap_id}.wav``,
    ``{youtube_id}_{start_time}.flac``) are all described by configuration. A clip whose
    captions name several files (one per ``audiocap_id``) uses the first that exists.
    """
    root = Path(root)
    table = root / f"{split}.csv"
    rows = read_csv(table, AUDIOCAPS_COLUMNS)
    columns = list(rows[0]) if rows else list(AUDIOCAPS_COLUMNS)
    for template in (audio_dir, audio_name):
        check_template(template, columns + ["split"], f"{table}: template {template!r}")
    clips: dict[str, ClipRecord] = {}
    candidates: dict[str, list[Path]] = {}
    for r in rows:
        ytid = r["youtube_id"]
        fields = {**r, "split": split}
        path = root / audio_dir.format(**fields) / audio_name.format(**fields)
        if ytid not in clips:
            clips[ytid] = ClipRecord(path, [], None, ytid, {"start_time": float(r["start_time"]),
                                                            "audiocap_ids": []})
            candidates[ytid] = []
        if path not in candidates[ytid]:
            candidates[ytid].append(path)
        clips[ytid].texts.append(r["caption"].strip())
        clips[ytid].meta["audiocap_ids"].append(int(r["audiocap_id"]))
    for ytid, paths in candidates.items():
        if len(paths) > 1:
            clips[ytid].path = next((p for p in paths if p.is_file()), paths[0])
    return _present(list(clips.values()), drop_missing, f"AudioCaps {split}", f"{audio_dir}/{audio_name}")


def check_template(template: str, fields: list[str], what: str) -> None:
    """Raise :class:`LayoutError` when ``template`` uses a ``{field}`` that is not in ``fields``."""
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None and name.split(".")[0].split("[")[0] not in fields:
            raise LayoutError(f"{what} uses the field {{{name}}}, which does not exist; "
                              f"fields: {', '.join(fields)}")


def read_clotho(root: str | Path, split: str, drop_missing: bool = True) -> ClipSet:
    """Clotho ``split`` (development, validation or evaluation).

    File names are taken byte for byte from the captions table (v2.1 has names that begin
    with a space). When ``clotho_metadata_<split>.csv`` is present (it is Latin-1 in some
    releases; :func:`~clapkit.datamodules.clips.read_csv` decodes either), each clip's
    ``meta`` also carries its Freesound ``sound_id`` and ``keywords``.
    """
    root = Path(root)
    columns = ("file_name",) + tuple(f"caption_{i}" for i in range(1, 6))
    rows = read_csv(root / f"clotho_captions_{split}.csv", columns)
    extra = _clotho_metadata(root / f"clotho_metadata_{split}.csv")
    records = []
    for r in rows:
        meta = {"split": split}
        meta.update(extra.get(r["file_name"], {}))
        records.append(ClipRecord(
            path=root / split / r["file_name"],
            texts=[r[f"caption_{i}"].strip() for i in range(1, 6) if r[f"caption_{i}"].strip()],
            key=Path(r["file_name"]).stem,
            meta=meta,
        ))
    return _present(records, drop_missing, f"Clotho {split}", f"{split}/<file_name>")


def _clotho_metadata(path: Path) -> dict[str, dict[str, object]]:
    if not path.is_file():
        return {}
    rows = read_csv(path, ("file_name",))
    out = {}
    for r in rows:
        info: dict[str, object] = {}
        if r.get("sound_id"):
            info["sound_id"] = r["sound_id"].strip()
        if r.get("keywords"):
            info["keywords"] = [k for k in r["keywords"].split(";") if k]
        out[r["file_name"]] = info
    return out


def _present(records: list[ClipRecord], drop_missing: bool, what: str, pattern: str) -> ClipSet:
    """A caption set of ``records`` without the clips whose audio file is absent (counted)."""
    if not drop_missing:
        return ClipSet(records)
    present = [r.path.is_file() for r in records]
    kept = [r for r, ok in zip(records, present) if ok]
    missing = [r for r, ok in zip(records, present) if not ok]
    if records and not kept:
        folder = _common_folder([r.path for r in records])
        problem = (f"{what}: none of its {len(records)} clips has an audio file; looked for {pattern} under "
                   f"{folder}, e.g. {', '.join(repr(r.path.name) for r in records[:3])}")
        log.warning("%s", problem)
        return ClipSet([], left_out=Counter(missing=len(records)), problem=problem)
    if missing:
        log.warning("%s: %d of %d clips have no audio file and are left out (first: %s)",
                    what, len(missing), len(records), missing[0].path)
    return ClipSet(kept, left_out=Counter(missing=len(missing)) if missing else Counter())


def _common_folder(paths: list[Path]) -> str:
    import os

    try:
        return os.path.commonpath([str(p.parent) for p in paths])
    except ValueError:
        return str(paths[0].parent)


class AudioCapsDataModule(ClipDataModule):
    """AudioCaps: fit on ``train``, validate on ``val``, test on ``test`` (5 captions per clip).

    The loader arguments (``audio``, ``batch_size``, ``num_workers``) are
    :class:`~clapkit.datamodules.clips.ClipDataModule`'s; evaluation batches carry captions.

    Args:
        root: folder with ``train.csv``, ``val.csv``, ``test.csv`` and the audio folders.
        audio_dir: audio folder under ``root``, a template over ``split`` and every CSV column
            (``audiocap_id``, ``youtube_id``, ``start_time``, ``caption``, ...).
        audio_name: audio file name template over the same fields (``{youtube_id}.wav``,
            ``{audiocap_id}.wav``, ``{youtube_id}_{start_time}.flac``, ...).
        drop_missing: leave out clips whose audio file is absent (reported at setup).
    """

    def __init__(
        self,
        root: str,
        audio_dir: str = "{split}",
        audio_name: str = "{youtube_id}.wav",
        drop_missing: bool = True,
        **kwargs,
    ):
        super().__init__(eval_captions=True, augment=None, **kwargs)
        self.root, self.audio_dir, self.audio_name, self.drop_missing = root, audio_dir, audio_name, drop_missing

    def build_sets(self) -> dict[str, ClipSet]:
        sets = {}
        for stage, split in (("fit", "train"), ("validate", "val"), ("test", "test")):
            if (Path(self.root) / f"{split}.csv").is_file() or stage == "test":
                sets[stage] = read_audiocaps(self.root, split, self.audio_dir, self.audio_name, self.drop_missing)
        return sets


class ClothoDataModule(ClipDataModule):
    """Clotho v2: fit on development, validate on validation, test on evaluation.

    The loader arguments (``audio``, ``batch_size``, ``num_workers``) are
    :class:`~clapkit.datamodules.clips.ClipDataModule`'s; evaluation batches carry captions.

    Args:
        root: folder with ``clotho_captions_*.csv`` and the ``development/``,
            ``validation/``, ``evaluation/`` audio folders.
        drop_missing: leave out clips whose audio file is absent (reported at setup).
    """

    def __init__(
        self,
        root: str,
        drop_missing: bool = True,
        **kwargs,
    ):
        super().__init__(eval_captions=True, augment=None, **kwargs)
        self.root, self.drop_missing = root, drop_missing

    def build_sets(self) -> dict[str, ClipSet]:
        sets = {}
        for stage, split in CLOTHO_SPLITS.items():
            if (Path(self.root) / f"clotho_captions_{split}.csv").is_file() or stage == "test":
                sets[stage] = read_clotho(self.root, split, self.drop_missing)
        return sets
