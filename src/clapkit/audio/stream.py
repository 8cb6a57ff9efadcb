"""Decoding a span of an audio file without the rest: the header first, then only the samples used.

A file's header can claim anything: a 40 KB WAV whose header says 1 Hz holds 20,000 samples
that become 960 million at 48 kHz; a 272 KB FLAC of silence decodes to 30 minutes. So every
file read goes through :func:`open_audio`, which reads the header and refuses a sample rate
below :data:`MIN_SAMPLE_RATE`, and :func:`read_span`, which decodes in blocks of
:data:`BLOCK` frames and keeps only the output samples asked for:

- at the file's own rate it seeks to the span and reads it alone;
- at another rate the blocks go through one ``soxr.ResampleStream`` from the file's start (soxr's
  stream output is bit-identical to a one-shot ``soxr.resample`` of the whole file, whereas a
  span resampled on its own differs in the last bits), and the outputs before the span are
  dropped as they come: memory stays one block and the span, whatever the file's length.

Whole-file reads (a fusion model's input, separation, training decoders) are bounded by a cap
on the decoded duration, :data:`DEFAULT_MAX_SECONDS`, raised per call (``max_seconds=``) or on
the command line (``--max-decode-seconds``).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

#: Sample rates below this are refused: no real recording has them, and a header claiming one
#: turns a few kilobytes into gigabytes once resampled to a model's rate.
MIN_SAMPLE_RATE = 1000

#: Longest audio, in seconds, decoded whole by default (fusion models, separation, training
#: decoders); a model reading a fixed window reads that window only, whatever the file's length.
DEFAULT_MAX_SECONDS = 600.0

#: Samples a second of the decoding cap allows (48 kHz stereo): the cap bounds the samples held,
#: not only the seconds, whatever rate and channel count a header claims.
CAP_SAMPLES_PER_SECOND = 2 * 48000

#: Frames decoded at a time.
BLOCK = 1 << 16


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


def short_error(exc: BaseException) -> str:
    """The last line of an exception's message (libsndfile's are several lines long)."""
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def check_rate(rate: int, label: str) -> None:
    """Refuse a header sample rate below :data:`MIN_SAMPLE_RATE` (one line naming ``label``)."""
    if rate < MIN_SAMPLE_RATE:
        raise AudioLoadError(label, f"sample rate {rate} Hz in the header is below the {MIN_SAMPLE_RATE} Hz floor "
                                    "(a corrupt or hostile header)")


def check_duration(frames: int, rate: int, label: str, max_seconds: float | None, *, samples: int | None = None) -> None:
    """Refuse decoding more than ``max_seconds`` of audio whole (``None``: no cap).

    ``samples``: what the decoding will hold (output frames times channels); it may be at most
    ``max_seconds`` of 48 kHz stereo (:data:`CAP_SAMPLES_PER_SECOND`), so a file at a huge rate
    or with many channels cannot hold more than an ordinary one of the same duration.
    """
    if max_seconds is None:
        return
    if frames > max_seconds * rate:
        raise AudioLoadError(label, f"{frames / rate:.0f} s of audio is over the {max_seconds:g} s cap on decoded "
                                    "duration (raise it with --max-decode-seconds, or max_seconds= in Python)")
    if samples is not None and samples > max_seconds * CAP_SAMPLES_PER_SECOND:
        raise AudioLoadError(label, f"{samples} samples to decode ({frames / rate:.0f} s at {rate} Hz) are over the cap "
                                    f"of {max_seconds:g} s of 48 kHz stereo (raise it with --max-decode-seconds, or "
                                    "max_seconds= in Python)")


@contextlib.contextmanager
def open_audio(source: str | os.PathLike | bytes | BinaryIO, label: str) -> Iterator[sf.SoundFile]:
    """Open ``source`` for reading after checking its header; errors are :class:`AudioLoadError`."""
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        reader = sf.SoundFile(str(handle) if isinstance(handle, (str, os.PathLike)) else handle)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/TypeError
        if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
            raise AudioLoadError(label, "no such file") from None
        raise AudioLoadError(label, f"unreadable: {short_error(exc)}") from None
    with reader:
        check_rate(int(reader.samplerate), label)
        yield reader


def output_length(frames: int, rate: int, target: int) -> int:
    """Samples ``soxr.resample`` makes of ``frames`` samples at ``rate`` when resampling to ``target``."""
    return frames if rate == target else int(round(frames * target / rate))


def read_span(reader: sf.SoundFile, label: str, target: int, start: int, stop: int, *, mono: bool = True) -> np.ndarray:
    """Samples ``[start, stop)`` (at rate ``target``) of the file, float32 ``[T]`` (``mono``) or ``[C, T]``.

    Equal, bit for bit, to decoding the whole file, averaging channels, resampling with soxr and
    slicing; fewer samples come back if the file ends first. Raises :class:`AudioLoadError` for
    NaN or Inf in the decoded blocks.
    """
    rate = int(reader.samplerate)
    channels = 1 if mono else int(reader.channels)
    length = max(stop - start, 0)
    out = np.empty((channels, length), dtype=np.float32)
    filled = 0
    if rate == target:
        if reader.seekable():
            _seek(reader, min(start, reader.frames), label)
        else:
            _skip(reader, start, label)
        while filled < length:
            block = _block(reader, min(BLOCK, length - filled), label)
            if block.shape[0] == 0:
                break
            wave = downmix(block.T) if mono else block.T
            out[:, filled:filled + wave.shape[-1]] = wave
            filled += wave.shape[-1]
        return _shape(out[:, :filled], mono)
    if reader.seekable():
        reader.seek(0)
    stream = soxr.ResampleStream(rate, target, channels, dtype="float32", quality="HQ")
    produced = 0  # output samples of the whole file made so far
    last = False
    while filled < length and not last:
        block = _block(reader, BLOCK, label)
        last = block.shape[0] < BLOCK
        wave = downmix(block.T) if mono else block  # soxr takes [T] or [T, C]
        made = stream.resample_chunk(np.ascontiguousarray(wave), last=last)
        made = made.reshape(-1, channels).T if not mono else made[None]
        lo, hi = max(start, produced), min(stop, produced + made.shape[-1])
        if hi > lo:
            out[:, lo - start:hi - start] = made[:, lo - produced:hi - produced]
            filled = hi - start
        produced += made.shape[-1]
    return _shape(out[:, :filled], mono)


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


def _block(reader: sf.SoundFile, frames: int, label: str) -> np.ndarray:
    try:
        block = reader.read(frames, dtype="float32", always_2d=True)
    except Exception as exc:  # a truncated or corrupt stream fails mid-file
        raise AudioLoadError(label, f"unreadable: {short_error(exc)}") from None
    if not np.isfinite(block).all():
        raise AudioLoadError(label, "contains NaN or Inf samples")
    return block


def _seek(reader: sf.SoundFile, frame: int, label: str) -> None:
    try:
        reader.seek(frame)
    except Exception as exc:  # a truncated stream whose header promises frames it does not hold
        raise AudioLoadError(label, f"unreadable: {short_error(exc)}") from None


def _skip(reader: sf.SoundFile, frames: int, label: str) -> None:
    while frames > 0:
        block = _block(reader, min(BLOCK, frames), label)
        if block.shape[0] == 0:
            return
        frames -= block.shape[0]


def _shape(wave: np.ndarray, mono: bool) -> np.ndarray:
    return np.ascontiguousarray(wave[0] if mono else wave)
