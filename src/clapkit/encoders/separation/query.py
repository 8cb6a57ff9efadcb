"""The query network: a frozen CLAP that embeds text and audio queries, and the condition.

CLAPSep conditions on ``normalize(concat(positive, negative))`` where each side is a CLAP
embedding (text, audio, or an interpolation ``a * audio + (1 - a) * text``) and a missing side
is zeros. The CLAP never trains: it stays in eval mode and runs without gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clapkit.encoders.base import module_device
from clapkit.encoders.text_cache import TextCache


def build_condition(positive: torch.Tensor | None, negative: torch.Tensor | None) -> torch.Tensor:
    """``normalize(concat(positive, negative))`` with zeros for a missing side.

    Args:
        positive: ``[B, D]`` embedding of what to keep, or ``None``.
        negative: ``[B, D]`` embedding of what to suppress, or ``None``.

    Returns:
        ``[B, 2D]`` condition vector.
    """
    if positive is None and negative is None:
        raise ValueError("a query needs a positive side, a negative side or both")
    ref = positive if positive is not None else negative
    positive = torch.zeros_like(ref) if positive is None else positive
    negative = torch.zeros_like(ref) if negative is None else negative
    return F.normalize(torch.cat([positive, negative], dim=-1).float(), dim=-1)


def interpolate_queries(audio: torch.Tensor | None, text: torch.Tensor | None, weight: float | torch.Tensor) -> torch.Tensor:
    """``weight * audio + (1 - weight) * text``; a missing modality gives the other one."""
    if audio is None:
        return text
    if text is None:
        return audio
    return weight * audio + (1.0 - weight) * text


class QueryNetwork(nn.Module):
    """A frozen CLAP (audio and text towers) that turns queries into embeddings.

    Args:
        audio: the audio tower (:class:`~clapkit.encoders.tower.Tower` or any module whose
            output has an ``embedding``), fed waveforms at ``audio.encoder.sample_rate``.
        text: the text tower, fed lists of strings.
        text_cache_size: how many text embeddings to memoise (the network is frozen, so a
            caption always embeds the same); 0 disables the cache.
    """

    def __init__(self, audio: nn.Module, text: nn.Module, text_cache_size: int = 4096):
        super().__init__()
        self.audio = audio
        self.text = text
        self.text_cache_size = text_cache_size
        self._cache = TextCache(text_cache_size)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> QueryNetwork:
        # Always eval: the query network is a fixed teacher (no dropout, no batch-norm updates).
        return super().train(False)

    def _apply(self, fn, *args, **kwargs):
        self._cache.clear()  # cached tensors would be stale after .to(device) / dtype changes
        return super()._apply(fn, *args, **kwargs)

    @property
    def sample_rate(self) -> int:
        """Rate the audio tower expects."""
        encoder = getattr(self.audio, "encoder", self.audio)
        return int(encoder.sample_rate)

    @property
    def audio_encoder(self) -> nn.Module:
        """The audio tower's encoder (what CLAPSep copies and tunes)."""
        return getattr(self.audio, "encoder", self.audio)

    @torch.no_grad()
    def embed_audio(self, waveform: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` waveforms at :attr:`sample_rate` -> ``[B, D]`` L2-normalised embeddings."""
        emb = self.audio(waveform.to(module_device(self.audio))).embedding
        return F.normalize(emb.float(), dim=-1)

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """Strings -> ``[B, D]`` L2-normalised embeddings."""
        return self._cache(texts, self._embed_text)

    def _embed_text(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(self.text(texts).embedding.float(), dim=-1)
