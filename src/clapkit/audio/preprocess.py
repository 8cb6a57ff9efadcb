"""The preprocessing spec of a model and the one function that applies it.

:class:`InferenceConfig` (the ``inference:`` section of a native model directory) says how raw
audio becomes the model's input; :func:`load_waveform` coerces any accepted input (a path, a
numpy array, a tensor; mono or multi-channel) into float32 samples and a rate, and
:func:`prepare_audio` applies the whole spec (resample, int16 round trip, window). The CLAP and
separation inference objects both go through these, so a clip is read one way everywhere.

The data pipeline (:class:`~clapkit.datamodules.pipeline.AudioPolicy`) names the same settings
its own way; :meth:`InferenceConfig.from_policy` and :meth:`InferenceConfig.policy_settings` are
the one conversion between the two (a policy's evaluation path and the config it gives read a
clip into the same window, bit for bit).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Any, Union, get_args

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

#: Where a Lightning checkpoint written by ``clapkit fit`` keeps the preprocessing its model learned
#: from the training data (a plain dict: :meth:`InferenceConfig.to_dict`).
INFERENCE_KEY = "clapkit_inference"

#: Window a fusion model's data pipeline delivers when nothing else says: Clotho's longest clips
#: are 30 s (LAION-CLAP's fusion models take long clips whole).
FUSION_MAX_SECONDS = 30.0


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

    @classmethod
    def from_policy(cls, policy: Any, sample_rate: int | None = None) -> InferenceConfig:
        """The preprocessing of a data pipeline's evaluation path: the one conversion from the
        data side's vocabulary (:class:`~clapkit.datamodules.pipeline.AudioPolicy`).

        Args:
            policy: an ``AudioPolicy`` or a mapping of its settings (a run config's data
                section). ``clip_seconds`` is required; ``pad``, ``eval_crop`` (``crop``),
                ``int16`` (``int16_roundtrip``) and ``max_seconds`` (set: ``fusion``) keep this
                class's defaults where the mapping lacks them.
            sample_rate: the rate the window is counted at (default: the policy's
                ``sample_rate``): a model's own rate when it is known.

        Raises:
            ValueError: a missing window or rate, or a setting of the wrong kind (a random
                evaluation crop has no deterministic counterpart).
        """
        values = asdict(policy) if is_dataclass(policy) else dict(policy)
        rate = sample_rate if sample_rate is not None else values.get("sample_rate")
        seconds = values.get("clip_seconds")
        if not _is_number(rate) or not _is_number(seconds):
            raise ValueError(f"a window needs a numeric sample_rate and clip_seconds, got {rate!r} and {seconds!r}")
        settings: dict[str, Any] = {"sample_rate": int(rate), "clip_samples": int(round(float(seconds) * rate))}
        for name, (key, kind) in _POLICY_NAMES.items():
            if name in values:
                settings[key] = _checked(name, values[name], kind)
        if "max_seconds" in values:
            settings["fusion"] = values["max_seconds"] is not None
        return cls(**settings)

    def policy_settings(self, max_seconds: float | None = None) -> dict[str, Any]:
        """The data side's settings that give a model exactly this preprocessing (the inverse
        of :meth:`from_policy`): ``sample_rate``, ``clip_seconds``, ``max_seconds``, ``pad``,
        ``eval_crop`` and ``int16``.

        ``max_seconds`` is the window cap a fusion model's batches may reach (kept when longer
        than the window, else :data:`FUSION_MAX_SECONDS` or the window); without fusion it is
        always ``None``.
        """
        clip_seconds = self.clip_samples / self.sample_rate
        if not self.fusion:
            max_seconds = None
        elif max_seconds is None or max_seconds <= clip_seconds:
            max_seconds = max(FUSION_MAX_SECONDS, clip_seconds)
        settings: dict[str, Any] = {"sample_rate": self.sample_rate, "clip_seconds": clip_seconds,
                                    "max_seconds": max_seconds}
        settings.update({name: getattr(self, key) for name, (key, _) in _POLICY_NAMES.items()})
        return settings


#: The data side's names of the settings both sides hold, with their names here and their kinds.
#: The window is ``clip_seconds`` there and ``clip_samples`` here; fusion is a window cap
#: (``max_seconds``) there. In evaluation a ``seeded`` crop draws its offset from the clip's key;
#: a clip given to a model alone has none, so inference draws from the empty key's seed (0).
_POLICY_NAMES: dict[str, tuple[str, Any]] = {
    "pad": ("pad", PadMode),
    "eval_crop": ("crop", CropMode),
    "int16": ("int16_roundtrip", bool),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _checked(name: str, value: Any, kind: Any) -> Any:
    allowed = get_args(kind)
    if (allowed and value not in allowed) or (not allowed and not isinstance(value, kind)):
        expected = ", ".join(allowed) if allowed else kind.__name__
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def inference_of_checkpoint(checkpoint: Mapping[str, Any], where: str = "checkpoint") -> InferenceConfig | None:
    """The preprocessing a Lightning checkpoint's model learned (:data:`INFERENCE_KEY`); ``None``
    for a checkpoint written before it was recorded.

    Raises:
        ValueError: the entry is there but is not a valid :class:`InferenceConfig`.
    """
    values = checkpoint.get(INFERENCE_KEY)
    if values is None:
        return None
    try:
        if not isinstance(values, Mapping):
            raise TypeError(f"a mapping, not {type(values).__name__}")
        return InferenceConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: bad '{INFERENCE_KEY}' entry ({exc})") from None


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
