"""One window policy for every pipeline: the mixture ``ClipPolicy`` is an ``AudioPolicy``.

The oracles are the pre-fold code, kept verbatim: ``mixtures.ClipPolicy.fit`` (downmix,
soxr resample, zero pad / crop with a crc32-seeded offset) and ``AudioPolicy.decode``
(``load_audio`` resampling, then the int16 round trip). The folded policy must give the same
arrays for the same random generator state.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from clapkit.audio import fit_length, int16_roundtrip, load_audio, resample
from clapkit.datamodules.mixtures import ClipPolicy, Mixer, MixtureDataset
from clapkit.datamodules.pipeline import AudioPolicy
from helpers.fixtures import flac_bytes, tone
from helpers.separation import synthetic_source


def _old_clip_fit(policy, wave, rate, train, rng, key):
    if wave.ndim > 1:
        wave = wave.mean(axis=0)
    wave = resample(wave, rate, policy.sample_rate)
    crop = policy.train_crop if train else policy.eval_crop
    return fit_length(wave, policy.samples, pad="pad", crop=crop, rng=rng,
                      seed=zlib.crc32(key.encode())).astype(np.float32)


def _old_decode(policy, source, key):
    wave, rate = load_audio(source, policy.sample_rate, mono=policy.mono, name=key, reject_silent=policy.reject_silent)
    return (int16_roundtrip(wave) if policy.int16 else wave), rate


@pytest.mark.parametrize("train_crop,eval_crop", [("random", "start"), ("center", "seeded"), ("start", "center")])
def test_clip_policy_windows_equal_the_old_clip_policy_for_a_fixed_seed(train_crop, eval_crop):
    policy = ClipPolicy(sample_rate=8000, clip_seconds=0.25, train_crop=train_crop, eval_crop=eval_crop)
    assert isinstance(policy, AudioPolicy) and policy.samples == policy.clip_samples == 2000
    source = np.random.default_rng(2).standard_normal((2, 30000)).astype(np.float32)
    for rate in (8000, 16000, 11025):
        for n in (500, 2000, 4000, 30000):
            for wave in (source[0, :n], source[:, :n]):  # mono and stereo
                for train in (True, False):
                    new_rng, old_rng = np.random.default_rng(7), np.random.default_rng(7)
                    new, _ = policy.prepare(wave, rate, "train" if train else "eval", "clip/7", new_rng)
                    old = _old_clip_fit(policy, wave, rate, train, old_rng, "clip/7")
                    assert new.dtype == old.dtype == np.float32
                    np.testing.assert_array_equal(new, old)
                    assert new_rng.random() == old_rng.random()


def test_mixture_dataset_items_are_unchanged_by_the_fold():
    source = synthetic_source(6, "train")
    policy = ClipPolicy(sample_rate=8000, clip_seconds=0.25)
    dataset = MixtureDataset(source, policy, Mixer(), length=4)
    for index in range(4):
        rng, old_rng = np.random.default_rng(index), np.random.default_rng(index)
        sample = source[index]
        window, key = dataset._load(index, index % 2 == 0, rng)
        assert key == sample.key
        expected = _old_clip_fit(policy, sample.waveform, sample.sample_rate, index % 2 == 0, old_rng, sample.key)
        np.testing.assert_array_equal(window, expected)


@pytest.mark.parametrize("channels,mono,int16", [(2, True, True), (1, True, False), (2, False, True)])
def test_decode_equals_the_old_decode(channels, mono, int16):
    policy = AudioPolicy(sample_rate=16000, mono=mono, int16=int16)
    payload = flac_bytes(tone(4, 0.3, channels=channels))
    new, new_rate = policy.decode(payload, "k")
    old, old_rate = _old_decode(policy, payload, "k")
    assert new_rate == old_rate == 16000 and new.flags.c_contiguous
    np.testing.assert_array_equal(new, old)
