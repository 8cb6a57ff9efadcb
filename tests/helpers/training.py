"""Tiny towers and batches for contrastive-training tests (milliseconds on CPU, no files)."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from clapkit.encoders.base import AudioEncoder, EncoderOutput, TextEncoder, module_device
from clapkit.encoders.projection import LinearProjection, MLPProjection
from clapkit.encoders.tower import Tower


class TinyAudio(AudioEncoder):
    """Frames the waveform, maps each frame through Linear-BatchNorm-ReLU, mean-pools valid frames.

    Has a BatchNorm so tests can check frozen towers keep their running statistics.
    """

    def __init__(self, frame: int = 32, width: int = 16, rate: int = 16000):
        super().__init__()
        self.frame, self.width, self.rate = frame, width, rate
        self.linear = nn.Linear(frame, width)
        self.norm = nn.BatchNorm1d(width)

    @property
    def output_dim(self) -> int:
        return self.width

    @property
    def sample_rate(self) -> int:
        return self.rate

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        batch, samples = waveform.shape
        frames = waveform[:, : samples - samples % self.frame].reshape(batch, -1, self.frame)
        hidden = self.linear(frames)  # [B, F, W]
        hidden = torch.relu(self.norm(hidden.transpose(1, 2)).transpose(1, 2))
        mask = torch.ones(hidden.shape[:2], device=hidden.device)
        if lengths is not None:
            valid = (lengths.to(hidden.device) // self.frame).clamp(min=1)
            mask = (torch.arange(hidden.shape[1], device=hidden.device) < valid[:, None]).float()
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return EncoderOutput(embedding=pooled, tokens=hidden)


class TinyText(TextEncoder):
    """Hashes character trigrams into an EmbeddingBag, then a LayerNorm (deterministic, no vocab file)."""

    def __init__(self, buckets: int = 257, width: int = 16):
        super().__init__()
        self.buckets, self.width = buckets, width
        self.bag = nn.EmbeddingBag(buckets, width, mode="mean")
        self.norm = nn.LayerNorm(width)

    @property
    def output_dim(self) -> int:
        return self.width

    def _ids(self, text: str) -> list[int]:
        padded = f"  {text.lower()} "
        grams = [padded[i : i + 3] for i in range(len(padded) - 2)]
        return [int(hashlib.md5(g.encode()).hexdigest()[:8], 16) % self.buckets for g in grams]

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        ids = [self._ids(t) for t in texts]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
        return {"input_ids": torch.tensor([x for i in ids for x in i]), "offsets": offsets}

    def forward(self, texts) -> EncoderOutput:
        tokens = self.tokenize(texts) if isinstance(texts, (list, tuple)) else texts
        device = module_device(self)
        pooled = self.bag(tokens["input_ids"].to(device), tokens["offsets"].to(device))
        return EncoderOutput(embedding=self.norm(pooled))


def tiny_towers(dim: int = 8, three: bool = False) -> dict[str, Tower]:
    """``audio`` (MLP head) and ``text`` (linear head) towers; ``three`` adds a second text-like ``image`` stand-in."""
    towers = {
        "audio": Tower(TinyAudio(), lambda d: MLPProjection(d, out_dim=dim, hidden_dim=12)),
        "text": Tower(TinyText(), lambda d: LinearProjection(d, out_dim=dim)),
    }
    if three:
        towers["image"] = Tower(TinyText(buckets=101), lambda d: LinearProjection(d, out_dim=dim))
    return towers


def tiny_batch(n: int = 6, samples: int = 320, seed: int = 0, captions: int = 2) -> dict:
    """A batch dict in the :mod:`clapkit.datamodules.base` layout with distinct captions."""
    gen = torch.Generator().manual_seed(seed)
    words = ["dog", "bell", "rain", "siren", "engine", "bird", "door", "water", "wind", "drum", "horn", "clock"]
    caps = [[f"a {words[(i + seed) % len(words)]} sound number {i} take {j}" for j in range(captions)] for i in range(n)]
    return {
        "audio": torch.randn(n, samples, generator=gen),
        "lengths": torch.full((n,), samples),
        "text": [c[0] for c in caps],
        "captions": caps,
        "key": [f"clip{seed}_{i}" for i in range(n)],
    }
