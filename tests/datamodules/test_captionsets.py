"""AudioCaps and Clotho fixtures in the official layouts: all captions per clip in evaluation."""

from __future__ import annotations

from clapkit.datamodules.captionsets import AudioCapsDataModule, ClothoDataModule
from clapkit.datamodules.pipeline import AudioPolicy
from helpers.fixtures import write_audiocaps, write_clotho

POLICY = AudioPolicy(sample_rate=16000, clip_seconds=0.5)


def _captions(loader):
    out = {}
    for b in loader:
        assert "label" not in b
        out.update(zip(b["key"], b["captions"]))
    return out


def test_audiocaps_groups_captions_by_clip(tmp_path):
    truth = write_audiocaps(tmp_path)
    dm = AudioCapsDataModule(str(tmp_path), audio=POLICY, batch_size=2, num_workers=0)
    test = _captions(dm.test_dataloader())
    assert len(test) == 3  # the clip without audio is left out
    for key, caps in test.items():
        assert caps == truth.captions[key] and len(caps) == 5
    assert _captions(dm.val_dataloader()) == {k: truth.captions[k] for k in truth.keys if truth.folds[k] == "val"}
    assert dm.class_names == []
    train = next(iter(dm.train_dataloader()))
    assert train["text"] == [c[0] for c in train["captions"]]  # one caption per training clip
    assert dm.sets["test"].records[0].meta["audiocap_ids"] == list(range(15, 20))  # after 4 train + 10 val captions


def test_clotho_five_captions_and_splits(tmp_path):
    truth = write_clotho(tmp_path)
    dm = ClothoDataModule(str(tmp_path), audio=POLICY, batch_size=2, num_workers=0)
    test = _captions(dm.test_dataloader())
    assert test == {k: truth.captions[k] for k in truth.keys if truth.folds[k] == "evaluation"}
    assert all(len(c) == 5 for c in test.values())
    val = _captions(dm.val_dataloader())
    assert len(val) == 2
    batch = next(iter(dm.train_dataloader()))
    assert all(t in c for t, c in zip(batch["text"], batch["captions"]))
    assert batch["audio"].shape == (2, 8000)
