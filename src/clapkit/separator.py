"""The inference API of a separation model: :class:`SeparationModel` extracts what a query names.

``clapkit.load(dir)`` returns one for a native directory holding a
:class:`~clapkit.lightning_modules.separation.SeparationTask` (``clapkit convert clapsep`` or a
training run's ``export_dir``). Input of any length, sample rate and channel count: each
channel is resampled to the model's rate, cut into model-length chunks with 50 % overlap,
separated, overlap-added with complementary Hann windows, and returned at the input's rate,
channel count and length. ``clapkit separate`` is this class over files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from clapkit.audio import load_audio, resample
from clapkit.finite import NonFiniteError, require_finite
from clapkit.inference import PRECISIONS, resolve_device
from clapkit.pretrained import InferenceConfig

AudioQuery = str | os.PathLike | np.ndarray | torch.Tensor


def chunk_windows(total: int, chunk: int, hop: int) -> list[tuple[int, np.ndarray]]:
    """``(start, weight)`` per chunk; weights sum to 1 at every sample of ``[0, total)``.

    Interior chunks use a periodic Hann window (which sums to 1 at 50 % overlap); the first
    chunk is flat on its leading half and the last on its trailing half, so the signal edges
    keep full weight. Without overlap the weights are rectangular.
    """
    if total <= chunk:
        return [(0, np.ones(chunk, dtype=np.float64))]
    starts = sorted(set(list(range(0, total - chunk, hop)) + [total - chunk]))
    weights = []
    for i, start in enumerate(starts):
        if hop >= chunk:
            w = np.ones(chunk)
        else:
            w = (np.hanning(chunk + 1)[:-1] if chunk % 2 == 0 else np.hanning(chunk)).astype(np.float64)
            if i == 0:
                w[: chunk // 2] = 1.0
            if i == len(starts) - 1:
                w[chunk // 2 :] = 1.0
        weights.append((start, w))
    norm = np.zeros(total)
    for start, w in weights:
        norm[start : start + chunk] += w
    return [(start, w / norm[start : start + chunk]) for start, w in weights]


def is_separation_task(model: torch.nn.Module) -> bool:
    """Whether a loaded native model is a :class:`~clapkit.lightning_modules.separation.SeparationTask`."""
    from clapkit.lightning_modules.separation import SeparationTask

    return isinstance(model, SeparationTask)


class SeparationModel:
    """A loaded separation model for inference.

    Args:
        task: the :class:`~clapkit.lightning_modules.separation.SeparationTask`.
        inference: the directory's preprocessing settings (its ``clip_samples`` at
            ``sample_rate`` is the chunk length).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        batch_size: chunks per forward pass.
        overlap: chunk overlap fraction in ``[0, 1)``.
        precision: ``32``, ``bf16`` or ``16``: autocast dtype of the forward pass (the STFT and
            the overlap-add stay fp32).
    """

    def __init__(self, task, inference: InferenceConfig, device: str | torch.device = "cpu", batch_size: int = 4,
                 overlap: float = 0.5, precision: str = "32"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.precision = precision
        self.device = resolve_device(device)
        self.task = task.to(self.device).eval()
        self.inference = inference
        self.batch_size = batch_size
        self.overlap = overlap

    @property
    def sample_rate(self) -> int:
        """The rate the separator runs at (CLAPSep: 32 kHz)."""
        return self.task.separator.sample_rate

    @property
    def chunk(self) -> int:
        """Chunk length in samples at :attr:`sample_rate`.

        At most the separation encoder's window: directories exported before the chunk
        followed the window (a 10 s chunk for a model trained on 1 s) still separate.
        """
        chunk = int(round(self.inference.clip_samples * self.sample_rate / self.inference.sample_rate))
        window = getattr(self.task.separator, "window_seconds", None)
        if window is not None:
            chunk = min(chunk, int(window * self.sample_rate))
        return chunk

    @torch.inference_mode()
    def condition(
        self,
        query: str | None = None,
        negative: str | None = None,
        query_audio: Sequence[AudioQuery] = (),
        negative_audio: Sequence[AudioQuery] = (),
        audio_weight: float = 0.5,
        sample_rate: int | None = None,
    ) -> torch.Tensor:
        """The ``[1, 2D]`` condition for a positive and/or negative query.

        Each side may have a text, example audio (files or arrays at ``sample_rate``; several
        are averaged) or both (mixed with ``audio_weight``); a missing side is zeros.
        """
        from clapkit.encoders.separation import build_condition, interpolate_queries

        sides = []
        for text, examples in ((query, query_audio), (negative, negative_audio)):
            text_emb = self.task.query.embed_text([text]) if text else None
            audio_emb = self._embed_examples(examples, sample_rate)
            sides.append(None if text_emb is None and audio_emb is None
                         else interpolate_queries(audio_emb, text_emb, audio_weight))
        if sides[0] is None and sides[1] is None:
            raise ValueError("give a query: a positive or negative text or example audio")
        condition = build_condition(*sides)
        require_finite(condition, "query embedding")
        return condition

    def separate(self, audio: AudioQuery, sample_rate: int | None = None, condition: torch.Tensor | None = None,
                 **query) -> np.ndarray:
        """Separate ``audio`` (a file, or ``[T]`` / ``[C, T]`` samples at ``sample_rate``).

        Pass a ``condition`` from :meth:`condition` (reuse it across files) or the query as
        keyword arguments (``query="dog barking", negative="speech"``). Returns float32 samples
        with the input's rate, channels and length.

        Raises:
            NonFiniteError: the separated signal holds NaN or Inf (huge input samples overflow
                the model); nothing is returned.
        """
        if isinstance(audio, (str, os.PathLike)):
            wave, sample_rate = load_audio(audio, mono=False)
        else:
            if sample_rate is None:
                raise ValueError("sample_rate is needed with raw samples")
            wave = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
        wave = np.asarray(wave, dtype=np.float32)
        mono = wave.ndim == 1
        wave = np.atleast_2d(wave)
        if condition is None:
            condition = self.condition(**query)
        estimate = self._separate_at_model_rate(resample(wave, sample_rate, self.sample_rate), condition)
        try:
            require_finite(estimate.reshape(1, -1), "separated audio", inputs=wave.reshape(1, -1))
        except NonFiniteError as exc:
            raise (exc.named(str(audio)) if isinstance(audio, (str, os.PathLike)) else exc) from None
        estimate = resample(estimate, self.sample_rate, sample_rate)
        length = wave.shape[-1]
        estimate = np.pad(estimate, ((0, 0), (0, max(0, length - estimate.shape[-1]))))[:, :length]
        return estimate[0] if mono else estimate

    @torch.inference_mode()
    def _separate_at_model_rate(self, wave: np.ndarray, condition: torch.Tensor) -> np.ndarray:
        channels, total = wave.shape
        chunk = self.chunk
        hop = max(1, int(round(chunk * (1.0 - self.overlap))))
        plan = chunk_windows(total, chunk, hop)
        padded = np.pad(wave, ((0, 0), (0, max(0, chunk - total))))
        items = [(c, start, w) for c in range(channels) for start, w in plan]
        out = np.zeros((channels, max(total, chunk)), dtype=np.float64)
        condition = condition.to(self.device)
        for i in range(0, len(items), self.batch_size):
            group = items[i : i + self.batch_size]
            batch = torch.from_numpy(np.stack([padded[c, s : s + chunk] for c, s, _ in group])).float()
            dtype = PRECISIONS[self.precision]
            with torch.autocast(device_type=self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                est = self.task(batch.to(self.device), condition.expand(len(group), -1)).waveform
            for (c, s, w), row in zip(group, est.float().cpu().numpy()):
                out[c, s : s + chunk] += w * row
        return out[:, :total].astype(np.float32)

    def _embed_examples(self, examples: Sequence[AudioQuery], sample_rate: int | None) -> torch.Tensor | None:
        if not examples:
            return None
        query = self.task.query
        embeddings = []
        for example in examples:
            if isinstance(example, (str, os.PathLike)):
                wave, _ = load_audio(example, sample_rate=query.sample_rate)
            else:
                if sample_rate is None:
                    raise ValueError("sample_rate is needed with raw example audio")
                wave = np.asarray(example.detach().cpu() if isinstance(example, torch.Tensor) else example,
                                  dtype=np.float32)
                wave = resample(wave.mean(0) if wave.ndim == 2 else wave, sample_rate, query.sample_rate)
            embeddings.append(query.embed_audio(torch.as_tensor(wave, dtype=torch.float32)[None].to(self.device)))
        return torch.cat(embeddings).mean(0, keepdim=True)
