"""The inference API of a separation model: :class:`SeparationModel` extracts what a query names.

``clapkit.load(dir)`` returns one for a native directory holding a
:class:`~clapkit.encoders.separation.network.SeparationNetwork` (the model a ``SeparationTask``
trains: ``clapkit convert clapsep`` or a training run's ``export_dir``), so this module imports
no Lightning. Input of any length, sample rate
and channel count: each channel is resampled to the model's rate, cut into model-length chunks with 50 % overlap,
separated, overlap-added with complementary Hann windows, and returned at the input's rate,
channel count and length. ``clapkit separate`` is this class over files. Inputs are read as every
:class:`~clapkit.inference.base.InferenceModel` reads them (bounded by ``max_seconds``); a separation
model gives no embeddings (its :attr:`SeparationModel.refusal` says so).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from clapkit.audio import resample
from clapkit.audio.preprocess import AudioInput, InferenceConfig
from clapkit.audio.stream import DEFAULT_MAX_SECONDS
from clapkit.encoders.separation.network import SeparationNetwork
from clapkit.inference.base import InferenceModel
from clapkit.utils.finite import NonFiniteError, require_finite

AudioQuery = AudioInput


def chunk_windows(total: int, chunk: int, hop: int) -> list[tuple[int, np.ndarray]]:
    """``(start, weight)`` per chunk; weights sum to 1 at every sample of ``[0, total)``.

    Interior chunks use a periodic Hann window (which sums to 1 at 50 % overlap); the first
    chunk is flat on its leading half and the last on its trailing half, so the signal edges
    keep full weight. Without overlap the weights are rectangular. (Every chunk's weights at
    once: :func:`chunk_starts` and :func:`chunk_weight` give them one at a time.)
    """
    starts = chunk_starts(total, chunk, hop)
    return [(start, chunk_weight(starts, i, chunk, hop)) for i, start in enumerate(starts)]


def chunk_starts(total: int, chunk: int, hop: int) -> list[int]:
    """Start sample of each chunk of :func:`chunk_windows`."""
    if total <= chunk:
        return [0]
    return sorted(set(list(range(0, total - chunk, hop)) + [total - chunk]))


def chunk_weight(starts: list[int], i: int, chunk: int, hop: int) -> np.ndarray:
    """The normalised float64 weights of chunk ``i`` of ``starts`` (equal to :func:`chunk_windows`'),
    computed from the chunks that overlap it only, so a long input never holds every chunk's."""
    if len(starts) == 1:
        return np.ones(chunk, dtype=np.float64)
    start = starts[i]
    norm = np.zeros(chunk)
    # the same additions, in the same order, as a whole-signal normaliser would make here
    for j in range(bisect.bisect_right(starts, start - chunk), bisect.bisect_left(starts, start + chunk)):
        other = starts[j]
        lo, hi = max(start, other), min(start, other) + chunk
        norm[lo - start:hi - start] += _raw_weight(len(starts), j, chunk, hop)[lo - other:hi - other]
    return _raw_weight(len(starts), i, chunk, hop) / norm


def _raw_weight(count: int, i: int, chunk: int, hop: int) -> np.ndarray:
    if hop >= chunk:
        return np.ones(chunk)
    w = (np.hanning(chunk + 1)[:-1] if chunk % 2 == 0 else np.hanning(chunk)).astype(np.float64)
    if i == 0:
        w[: chunk // 2] = 1.0
    if i == count - 1:
        w[chunk // 2 :] = 1.0
    return w


class _OverlapAdd:
    """Float64 overlap-add of chunks given channel by channel in start order into float32 ``out``."""

    def __init__(self, out: np.ndarray, chunk: int):
        self.out, self.chunk = out, chunk
        self.span = np.zeros(2 * chunk)
        self.channel, self.base = 0, 0

    def add(self, channel: int, start: int, values: np.ndarray) -> None:
        if channel != self.channel:
            self.finish()
            self.channel, self.base = channel, 0
        if start + self.chunk > self.base + self.span.size:
            done = start - self.base
            self.out[self.channel, self.base:start] = self.span[:done]
            self.span[:-done] = self.span[done:].copy()
            self.span[-done:] = 0.0
            self.base = start
        self.span[start - self.base:start - self.base + self.chunk] += values

    def finish(self) -> None:
        end = min(self.base + self.span.size, self.out.shape[1])
        self.out[self.channel, self.base:end] = self.span[:end - self.base]
        self.span[:] = 0.0


@dataclass
class SeparationResult:
    """One separated input, from :meth:`SeparationModel.separate_batch`.

    Attributes:
        waveform: float32 estimate with the input's rate, channels and length.
        mask: with ``return_mask``, the separator's sigmoid magnitude masks
            ``[channels * chunks, frames, bins]`` at the model rate (one per chunk of each
            channel, in order), else ``None``.
        chunk_starts: start sample (at the model rate) of each chunk of a channel.
    """

    waveform: np.ndarray
    mask: np.ndarray | None = None
    chunk_starts: list[int] | None = None


class SeparationModel(InferenceModel):
    """A loaded separation model for inference.

    Args:
        task: the :class:`SeparationNetwork` (a ``SeparationTask``'s ``model``).
        inference: the directory's preprocessing settings (its ``clip_samples`` at
            ``sample_rate`` is the chunk length).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        batch_size: chunks per forward pass.
        overlap: chunk overlap fraction in ``[0, 1)``.
        precision: ``32``, ``bf16`` or ``16``: autocast dtype of the forward pass (the STFT and
            the overlap-add stay fp32).
        max_seconds: a file longer than this is refused (separation decodes whole files; the
            cap on decoded duration, ``None``: no cap). Also settable as an attribute.
    """

    def __init__(self, task, inference: InferenceConfig, device: str | torch.device = "cpu", batch_size: int = 4,
                 overlap: float = 0.5, precision: str = "32", max_seconds: float | None = DEFAULT_MAX_SECONDS):
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        # ``auto`` (the commands' default) keeps separation in fp32: the bf16 policies of
        # clapkit.utils.precision were checked for embeddings, not for masks.
        precision = "32" if precision == "auto" else precision
        if precision not in ("32", "bf16", "16"):
            raise ValueError(f"precision must be one of auto, 32, bf16, 16, not {precision!r}")
        super().__init__(inference, device=device, precision=precision, batch_size=batch_size,
                         max_seconds=max_seconds)
        #: The separator and query network (a plain module).
        if not isinstance(task, SeparationNetwork):
            raise TypeError(f"SeparationModel runs a SeparationNetwork, not a {type(task).__name__}")
        self.network = task.to(self.device).eval()
        self.overlap = overlap
        self._last_chunk_starts: list[int] = []  # chunk plan of the latest input (for masks)

    @property
    def refusal(self) -> str:
        """Why this model gives no embeddings: it separates (:meth:`separate`)."""
        return "a separation model; use it with clapkit separate (in Python: separate())"

    @property
    def task(self) -> SeparationNetwork:
        """The wrapped modules (the name this attribute had when it held the LightningModule)."""
        return self.network

    @property
    def sample_rate(self) -> int:
        """The rate the separator runs at (CLAPSep: 32 kHz)."""
        return self.network.separator.sample_rate

    @property
    def chunk(self) -> int:
        """Chunk length in samples at :attr:`sample_rate`.

        At most the separation encoder's window: directories exported before the chunk
        followed the window (a 10 s chunk for a model trained on 1 s) still separate.
        """
        chunk = int(round(self.inference.clip_samples * self.sample_rate / self.inference.sample_rate))
        window = getattr(self.network.separator, "window_seconds", None)
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
        query_embedding: torch.Tensor | None = None,
        negative_embedding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The ``[1, 2D]`` condition for a positive and/or negative query.

        Each side may have a text, example audio (files or arrays at ``sample_rate``; several
        are averaged) or both (mixed with ``audio_weight``); a missing side is zeros. A
        precomputed query-CLAP audio embedding (``query_embedding`` / ``negative_embedding``,
        ``[D]`` or ``[1, D]``) stands in for that side's example audio.
        """
        from clapkit.encoders.separation import build_condition, interpolate_queries

        sides = []
        for text, examples, given in ((query, query_audio, query_embedding),
                                      (negative, negative_audio, negative_embedding)):
            text_emb = self.network.query.embed_text([text]) if text else None
            audio_emb = self._embed_examples(examples, sample_rate)
            if given is not None:
                if audio_emb is not None:
                    raise ValueError("give example audio or a precomputed embedding for a side, not both")
                audio_emb = torch.as_tensor(given, dtype=torch.float32).reshape(1, -1).to(self.device)
            sides.append(None if text_emb is None and audio_emb is None
                         else interpolate_queries(audio_emb, text_emb, audio_weight))
        if sides[0] is None and sides[1] is None:
            raise ValueError("give a query: a positive or negative text or example audio")
        condition = build_condition(*sides)
        require_finite(condition, "query embedding")
        return condition

    def separate(self, audio: AudioQuery, sample_rate: int | None = None, condition: torch.Tensor | None = None,
                 _masks: list | None = None, **query) -> np.ndarray:
        """Separate ``audio`` (a file, or ``[T]`` / ``[C, T]`` samples at ``sample_rate``).

        Pass a ``condition`` from :meth:`condition` (reuse it across files) or the query as
        keyword arguments (``query="dog barking", negative="speech"``). Returns float32 samples
        with the input's rate, channels and length.

        Raises:
            NonFiniteError: the separated signal holds NaN or Inf (huge input samples overflow
                the model); nothing is returned.
        """
        mono = not isinstance(audio, (str, os.PathLike)) and np.ndim(audio) == 1
        wave, sample_rate = self.load_waveform(audio, sample_rate, mono=False)
        if condition is None:
            condition = self.condition(**query)
        estimate = self._separate_at_model_rate(resample(wave, sample_rate, self.sample_rate), condition, _masks)
        try:
            require_finite(estimate.reshape(1, -1), "separated audio", inputs=wave.reshape(1, -1))
        except NonFiniteError as exc:
            raise (exc.named(str(audio)) if isinstance(audio, (str, os.PathLike)) else exc) from None
        estimate = resample(estimate, self.sample_rate, sample_rate)
        length = wave.shape[-1]
        if estimate.shape[-1] != length:
            estimate = np.pad(estimate, ((0, 0), (0, max(0, length - estimate.shape[-1]))))[:, :length]
        return estimate[0] if mono else estimate

    def condition_from_embeddings(self, positive: torch.Tensor | None = None,
                                  negative: torch.Tensor | None = None) -> torch.Tensor:
        """Conditions ``[B, 2D]`` from precomputed query-CLAP embeddings ``[B, D]`` (either side may be
        ``None``: zeros), normalised as in training; one row per item of a batch."""
        from clapkit.encoders.separation import build_condition

        def rows(value):
            return None if value is None else torch.as_tensor(value, dtype=torch.float32).reshape(
                -1, torch.as_tensor(value).shape[-1]).to(self.device)

        return build_condition(rows(positive), rows(negative))

    def conditions(self, queries: Sequence[str | None], negatives: Sequence[str | None] | None = None) -> torch.Tensor:
        """One condition row per batch item ``[B, 2D]`` from per-item text queries (``None``: no
        positive / negative for that item)."""
        negatives = list(negatives) if negatives is not None else [None] * len(queries)
        if len(negatives) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(negatives)} negatives")
        return torch.cat([self.condition(query=q, negative=n) for q, n in zip(queries, negatives)])

    def separate_batch(self, mixtures: Sequence[AudioQuery] | np.ndarray | torch.Tensor, sample_rate: int | None = None,
                       conditions: torch.Tensor | None = None, *, queries: Sequence[str | None] | None = None,
                       negatives: Sequence[str | None] | None = None,
                       return_mask: bool = False) -> list[SeparationResult]:
        """Separate several inputs, each with its own query.

        Args:
            mixtures: files, ``[T]`` / ``[C, T]`` arrays at ``sample_rate``, or a ``[B, T]`` batch.
            sample_rate: rate of array inputs.
            conditions: ``[B, 2D]`` (from :meth:`conditions`, :meth:`condition_from_embeddings`
                or :meth:`condition`, one row per item; a single row is shared by all).
            queries: per-item text queries instead of ``conditions``.
            negatives: per-item negative texts (with ``queries``).
            return_mask: also return each item's masks.
        """
        items = self.as_items(mixtures)
        if conditions is None:
            if queries is None and negatives is None:
                raise ValueError("give conditions, or queries / negatives (one per item)")
            conditions = self.conditions(queries if queries is not None else [None] * len(items), negatives)
        conditions = conditions.reshape(-1, conditions.shape[-1])
        if conditions.shape[0] == 1:
            conditions = conditions.expand(len(items), -1)
        if conditions.shape[0] != len(items):
            raise ValueError(f"{len(items)} inputs but {conditions.shape[0]} conditions")
        results = []
        for item, condition in zip(items, conditions):
            masks: list[np.ndarray] | None = [] if return_mask else None
            wave = self.separate(item, sample_rate, condition=condition[None], _masks=masks)
            results.append(SeparationResult(waveform=wave, mask=np.concatenate(masks) if masks else None,
                                            chunk_starts=list(self._last_chunk_starts) if return_mask else None))
        return results

    @torch.inference_mode()
    def _separate_at_model_rate(self, wave: np.ndarray, condition: torch.Tensor,
                                masks: list[np.ndarray] | None = None) -> np.ndarray:
        channels, total = wave.shape
        chunk = self.chunk
        hop = max(1, int(round(chunk * (1.0 - self.overlap))))
        starts = chunk_starts(total, chunk, hop)
        self._last_chunk_starts = list(starts)
        padded = np.pad(wave, ((0, 0), (0, chunk - total))) if total < chunk else wave
        items = [(c, i) for c in range(channels) for i in range(len(starts))]
        out = np.zeros((channels, max(total, chunk)), dtype=np.float32)
        # Overlap-add in float64 over a sliding span of two chunks: samples before the current
        # chunk's start get no more terms, so they are rounded to float32 and written out (the
        # same values a whole-signal float64 buffer gives, at two chunks' memory).
        adder = _OverlapAdd(out, chunk)
        condition = condition.to(self.device)
        for first in range(0, len(items), self.batch_size):
            group = items[first : first + self.batch_size]
            batch = torch.from_numpy(np.stack([padded[c, starts[i] : starts[i] + chunk] for c, i in group])).float()
            with self.autocast():
                out_batch = self.network(batch.to(self.device), condition.expand(len(group), -1))
            est = out_batch.waveform
            if masks is not None:
                masks.append(out_batch.mask.float().cpu().numpy())
            for (c, i), row in zip(group, est.float().cpu().numpy()):
                adder.add(c, starts[i], chunk_weight(starts, i, chunk, hop) * row)
        adder.finish()
        return np.ascontiguousarray(out[:, :total])

    def _embed_examples(self, examples: Sequence[AudioQuery], sample_rate: int | None) -> torch.Tensor | None:
        if not examples:
            return None
        query = self.network.query
        embeddings = []
        for i, example in enumerate(examples):
            wave, rate = self.load_waveform(example, sample_rate, mono=True, name=f"example audio {i}")
            wave = resample(wave, rate, query.sample_rate)
            embeddings.append(query.embed_audio(torch.as_tensor(wave, dtype=torch.float32)[None].to(self.device)))
        return torch.cat(embeddings).mean(0, keepdim=True)
