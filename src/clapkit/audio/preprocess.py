"""The preprocessing spec of a model and the one function that applies it.

:class:`InferenceConfig` (the ``inference:`` section of a native model directory) says how raw
audio becomes the model's input; :func:`load_waveform` coerces any accepted input (a path, a
numpy array, a tensor; mono or multi-channel) into float32 samples and a rate, and
:func:`prepare_audio` applies the whole spec (resample, int16 round trip, window). The CLAP and
separation inference objects both go through these, so a clip is read one way everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from clapkit.audio.crop import CropMode, PadMode, crop_start, fit_length, int16_roundtrip
from clapkit.audio.io import downmix, load_audio
from clapkit.audio.resample import resample
from clapkit.audio.stream import (
    DEFAULT_MAX_SECONDS,
    AudioLoadError,
    check_duration,
    open_audio,
    output_length,
    read_span,
)
from clapkit.utils.deps import is_tensor

if TYPE_CHECKING:
    import torch

AudioInput = Union[str, os.PathLike, np.ndarray, "torch.Tensor"]


@dataclass
class InferenceConfig:
    """How :class:`~clapkit.inference.clap.CLAPModel` turns raw audio and text into model inputs.

    Attributes:
        sample_rate: rate the audio tower expects; inputs are resampled to it.
        clip_samples: the window, in samples at ``sample_rate``.
        pad: policy for clips shorter than the window: ``repeatpad`` (LAION-CLAP: tile
            ``floor(window / length)`` times, zero-pad the rest), ``repeat`` (MS-CLAP: tile and
            cut) or ``pad`` (zeros).
        crop: where a clip longer than the window is cut when ``fusion`` is off. Inference
            never crops at random, so the same audio always gives the same embedding.
        int16_roundtrip: quantise to int16 and back first (LAION-CLAP does this).
        fusion: the audio tower takes clips longer than the window whole (feature fusion)
            instead of a crop.
        text_max_length: token limit for the text tower, ``None`` for the tower's own.
    """

    sample_rate: int = 48000
    clip_samples: int = 480000
    pad: PadMode = "repeatpad"
    crop: CropMode = "center"
    int16_roundtrip: bool = False
    fusion: bool = False
    text_max_length: int | None = None

    def __post_init__(self) -> None:
        if self.crop == "random":
            raise ValueError("InferenceConfig.crop must be deterministic (start, center or seeded), not random")
        if self.sample_rate <= 0 or self.clip_samples <= 0:
            raise ValueError("InferenceConfig.sample_rate and clip_samples must be positive")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> InferenceConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown inference settings {unknown}; expected some of {sorted(known)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_waveform(audio: AudioInput, sample_rate: int | None = None, *, mono: bool = True,
                  name: str | None = None, max_seconds: float | None = DEFAULT_MAX_SECONDS) -> tuple[np.ndarray, int]:
    """A path, ``[T]`` or ``[C, T]`` samples -> ``(float32 samples, rate)``.

    Files carry their own rate; arrays need ``sample_rate``. With ``mono`` channels are
    averaged (``[T]``), otherwise the result is ``[C, T]`` (``[1, T]`` for mono input). A file
    longer than ``max_seconds`` is refused (the cap on decoded duration; ``None``: no cap).

    Raises:
        ValueError: no ``sample_rate`` for samples, a wrong shape, no samples, NaN or Inf.
        clapkit.audio.AudioLoadError: an unreadable file.
    """
    if isinstance(audio, (str, os.PathLike)):
        wave, rate = load_audio(audio, mono=mono, max_seconds=max_seconds)
        return wave, rate
    label = name or "waveform"
    if sample_rate is None:
        raise ValueError(f"{label}: sample_rate is required for waveform inputs")
    wave = audio.detach().float().cpu().numpy() if is_tensor(audio) else np.asarray(audio)
    if wave.ndim not in (1, 2):
        raise ValueError(f"{label}: expected [T] or [C, T] samples, got shape {tuple(wave.shape)}")
    if wave.size == 0:
        raise ValueError(f"{label}: empty (no samples)")
    wave = wave.astype(np.float32, copy=False)
    if not np.isfinite(wave).all():
        raise ValueError(f"{label}: contains NaN or Inf samples")
    if mono:
        wave = downmix(wave)
    else:
        wave = np.atleast_2d(wave)
    return wave, int(sample_rate)


def prepare_audio(audio: AudioInput, spec: InferenceConfig, sample_rate: int | None = None, *,
                  name: str | None = None, max_seconds: float | None = DEFAULT_MAX_SECONDS) -> np.ndarray:
    """One clip -> float32 mono model input as ``spec`` says.

    The result has exactly ``spec.clip_samples`` samples, except with ``spec.fusion``, where
    clips longer than the window stay whole (the fusion tower takes them as they are).

    A file is read header first: without fusion only the window the crop keeps is decoded
    (bit-identical to decoding, resampling and cropping the whole file), so its length costs
    time, not memory; a clip taken whole (fusion) longer than ``max_seconds`` is refused.
    """
    if isinstance(audio, (str, os.PathLike)):
        wave = _read_clip(audio, spec, name or str(audio), max_seconds)
    else:
        wave, rate = load_waveform(audio, sample_rate, mono=True, name=name)
        wave = resample(wave, rate, spec.sample_rate)
    if spec.int16_roundtrip:
        wave = int16_roundtrip(wave)
    if spec.fusion and wave.shape[-1] > spec.clip_samples:
        return np.ascontiguousarray(wave, dtype=np.float32)
    wave = fit_length(wave, spec.clip_samples, pad=spec.pad, crop=spec.crop, seed=0)
    return np.ascontiguousarray(wave, dtype=np.float32)


def _read_clip(path: str | os.PathLike, spec: InferenceConfig, label: str, max_seconds: float | None) -> np.ndarray:
    """The samples of ``path`` (mono, at the model's rate) that :func:`prepare_audio` uses."""
    with open_audio(path, label) as reader:
        frames, rate = int(reader.frames), int(reader.samplerate)
        total = output_length(frames, rate, spec.sample_rate)
        window = spec.clip_samples
        if total > window and not spec.fusion:
            # the same offset fit_length would cut at, from the length the whole file resamples to
            start = crop_start(total - window, spec.crop, seed=0)
            wave = read_span(reader, label, spec.sample_rate, start, start + window)
        else:
            check_duration(frames, rate, label, max_seconds, samples=total)
            wave = read_span(reader, label, spec.sample_rate, 0, total)
    if wave.size == 0:
        raise AudioLoadError(label, "empty (no samples)")
    return wave
