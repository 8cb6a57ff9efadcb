"""ESC-50, UrbanSound8K and FSD50K fixtures in the official layouts, read through the DataModules."""

from __future__ import annotations

import pytest
import torch

from clapkit.datamodules.clips import LayoutError
from clapkit.datamodules.evalsets import ESC50DataModule, FSD50KDataModule, UrbanSound8KDataModule
from clapkit.datamodules.pipeline import AudioPolicy
from helpers.fixtures import ESC_CLASSES, write_esc50, write_fsd50k, write_urbansound8k

POLICY = AudioPolicy(sample_rate=16000, clip_seconds=0.5)


def _collect(loader):
    keys, labels, batches = [], [], list(loader)
    for b in batches:
        keys += b["key"]
        labels.append(b["label"])
    return keys, torch.cat(labels), batches


def test_esc50_folds_labels_and_class_names(tmp_path):
    truth = write_esc50(tmp_path, per_class_fold=2)  # 5 classes x 5 folds x 2
    dm = ESC50DataModule(str(tmp_path), audio=POLICY, batch_size=7, num_workers=0)
    assert dm.class_names == ESC_CLASSES
    keys, labels, batches = _collect(dm.test_dataloader())
    assert sorted(keys) == sorted(truth.keys) and len(keys) == 50
    assert labels.tolist() == [truth.labels[k] for k in keys]
    assert labels.dtype == torch.int64
    first = batches[0]
    assert "captions" not in first and first["audio"].shape == (7, 8000)  # zero-shot batches: labels only
    # fold split for fine-tuning: train on folds 2-5, evaluate fold 1
    dm = ESC50DataModule(str(tmp_path), test_folds=[1], audio=POLICY, batch_size=4, num_workers=0)
    val_keys, _, _ = _collect(dm.val_dataloader())
    assert {truth.folds[k] for k in val_keys} == {1} and len(val_keys) == 10
    train = next(iter(dm.train_dataloader()))
    assert all(t == f"The sound of {ESC_CLASSES[int(y)]}" for t, y in zip(train["text"], train["label"]))
    assert len(dm.sets["fit"].records) == 40


def test_esc10_subset_remaps_labels(tmp_path):
    write_esc50(tmp_path)
    dm = ESC50DataModule(str(tmp_path), esc10=True, audio=POLICY, batch_size=4, num_workers=0)
    assert dm.class_names == ESC_CLASSES[:2]
    _, labels, _ = _collect(dm.test_dataloader())
    assert len(labels) == 10 and set(labels.tolist()) == {0, 1}


def test_urbansound8k_ten_folds(tmp_path):
    truth = write_urbansound8k(tmp_path, classes=3)
    dm = UrbanSound8KDataModule(str(tmp_path), audio=POLICY, batch_size=8, num_workers=0)
    assert dm.class_names == ["air conditioner", "car horn", "children playing"]
    keys, labels, _ = _collect(dm.test_dataloader())
    assert sorted(keys) == sorted(truth.keys) and len(keys) == 30
    assert labels.tolist() == [truth.labels[k] for k in keys]
    assert sorted({r.meta["fold"] for r in dm.sets["test"].records}) == list(range(1, 11))
    dm = UrbanSound8KDataModule(str(tmp_path), test_folds=[10], audio=POLICY, batch_size=8, num_workers=0)
    dm.setup()
    assert len(dm.sets["test"]) == 3 and len(dm.sets["fit"]) == 27


def test_fsd50k_multi_label_splits(tmp_path):
    truth = write_fsd50k(tmp_path)
    dm = FSD50KDataModule(str(tmp_path), audio=POLICY, batch_size=3, num_workers=0)
    assert dm.class_names[:3] == ["Bark", "Dog", "Domestic animals and pets"] and dm.multi_label
    for stage, loader in (("val", dm.val_dataloader()), ("eval", dm.test_dataloader())):
        keys, labels, _ = _collect(loader)
        assert {truth.folds[k] for k in keys} == {stage} and len(keys) == 4
        assert labels.shape == (4, 5) and labels.dtype == torch.float32
        for k, row in zip(keys, labels):
            assert torch.nonzero(row).flatten().tolist() == truth.labels[k]
    train = dm.sets["fit"].records
    assert [r.texts[0] for r in train][:2] == ["The sound of Bark, Dog and Domestic animals and pets",
                                              "The sound of Electric guitar and Guitar"]


def test_layout_errors_name_the_file(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "esc50.csv").write_text("filename,fold\nx.wav,1\n")
    with pytest.raises(LayoutError, match=r"esc50\.csv: missing column"):
        ESC50DataModule(str(tmp_path), num_workers=0).setup()
    with pytest.raises(LayoutError, match=r"UrbanSound8K\.csv: file not found"):
        UrbanSound8KDataModule(str(tmp_path), num_workers=0).setup()
    with pytest.raises(LayoutError, match=r"vocabulary\.csv"):
        FSD50KDataModule(str(tmp_path), num_workers=0).setup()


def test_bad_files_are_skipped_and_counted(tmp_path):
    truth = write_esc50(tmp_path)
    (tmp_path / "audio" / f"{truth.keys[0]}.wav").write_bytes(b"not audio at all" * 10)
    (tmp_path / "audio" / f"{truth.keys[1]}.wav").unlink()
    dm = ESC50DataModule(str(tmp_path), audio=POLICY, batch_size=5, num_workers=0)
    batches = list(dm.test_dataloader())
    assert sum(len(b["key"]) for b in batches) == 23
    assert batches[0]["skipped"] == {"unreadable": 1, "missing": 1}


def test_training_replaces_bad_clips_and_counts_them(tmp_path):
    truth = write_esc50(tmp_path)
    train_keys = [k for k in truth.keys if truth.folds[k] != 1]
    broken = train_keys[::4]  # 5 of the 20 training clips
    for key in broken:
        (tmp_path / "audio" / f"{key}.wav").write_bytes(b"broken" * 20)
    dm = ESC50DataModule(str(tmp_path), test_folds=[1], audio=POLICY, batch_size=4, num_workers=0)
    batches = list(dm.train_dataloader())
    assert len(batches) == 5 and all(len(b["key"]) == 4 for b in batches)  # full batches
    assert not {k for b in batches for k in b["key"]} & set(broken)
    # every index is visited once per epoch, so each broken clip is met (and counted) at least once
    assert sum(b["skipped"].get("unreadable", 0) for b in batches) >= len(broken)


def test_augment_applies_to_training_clips_only(tmp_path):
    from clapkit.datamodules.augment import WaveformAugment
    from clapkit.datamodules.clips import ClipDataset

    write_esc50(tmp_path)
    flip = WaveformAugment(length=8000, flip_p=1.0, max_scale=1.0, noise_p=0.0)  # time reversal only
    dm = ESC50DataModule(str(tmp_path), test_folds=[1], audio=POLICY, batch_size=4, num_workers=0, augment=flip)
    train_set = dm.train_dataloader().dataset
    assert train_set.augment is flip and dm.val_dataloader().dataset.augment is None
    records = dm.sets["fit"].records
    plain = ClipDataset(records, POLICY, "train")
    for index in range(3):  # same crop (same per-index generator), then reversed
        assert (train_set[index].waveform == plain[index].waveform[::-1]).all()
