"""What every inference object shares: :class:`InferenceModel`.

An inference object (:class:`~clapkit.inference.clap.CLAPModel`,
:class:`~clapkit.inference.tagger.TaggerModel`,
:class:`~clapkit.inference.separation.SeparationModel`, the onnxruntime
:class:`~clapkit.inference.onnx.OnnxCLAPModel`) turns user inputs into model inputs the same way:
paths, ``[T]`` / ``[C, T]`` arrays or tensors, ``[B, T]`` batches and lists of those become
items; items are decoded and resampled through :mod:`clapkit.audio` with the model's
:class:`~clapkit.audio.preprocess.InferenceConfig` (bounded by :attr:`InferenceModel.max_seconds`);
clips go through the model in batches, on the model's device, at its precision.

The base also declares what a model can do, so callers (the command line) ask a typed attribute
instead of probing for methods: :attr:`InferenceModel.embeds` says whether ``embed_audio`` /
``embed_prepared`` / ``embed_text`` give embeddings, and :attr:`InferenceModel.refusal` is the
one line a model without embeddings answers them with.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import ClassVar, TypeVar

import numpy as np
import torch

from clapkit.audio.preprocess import AudioInput, InferenceConfig, load_waveform, prepare_audio
from clapkit.audio.stream import DEFAULT_MAX_SECONDS
from clapkit.utils.finite import NonFiniteError
from clapkit.utils.precision import AUTOCAST, PRECISIONS

__all__ = ["AudioInput", "InferenceModel", "NotAnEmbeddingModel", "batches", "resolve_device"]

T = TypeVar("T")
R = TypeVar("R")


class NotAnEmbeddingModel(ValueError):
    """An embedding was asked of a model that has none (a tagger, a separation model)."""


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` picks CUDA when available; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last may be shorter), consumed lazily."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class InferenceModel:
    """The base of clapkit's inference objects: input coercion, decoding, batching, device, precision.

    Args:
        inference: the model's preprocessing settings (rate, window, fusion, quantisation).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available).
        precision: a resolved precision name of :mod:`clapkit.utils.precision` (``32``, ``bf16``,
            ``16``, ``bf16-true``); :meth:`autocast` applies the autocast ones.
        batch_size: clips per forward pass (at least 1).
        max_seconds: the cap on audio decoded whole (``None``: no cap); also settable as an
            attribute (the commands' ``--max-decode-seconds``).
    """

    #: Whether ``embed_audio`` / ``embed_prepared`` / ``embed_text`` give embeddings.
    embeds: ClassVar[bool] = False

    def __init__(self, inference: InferenceConfig, *, device: str | torch.device = "cpu", precision: str = "32",
                 batch_size: int = 16, max_seconds: float | None = DEFAULT_MAX_SECONDS):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = resolve_device(device)
        self.inference = inference
        #: The resolved precision.
        self.precision = precision
        self.batch_size = batch_size
        self.max_seconds = max_seconds
        #: Identifies the model files (set by :func:`clapkit.load`); written next to embeddings.
        self.fingerprint = ""

    # ------------------------------------------------------------------ capabilities

    @property
    def refusal(self) -> str | None:
        """Why this model gives no embeddings (the one line its embedding methods raise), or
        ``None`` for a model that :attr:`embeds`."""
        return None if self.embeds else f"a {type(self).__name__} gives no audio-text embeddings"

    def _refuse_embedding(self) -> None:
        if not self.embeds:
            raise NotAnEmbeddingModel(self.refusal)

    # ------------------------------------------------------------------ audio input

    @property
    def sample_rate(self) -> int:
        """Rate the model runs at; inputs at other rates are resampled."""
        return self.inference.sample_rate

    @staticmethod
    def as_items(audio: AudioInput | Sequence[AudioInput], *, channels: bool = False) -> list:
        """A path, a ``[T]`` waveform, a ``[B, T]`` batch or a list of those -> a list of items.

        With ``channels``, a 2-d array is one ``[C, T]`` multichannel item, not a batch."""
        if isinstance(audio, (str, os.PathLike)):
            return [audio]
        if isinstance(audio, (np.ndarray, torch.Tensor)):
            if audio.ndim == 1 or (channels and audio.ndim == 2):
                return [audio]
            if audio.ndim == 2:
                return list(audio)
            raise ValueError(f"expected [T] or [B, T] waveforms, got shape {tuple(audio.shape)}")
        return list(audio)

    @staticmethod
    def item_name(item, index: int) -> str:
        """How an error names an input: its path, else its position (``audio[3]``)."""
        return str(item) if isinstance(item, (str, os.PathLike)) else f"audio[{index}]"

    def load_waveform(self, audio: AudioInput, sample_rate: int | None = None, *, mono: bool = True,
                      name: str | None = None) -> tuple[np.ndarray, int]:
        """One input -> ``(float32 samples, rate)`` at its own rate (see
        :func:`clapkit.audio.preprocess.load_waveform`), bounded by :attr:`max_seconds`."""
        return load_waveform(audio, sample_rate, mono=mono, name=name, max_seconds=self.max_seconds)

    def prepare_audio(self, audio: AudioInput, sample_rate: int | None = None, *, name: str | None = None) -> np.ndarray:
        """One clip (a path, or ``[T]`` / ``[C, T]`` samples) -> float32 mono model input.

        The result has exactly ``clip_samples`` samples, except with fusion, where clips longer
        than the window stay whole.
        """
        return prepare_audio(audio, self.inference, sample_rate, name=name, max_seconds=self.max_seconds)

    def prepared(self, items: Sequence[AudioInput], sample_rate: int | None = None) -> Iterator[np.ndarray]:
        """:meth:`prepare_audio` of each item, lazily (errors name the item by :meth:`item_name`)."""
        for i, item in enumerate(items):
            yield self.prepare_audio(item, sample_rate, name=self.item_name(item, i))

    def map_batches(self, items: Iterable[T], run: Callable[[list[T], int], R], *, batch_size: int | None = None,
                    progress: Callable[[int], None] | None = None) -> list[R]:
        """``run(batch, offset)`` over ``items`` in batches of ``batch_size`` (default: the
        model's); ``offset`` is the position of the batch's first item. ``progress`` is called
        with each batch's size once it ran."""
        outputs, done = [], 0
        for batch in batches(items, batch_size or self.batch_size):
            outputs.append(run(batch, done))
            done += len(batch)
            if progress is not None:
                progress(len(batch))
        return outputs

    def autocast(self):
        """The autocast context of :attr:`precision` (a no-op for fp32 and ``bf16-true``)."""
        if self.precision not in AUTOCAST:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=PRECISIONS[self.precision])

    # ------------------------------------------------------------------ embeddings

    def embed_audio(self, audio: AudioInput | Sequence[AudioInput], sample_rate: int | None = None, *,
                    batch_size: int | None = None, progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """L2-normalised audio embeddings ``[N, D]`` (float32, CPU).

        Args:
            audio: a path, a ``[T]`` waveform, a ``[B, T]`` batch of mono waveforms, or a list of
                paths / ``[T]`` / ``[C, T]`` waveforms (lengths may differ).
            sample_rate: rate of the waveforms (paths carry their own).
            batch_size: clips per forward pass (default: the model's).
            progress: called with the number of clips finished after each batch.

        Raises:
            NotAnEmbeddingModel: the model gives no embeddings (:attr:`refusal`).
            NonFiniteError: an embedding is NaN or Inf (the message names the input).
        """
        self._refuse_embedding()
        items = self.as_items(audio)
        try:
            return self.embed_prepared(self.prepared(items, sample_rate), batch_size=batch_size, progress=progress)
        except NonFiniteError as exc:
            if exc.index is None:
                raise
            raise exc.named(self.item_name(items[exc.index], exc.index)) from None

    def embed_prepared(self, clips: Iterable[np.ndarray], *, batch_size: int | None = None,
                       progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """Embed clips already passed through :meth:`prepare_audio` (any iterable, consumed lazily)."""
        raise NotAnEmbeddingModel(self.refusal or f"{type(self).__name__} does not embed prepared clips")

    def embed_text(self, texts: str | Sequence[str], *, batch_size: int | None = None,
                   progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """L2-normalised text embeddings ``[N, D]`` (float32, CPU)."""
        raise NotAnEmbeddingModel(self.refusal or f"{type(self).__name__} has no text tower")

    def embed_image(self, images, *, batch_size: int | None = None, image_tower: str = "image") -> torch.Tensor:
        """L2-normalised image embeddings ``[N, D]`` (float32, CPU)."""
        raise NotAnEmbeddingModel(self.refusal or f"{type(self).__name__} has no image tower")
