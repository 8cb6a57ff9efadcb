"""Decoding and writing audio with soundfile; one typed error for every way a file can be bad."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from clapkit.atomic import atomic_path
from clapkit.audio.resample import resample

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")


class AudioLoadError(ValueError):
    """A file (or in-memory blob) could not be used as audio.

    Attributes:
        source: the path or key of the offending input.
        reason: a short human-readable cause ("empty", "contains NaN", "unreadable: ...").
    """

    def __init__(self, source: str | os.PathLike, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


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
    """Read the header of ``path``; raises :class:`AudioLoadError` if it is not audio."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/TypeError
        raise AudioLoadError(path, f"unreadable: {_short(exc)}") from None
    return AudioInfo(int(info.samplerate), int(info.frames), int(info.channels))


def load_audio(
    source: str | os.PathLike | bytes | BinaryIO,
    sample_rate: int | None = None,
    mono: bool = True,
    *,
    name: str | None = None,
    reject_silent: bool = False,
) -> tuple[np.ndarray, int]:
    """Decode audio to float32.

    Args:
        source: a path, raw file bytes (for example a webdataset member) or a binary file object.
        sample_rate: resample to this rate (soxr) when given; otherwise keep the file's rate.
        mono: average channels to one; the result is ``[T]``. Otherwise ``[C, T]``.
        name: what to call the input in errors (defaults to the path).
        reject_silent: also refuse a signal that is exactly zero everywhere.

    Returns:
        ``(samples, rate)``.

    Raises:
        AudioLoadError: unreadable, empty, non-finite (or silent with ``reject_silent``).
    """
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "<bytes>")
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        data, rate = sf.read(handle if not isinstance(handle, os.PathLike) else str(handle),
                             dtype="float32", always_2d=True)
    except Exception as exc:
        if isinstance(source, (str, os.PathLike)) and not Path(source).exists():
            raise AudioLoadError(label, "no such file") from None
        raise AudioLoadError(label, f"unreadable: {_short(exc)}") from None
    if data.size == 0 or data.shape[0] == 0:
        raise AudioLoadError(label, "empty (no samples)")
    if not np.isfinite(data).all():
        raise AudioLoadError(label, "contains NaN or Inf samples")
    if reject_silent and not np.any(data):
        raise AudioLoadError(label, "silent (all samples are zero)")
    wave = downmix(data.T) if mono else data.T  # [T] or [C, T]
    if sample_rate is not None and sample_rate != rate:
        wave = resample(wave, rate, sample_rate)
        rate = sample_rate
    return np.ascontiguousarray(wave, dtype=np.float32), int(rate)


def downmix(wave: np.ndarray) -> np.ndarray:
    """``[C, T]`` float32 -> the channel mean ``[T]`` (``[T]`` passes through).

    Equal to ``wave.mean(axis=0)`` in value, but decoded files are ``[T, C]`` in memory and a
    numpy mean over that strided axis took as long as decoding a stereo FLAC; one and two
    channels (nearly every file) are summed directly, in the order the mean sums them.
    """
    if wave.ndim == 1:
        return wave
    if wave.shape[0] == 1:
        return wave[0]
    if wave.shape[0] == 2:
        return (wave[0] + wave[1]) * np.float32(0.5)
    return wave.mean(axis=0)


def save_audio(path: str | os.PathLike, wave, sample_rate: int, subtype: str | None = None) -> Path:
    """Write ``wave`` (``[T]`` or ``[C, T]``, numpy or torch) atomically: temp file, then rename."""
    path = Path(path)
    array = wave.detach().cpu().float().numpy() if hasattr(wave, "detach") else np.asarray(wave)
    array = array.T if array.ndim == 2 else array
    fmt = path.suffix.lstrip(".").upper() or "WAV"
    with atomic_path(path, suffix=path.suffix) as tmp:
        sf.write(tmp, array, sample_rate, format=fmt, subtype=subtype)
    return path


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


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
