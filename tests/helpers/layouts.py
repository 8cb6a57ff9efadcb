"""Miniature replicas of the published on-disk layouts of the evaluation datasets.

Each builder writes the directory tree, metadata files, header lines, quoting and naming quirks
the dataset's own documentation describes, with a handful of tiny clips, and returns a
:class:`Replica` holding the truth per split (keys, captions, labels, folds) that a test
compares with what ``clapkit validate`` / ``clapkit test`` evaluated.

Quirks reproduced (from the datasets' documentation and release notes):

- ESC-50: ``meta/esc50.csv`` (``filename,fold,target,category,esc10,src_file,take``),
  ``audio/{fold}-{src}-{take}-{target}.wav``, 44.1 kHz mono 16-bit.
- UrbanSound8K: ``metadata/UrbanSound8K.csv``, ``audio/fold1..fold10/``; the clips keep their
  Freesound formats: 8-bit unsigned, 16/24/32-bit, float, 4-bit IMA ADPCM, mono and stereo,
  rates from 8 kHz to 96 kHz.
- FSD50K: ``FSD50K.ground_truth/{dev,eval,vocabulary}.csv`` (vocabulary without header),
  quoted comma-separated multi-label fields, ``FSD50K.{dev,eval}_audio/<fname>.wav``.
- AudioSet: segment lists with three ``#`` lines and ``"mid,mid"`` label fields after a
  space, ``class_labels_indices.csv`` with quoted display names holding commas; the PANNs tree
  (``metadata/`` + ``audios/{balanced_train,eval}_segments/Y<ytid>.wav`` and
  ``audios/unbalanced_train_segments/unbalanced_train_segments_partNN/Y<ytid>.wav``) and the
  Hugging Face tree (agkphysics/AudioSet: ``audio/{bal_train,eval}/<ytid>.flac``).
- AudioCaps: ``{train,val,test}.csv`` (``audiocap_id,youtube_id,start_time,caption``), one
  caption per training clip, five per val/test clip, quoted captions with commas, clips of
  unavailable videos absent; audio as ``{split}/{youtube_id}.wav`` or, as download tools store
  it, ``{split}/{audiocap_id}.wav`` (one file per caption row).
- Clotho v2.1: ``clotho_captions_{development,validation,evaluation}.csv`` (UTF-8, five
  captions), ``clotho_metadata_*.csv`` in Latin-1, file names that begin with a space
  (`` Ambience Birds.wav``) or carry accents.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf


def clip(index: int, seconds: float = 0.1, rate: int = 16000, channels: int = 1) -> np.ndarray:
    """A short, distinct, non-silent clip (``[T]`` or ``[T, C]``)."""
    t = np.arange(max(1, int(seconds * rate))) / rate
    wave = (0.3 * np.sin(2 * np.pi * (200 + 53 * index) * t)).astype(np.float32)
    return np.stack([wave, 0.5 * wave], axis=1) if channels == 2 else wave


def write_clip(path: Path, index: int, rate: int = 16000, subtype: str | None = None, channels: int = 1,
               seconds: float = 0.1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "FLAC" if path.suffix == ".flac" else "WAV"
    sf.write(path, clip(index, seconds, rate, channels), rate, format=fmt, subtype=subtype)


def write_table(path: Path, header: list[str] | None, rows: list[list[object]], encoding: str = "utf-8",
                comments: tuple[str, ...] = ()) -> None:
    buf = io.StringIO()
    for line in comments:
        buf.write(line + "\n")
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue().encode(encoding))


@dataclass
class Replica:
    """A written layout and its truth.

    Attributes:
        root: dataset folder.
        splits: split name -> keys present on disk (what an evaluation must read).
        captions: key -> captions.
        labels: key -> class index or sorted list of indices.
        folds: key -> fold.
        class_names: display names by index (as the datamodule reports them).
        missing: split name -> number of table entries without audio.
    """

    root: Path
    splits: dict[str, list[str]] = field(default_factory=dict)
    captions: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, object] = field(default_factory=dict)
    folds: dict[str, int] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    missing: dict[str, int] = field(default_factory=dict)


# -- ESC-50 ------------------------------------------------------------------------------------
ESC_CATEGORIES = ["dog", "rooster", "chirping_birds"]


def esc50(root: Path) -> Replica:
    """3 classes x 5 folds x 1 clip; class 0 and 1 are in ESC-10."""
    out = Replica(root, class_names=[c.replace("_", " ") for c in ESC_CATEGORIES])
    rows, i = [], 0
    for fold in range(1, 6):
        for target, category in enumerate(ESC_CATEGORIES):
            src = 100032 + i
            name = f"{fold}-{src}-A-{target}.wav"
            write_clip(root / "audio" / name, i, 44100, "PCM_16", seconds=0.05)
            rows.append([name, fold, target, category, "True" if target < 2 else "False", src, "A"])
            key = name[:-4]
            out.splits.setdefault("all", []).append(key)
            out.labels[key], out.folds[key] = target, fold
            i += 1
    write_table(root / "meta" / "esc50.csv", ["filename", "fold", "target", "category", "esc10", "src_file", "take"],
                rows)
    return out


# -- UrbanSound8K -----------------------------------------------------------------------------
US8K_CLASSES = ["air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
                "engine_idling", "gun_shot", "jackhammer", "siren", "street_music"]
#: (subtype, rate, channels): the sample formats found in the release.
US8K_FORMATS = [("PCM_U8", 11025, 1), ("PCM_16", 44100, 2), ("PCM_24", 96000, 2), ("PCM_32", 48000, 1),
                ("FLOAT", 22050, 1), ("IMA_ADPCM", 44100, 1), ("PCM_16", 8000, 1), ("IMA_ADPCM", 22050, 2)]


def urbansound8k(root: Path, per_fold: int = 1) -> Replica:
    """10 folds x ``per_fold`` clips, class ``i % 10`` (every class present), cycling through
    :data:`US8K_FORMATS`."""
    out = Replica(root, class_names=[c.replace("_", " ") for c in US8K_CLASSES])
    rows, i = [], 0
    for fold in range(1, 11):
        for _ in range(per_fold):
            cid = i % 10
            subtype, rate, channels = US8K_FORMATS[i % len(US8K_FORMATS)]
            fs_id = 7000 + i
            name = f"{fs_id}-{cid}-0-{i}.wav"
            write_clip(root / "audio" / f"fold{fold}" / name, i, rate, subtype, channels, seconds=0.05)
            rows.append([name, fs_id, 0.0, 0.05, 1 + i % 2, fold, cid, US8K_CLASSES[cid]])
            key = name[:-4]
            out.splits.setdefault("all", []).append(key)
            out.labels[key], out.folds[key] = cid, fold
            i += 1
    write_table(root / "metadata" / "UrbanSound8K.csv",
                ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"], rows)
    return out


# -- FSD50K -----------------------------------------------------------------------------------
FSD_VOCAB = [("Bark", "/m/05tny_"), ("Dog", "/m/0bt9lr"), ("Domestic_animals_and_pets", "/m/068hy"),
             ("Electric_guitar", "/m/02sgy"), ("Guitar", "/m/0342h"), ("Speech", "/m/09x0r")]


def fsd50k(root: Path) -> Replica:
    """dev (train 4, val 2) and eval (3) clips, multi-label rows quoted as published."""
    gt = root / "FSD50K.ground_truth"
    out = Replica(root, class_names=[n.replace("_", " ") for n, _ in FSD_VOCAB])
    write_table(gt / "vocabulary.csv", None, [[i, n, m] for i, (n, m) in enumerate(FSD_VOCAB)])
    combos = [[0, 1, 2], [3, 4], [5], [1, 5], [0, 1], [4]]
    dev, ev, i = [], [], 0
    for split, n in (("train", 4), ("val", 2), ("eval", 3)):
        for j in range(n):
            combo = combos[(i + j) % len(combos)]
            fname = 30000 + i
            folder = "FSD50K.eval_audio" if split == "eval" else "FSD50K.dev_audio"
            write_clip(root / folder / f"{fname}.wav", i, 44100, "PCM_16", seconds=0.05)
            labels = ",".join(FSD_VOCAB[k][0] for k in combo)
            mids = ",".join(FSD_VOCAB[k][1] for k in combo)
            (ev if split == "eval" else dev).append([fname, labels, mids] + ([] if split == "eval" else [split]))
            out.splits.setdefault(split, []).append(str(fname))
            out.labels[str(fname)] = sorted(combo)
            i += 1
    write_table(gt / "dev.csv", ["fname", "labels", "mids", "split"], dev)
    write_table(gt / "eval.csv", ["fname", "labels", "mids"], ev)
    return out


# -- AudioSet ---------------------------------------------------------------------------------
AS_CLASSES = [("/m/09x0r", "Speech"), ("/m/05zppz", "Male speech, man speaking"), ("/m/0bt9lr", "Dog"),
              ("/m/05tny_", "Bark"), ("/m/04rlf", "Music")]
AS_LISTS = {"balanced_train": ("balanced_train_segments.csv", 4), "eval": ("eval_segments.csv", 3),
            "unbalanced_train": ("unbalanced_train_segments.csv", 5)}


def audioset(root: Path, layout: str = "panns", missing: int = 1) -> Replica:
    """Balanced (4), eval (3) and unbalanced (5, PANNs only) lists; ``missing`` segments per list
    have no audio (unavailable videos).

    ``layout``: ``panns`` (``metadata/`` + ``audios/...``, unbalanced in part folders) or ``hf``
    (metadata at the root, ``audio/{bal_train,eval}/<ytid>.flac``).
    """
    out = Replica(root, class_names=[n for _, n in AS_CLASSES])
    meta = root / "metadata" if layout == "panns" else root
    write_table(meta / "class_labels_indices.csv", ["index", "mid", "display_name"],
                [[i, m, n] for i, (m, n) in enumerate(AS_CLASSES)])
    combos = [[0, 1], [2, 3], [4], [0], [2, 3, 4]]
    lists = AS_LISTS if layout == "panns" else {k: v for k, v in AS_LISTS.items() if k != "unbalanced_train"}
    i = 0
    for split, (table, n) in lists.items():
        lines = ["# Segments csv created Sun Mar  5 10:54:31 2017",
                 f"# num_ytids={n + missing}, num_segs={n + missing}, num_unique_labels=5, num_positive_labels=9",
                 "# YTID, start_seconds, end_seconds, positive_labels"]
        for j in range(n + missing):
            ytid = f"-{split[:3]}{j:02d}x_Zq"[:11]
            combo = combos[(i + j) % len(combos)]
            mids = ",".join(AS_CLASSES[k][0] for k in combo)
            lines.append(f'{ytid}, {30.0 + j:.3f}, {40.0 + j:.3f}, "{mids}"')
            if j >= n:
                continue  # an unavailable video: listed, never downloaded
            if layout == "panns":
                folder = root / "audios" / f"{split}_segments"
                if split == "unbalanced_train":
                    folder = folder / f"unbalanced_train_segments_part{j % 2:02d}"
                path = folder / f"Y{ytid}.wav"
            else:
                path = root / "audio" / {"balanced_train": "bal_train", "eval": "eval"}[split] / f"{ytid}.flac"
            write_clip(path, i + j, 48000 if j % 2 else 44100, seconds=0.05)
            key = f"{ytid}_{30.0 + j:g}"
            out.splits.setdefault(split, []).append(key)
            out.labels[key] = sorted(combo)
        out.missing[split] = missing
        (meta / table).write_text("\n".join(lines) + "\n")
        i += n
    return out


# -- AudioCaps --------------------------------------------------------------------------------
def audiocaps(root: Path, naming: str = "youtube_id", clips: dict[str, int] | None = None,
              missing: int = 1) -> Replica:
    """``naming``: ``youtube_id`` (``{split}/{youtube_id}.wav``) or ``audiocap_id``
    (``{split}/{audiocap_id}.wav``, one file per caption row); ``missing`` clips per split have
    captions but no audio."""
    clips = clips or {"train": 3, "val": 2, "test": 3}
    out, cap_id = Replica(root), 91000
    for split, n in clips.items():
        rows = []
        for j in range(n + missing):
            ytid = f"{split[:2]}{j:02d}-AbCdEf"[:11]
            caps = [f"{split} clip {j}, caption {c}: a dog barks" for c in range(1 if split == "train" else 5)]
            present = j < n
            for cap in caps:
                rows.append([cap_id, ytid, 10 * j, cap])
                if present and (naming == "audiocap_id" or cap is caps[0]):
                    name = f"{cap_id}.wav" if naming == "audiocap_id" else f"{ytid}.wav"
                    write_clip(root / split / name, j, 32000, seconds=0.05)
                cap_id += 1
            if present:
                out.splits.setdefault(split, []).append(ytid)
                out.captions[ytid] = caps
        out.missing[split] = missing
        write_table(root / f"{split}.csv", ["audiocap_id", "youtube_id", "start_time", "caption"], rows)
    return out


# -- Clotho v2.1 -----------------------------------------------------------------------------
CLOTHO_NAMES = {
    "development": [" Ambience Birds.wav", " typical neighborhood in Porto.wav", "Café terrace.wav"],
    "validation": [" e ieio ieai.wav", "rain on roof.wav"],
    "evaluation": ["01 barreau bunker.wav", "Águas de março.wav", "night crickets.wav"],
}


def clotho(root: Path) -> Replica:
    """Clotho v2.1: leading-space and accented names, UTF-8 captions, Latin-1 metadata."""
    out = Replica(root)
    i = 0
    for split, names in CLOTHO_NAMES.items():
        caption_rows, meta_rows = [], []
        for name in names:
            caps = [f"{name.strip()[:-4]}: caption {c}, with a comma" for c in range(1, 6)]
            write_clip(root / split / name, i, 44100, seconds=0.05)
            caption_rows.append([name] + caps)
            meta_rows.append([name, "birds;ambience;café", 10000 + i, f"https://freesound.org/s/{10000 + i}",
                              "[0, 441000]", "Müller", "http://creativecommons.org/licenses/by/3.0/"])
            key = name[:-4]
            out.splits.setdefault(split, []).append(key)
            out.captions[key] = caps
            i += 1
        write_table(root / f"clotho_captions_{split}.csv", ["file_name"] + [f"caption_{c}" for c in range(1, 6)],
                    caption_rows)
        write_table(root / f"clotho_metadata_{split}.csv",
                    ["file_name", "keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer",
                     "license"], meta_rows, encoding="latin-1")
    return out


# -- VGGSound ---------------------------------------------------------------------------------
VGG_LABELS = ["dog barking", "people marching", "playing acoustic guitar", "rain on surface"]


def vggsound(root: Path, missing: int = 1) -> Replica:
    """``vggsound.csv`` (no header: youtube_id,start_seconds,label,split), train (4) and test (4)
    rows, clips as ``{youtube_id}_{start:06d}.wav`` in ``video_audio/`` subfolders; ``missing``
    test rows have no audio (unavailable videos)."""
    out = Replica(root, class_names=sorted(VGG_LABELS))
    rows, i = [], 0
    for split, n in (("train", 4), ("test", 4 + missing)):
        for j in range(n):
            label = VGG_LABELS[j % len(VGG_LABELS)]
            ytid, start = f"-{split[:2]}{j:02d}-AbCdE"[:11], 10 * j + 1
            rows.append([ytid, start, label, split])
            if split == "test" and j >= n - missing:
                continue
            write_clip(root / "video_audio" / split / f"{ytid}_{start:06d}.wav", i, 16000, seconds=0.05)
            key = f"{ytid}_{start}"
            out.splits.setdefault(split, []).append(key)
            out.labels[key] = sorted(VGG_LABELS).index(label)
            i += 1
        if split == "test":
            out.missing[split] = missing
    write_table(root / "vggsound.csv", None, rows)
    return out
