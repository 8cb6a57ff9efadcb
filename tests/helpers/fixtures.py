"""Writers of tiny dataset trees in the official layouts (and LAION-CLAP style shards).

Each writer synthesises short clips (distinct tones, so a clip can be recognised after a round
trip), writes the metadata exactly as the dataset distributes it, and returns what it wrote so
tests can compare the datamodule's view with the truth.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from clapkit.audio import save_audio

RATE = 8000


def tone(index: int, seconds: float = 0.25, rate: int = RATE, channels: int = 1) -> np.ndarray:
    """A distinct, non-silent clip per ``index`` (frequency grows with the index)."""
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * (110 + 37 * index) * t)).astype(np.float32)
    return np.stack([wave, 0.5 * wave]) if channels == 2 else wave


def flac_bytes(wave: np.ndarray, rate: int = RATE) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave.T if wave.ndim == 2 else wave, rate, format="FLAC")
    return buf.getvalue()


@dataclass
class Written:
    """What a writer produced: root plus per-clip truth."""

    root: Path
    keys: list[str] = field(default_factory=list)
    labels: dict[str, object] = field(default_factory=dict)
    captions: dict[str, list[str]] = field(default_factory=dict)
    folds: dict[str, int] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)


# -- webdataset shards -----------------------------------------------------------------------
def write_shards(root: Path, num_shards: int, per_shard: int, *, start: int = 0, bad: dict | None = None,
                 tags: bool = False, list_text: bool = False, seconds: float = 0.25) -> Written:
    """LAION-CLAP layout: ``{i}.tar`` with ``<key>.flac`` + ``<key>.json`` and ``sizes.json``.

    ``bad`` maps a global sample index to ``corrupt``, ``empty``, ``silent`` or ``nan``.
    """
    root.mkdir(parents=True, exist_ok=True)
    out, sizes, index = Written(root), {}, start
    bad = bad or {}
    for shard in range(num_shards):
        name = f"{shard}.tar"
        with tarfile.open(root / name, "w") as tar:
            for _ in range(per_shard):
                key = f"{index:06d}"
                wave = tone(index, seconds)
                kind = bad.get(index)
                if kind == "corrupt":
                    audio = b"fLaC" + b"\x00garbage" * 20
                elif kind == "empty":
                    audio = flac_bytes(np.zeros(0, np.float32))
                elif kind == "silent":
                    audio = flac_bytes(np.zeros_like(wave))
                elif kind == "nan":
                    buf = io.BytesIO()
                    sf.write(buf, np.full_like(wave, np.nan), RATE, format="WAV", subtype="FLOAT")
                    audio = buf.getvalue()
                else:
                    audio = flac_bytes(wave)
                texts = [f"caption {index} a", f"caption {index} b"] if list_text else f"caption {index}"
                meta = {"text": texts}
                if tags:
                    meta["tag"] = ["Speech"] if index % 2 else ["Dog", "Bark"]
                _add(tar, f"{key}.{'wav' if kind == 'nan' else 'flac'}", audio)
                _add(tar, f"{key}.json", json.dumps(meta).encode())
                out.keys.append(key)
                out.captions[key] = texts if list_text else [texts]
                index += 1
        sizes[name] = per_shard
    (root / "sizes.json").write_text(json.dumps(sizes))
    return out


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_csv(path: Path, header: list[str], rows: list[list[object]], comments: list[str] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        for line in comments:
            handle.write(line + "\n")
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


# -- ESC-50 ----------------------------------------------------------------------------------
ESC_CLASSES = ["dog", "rooster", "pig", "cow", "frog"]


def write_esc50(root: Path, per_class_fold: int = 1) -> Written:
    """ESC-50 layout with 5 classes x 5 folds x ``per_class_fold`` clips."""
    out, rows, i = Written(root, class_names=list(ESC_CLASSES)), [], 0
    for fold in range(1, 6):
        for target, category in enumerate(ESC_CLASSES):
            for take in range(per_class_fold):
                fname = f"{fold}-{100 + i}-{chr(65 + take)}-{target}.wav"
                save_audio(root / "audio" / fname, tone(i), RATE)
                rows.append([fname, fold, target, category, str(target < 2), 100 + i, chr(65 + take)])
                key = Path(fname).stem
                out.keys.append(key)
                out.labels[key], out.folds[key] = target, fold
                i += 1
    _write_csv(root / "meta" / "esc50.csv",
               ["filename", "fold", "target", "category", "esc10", "src_file", "take"], rows)
    return out


# -- UrbanSound8K ----------------------------------------------------------------------------
US8K_CLASSES = ["air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
                "engine_idling", "gun_shot", "jackhammer", "siren", "street_music"]


def write_urbansound8k(root: Path, classes: int = 4) -> Written:
    """UrbanSound8K layout: one clip per (class, fold) for the first ``classes`` classes."""
    out, rows, i = Written(root, class_names=US8K_CLASSES[:classes]), [], 0
    for fold in range(1, 11):
        for cid in range(classes):
            fname = f"{1000 + i}-{cid}-0-{fold}.wav"
            save_audio(root / "audio" / f"fold{fold}" / fname, tone(i, 0.2), RATE)
            rows.append([fname, 1000 + i, 0.0, 0.2, 1, fold, cid, US8K_CLASSES[cid]])
            key = Path(fname).stem
            out.keys.append(key)
            out.labels[key], out.folds[key] = cid, fold
            i += 1
    _write_csv(root / "metadata" / "UrbanSound8K.csv",
               ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"], rows)
    return out


# -- FSD50K ----------------------------------------------------------------------------------
FSD_VOCAB = [("Bark", "/m/05tny_"), ("Dog", "/m/0bt9lr"), ("Domestic_animals_and_pets", "/m/068hy"),
             ("Electric_guitar", "/m/02sgy"), ("Guitar", "/m/0342h")]


def write_fsd50k(root: Path) -> Written:
    """FSD50K layout: dev.csv with train/val split column, eval.csv, vocabulary.csv (no header)."""
    gt = root / "FSD50K.ground_truth"
    out = Written(root, class_names=[n.replace("_", " ") for n, _ in FSD_VOCAB])
    _write_csv(gt / "vocabulary.csv", [], [[i, n, m] for i, (n, m) in enumerate(FSD_VOCAB)])
    combos = [[0, 1, 2], [3, 4], [1], [4]]
    dev_rows, eval_rows, i = [], [], 0
    for split, rows, folder in (("train", dev_rows, "FSD50K.dev_audio"), ("val", dev_rows, "FSD50K.dev_audio"),
                                ("eval", eval_rows, "FSD50K.eval_audio")):
        for combo in combos:
            fname = 10000 + i
            save_audio(root / folder / f"{fname}.wav", tone(i), RATE)
            labels = ",".join(FSD_VOCAB[k][0] for k in combo)
            mids = ",".join(FSD_VOCAB[k][1] for k in combo)
            rows.append([fname, labels, mids] + ([split] if split != "eval" else []))
            out.keys.append(str(fname))
            out.labels[str(fname)] = sorted(combo)
            out.folds[str(fname)] = split
            i += 1
    _write_csv(gt / "dev.csv", ["fname", "labels", "mids", "split"], dev_rows)
    _write_csv(gt / "eval.csv", ["fname", "labels", "mids"], eval_rows)
    return out


# -- AudioSet --------------------------------------------------------------------------------
AS_CLASSES = [("/m/09x0r", "Speech"), ("/m/05zppz", "Male speech, man speaking"), ("/m/0bt9lr", "Dog"),
              ("/m/05tny_", "Bark"), ("/m/04rlf", "Music")]


def write_audioset(root: Path, n_train: int = 10, n_eval: int = 4) -> Written:
    """Official metadata (3 comment lines, quoted MID lists) + ``Y{ytid}.wav`` clips."""
    out = Written(root, class_names=[n for _, n in AS_CLASSES])
    _write_csv(root / "class_labels_indices.csv", ["index", "mid", "display_name"],
               [[i, m, n] for i, (m, n) in enumerate(AS_CLASSES)])
    rng = np.random.default_rng(0)
    for name, n, folder in (("balanced_train_segments.csv", n_train, "balanced_train_segments"),
                            ("eval_segments.csv", n_eval, "eval_segments")):
        lines = ["# Segments csv created Sun Mar  5 10:54:31 2017",
                 f"# num_ytids={n}, num_segs={n}, num_unique_labels=5, num_positive_labels=0",
                 "# YTID, start_seconds, end_seconds, positive_labels"]
        for j in range(n):
            ytid = f"-{name[:2]}{j:03d}xyzA"
            ids = sorted({int(k) for k in rng.choice(5, size=1 + j % 3, replace=False)})
            # the rarest class (Music, 4) appears in one training clip only
            ids = [k for k in ids if k != 4] or [0]
            if j == 0:
                ids = [4]
            mids = ",".join(AS_CLASSES[k][0] for k in ids)
            lines.append(f'{ytid}, {30.0 + j:.3f}, {40.0 + j:.3f}, "{mids}"')
            save_audio(root / folder / f"Y{ytid}.wav", tone(j), RATE)
            key = f"{ytid}_{30.0 + j:g}"
            out.keys.append(key)
            out.labels[key] = ids
            out.folds[key] = folder
        (root / name).write_text("\n".join(lines) + "\n")
    return out


# -- AudioCaps / Clotho ----------------------------------------------------------------------
def write_audiocaps(root: Path, clips: dict[str, int] | None = None, missing: int = 1) -> Written:
    """``{train,val,test}.csv`` + ``{split}/{youtube_id}.wav``; val/test have 5 captions per clip.

    ``missing`` test clips get captions but no audio (unavailable videos).
    """
    clips = clips or {"train": 4, "val": 2, "test": 3}
    out, cap_id = Written(root), 1
    for split, n in clips.items():
        rows = []
        for j in range(n + (missing if split == "test" else 0)):
            ytid = f"{split[:2]}{j:02d}abcdefg"
            per = 1 if split == "train" else 5
            caps = [f"{split} clip {j} caption {c}" for c in range(per)]
            for cap in caps:
                rows.append([cap_id, ytid, 30 * j, cap])
                cap_id += 1
            if j < n:
                save_audio(root / split / f"{ytid}.wav", tone(j), RATE)
                out.keys.append(ytid)
                out.captions[ytid] = caps
                out.folds[ytid] = split
        _write_csv(root / f"{split}.csv", ["audiocap_id", "youtube_id", "start_time", "caption"], rows)
    return out


def write_clotho(root: Path, clips: dict[str, int] | None = None) -> Written:
    """``clotho_captions_{split}.csv`` (file_name,caption_1..5) + ``{split}/<file_name>``."""
    clips = clips or {"development": 3, "validation": 2, "evaluation": 3}
    out = Written(root)
    for split, n in clips.items():
        rows = []
        for j in range(n):
            fname = f"{split} sound {j}.wav"
            caps = [f"{split} {j}: caption number {c}, with a comma" for c in range(1, 6)]
            save_audio(root / split / fname, tone(j), RATE)
            rows.append([fname] + caps)
            key = Path(fname).stem
            out.keys.append(key)
            out.captions[key] = caps
            out.folds[key] = split
        _write_csv(root / f"clotho_captions_{split}.csv",
                   ["file_name"] + [f"caption_{c}" for c in range(1, 6)], rows)
    return out
