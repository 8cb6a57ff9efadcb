"""Crop/pad policies that turn any clip into a fixed-length window.

``pad`` zero-pads short clips at the end; ``repeatpad`` (LAION-CLAP's default) tiles a short
clip ``floor(length / n)`` times and zero-pads the rest; ``repeat`` tiles and cuts; ``around``
zero-pads both sides, placing the clip where the crop mode would cut a long one (centred with
``center``, at a random offset with ``random``: AudioCLIP's crop-or-pad). Long clips are
cropped at the start, centre, a random offset or a seeded offset (reproducible evaluation).
An empty clip becomes zeros.

:func:`fit_length` is the one pad/crop of clapkit: data pipelines (``AudioPolicy``), waveform
augmentation, inference preprocessing and ``ClipBatcher``'s fusion path all call it
(``ClipBatcher.fit_rows`` is its batched on-device form, tested equal to it row by row).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from clapkit.utils.deps import is_tensor

PadMode = Literal["pad", "repeatpad", "repeat"]
#: ``around`` (pad both sides at the crop offset) serves waveform augmentation; the encoders'
#: window filling (``ClipBatcher``, ``AudioPolicy``) keeps LAION-CLAP's three policies.
FitPad = Literal["pad", "repeatpad", "repeat", "around"]
CropMode = Literal["start", "center", "random", "seeded"]


def fit_length(
    wave,
    length: int,
    pad: FitPad = "repeatpad",
    crop: CropMode = "random",
    *,
    rng: np.random.Generator | None = None,
    seed: int | None = None,
):
    """Fit ``wave`` (numpy or torch, time on the last axis) to exactly ``length`` samples."""
    n = wave.shape[-1]
    if n == length:
        return wave
    if n > length:
        start = _crop_start(n - length, crop, rng, seed)
        return wave[..., start : start + length]
    if n == 0 or pad == "around":
        # an empty clip has nothing to tile: all zeros whatever the policy
        before = 0 if n == 0 else _crop_start(length - n, crop, rng, seed)
        return _zero_pad(wave, before, length - n - before)
    return _pad(wave, length, pad)


def crop_start(slack: int, crop: CropMode, rng: np.random.Generator | None = None, seed: int | None = None) -> int:
    """Where :func:`fit_length` cuts a clip ``slack`` samples longer than the window."""
    return _crop_start(slack, crop, rng, seed)


def _crop_start(slack: int, crop: CropMode, rng, seed) -> int:
    if crop == "start":
        return 0
    if crop == "center":
        return slack // 2
    if crop == "seeded":
        return int(np.random.default_rng(seed).integers(0, slack + 1))
    if crop == "random":
        return int((rng or np.random.default_rng()).integers(0, slack + 1))
    raise ValueError(f"unknown crop mode {crop!r}; expected start, center, random or seeded")


def _pad(wave, length: int, pad: PadMode):
    n = wave.shape[-1]
    if is_tensor(wave):
        import torch

        def tile(reps):
            return torch.cat([wave] * reps, -1)
    else:
        def tile(reps):
            return np.concatenate([wave] * reps, axis=-1)
    if pad == "repeat":
        return tile(-(-length // n))[..., :length]
    if pad == "repeatpad":
        wave = tile(length // n)
    elif pad != "pad":
        raise ValueError(f"unknown pad mode {pad!r}; expected pad, repeatpad, repeat or around")
    return _zero_pad(wave, 0, length - wave.shape[-1])


def _zero_pad(wave, before: int, after: int):
    if is_tensor(wave):
        import torch

        return torch.nn.functional.pad(wave, (before, after))
    return np.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(before, after)])


def int16_roundtrip(wave):
    """LAION-CLAP's quantisation: clip to [-1, 1], scale by 32767, truncate, scale back."""
    if is_tensor(wave):
        import torch

        return (wave.clamp(-1.0, 1.0) * 32767.0).to(torch.int16).to(wave.dtype) / 32767.0
    return (np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16).astype(np.float32) / 32767.0
