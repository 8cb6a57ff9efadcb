"""Every published layout replica read by its datamodule (no CLI): exact clips, captions,
labels and folds per split, and one-line errors for the layout mistakes users make."""

from __future__ import annotations

import logging

import pytest

from clapkit.datamodules.audioset import AudioSetDataModule
from clapkit.datamodules.captionsets import AudioCapsDataModule, ClothoDataModule
from clapkit.datamodules.clips import LayoutError, read_csv
from clapkit.datamodules.evalsets import UrbanSound8KDataModule
from clapkit.datamodules.pipeline import AudioPolicy
from helpers import layouts

POLICY = AudioPolicy(sample_rate=16000, clip_seconds=0.1, reject_silent=False)


def test_urbansound8k_decodes_every_sample_format(tmp_path):
    truth = layouts.urbansound8k(tmp_path)
    dm = UrbanSound8KDataModule(str(tmp_path), audio=POLICY, batch_size=16, num_workers=0)
    batch = next(iter(dm.val_dataloader()))
    assert batch["skipped"] == {} and batch["audio"].shape == (10, 1600)
    assert dict(zip(batch["key"], batch["label"].tolist())) == truth.labels
    assert batch["audio"].abs().amax(dim=1).min() > 0.1  # 8-bit, ADPCM, 24-bit, float, stereo all decoded


def test_clotho_leading_space_names_and_latin1_metadata(tmp_path):
    truth = layouts.clotho(tmp_path)
    raw = (tmp_path / "clotho_metadata_development.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # the replica really is Latin-1
    dm = ClothoDataModule(str(tmp_path), audio=POLICY, num_workers=0)
    dm.setup()
    for stage, split in (("fit", "development"), ("validate", "validation"), ("test", "evaluation")):
        records = dm.sets[stage].records
        assert [r.key for r in records] == truth.splits[split] and not dm.sets[stage].left_out
        assert all(r.texts == truth.captions[r.key] for r in records)
    birds = dm.sets["fit"].records[0]
    assert birds.path.name == " Ambience Birds.wav" and birds.meta["sound_id"] == "10000"
    assert read_csv(tmp_path / "clotho_metadata_development.csv", ("file_name",))[2]["manufacturer"] == "Müller"


def test_audiocaps_download_tool_layout_and_unknown_field(tmp_path):
    truth = layouts.audiocaps(tmp_path, "audiocap_id")
    dm = AudioCapsDataModule(str(tmp_path), audio_name="{audiocap_id}.wav", audio=POLICY, num_workers=0)
    dm.setup()
    for stage, split in (("fit", "train"), ("validate", "val"), ("test", "test")):
        clip_set = dm.sets[stage]
        assert {r.key: r.texts for r in clip_set.records} == {k: truth.captions[k] for k in truth.splits[split]}
        assert clip_set.left_out == {"missing": 1}
    with pytest.raises(LayoutError) as err:
        AudioCapsDataModule(str(tmp_path), audio_name="{audiocapid}.wav").setup()
    message = str(err.value)
    assert "\n" not in message and "{audiocapid}" in message
    assert "fields: audiocap_id, youtube_id, start_time, caption, split" in message


def test_audioset_unbalanced_part_folders(tmp_path, caplog):
    truth = layouts.audioset(tmp_path)
    caplog.set_level(logging.WARNING)
    dm = AudioSetDataModule(str(tmp_path), class_index="metadata/class_labels_indices.csv",
                            train_segments="metadata/unbalanced_train_segments.csv",
                            train_audio_dir="audios/unbalanced_train_segments",
                            val_segments="metadata/balanced_train_segments.csv",
                            val_audio_dir="audios/balanced_train_segments", audio=POLICY, num_workers=0)
    dm.setup()
    assert {r.key: r.label for r in dm.sets["fit"].records} == {k: truth.labels[k] for k in truth.splits["unbalanced_train"]}
    assert [r.key for r in dm.sets["validate"].records] == truth.splits["balanced_train"]
    assert dm.left_out("train") == {"missing": 1} == dm.left_out("val")
    assert "1 of 6 segments have no audio" in caplog.text


def test_audioset_split_without_any_clip_says_where_and_what(tmp_path):
    layouts.audioset(tmp_path, "hf")  # files are <ytid>.flac; the default name is Y<ytid>.wav
    dm = AudioSetDataModule(str(tmp_path), train_audio_dir="audio/bal_train", val_audio_dir="audio/eval")
    dm.setup()  # a split nobody uses may be absent; the one a stage needs must not be
    with pytest.raises(LayoutError) as err:
        dm.train_dataloader()  # (was: "ClassBalancedSampler needs at least one labelled clip")
    message = str(err.value)
    assert "\n" not in message and "balanced_train_segments.csv: none of its 5 segments" in message
    assert str(tmp_path / "audio" / "bal_train") in message and "'Y-bal00x_Zq.wav'" in message
    assert "named like '-bal0" in message and "audio_name 'Y{ytid}.wav'" in message
    dm = AudioSetDataModule(str(tmp_path), train_audio_dir="audio/bal_train", val_audio_dir="audio/eval",
                            audio_name="{ytid}.flac")
    dm.setup()
    assert len(dm.sets["fit"]) == 4 and len(dm.sets["test"]) == 3


def test_captions_without_any_audio_say_where(tmp_path):
    layouts.clotho(tmp_path)
    (tmp_path / "evaluation").rename(tmp_path / "eval")
    dm = ClothoDataModule(str(tmp_path), audio=POLICY, num_workers=0)
    assert len(next(iter(dm.val_dataloader()))["key"]) == 2  # validation is unaffected
    with pytest.raises(LayoutError, match=r"Clotho evaluation: none of its 3 clips has an audio file; "
                                          r"looked for evaluation/<file_name> under .*evaluation"):
        dm.test_dataloader()
