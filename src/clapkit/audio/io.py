"""Decoding and writing audio with soundfile; one typed error for every way a file can be bad."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from clapkit.audio.stream import (
    DEFAULT_MAX_SECONDS,
    MIN_SAMPLE_RATE,
    AudioLoadError,
    check_duration,
    check_rate,
    downmix,
    open_audio,
    output_length,
    read_span,
    short_error,
)
from clapkit.utils.atomic import atomic_path

__all__ = ["AUDIO_EXTENSIONS", "DEFAULT_MAX_SECONDS", "MIN_SAMPLE_RATE", "AudioInfo", "AudioLoadError", "audio_files",
           "audio_info", "downmix", "load_audio", "save_audio"]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")


@dataclass(frozen=True)
class AudioInfo:
    """Header facts about an audio file, read without decoding the samples."""

    sample_rate: int
    frames: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read the header of ``path``; raises :class:`AudioLoadError` if it is not audio or its
    sample rate is below :data:`~clapkit.audio.stream.MIN_SAMPLE_RATE`."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/TypeError
        raise AudioLoadError(path, f"unreadable: {short_error(exc)}") from None
    check_rate(int(info.samplerate), str(path))
    return AudioInfo(int(info.samplerate), int(info.frames), int(info.channels))


def load_audio(
    source: str | os.PathLike | bytes | BinaryIO,
    sample_rate: int | None = None,
    mono: bool = True,
    *,
    name: str | None = None,
    reject_silent: bool = False,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    max_frames: int | None = None,
) -> tuple[np.ndarray, int]:
    """Decode audio to float32, the header first (see :mod:`clapkit.audio.stream`).

    Args:
        source: a path, raw file bytes (for example a webdataset member) or a binary file object.
        sample_rate: resample to this rate (soxr) when given; otherwise keep the file's rate.
        mono: average channels to one; the result is ``[T]``. Otherwise ``[C, T]``.
        name: what to call the input in errors (defaults to the path).
        reject_silent: also refuse a signal that is exactly zero everywhere.
        max_seconds: refuse a file longer than this (the cap on decoded duration; ``None``: no
            cap). Not applied with ``max_frames``, which bounds the decoding itself.
        max_frames: keep only the first ``max_frames`` samples (at the output rate); only those
            are decoded.

    Returns:
        ``(samples, rate)``.

    Raises:
        AudioLoadError: unreadable, a sample rate below the floor, longer than ``max_seconds``,
            empty, non-finite (or silent with ``reject_silent``).
    """
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "<bytes>")
    with open_audio(source, label) as reader:
        rate = int(reader.samplerate)
        target = rate if sample_rate is None else int(sample_rate)
        total = output_length(int(reader.frames), rate, target)
        if max_frames is None:
            check_duration(int(reader.frames), rate, label, max_seconds,
                           samples=total * (1 if mono else int(reader.channels)))
        else:
            total = min(total, max_frames)
        wave = read_span(reader, label, target, 0, total, mono=mono)
    if wave.size == 0:
        raise AudioLoadError(label, "empty (no samples)")
    if reject_silent and not np.any(wave):
        raise AudioLoadError(label, "silent (all samples are zero)")
    return wave, target


def save_audio(path: str | os.PathLike, wave, sample_rate: int, subtype: str | None = None) -> Path:
    """Write ``wave`` (``[T]`` or ``[C, T]``, numpy or torch) atomically: temp file, then rename."""
    path = Path(path)
    array = wave.detach().cpu().float().numpy() if hasattr(wave, "detach") else np.asarray(wave)
    array = array.T if array.ndim == 2 else array
    fmt = path.suffix.lstrip(".").upper() or "WAV"
    with atomic_path(path, suffix=path.suffix) as tmp:
        sf.write(tmp, array, sample_rate, format=fmt, subtype=subtype)
    return path


def audio_files(inputs: Sequence[str | os.PathLike], extensions: Sequence[str] | None = None) -> list[Path]:
    """Expand files and folders (recursively, sorted) into a list of audio files.

    A file named explicitly is kept whatever its extension; folders contribute files with an
    audio extension. A missing input raises ``FileNotFoundError`` naming it.
    """
    extensions = tuple(e.lower() for e in (extensions or AUDIO_EXTENSIONS))
    found: list[Path] = []
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    seen: set[Path] = set()
    unique = []
    for p in found:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique
