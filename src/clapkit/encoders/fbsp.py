"""The learnable Frequency B-Spline (FBSP) time-frequency transform of ESResNeXt-FBSP (AudioCLIP).

FBSP replaces the fixed DFT with a bank of learnable complex filters. Filter ``k`` over
``t = pi * linspace(-1, 1, n_fft)`` is

    w_k(t) = sqrt(fb_k) * sinc(fb_k * t / m_k) ** m_k * exp(-i * fc_k * t)   (/ sqrt(n_fft) when normalised)

with three parameters per filter: centre frequency ``fc``, bandwidth ``fb`` and spline order
``m``. The initialisation ``m = 0, fb = 1, fc = k`` makes filter ``k`` a pure complex exponential with ``k``
cycles over the frame (a one-sided DFT up to the ``N/(N-1)`` spacing of ``linspace`` and a
phase offset), so training starts from an ordinary (normalised) STFT. A regulariser keeps every filter's L2 norm
at its DFT value (1 when normalised, ``sqrt(n_fft)`` otherwise); it is zero at initialisation.

:class:`FBSPSpectrogram` is the whole front end of the reference: frame the signal (no centring;
zero padding split around the signal so the frames cover it), window the frames
(Blackman-Harris by default), apply the filter bank, drop the top bins that do not fill a band
and stack the bands as image channels, then ``10 * log10`` of the power with non-positive values
replaced by ``1e-18``. It runs in fp32 even under autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clapkit.encoders.frontends import fp32

# scipy.signal.windows.blackmanharris coefficients (4-term); fftbins=True -> periodic window.
_BLACKMAN_HARRIS = (0.35875, 0.48829, 0.14128, 0.01168)
# Built on the CPU explicitly: under a ``torch.device("meta")`` context (shape-only model builds
# for checkpoint conversion) general_cosine can otherwise mix meta and CPU tensors.
_WINDOWS = {
    "blackmanharris": lambda n: torch.signal.windows.general_cosine(
        n, a=list(_BLACKMAN_HARRIS), sym=False, dtype=torch.float64, device="cpu"
    ),
    "hann": lambda n: torch.hann_window(n, periodic=True, dtype=torch.float64, device="cpu"),
    "boxcar": lambda n: torch.ones(n, dtype=torch.float64, device="cpu"),
}


def _normalize_by_inf_norm(grad: torch.Tensor) -> torch.Tensor:
    # The reference rescales FBSP parameter gradients to unit max-norm: fc spans [0, n_fft/2]
    # while m and fb are O(1), so raw gradients would move them at wildly different rates.
    return grad / (grad.abs().amax() + 1e-8)


class LinearFBSP(nn.Module):
    """A bank of ``out_features`` learnable complex FBSP filters applied to real frames.

    Args:
        out_features: number of filters (``n_fft // 2 + 1`` for a one-sided bank).
        normalized: divide the filters by ``sqrt(in_features)`` (an orthonormal DFT at init).
        bias: add a learnable complex bias ``[out_features, 2]``. Without it an empty ``bias``
            buffer is kept so the state dict has the reference's keys.
        normalize_grads: rescale the gradients of ``m``, ``fb`` and ``fc`` to unit max-norm,
            as the reference does.
    """

    eps = 1e-8

    def __init__(self, out_features: int, normalized: bool = True, bias: bool = False,
                 normalize_grads: bool = True):
        super().__init__()
        self.out_features = out_features
        self.normalized = normalized
        self.m = nn.Parameter(torch.zeros(out_features))
        self.fb = nn.Parameter(torch.ones(out_features))
        self.fc = nn.Parameter(torch.arange(out_features, dtype=torch.float32))
        if bias:
            self.bias = nn.Parameter(torch.normal(0.0, 0.5, (out_features, 2)))
        else:
            self.register_buffer("bias", torch.zeros(0))
        if normalize_grads:
            for param in (self.m, self.fb, self.fc):
                param.register_hook(_normalize_by_inf_norm)

    def weights(self, in_features: int) -> torch.Tensor:
        """Materialise the filters as ``[out_features, in_features, 2]`` (real, imaginary)."""
        t = math.pi * torch.linspace(-1.0, 1.0, in_features, device=self.fc.device) + self.eps
        m = self.m.float()[:, None]
        fb = self.fb.float()[:, None]
        fc = self.fc.float()[:, None]
        phase_t = fc * t
        kernel_re, kernel_im = torch.cos(phase_t), -torch.sin(phase_t)
        x = fb * t / (m + self.eps)
        nonzero = x != 0
        x_safe = torch.where(nonzero, x, torch.ones_like(x))
        sinc = torch.where(nonzero, torch.sin(x_safe) / x_safe, torch.ones_like(x))
        # sinc ** m for a real base of either sign: |sinc| ** m * exp(i * m * arg(sinc)).
        magnitude = sinc.abs().clamp_min(1e-38).pow(m)
        arg = torch.where(sinc < 0, torch.full_like(sinc, math.pi), torch.zeros_like(sinc)) * m
        win_re, win_im = magnitude * torch.cos(arg), magnitude * torch.sin(arg)
        scale = fb.sqrt()
        weights = scale.unsqueeze(-1) * torch.stack(
            (win_re * kernel_re - win_im * kernel_im, win_re * kernel_im + win_im * kernel_re), dim=-1
        )
        if self.normalized:
            weights = weights / math.sqrt(in_features)
        return weights

    def regularizer(self, weights: torch.Tensor) -> torch.Tensor:
        """Mean squared deviation of each filter's L2 norm from its DFT value (0 at init)."""
        norms = torch.linalg.vector_norm(weights, ord=2, dim=(-1, -2))
        target = 1.0 if self.normalized else math.sqrt(weights.shape[-2])
        return F.mse_loss(norms, torch.full_like(norms, target))

    def apply_weights(self, frames: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Real frames ``[..., in]`` -> complex responses ``[..., out, 2]``."""
        out = torch.stack((F.linear(frames, weights[..., 0]), F.linear(frames, weights[..., 1])), dim=-1)
        if self.bias.numel() == self.out_features * 2:
            out = out + self.bias
        return out

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}, normalized={self.normalized}, bias={self.bias.numel() > 0}"


@dataclass
class FBSPOutput:
    """What :class:`FBSPSpectrogram` returns.

    Attributes:
        log_power: ``[B, C, num_bands, band_height, frames]`` dB spectrogram (C input channels).
        regularizer: scalar FBSP filter-norm loss.
    """

    log_power: torch.Tensor
    regularizer: torch.Tensor


class FBSPSpectrogram(nn.Module):
    """Frame, window, FBSP-transform and band-split a waveform (the ESResNeXt-FBSP front end).

    Args:
        n_fft: FBSP input width; frames are zero-padded (centred) from ``win_length`` to it.
        hop_length: hop between frames in samples.
        win_length: frame (window) length.
        window: ``blackmanharris`` (reference), ``hann`` or ``boxcar``; periodic.
        normalized: normalised filters (reference AudioCLIP: ``True``).
        num_bands: frequency bands stacked as channels; the top ``bins % num_bands`` bins
            are dropped (2048 -> 1025 bins -> 3 bands of 341).
        log10_eps: replaces non-positive power before the log.
        normalize_grads: see :class:`LinearFBSP`.
    """

    def __init__(self, n_fft: int = 2048, hop_length: int = 561, win_length: int = 1654,
                 window: str = "blackmanharris", normalized: bool = True, num_bands: int = 3,
                 log10_eps: float = 1e-18, normalize_grads: bool = True):
        super().__init__()
        if win_length > n_fft:
            raise ValueError(f"win_length ({win_length}) must not exceed n_fft ({n_fft})")
        if window not in _WINDOWS:
            raise ValueError(f"unknown window {window!r}; choose from {sorted(_WINDOWS)}")
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length
        self.num_bands = num_bands
        self.log10_eps = log10_eps
        self.fbsp = LinearFBSP(n_fft // 2 + 1, normalized=normalized, normalize_grads=normalize_grads)
        self.register_buffer("window", _WINDOWS[window](win_length).float())
        self.band_height = (n_fft // 2 + 1) // num_bands

    def num_frames(self, num_samples: int) -> int:
        """Frames for a signal of ``num_samples`` (at least one)."""
        if num_samples <= self.win_length:
            return 1
        return 1 + math.ceil((num_samples - self.win_length) / self.hop_length)

    def frames(self, waveform: torch.Tensor) -> torch.Tensor:
        """``[..., T]`` -> windowed frames ``[..., frames, win_length]`` (reference padding)."""
        n = waveform.shape[-1]
        total = (self.num_frames(n) - 1) * self.hop_length + self.win_length
        missing = max(total - n, 0)
        padded = F.pad(waveform, (missing // 2, missing - missing // 2))
        return padded.unfold(-1, self.win_length, self.hop_length) * self.window

    @fp32
    def forward(self, waveform: torch.Tensor) -> FBSPOutput:
        """``[B, T]`` or ``[B, C, T]`` waveform (unit range) -> :class:`FBSPOutput`."""
        if waveform.dim() == 2:
            waveform = waveform.unsqueeze(1)
        batch, channels = waveform.shape[:2]
        weights = self.fbsp.weights(self.n_fft)
        # Frames are zero-padded symmetrically to n_fft before the bank; multiplying by the
        # matching slice of the weights gives the same result without materialising the padding.
        left = (self.n_fft - self.win_length) // 2
        used_weights = weights[:, left : left + self.win_length]
        frames = self.frames(waveform)
        if self.fbsp.bias.numel():
            power = self.fbsp.apply_weights(frames, used_weights).square().sum(-1)
        else:  # skip stacking real and imaginary parts: the power is all that is needed
            power = F.linear(frames, used_weights[..., 0]).square() + F.linear(frames, used_weights[..., 1]).square()
        power = power.transpose(-1, -2)  # [B, C, bins, frames]
        used = self.num_bands * self.band_height
        power = power[..., :used, :].reshape(batch, channels, self.num_bands, self.band_height, -1)
        power = torch.where(power > 0, power, torch.full_like(power, self.log10_eps))
        return FBSPOutput(log_power=10.0 * torch.log10(power), regularizer=self.fbsp.regularizer(weights))
