"""Variable-length audio for CLAP encoders: the fixed window, and LAION-CLAP's feature fusion.

A CLAP audio encoder sees a fixed window (10 s at 48 kHz in LAION-CLAP). :class:`ClipBatcher`
turns a padded batch of waveforms of any length into the encoder's input:

- **Without fusion** a short clip is filled (``repeatpad``: tiled ``floor(window / n)`` times,
  then zero-padded, as the reference does) and a long one is cropped to the window: at a
  uniformly random offset while training (the reference's ``rand_trunc``), at the centre
  (offset ``(n - window) // 2``) in eval mode so inference is deterministic.
- **With fusion** (``aff_2d``) every clip goes through the *second* mel path (torchaudio
  ``MelSpectrogram``, HTK scale, no filter norm, ``AmplitudeToDB``) and becomes a stack of four
  ``[frames, n_mels]`` views, exactly like the reference's ``get_audio_features``:

  - a clip no longer than the window is filled as above and its mel is repeated 4 times
    (``longer = False``; the encoder then only uses view 0 outside training);
  - a longer clip gives ``[global, front, middle, back]``: ``global`` is the whole mel resized
    to ``frames x n_mels`` (bilinear with antialiasing, i.e. ``torchvision.transforms.Resize``),
    the other three are ``frames``-long crops whose start frames are drawn from the front,
    middle and back thirds of ``range(total - frames + 1)`` (``numpy.array_split`` into 3;
    an empty third falls back to start 0). Training draws each start uniformly from its third
    (the reference); eval mode takes the **middle element of each third**
    (``third[len(third) // 2]``), so inference is deterministic. ``crop_starts`` overrides both:
    given the same three start frames, the stack equals the reference's bit for bit.
  - the corner case ``total == frames`` (a clip less than one hop longer than the window) keeps
    the whole mel repeated 4 times with ``longer = False``, as the reference does.

:class:`AttentionalFeatureFusion` is the reference's ``AFF`` (2-D), which merges the global
view with the local crops inside the patch embedding (HTSAT) or after the first conv block
(PANN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clapkit.audio.crop import PadMode, fit_length


class AttentionalFeatureFusion(nn.Module):
    """Attentional feature fusion (Dai et al., WACV 2021), 2-D, as in LAION-CLAP's ``AFF``.

    ``out = 2 * x * w + 2 * residual * (1 - w)`` with ``w = sigmoid(local_att(x + residual) +
    global_att(x + residual))``. Submodule indices match the reference so checkpoints map 1:1.

    Args:
        channels: channels of both inputs.
        r: bottleneck reduction of the attention branches.
    """

    def __init__(self, channels: int = 64, r: int = 4):
        super().__init__()
        inter = int(channels // r)
        self.local_att = nn.Sequential(
            nn.Conv2d(channels, inter, kernel_size=1),
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Conv2d(inter, channels, kernel_size=1),
            nn.BatchNorm2d(channels),
        )
        self.global_att = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, inter, kernel_size=1),
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Conv2d(inter, channels, kernel_size=1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        xa = x + residual
        single = xa.shape[0] == 1
        if single:
            # BatchNorm over a globally pooled 1x1 map needs two samples in training; the
            # reference duplicates the item (same statistics), we do the same.
            xa = torch.cat([xa, xa], dim=0)
        weight = torch.sigmoid(self.local_att(xa) + self.global_att(xa))
        if single:
            weight = weight[:1]
        return 2 * x * weight + 2 * residual * (1 - weight)


def fusion_crop_starts(total_frames: int, chunk_frames: int, mode: Literal["middle", "random"] = "middle",
                       generator: torch.Generator | None = None) -> list[int]:
    """Start frames of the front/middle/back crops for a mel of ``total_frames`` frames.

    ``middle`` (inference) takes the middle element of each third; ``random`` (training) draws
    uniformly within each third, as the reference does.
    """
    thirds = [list(t) for t in np.array_split(np.arange(0, total_frames - chunk_frames + 1), 3)]
    thirds = [t if len(t) > 0 else [0] for t in thirds]
    if mode == "middle":
        return [int(t[len(t) // 2]) for t in thirds]
    return [int(t[int(torch.randint(len(t), (1,), generator=generator))]) for t in thirds]


@dataclass
class ClipBatch:
    """Encoder input built from a batch of waveforms.

    Attributes:
        mel: log-mel ``[B, C, frames, n_mels]`` (not yet batch-normalised); ``C`` is 1 without
            fusion and 4 (global, front, middle, back) with fusion.
        longer: ``[B]`` bool, which clips were longer than the window (fusion only; all False
            otherwise).
    """

    mel: torch.Tensor
    longer: torch.Tensor


@dataclass
class ClipBatcher:
    """Fit waveforms of any length to a CLAP encoder's window (see the module docstring).

    A plain helper, not a module: the encoder owns (and registers) the front end and passes
    it in, so its buffers appear once in the state dict.

    Args:
        clip_samples: window length in samples (480000 = 10 s at 48 kHz).
        pad_mode: how clips shorter than the window are filled.
        fusion: build the 4-view fusion stack instead of cropping long clips.
        antialias: resize the global fusion view with antialiasing (LAION-CLAP's
            ``torchvision`` ``Resize``); ``False`` is plain bilinear, as transformers'
            ``ClapFeatureExtractor`` computes it.
    """

    clip_samples: int = 480000
    pad_mode: PadMode = "repeatpad"
    fusion: bool = False
    antialias: bool = True

    def chunk_frames(self, frontend: nn.Module) -> int:
        """Frames of one window."""
        return self.clip_samples // frontend.hop_length + 1

    def __call__(self, frontend: nn.Module, waveform: torch.Tensor, lengths: torch.Tensor | None = None,
                 crop_starts: torch.Tensor | None = None, training: bool = False) -> ClipBatch:
        """Build the encoder input.

        Args:
            frontend: waveform -> log-mel ``[..., n_mels, frames]`` module (the encoder's mel
                path; with fusion, the reference's second mel path).
            waveform: ``[B, T]`` (or ``[B, C, T]``, averaged over channels), zero-padded.
            lengths: valid samples per clip (``None``: all ``T``).
            crop_starts: ``[B, 3]`` start frames of the fusion crops for long clips (rows of
                short clips are ignored); ``None`` picks them (random in training, middle of
                each third in eval).
            training: draw crops at random (training) or deterministically (eval).
        """
        if waveform.dim() == 3:
            waveform = waveform.mean(dim=1)
        batch, total = waveform.shape
        window = self.clip_samples
        if lengths is None and total == window:
            mel = frontend(waveform).transpose(-1, -2).unsqueeze(1)
            longer = torch.zeros(batch, dtype=torch.bool, device=waveform.device)
            return ClipBatch(mel.expand(-1, 4, -1, -1) if self.fusion else mel, longer)
        if lengths is None:
            lengths = torch.full((batch,), total, dtype=torch.long, device=waveform.device)
        if not self.fusion:
            # The common case (every CLAP without fusion): one gather on the device, no
            # per-row Python loop and no host sync on the lengths.
            mel = frontend(self.fit_rows(waveform, lengths, training)).transpose(-1, -2).unsqueeze(1)
            return ClipBatch(mel, torch.zeros(batch, dtype=torch.bool, device=waveform.device))
        lengths = [int(n) for n in lengths.tolist()]
        fixed, stacks = [], {}
        for i, n in enumerate(lengths):
            wave = waveform[i, :n]
            if n <= window:
                fixed.append((i, fit_length(wave, window, pad=self.pad_mode)))
            else:
                starts = None if crop_starts is None else [int(s) for s in crop_starts[i].tolist()]
                stacks[i] = self._fusion_stack(frontend, wave, starts, training)
        out = waveform.new_zeros(batch, 4, self.chunk_frames(frontend), frontend.n_mels)
        longer = torch.zeros(batch, dtype=torch.bool, device=waveform.device)
        if fixed:
            index = [i for i, _ in fixed]
            mel = frontend(torch.stack([w for _, w in fixed])).transpose(-1, -2)
            out[index] = mel.unsqueeze(1).expand(-1, 4, -1, -1)
        for i, (stack, is_longer) in stacks.items():
            out[i] = stack
            longer[i] = is_longer
        return ClipBatch(out, longer)

    def fit_rows(self, waveform: torch.Tensor, lengths: torch.Tensor, training: bool = False) -> torch.Tensor:
        """``[B, T]`` zero-padded clips with ``lengths`` valid samples -> ``[B, clip_samples]``.

        Row by row this is :func:`clapkit.audio.crop.fit_length` (pad policy) for clips up to
        the window and a crop (random in training, centred otherwise) for longer ones, computed
        as one gather.
        """
        batch, total = waveform.shape
        window, device = self.clip_samples, waveform.device
        n = lengths.to(device=device, dtype=torch.long).clamp(0, total)
        j = torch.arange(window, device=device)[None]
        longer = (n > window)[:, None]
        slack = (n - window).clamp(min=0)
        if training:
            start = torch.minimum((torch.rand(batch, device=device) * (slack + 1)).long(), slack)
        else:
            start = slack // 2
        safe = n.clamp(min=1)[:, None]
        index = torch.where(longer, start[:, None] + j, j % safe)
        if self.pad_mode == "repeatpad":
            valid = j < (window // safe) * safe
        elif self.pad_mode == "repeat":
            valid = torch.ones_like(index, dtype=torch.bool)
        elif self.pad_mode == "pad":
            valid = j < n[:, None]
        else:
            raise ValueError(f"unknown pad mode {self.pad_mode!r}; expected repeatpad, pad or repeat")
        valid = (valid | longer) & (n > 0)[:, None]
        rows = torch.gather(waveform, 1, index.clamp(max=max(total - 1, 0)))
        return torch.where(valid, rows, rows.new_zeros(()))

    def _fusion_stack(self, frontend: nn.Module, wave: torch.Tensor, starts: list[int] | None,
                      training: bool) -> tuple[torch.Tensor, bool]:
        mel = frontend(wave).transpose(-1, -2)  # [total, n_mels]
        chunk, total = self.chunk_frames(frontend), mel.shape[0]
        if total == chunk:
            return mel.expand(4, -1, -1), False
        if starts is None:
            starts = fusion_crop_starts(total, chunk, "random" if training else "middle")
        if any(s < 0 or s + chunk > total for s in starts):
            raise ValueError(f"fusion crop starts {starts} fall outside a mel of {total} frames")
        shrunk = F.interpolate(mel[None, None], size=(chunk, mel.shape[1]), mode="bilinear",
                               align_corners=False, antialias=self.antialias)[0, 0]
        crops = [mel[s:s + chunk] for s in starts]
        return torch.stack([shrunk, *crops]), True
