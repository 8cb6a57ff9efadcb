"""Complex STFT analysis and synthesis for mask-based separation.

CLAPSep works on the mixture's STFT at 32 kHz (n_fft 1024, periodic Hann window of 1024,
hop 320, centred with reflect padding: 1001 frames and 513 bins for 10 s). A magnitude mask
is applied and the mixture phase is reused, so the module exposes magnitude and unit phasor
separately. Both directions run in fp32 even under bf16 autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clapkit.encoders.frontends import fp32


@dataclass
class Spectrum:
    """A batch of spectra in the layout the mask network uses.

    Attributes:
        magnitude: ``[B, frames, bins]`` non-negative magnitudes.
        phase: ``[B, frames, bins]`` complex unit phasors (``X / |X|``; 1 where ``X`` is 0).
        length: number of waveform samples the spectra came from.
    """

    magnitude: torch.Tensor
    phase: torch.Tensor
    length: int


class STFT(nn.Module):
    """STFT/ISTFT pair (torch.stft) with a fixed window kept as a buffer.

    Args:
        n_fft: FFT size (``n_fft // 2 + 1`` bins).
        hop_length: hop in samples.
        win_length: window length (defaults to ``n_fft``).
        center: pad so frame ``t`` is centred at ``t * hop_length``.
        pad_mode: padding mode when centring.
    """

    def __init__(
        self,
        n_fft: int = 1024,
        hop_length: int = 320,
        win_length: int | None = None,
        center: bool = True,
        pad_mode: str = "reflect",
    ):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length or n_fft
        self.center = center
        self.pad_mode = pad_mode
        # Not persistent: it is a pure function of the arguments, so checkpoints stay lean.
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=True), persistent=False)

    @property
    def num_bins(self) -> int:
        return self.n_fft // 2 + 1

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` samples."""
        if self.center:
            return num_samples // self.hop_length + 1
        return (num_samples - self.n_fft) // self.hop_length + 1

    @fp32
    def analyze(self, waveform: torch.Tensor) -> Spectrum:
        """``[B, T]`` waveform -> :class:`Spectrum` with ``[B, frames, bins]`` tensors."""
        spec = torch.stft(
            waveform,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=self.center,
            pad_mode=self.pad_mode,
            return_complex=True,
        ).transpose(-1, -2)
        magnitude = spec.abs()
        # angle() is 0 for a zero bin, so the phasor there is 1 instead of NaN.
        phase = torch.polar(torch.ones_like(magnitude), spec.angle())
        return Spectrum(magnitude=magnitude, phase=phase, length=waveform.shape[-1])

    @fp32
    def synthesize(self, magnitude: torch.Tensor, phase: torch.Tensor, length: int) -> torch.Tensor:
        """Inverse STFT of ``magnitude * phase`` (``[B, frames, bins]``) to ``[B, length]``."""
        spec = (magnitude.float() * phase).transpose(-1, -2)
        return torch.istft(
            spec,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=self.center,
            length=length,
        )

    def forward(self, waveform: torch.Tensor) -> Spectrum:
        return self.analyze(waveform)
