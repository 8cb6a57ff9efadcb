"""Worker-side decode pipeline: bytes or path -> fixed-length waveform at the model's rate.

Every datamodule in clapkit decodes in DataLoader workers through :class:`AudioPolicy`:
soundfile decode, downmix, soxr resample, optional int16 round trip (LAION-CLAP's
quantisation), then the crop/pad policy. A sample that cannot be used is never fatal: the
reader turns the :class:`~clapkit.audio.AudioLoadError` into a :class:`Skipped` marker with a
short reason from :data:`SKIP_REASONS`; :func:`collate_with_skips` drops the markers and puts
the per-reason counts of the batch under ``batch["skipped"]``, so the main process can sum
them across workers and ranks (:class:`clapkit.callbacks.data_health.DataHealth`).

Window and ``lengths`` semantics: without ``max_seconds`` every clip becomes exactly
``clip_seconds`` long (pad policy for short clips, crop policy for long ones). With
``max_seconds`` (long-clip fusion) rows are ``max_seconds`` long: clips up to
``clip_seconds`` are padded to ``clip_seconds`` by the pad policy and then zero-filled,
longer clips are cropped to at most ``max_seconds`` and zero-filled. ``lengths`` is always
the number of leading samples that carry signal, so ``lengths > clip_seconds * rate`` marks
exactly the rows that need the fusion path.

A policy and a model's :class:`~clapkit.audio.preprocess.InferenceConfig` are two views of one
preprocessing: :meth:`AudioPolicy.inference_config` gives the model the evaluation path of its
data, :meth:`AudioPolicy.from_inference` gives data the model's preprocessing (plus the choices
only data has: the training crop, silence, downmix). Both go through the one conversion,
:meth:`InferenceConfig.from_policy` / :meth:`InferenceConfig.policy_settings`.
"""

from __future__ import annotations

import os
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, BinaryIO, Literal

import numpy as np

from clapkit.audio import AudioLoadError, downmix, fit_length, int16_roundtrip, load_audio, resample
from clapkit.audio.crop import CropMode, PadMode
from clapkit.audio.preprocess import InferenceConfig
from clapkit.datamodules.base import Sample, collate_samples

# Fixed so that every rank logs the same metric names (a collective needs identical keys).
SKIP_REASONS: tuple[str, ...] = (
    "unreadable",  # corrupt or undecodable bytes
    "missing",  # file not found / member absent from a shard
    "empty",  # zero samples
    "silent",  # all samples exactly zero
    "nonfinite",  # NaN or Inf samples
    "no_text",  # a caption set sample without any caption
    "bad_metadata",  # unparsable JSON / metadata
    "bad_shard",  # a tar that could not be opened or read to the end
)

Stage = Literal["train", "eval"]


def skip_reason(error: BaseException) -> str:
    """Map a decode failure to one of :data:`SKIP_REASONS`."""
    if isinstance(error, AudioLoadError):
        text = error.reason.lower()
        for prefix, reason in (
            ("no such file", "missing"),
            ("empty", "empty"),
            ("silent", "silent"),
            ("contains nan", "nonfinite"),
        ):
            if text.startswith(prefix):
                return reason
        return "unreadable"
    if isinstance(error, FileNotFoundError):
        return "missing"
    if isinstance(error, (ValueError, KeyError, UnicodeDecodeError)):
        return "bad_metadata"
    return "unreadable"


@dataclass(frozen=True)
class Skipped:
    """Marker a reader yields instead of a :class:`Sample` it could not decode."""

    reason: str
    key: str = ""
    also: tuple[str, ...] = ()  # earlier failures this marker stands for (training replacements)


@dataclass
class AudioPolicy:
    """How every clip is decoded and fitted to the model's input window.

    The one window policy of clapkit's data pipelines: the clip sets, shards and evaluation
    sets use it with LAION-CLAP's defaults, the mixture datasets with
    :class:`~clapkit.datamodules.mixtures.ClipPolicy`'s (same class, other defaults).

    Args:
        sample_rate: the audio encoder's rate; clips are resampled to it with soxr.
        clip_seconds: the model window (LAION-CLAP: 10 s).
        max_seconds: deliver windows up to this long for long-clip fusion (``None``: off).
        pad: policy for clips shorter than the window: ``repeatpad`` (LAION-CLAP), ``pad``
            or ``repeat``.
        train_crop: where to cut long clips in training (``random`` for augmentation).
        eval_crop: where to cut long clips in evaluation; ``seeded`` derives the offset from
            the sample key, so every run and every model sees the same excerpt.
        int16: apply LAION-CLAP's int16 round trip after resampling.
        reject_silent: treat all-zero clips as bad samples (skipped and counted).
        mono: downmix to one channel.
    """

    sample_rate: int = 48000
    clip_seconds: float = 10.0
    max_seconds: float | None = None
    pad: PadMode = "repeatpad"
    train_crop: CropMode = "random"
    eval_crop: CropMode = "seeded"
    int16: bool = True
    reject_silent: bool = True
    mono: bool = True

    def __post_init__(self) -> None:
        if self.max_seconds is not None and self.max_seconds < self.clip_seconds:
            raise ValueError(
                f"max_seconds ({self.max_seconds}) must be >= clip_seconds ({self.clip_seconds})"
            )

    @classmethod
    def from_inference(cls, config: InferenceConfig, max_seconds: float | None = None, **choices: Any) -> AudioPolicy:
        """The policy whose evaluation path is a model's preprocessing ``config``.

        Args:
            config: the model's preprocessing.
            max_seconds: the window cap of a fusion model's batches (see
                :meth:`InferenceConfig.policy_settings`); ignored without fusion.
            choices: what the model does not decide (:meth:`choice_names`): ``train_crop``,
                ``reject_silent``, ``mono`` (default: the class's), and ``eval_crop`` (default:
                ``config.crop``; an evaluation protocol may keep its own per-file excerpt).
        """
        unknown = sorted(set(choices) - cls.choice_names())
        if unknown:
            raise TypeError(f"{cls.__name__}.from_inference: {unknown} are the model's settings, not choices")
        return cls(**{**config.policy_settings(max_seconds), **choices})

    @classmethod
    def choice_names(cls) -> set[str]:
        """Fields :meth:`from_inference` takes from the caller: every field a model's
        preprocessing does not fix, and the evaluation crop."""
        model = set(InferenceConfig().policy_settings()) - {"eval_crop"}
        return {f.name for f in fields(cls)} - model

    def inference_config(self, sample_rate: int | None = None) -> InferenceConfig:
        """The preprocessing a model gets from this policy's evaluation path (``eval_crop``,
        no random crop), counted at ``sample_rate`` (default: the policy's).

        Raises:
            ValueError: a random ``eval_crop`` (inference is deterministic).
        """
        return InferenceConfig.from_policy(self, sample_rate)

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def window_samples(self) -> int:
        """Row length of the batches this policy produces."""
        seconds = self.max_seconds if self.max_seconds is not None else self.clip_seconds
        return int(round(seconds * self.sample_rate))

    def decode(self, source: str | os.PathLike | bytes | BinaryIO, key: str) -> tuple[np.ndarray, int]:
        """Decode, downmix, resample and (optionally) quantise; raises ``AudioLoadError``."""
        if isinstance(source, (bytes, bytearray, memoryview)) and len(source) == 0:
            raise AudioLoadError(key, "empty (0 bytes)")
        wave, rate = load_audio(source, mono=self.mono, name=key, reject_silent=self.reject_silent)
        return self.conform(wave, rate), self.sample_rate

    def conform(self, wave: np.ndarray, rate: int) -> np.ndarray:
        """A decoded clip (``[T]`` or ``[C, T]`` at ``rate``) at the policy's rate and channels,
        optionally quantised."""
        if self.mono and wave.ndim > 1:
            wave = downmix(wave)
        wave = np.ascontiguousarray(resample(wave, rate, self.sample_rate), dtype=np.float32)
        return int16_roundtrip(wave) if self.int16 else wave

    def prepare(self, wave: np.ndarray, rate: int, stage: Stage, key: str,
                rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
        """:meth:`conform` then :meth:`fit`: a clip decoded elsewhere -> ``(window, length)``."""
        return self.fit(self.conform(wave, rate), stage, key, rng)

    def fit(self, wave: np.ndarray, stage: Stage, key: str, rng: np.random.Generator | None = None):
        """Apply the crop/pad policy; returns ``(window, length)`` (see module docstring)."""
        clip, window = self.clip_samples, self.window_samples
        crop = self.train_crop if stage == "train" else self.eval_crop
        seed = zlib.crc32(key.encode()) if crop == "seeded" else None
        n = wave.shape[-1]
        if n <= clip:
            fitted = fit_length(wave, clip, pad=self.pad, crop=crop, rng=rng, seed=seed)
            length = _signal_length(n, clip, self.pad)
        else:
            target = min(n, window)
            fitted = fit_length(wave, target, pad="pad", crop=crop, rng=rng, seed=seed)
            length = target
        if fitted.shape[-1] < window:
            fitted = fit_length(fitted, window, pad="pad")
        return np.ascontiguousarray(fitted, dtype=np.float32), length

    def load(
        self,
        source: str | os.PathLike | bytes | BinaryIO,
        *,
        key: str,
        stage: Stage,
        texts: Sequence[str] = (),
        label: int | list[int] | None = None,
        meta: dict[str, Any] | None = None,
        rng: np.random.Generator | None = None,
    ) -> Sample | Skipped:
        """Decode ``source`` into a fitted :class:`Sample`, or a :class:`Skipped` marker."""
        try:
            wave, rate = self.decode(source, key)
        except (AudioLoadError, OSError) as exc:
            return Skipped(skip_reason(exc), key)
        fitted, length = self.fit(wave, stage, key, rng)
        info = dict(meta or {})
        info["length"] = length
        return Sample(fitted, rate, list(texts), label, key, info)


def _signal_length(n: int, clip: int, pad: PadMode) -> int:
    if pad == "repeatpad":
        return (clip // n) * n
    if pad == "repeat":
        return clip
    return n


def count_skips(items: Iterable[Sample | Skipped]) -> tuple[list[Sample], Counter]:
    """Split decoded items into samples and a per-reason count of the skipped ones."""
    samples: list[Sample] = []
    skipped: Counter = Counter()
    for item in items:
        if isinstance(item, Skipped):
            skipped[item.reason] += 1
            skipped.update(item.also)
        else:
            # a training reader may stand in another clip for a bad one and say so here
            skipped.update(item.meta.pop("replaced", ()))
            samples.append(item)
    return samples, skipped


def collate_with_skips(
    items: Sequence[Sample | Skipped],
    *,
    num_classes: int | None = None,
    pick_text: str = "first",
    rng: np.random.Generator | None = None,
    extra_skips: Counter | None = None,
) -> dict[str, Any]:
    """:func:`~clapkit.datamodules.base.collate_samples` that tolerates skipped samples.

    Returns the usual batch dict plus ``"skipped"``: ``{reason: count}`` of the markers
    dropped from this batch (and ``extra_skips``, failures seen by an iterable reader since
    its previous batch). A batch in which every sample was bad keeps only ``"skipped"``
    and ``"audio"`` with zero rows, which the callbacks count and the model can ignore.
    """
    samples, skipped = count_skips(items)
    if extra_skips:
        skipped.update(extra_skips)
    if samples:
        batch = collate_samples(samples, num_classes=num_classes, pick_text=pick_text, rng=rng)
    else:
        batch = {"audio": _empty_audio(), "lengths": _empty_lengths(), "key": []}
    batch["skipped"] = dict(skipped)
    return batch


def _empty_audio():
    import torch

    return torch.zeros(0, 0)


def _empty_lengths():
    import torch

    return torch.zeros(0, dtype=torch.long)


def worker_rng(index: int | None = None) -> np.random.Generator:
    """A numpy generator that differs per worker, per epoch (torch seeds) and per index."""
    import torch

    seed = [torch.initial_seed() & 0xFFFFFFFF]
    if index is not None:
        seed.append(int(index))
    return np.random.default_rng(seed)
