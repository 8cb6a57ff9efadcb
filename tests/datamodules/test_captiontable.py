"""CaptionTableDataModule: (audio, caption) pairs from a CSV / JSONL table or a folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from clapkit.datamodules.captiontable import CaptionTableDataModule, read_caption_table
from clapkit.datamodules.clips import LayoutError
from clapkit.datamodules.pipeline import AudioPolicy


def _clips(folder, n=4, rate=16000):
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        wave = 0.1 * np.sin(2 * np.pi * (200 + 100 * i) * np.arange(rate // 2) / rate)
        sf.write(folder / "audio" / f"c{i}.wav", wave.astype("float32"), rate)


def test_csv_with_mapped_columns_and_caption_lists(tmp_path):
    _clips(tmp_path)
    table = tmp_path / "train.csv"
    table.write_text('file,caption\naudio/c0.wav,a dog barks\naudio/c1.wav,"[""rain"", ""rain on a roof""]"\n'
                     "audio/c2.wav,\naudio/nowhere.wav,missing\n")
    clips = read_caption_table(table, audio_column="file", caption_column="caption")
    assert [r.path.name for r in clips.records] == ["c0.wav", "c1.wav"]
    assert clips.records[1].texts == ["rain", "rain on a roof"]
    assert dict(clips.left_out) == {"no_text": 1, "missing": 1}


def test_jsonl_and_folder_tables_and_the_loader(tmp_path):
    _clips(tmp_path)
    rows = [{"path": f"audio/c{i}.wav", "description": f"tone number {i}"} for i in range(4)]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = CaptionTableDataModule(train=str(tmp_path), val=str(tmp_path / "captions.jsonl"), audio_column="path",
                                  caption_column="description", batch_size=2, num_workers=0,
                                  audio=AudioPolicy(sample_rate=16000, clip_seconds=1.0, int16=False))
    batch = next(iter(data.train_dataloader()))
    assert batch["audio"].shape == (2, 16000), {k: getattr(v, "shape", v) for k, v in batch.items()}
    assert all(text.startswith("tone number ") for text in batch["text"]) and len(batch["text"]) == 2
    assert len(data.val_dataloader()) == 2


def test_no_validation_table_means_no_validation(tmp_path):
    _clips(tmp_path, 2)
    (tmp_path / "t.csv").write_text("audio,text\naudio/c0.wav,x\naudio/c1.wav,y\n")
    assert CaptionTableDataModule(train=str(tmp_path / "t.csv"), num_workers=0).val_dataloader() == []


def test_bad_tables_are_refused_naming_the_file(tmp_path):
    with pytest.raises(LayoutError, match="no such captions table"):
        read_caption_table(tmp_path / "nope.csv")
    with pytest.raises(LayoutError, match="folder has no captions table"):
        read_caption_table(tmp_path)
    (tmp_path / "t.csv").write_text("file,caption\na.wav,x\n")
    with pytest.raises(LayoutError, match=r"t\.csv: missing column"):
        read_caption_table(tmp_path / "t.csv")
    data = CaptionTableDataModule(train=str(tmp_path / "t.csv"), audio_column="file", caption_column="caption")
    with pytest.raises(LayoutError, match=r"t\.csv: no usable row \(1 left out: 1 missing\)"):
        data.train_dataloader()
