"""Labelled evaluation sets in their official layouts: ESC-50, UrbanSound8K, FSD50K.

Layouts (as distributed):

- ESC-50: ``meta/esc50.csv`` (filename,fold,target,category,esc10,src_file,take), clips in
  ``audio/``; 50 classes, 5 folds.
- UrbanSound8K: ``metadata/UrbanSound8K.csv``
  (slice_file_name,fsID,start,end,salience,fold,classID,class), clips in ``audio/fold{n}/``;
  10 classes, 10 folds.
- FSD50K: ``FSD50K.ground_truth/{dev,eval}.csv`` (fname,labels,mids[,split]; ``split`` is
  ``train``/``val`` in dev.csv), ``FSD50K.ground_truth/vocabulary.csv`` (no header:
  index,label,mid), clips ``FSD50K.dev_audio/{fname}.wav`` and
  ``FSD50K.eval_audio/{fname}.wav``; 200 classes, multi-label.
- VGGSound: ``vggsound.csv`` (no header: youtube_id,start_seconds,label,split with split
  ``train``/``test``); the audio is not distributed with it, so clips are looked up anywhere
  under the dataset folder by a name template (default ``{youtube_id}_{start:06d}.wav``, the
  name the dataset's own tools give a clip); 309 classes, single-label.

Zero-shot evaluation uses ``class_names`` (underscores replaced by spaces) and integer labels
(multi-hot for FSD50K). Training batches carry template captions ("The sound of dog"), so the
same datamodules fine-tune or linear-probe a model on the training folds.
"""

from __future__ import annotations

from pathlib import Path

from clapkit.datamodules.captions import CaptionTemplate, pretty_name
from clapkit.datamodules.clips import (
    ClipDataModule,
    ClipRecord,
    ClipSet,
    LayoutError,
    decode_table,
    read_csv,
    select_folds,
)

VGGSOUND_FIELDS = ("youtube_id", "start", "label", "split")
ESC50_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
US8K_COLUMNS = ("slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class")


def _names_by_index(pairs: dict[int, str], source: Path) -> list[str]:
    if sorted(pairs) != list(range(len(pairs))):
        raise LayoutError(f"{source}: class ids are not 0..{len(pairs) - 1}: {sorted(pairs)[:10]}...")
    return [pretty_name(pairs[i]) for i in range(len(pairs))]


def read_esc50(root: str | Path, template: CaptionTemplate | None = None, esc10: bool = False) -> ClipSet:
    """All ESC-50 clips (``meta['fold']`` in 1..5); ``esc10`` keeps the ESC-10 subset only."""
    root = Path(root)
    rows = read_csv(root / "meta" / "esc50.csv", ESC50_COLUMNS)
    template = template or CaptionTemplate()
    names = _names_by_index({int(r["target"]): r["category"] for r in rows}, root / "meta" / "esc50.csv")
    records = []
    for r in rows:
        if esc10 and r["esc10"].strip().lower() != "true":
            continue
        label = int(r["target"])
        records.append(ClipRecord(
            path=root / "audio" / r["filename"],
            texts=[template([names[label]])],
            label=label,
            key=Path(r["filename"]).stem,
            meta={"fold": int(r["fold"]), "esc10": r["esc10"].strip().lower() == "true"},
        ))
    if esc10:  # ESC-10 is evaluated with its own 10-way label space
        used = sorted({rec.label for rec in records})
        remap = {old: new for new, old in enumerate(used)}
        for rec in records:
            rec.label = remap[rec.label]
        names = [names[i] for i in used]
    return ClipSet(records, names)


def read_urbansound8k(root: str | Path, template: CaptionTemplate | None = None) -> ClipSet:
    """All UrbanSound8K clips (``meta['fold']`` in 1..10)."""
    root = Path(root)
    table = root / "metadata" / "UrbanSound8K.csv"
    rows = read_csv(table, US8K_COLUMNS)
    template = template or CaptionTemplate()
    names = _names_by_index({int(r["classID"]): r["class"] for r in rows}, table)
    records = [
        ClipRecord(
            path=root / "audio" / f"fold{int(r['fold'])}" / r["slice_file_name"],
            texts=[template([names[int(r["classID"])]])],
            label=int(r["classID"]),
            key=Path(r["slice_file_name"]).stem,
            meta={"fold": int(r["fold"]), "salience": int(r["salience"]), "fsID": r["fsID"]},
        )
        for r in rows
    ]
    return ClipSet(records, names)


def read_fsd50k(root: str | Path, split: str, template: CaptionTemplate | None = None) -> ClipSet:
    """FSD50K ``split`` in ``train``/``val`` (from dev.csv), ``dev`` (both) or ``eval``."""
    root = Path(root)
    gt = root / "FSD50K.ground_truth"
    vocab_path = gt / "vocabulary.csv"
    if not vocab_path.is_file():
        raise LayoutError(f"{vocab_path}: file not found (expected index,label,mid rows, no header)")
    raw, mid_to_id = {}, {}
    for line_no, line in enumerate(decode_table(vocab_path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(",")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            raise LayoutError(f"{vocab_path}:{line_no}: expected 'index,label,mid', got {line!r}")
        raw[int(parts[0])] = parts[1]
        mid_to_id[parts[2].strip()] = int(parts[0])
    names = _names_by_index(raw, vocab_path)
    table, audio_dir = (gt / "eval.csv", root / "FSD50K.eval_audio") if split == "eval" else (
        gt / "dev.csv", root / "FSD50K.dev_audio")
    if split not in ("train", "val", "dev", "eval"):
        raise ValueError(f"FSD50K split must be train, val, dev or eval, not {split!r}")
    rows = read_csv(table, ("fname", "labels", "mids") + (("split",) if split in ("train", "val") else ()))
    template = template or CaptionTemplate()
    records = []
    for r in rows:
        if split in ("train", "val") and r["split"] != split:
            continue
        try:
            label = sorted({mid_to_id[m.strip()] for m in r["mids"].split(",") if m.strip()})
        except KeyError as exc:
            raise LayoutError(f"{table}: clip {r['fname']} has MID {exc} not in {vocab_path}") from None
        records.append(ClipRecord(
            path=audio_dir / f"{r['fname']}.wav",
            texts=[template([names[i] for i in label])],
            label=label,
            key=str(r["fname"]),
            meta={"split": r.get("split", "eval")},
        ))
    return ClipSet(records, names, multi_label=True)


def read_vggsound(root: str | Path, split: str = "test", audio_name: str = "{youtube_id}_{start:06d}.wav",
                  template: CaptionTemplate | None = None, drop_missing: bool = True) -> ClipSet:
    """VGGSound ``split`` (``train`` or ``test``) from ``vggsound.csv``.

    Class ids are the sorted label strings of the whole table (train and test), so both splits
    share one label space. ``audio_name`` is a template over ``youtube_id``, ``start`` (an int)
    and ``label``; files are found anywhere under ``root`` (the folder is indexed once). Clips
    without a file are left out and counted (``left_out['missing']``).
    """
    import csv as csv_module
    from collections import Counter

    from clapkit.datamodules.audioset import index_audio_folder
    from clapkit.datamodules.captionsets import check_template

    root = Path(root)
    table = root / "vggsound.csv"
    if not table.is_file():
        raise LayoutError(f"{table}: file not found (expected youtube_id,start_seconds,label,split rows, no header)")
    check_template(audio_name, list(VGGSOUND_FIELDS[:3]), f"{table}: audio_name {audio_name!r}")
    rows = []
    for line_no, row in enumerate(csv_module.reader(decode_table(table).splitlines()), 1):
        if not row:
            continue
        if len(row) != 4 or not row[1].strip().lstrip("-").isdigit():
            raise LayoutError(f"{table}:{line_no}: expected 'youtube_id,start_seconds,label,split', got {row}")
        rows.append((row[0], int(row[1]), row[2].strip(), row[3].strip()))
    names = sorted({label for _, _, label, _ in rows})
    ids = {name: i for i, name in enumerate(names)}
    template = template or CaptionTemplate()
    index = index_audio_folder(root)
    records, missing = [], 0
    for ytid, start, label, row_split in rows:
        if row_split != split:
            continue
        name = audio_name.format(youtube_id=ytid, start=start, label=label)
        if drop_missing and name not in index:
            missing += 1
            continue
        records.append(ClipRecord(path=index.get(name, root / name), texts=[template([label])], label=ids[label],
                                  key=f"{ytid}_{start}", meta={"split": split, "start": start}))
    problem = None
    if missing and not records:
        problem = (f"{table}: none of its {missing} {split} clips has an audio file under {root} "
                   f"(searched recursively for names like {audio_name!r})")
    return ClipSet(records, names, left_out=Counter(missing=missing) if missing else Counter(), problem=problem)


class ESC50DataModule(ClipDataModule):
    """ESC-50 (5 s clips, 50 classes, 5 folds): zero-shot on ``test_folds``.

    The loader arguments (``audio``, ``batch_size``, ``num_workers``, ``eval_captions``,
    ``augment``) are :class:`~clapkit.datamodules.clips.ClipDataModule`'s.

    Args:
        root: dataset folder containing ``meta/esc50.csv`` and ``audio/``.
        test_folds: folds used for validation and test (zero-shot: all five).
        train_folds: folds used for fitting (default: the rest).
        esc10: use the ESC-10 subset (10 classes).
        template: caption template for the class names.
    """

    def __init__(
        self,
        root: str,
        test_folds: list[int] | None = None,
        train_folds: list[int] | None = None,
        esc10: bool = False,
        template: CaptionTemplate | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.root, self.esc10, self.template = root, esc10, template
        self.test_folds = test_folds or [1, 2, 3, 4, 5]
        self.train_folds = train_folds

    def build_sets(self) -> dict[str, ClipSet]:
        full = read_esc50(self.root, self.template, self.esc10)
        return _fold_sets(full, self.test_folds, self.train_folds)


class UrbanSound8KDataModule(ClipDataModule):
    """UrbanSound8K (<= 4 s clips, 10 classes, 10 folds): zero-shot on ``test_folds``.

    The loader arguments (``audio``, ``batch_size``, ``num_workers``, ``eval_captions``,
    ``augment``) are :class:`~clapkit.datamodules.clips.ClipDataModule`'s.

    Args:
        root: dataset folder containing ``metadata/UrbanSound8K.csv`` and ``audio/fold*/``.
        test_folds: folds used for validation and test (zero-shot: all ten).
        train_folds: folds used for fitting (default: the rest).
        template: caption template for the class names.
    """

    def __init__(
        self,
        root: str,
        test_folds: list[int] | None = None,
        train_folds: list[int] | None = None,
        template: CaptionTemplate | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.root, self.template = root, template
        self.test_folds = test_folds or list(range(1, 11))
        self.train_folds = train_folds

    def build_sets(self) -> dict[str, ClipSet]:
        return _fold_sets(read_urbansound8k(self.root, self.template), self.test_folds, self.train_folds)


class FSD50KDataModule(ClipDataModule):
    """FSD50K (200 classes, multi-label): fit on dev ``train``, validate on ``val``, test on ``eval``.

    The loader arguments (``audio``, ``batch_size``, ``num_workers``, ``eval_captions``,
    ``augment``) are :class:`~clapkit.datamodules.clips.ClipDataModule`'s.

    Args:
        root: dataset folder containing ``FSD50K.ground_truth/`` and the audio folders.
        template: caption template for the label names.
    """

    def __init__(
        self,
        root: str,
        template: CaptionTemplate | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.root, self.template = root, template

    def build_sets(self) -> dict[str, ClipSet]:
        return {
            "fit": read_fsd50k(self.root, "train", self.template),
            "validate": read_fsd50k(self.root, "val", self.template),
            "test": read_fsd50k(self.root, "eval", self.template),
        }


def _fold_sets(full: ClipSet, test_folds: list[int], train_folds: list[int] | None) -> dict[str, ClipSet]:
    test = ClipSet(select_folds(full.records, test_folds), full.class_names)
    sets = {"validate": test, "test": test}
    train_records = select_folds(full.records, train_folds, exclude=None if train_folds else test_folds)
    if train_records:
        sets["fit"] = ClipSet(train_records, full.class_names)
    return sets
