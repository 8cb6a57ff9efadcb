"""One pad/crop for every caller: ``fit_length`` gives what the folded copies gave.

The oracles below are the pre-fold implementations, kept verbatim as the reference:
``datamodules.augment.crop_or_pad`` (AudioCLIP's crop-or-pad) and ``encoders.fusion.fill``
(LAION-CLAP's fill with an empty clip giving zeros).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clapkit.audio.crop import fit_length
from clapkit.datamodules.augment import WaveformAugment, add_white_noise, time_scale


def _old_crop_or_pad(wave, length, train, rng=None):
    n = wave.shape[-1]
    if n == length:
        return wave
    slack = abs(n - length)
    offset = int(rng.integers(0, slack + 1)) if train and rng is not None else slack // 2
    if n > length:
        return wave[..., offset : offset + length]
    return np.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(offset, slack - offset)])


def _old_fill(wave, length, mode):
    if wave.shape[-1] == 0:
        return wave.new_zeros(length)
    return fit_length(wave, length, pad=mode)


LENGTHS = [1, 7, 400, 999, 1000, 1001, 1500, 4000]


@pytest.mark.parametrize("channels", [None, 2])
def test_around_equals_the_old_crop_or_pad_for_a_fixed_seed(channels):
    source = np.random.default_rng(5).standard_normal((2, 4000) if channels else 4000).astype(np.float32)
    for n in LENGTHS:
        wave = source[..., :n]
        np.testing.assert_array_equal(fit_length(wave, 1000, pad="around", crop="center"),
                                      _old_crop_or_pad(wave, 1000, train=False))
        new_rng, old_rng = np.random.default_rng(11), np.random.default_rng(11)
        for _ in range(3):  # the same draws, in the same order
            np.testing.assert_array_equal(fit_length(wave, 1000, pad="around", crop="random", rng=new_rng),
                                          _old_crop_or_pad(wave, 1000, train=True, rng=old_rng))
        assert new_rng.random() == old_rng.random()


def test_waveform_augment_matches_the_old_pipeline_for_a_fixed_seed():
    wave = np.random.default_rng(1).standard_normal(3000).astype(np.float32)
    augment = WaveformAugment(length=2000, noise_p=0.5)
    new_rng, old_rng = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(8):
        expected = np.asarray(wave, dtype=np.float32)
        if old_rng.random() < augment.flip_p:
            expected = expected[..., ::-1]
        expected = time_scale(expected, float(augment.max_scale ** old_rng.uniform(-1.0, 1.0)))
        expected = _old_crop_or_pad(expected, augment.length, train=True, rng=old_rng)
        if old_rng.random() < augment.noise_p:
            expected = add_white_noise(expected, float(old_rng.uniform(*augment.snr_db)), old_rng)
        np.testing.assert_array_equal(augment(wave, train=True, rng=new_rng), expected)
    np.testing.assert_array_equal(augment(wave, train=False), _old_crop_or_pad(wave, 2000, train=False))


@pytest.mark.parametrize("mode", ["repeatpad", "repeat", "pad"])
def test_pad_policies_equal_the_old_fill_including_an_empty_clip(mode):
    source = torch.randn(50, dtype=torch.float64)
    for n in (0, 1, 3, 7, 25, 49, 50):
        out = fit_length(source[:n], 50, pad=mode)
        torch.testing.assert_close(out, _old_fill(source[:n], 50, mode), rtol=0, atol=0)
        assert out.dtype == torch.float64
    np.testing.assert_array_equal(fit_length(np.zeros((2, 0), np.float32), 4, mode), np.zeros((2, 4)))
