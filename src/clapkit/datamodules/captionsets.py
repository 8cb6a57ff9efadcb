"""Caption sets for audio-text retrieval: AudioCaps and Clotho, all captions per clip.

Layouts:

- AudioCaps: ``{train,val,test}.csv`` (audiocap_id,youtube_id,start_time,caption; one row
  per caption). Rows are grouped by ``youtube_id`` so a test clip carries its five captions.
  The audio is not distributed with the captions; clips are looked up as
  ``<root>/<audio_dir>/<audio_name>`` where both are templates over ``split``,
  ``youtube_id``, ``start_time`` (default ``<root>/test/<youtube_id>.wav``). Clips whose
  video could not be downloaded are dropped at setup and reported.
- Clotho (v2): ``clotho_captions_{development,validation,evaluation}.csv``
  (file_name,caption_1..caption_5), clips in ``{development,validation,evaluation}/``.

Evaluation batches carry ``"captions"`` (every caption of each clip) and no labels, which
selects retrieval metrics in the contrastive module.
"""

from __future__ import annotations

import logging
from pathlib import Path

from clapkit.datamodules.clips import ClipDataModule, ClipRecord, ClipSet, read_csv
from clapkit.datamodules.pipeline import AudioPolicy

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
    """AudioCaps ``split`` (train, val or test) grouped by clip."""
    root = Path(root)
    rows = read_csv(root / f"{split}.csv", AUDIOCAPS_COLUMNS)
    clips: dict[str, ClipRecord] = {}
    for r in rows:
        ytid = r["youtube_id"]
        if ytid not in clips:
            fields = {"split": split, "youtube_id": ytid, "start_time": r["start_time"]}
            path = root / audio_dir.format(**fields) / audio_name.format(**fields)
            clips[ytid] = ClipRecord(path, [], None, ytid, {"start_time": float(r["start_time"]),
                                                            "audiocap_ids": []})
        clips[ytid].texts.append(r["caption"].strip())
        clips[ytid].meta["audiocap_ids"].append(int(r["audiocap_id"]))
    return ClipSet(_present(list(clips.values()), drop_missing, f"AudioCaps {split}"))


def read_clotho(root: str | Path, split: str, drop_missing: bool = True) -> ClipSet:
    """Clotho ``split`` (development, validation or evaluation)."""
    root = Path(root)
    columns = ("file_name",) + tuple(f"caption_{i}" for i in range(1, 6))
    rows = read_csv(root / f"clotho_captions_{split}.csv", columns)
    records = [
        ClipRecord(
            path=root / split / r["file_name"],
            texts=[r[f"caption_{i}"].strip() for i in range(1, 6) if r[f"caption_{i}"].strip()],
            key=Path(r["file_name"]).stem,
            meta={"split": split},
        )
        for r in rows
    ]
    return ClipSet(_present(records, drop_missing, f"Clotho {split}"))


def _present(records: list[ClipRecord], drop_missing: bool, what: str) -> list[ClipRecord]:
    if not drop_missing:
        return records
    kept = [r for r in records if r.path.is_file()]
    if len(kept) < len(records):
        log.warning("%s: %d of %d clips have no audio file and are left out (first: %s)",
                    what, len(records) - len(kept), len(records),
                    next(r.path for r in records if not r.path.is_file()))
    return kept


class AudioCapsDataModule(ClipDataModule):
    """AudioCaps: fit on ``train``, validate on ``val``, test on ``test`` (5 captions per clip).

    Args:
        root: folder with ``train.csv``, ``val.csv``, ``test.csv`` and the audio folders.
        audio_dir: audio folder under ``root``, a template over ``split``, ``youtube_id``,
            ``start_time``.
        audio_name: audio file name template over the same fields.
        drop_missing: leave out clips whose audio file is absent (reported at setup).
        audio: decode/crop policy.
        batch_size: clips per batch.
        num_workers: decoding worker processes.
    """

    def __init__(
        self,
        root: str,
        audio_dir: str = "{split}",
        audio_name: str = "{youtube_id}.wav",
        drop_missing: bool = True,
        audio: AudioPolicy | None = None,
        batch_size: int = 32,
        num_workers: int = 4,
    ):
        super().__init__(audio, batch_size, num_workers, eval_captions=True)
        self.root, self.audio_dir, self.audio_name, self.drop_missing = root, audio_dir, audio_name, drop_missing

    def build_sets(self) -> dict[str, ClipSet]:
        sets = {}
        for stage, split in (("fit", "train"), ("validate", "val"), ("test", "test")):
            if (Path(self.root) / f"{split}.csv").is_file() or stage == "test":
                sets[stage] = read_audiocaps(self.root, split, self.audio_dir, self.audio_name, self.drop_missing)
        return sets


class ClothoDataModule(ClipDataModule):
    """Clotho v2: fit on development, validate on validation, test on evaluation.

    Args:
        root: folder with ``clotho_captions_*.csv`` and the ``development/``,
            ``validation/``, ``evaluation/`` audio folders.
        drop_missing: leave out clips whose audio file is absent (reported at setup).
        audio: decode/crop policy.
        batch_size: clips per batch.
        num_workers: decoding worker processes.
    """

    def __init__(
        self,
        root: str,
        drop_missing: bool = True,
        audio: AudioPolicy | None = None,
        batch_size: int = 32,
        num_workers: int = 4,
    ):
        super().__init__(audio, batch_size, num_workers, eval_captions=True)
        self.root, self.drop_missing = root, drop_missing

    def build_sets(self) -> dict[str, ClipSet]:
        sets = {}
        for stage, split in CLOTHO_SPLITS.items():
            if (Path(self.root) / f"clotho_captions_{split}.csv").is_file() or stage == "test":
                sets[stage] = read_clotho(self.root, split, self.drop_missing)
        return sets
