"""Decode policy: resampling, crop/pad windows, fusion lengths, skip reasons, collate with skips."""

from __future__ import annotations

import numpy as np
import pytest

from clapkit.datamodules.pipeline import AudioPolicy, Skipped, collate_with_skips
from helpers.fixtures import flac_bytes, tone


def test_resample_downmix_and_repeatpad():
    policy = AudioPolicy(sample_rate=16000, clip_seconds=1.0)
    sample = policy.load(flac_bytes(tone(3, 0.3, channels=2)), key="k", stage="eval", texts=["t"])
    assert sample.sample_rate == 16000 and sample.waveform.shape == (16000,)
    assert sample.meta["length"] == 3 * 4800  # three repeats of 0.3 s, zero tail
    assert not sample.waveform[14400:].any()
    np.testing.assert_allclose(sample.waveform[:4800], sample.waveform[4800:9600])


def test_crops_are_random_in_training_and_seeded_in_evaluation():
    policy = AudioPolicy(sample_rate=8000, clip_seconds=0.5, int16=False)
    long = flac_bytes(tone(5, 2.0))
    evals = {policy.load(long, key="same", stage="eval").waveform.tobytes() for _ in range(3)}
    assert len(evals) == 1
    rng = np.random.default_rng(0)
    trains = {policy.load(long, key="same", stage="train", rng=rng).waveform.tobytes() for _ in range(5)}
    assert len(trains) > 1


def test_fusion_windows_keep_long_clips_up_to_max_seconds():
    policy = AudioPolicy(sample_rate=8000, clip_seconds=0.5, max_seconds=1.0, pad="pad")
    short = policy.load(flac_bytes(tone(1, 0.3)), key="s", stage="eval")
    mid = policy.load(flac_bytes(tone(1, 0.8)), key="m", stage="eval")
    long = policy.load(flac_bytes(tone(1, 3.0)), key="l", stage="eval")
    assert {s.waveform.shape for s in (short, mid, long)} == {(8000,)}
    assert [s.meta["length"] for s in (short, mid, long)] == [2400, 6400, 8000]
    batch = collate_with_skips([short, mid, long])
    assert batch["lengths"].tolist() == [2400, 6400, 8000] and batch["skipped"] == {}
    with pytest.raises(ValueError, match="max_seconds"):
        AudioPolicy(clip_seconds=10, max_seconds=5)


def test_int16_round_trip_matches_laion_quantisation():
    policy = AudioPolicy(sample_rate=8000, clip_seconds=0.25)
    wave = policy.load(flac_bytes(tone(2)), key="q", stage="eval").waveform
    np.testing.assert_array_equal(np.round(wave * 32767), wave * 32767)


@pytest.mark.parametrize(
    "payload,reason",
    [(b"", "empty"), (b"garbage bytes" * 8, "unreadable"), (flac_bytes(np.zeros(2000, np.float32)), "silent")],
)
def test_bad_inputs_become_skip_markers(payload, reason):
    item = AudioPolicy(sample_rate=8000).load(payload, key="bad", stage="train")
    assert item == Skipped(reason, "bad")


def test_nan_and_missing_files(tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "nan.wav", np.full(100, np.nan, np.float32), 8000, subtype="FLOAT")
    policy = AudioPolicy(sample_rate=8000)
    assert policy.load(tmp_path / "nan.wav", key="n", stage="eval").reason == "nonfinite"
    assert policy.load(tmp_path / "gone.wav", key="g", stage="eval").reason == "missing"


def test_collate_drops_markers_and_counts_them():
    policy = AudioPolicy(sample_rate=8000, clip_seconds=0.25)
    good = policy.load(flac_bytes(tone(1)), key="a", stage="eval", texts=["x"], label=[0, 2])
    batch = collate_with_skips([good, Skipped("empty", "b"), Skipped("empty", "c")], num_classes=3)
    assert batch["key"] == ["a"] and batch["skipped"] == {"empty": 2}
    assert batch["label"].tolist() == [[1.0, 0.0, 1.0]]
    empty = collate_with_skips([Skipped("unreadable", "z")])
    assert empty["audio"].shape[0] == 0 and empty["skipped"] == {"unreadable": 1}
