"""Waveform augmentations of AudioCLIP / ESResNeXt training, run in data workers (numpy).

The reference training recipe applies, in this order: time reversal (p 0.5), time scaling by
``max_scale ** U(-1, 1)`` (linear interpolation; ``max_scale`` 1.5 gives factors in
[1/1.5, 1.5]), random padding / cropping to the window (``clapkit.audio.fit_length`` with
``around`` padding), and white Gaussian noise at an SNR drawn from [10, 120] dB with
probability 0.25. At evaluation only the centred crop/pad is applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clapkit.audio.crop import fit_length


def time_scale(wave: np.ndarray, factor: float) -> np.ndarray:
    """Stretch the last axis by ``factor`` (>1 longer/slower) with linear interpolation."""
    n = wave.shape[-1]
    out_len = max(1, int(n * factor))
    position = np.arange(out_len, dtype=np.float64) / factor
    left = np.minimum(position.astype(np.int64), n - 1)
    right = np.minimum(left + 1, n - 1)
    frac = (position - left).astype(np.float32)
    return (wave[..., left] * (1.0 - frac) + wave[..., right] * frac).astype(np.float32)


def add_white_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise at ``snr_db`` relative to the signal's mean power."""
    power = float(np.mean(np.square(wave, dtype=np.float64)))
    if power <= 0.0:
        return wave
    noise_power = power / (10.0 ** (snr_db / 10.0))
    return (wave + rng.normal(0.0, np.sqrt(noise_power), wave.shape)).astype(np.float32)


@dataclass
class WaveformAugment:
    """AudioCLIP's waveform augmentation policy, fitting every clip to ``length`` samples.

    Args:
        length: output length in samples (the model window, e.g. 5 s at 44.1 kHz).
        flip_p: probability of time reversal.
        max_scale: time scaling factor drawn as ``max_scale ** U(-1, 1)`` (1 disables).
        noise_p: probability of adding white noise.
        snr_db: SNR range of the noise in dB.
    """

    length: int
    flip_p: float = 0.5
    max_scale: float = 1.5
    noise_p: float = 0.25
    snr_db: tuple[float, float] = (10.0, 120.0)

    def __call__(self, wave: np.ndarray, train: bool, rng: np.random.Generator | None = None) -> np.ndarray:
        """Augment (training) or just centre-fit (evaluation) one waveform ``[..., T]``."""
        wave = np.asarray(wave, dtype=np.float32)
        if not train:
            return np.ascontiguousarray(fit_length(wave, self.length, pad="around", crop="center"))
        rng = rng or np.random.default_rng()
        if rng.random() < self.flip_p:
            wave = wave[..., ::-1]
        if self.max_scale > 1.0:
            wave = time_scale(wave, float(self.max_scale ** rng.uniform(-1.0, 1.0)))
        wave = fit_length(wave, self.length, pad="around", crop="random", rng=rng)
        if rng.random() < self.noise_p:
            wave = add_white_noise(wave, float(rng.uniform(*self.snr_db)), rng)
        return np.ascontiguousarray(wave, dtype=np.float32)
