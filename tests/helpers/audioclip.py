"""Tiny models and synthetic data for the AudioCLIP / classification tests (CPU, seconds)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from clapkit.encoders.base import AudioEncoder, EncoderOutput


class ToyAudioEncoder(AudioEncoder):
    """A small conv + BatchNorm encoder over ``[B, T]`` waveforms, with an optional aux loss."""

    def __init__(self, dim: int = 16, aux: float | None = None):
        super().__init__()
        self.dim = dim
        self.aux = aux
        self.conv = nn.Conv1d(1, dim, kernel_size=64, stride=32)
        self.bn = nn.BatchNorm1d(dim)
        self.drop = nn.Dropout(0.5)

    @property
    def output_dim(self) -> int:
        return self.dim

    @property
    def sample_rate(self) -> int:
        return 8000

    def forward(self, waveform, lengths=None):
        x = torch.relu(self.bn(self.conv(waveform.unsqueeze(1))))
        emb = self.drop(x.abs().mean(-1))
        extras = {"aux_loss": torch.tensor(self.aux)} if self.aux is not None else {}
        return EncoderOutput(embedding=emb, extras=extras)


def tone_batches(num_batches: int = 8, batch_size: int = 8, num_classes: int = 3, length: int = 1024,
                 multi_label: bool = False, seed: int = 0):
    """A loader of pre-built batches of tones whose frequency encodes the class (multi-label: sums of tones)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / 8000
    freqs = torch.tensor([300.0 * (k + 1) for k in range(num_classes)])
    out = []
    for _ in range(num_batches):
        if multi_label:
            target = (torch.rand(batch_size, num_classes, generator=gen) < 0.5).float()
            target[target.sum(-1) == 0, 0] = 1.0
            wave = (target.unsqueeze(-1) * torch.sin(2 * torch.pi * freqs[:, None] * t)).sum(1)
        else:
            target = torch.randint(num_classes, (batch_size,), generator=gen)
            wave = torch.sin(2 * torch.pi * freqs[target][:, None] * t)
        wave = wave + 0.05 * torch.randn(wave.shape, generator=gen)
        out.append({"audio": wave, "label": target, "lengths": torch.full((batch_size,), length)})
    return DataLoader(out, batch_size=None)
