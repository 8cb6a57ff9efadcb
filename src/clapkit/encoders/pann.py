"""PANN CNN audio encoders (Cnn14, Cnn10, Cnn6) as used by LAION-CLAP and MS-CLAP 2022.

Module names follow the reference (``bn0``, ``conv_block{i}.conv1/bn1/conv2/bn2``, ``fc1``,
``fc_audioset``) so official checkpoints map onto them key for key. The log-mel front end is a
module argument; the default is LAION-CLAP's (48 kHz, hop 480, 64 Slaney mels, 50-14000 Hz).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from clapkit.encoders.base import EncoderOutput, FeatureAudioEncoder
from clapkit.encoders.frontends import LogMel
from clapkit.encoders.frontends import spec_augment as apply_spec_augment
from clapkit.encoders.fusion import AttentionalFeatureFusion, ClipBatcher, PadMode


class ConvBlock(nn.Module):
    """Two 3x3 conv-BN-ReLU layers followed by average pooling."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        for conv in (self.conv1, self.conv2):
            nn.init.xavier_uniform_(conv.weight)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, pool) if pool > 1 else x


class ConvBlock5x5(nn.Module):
    """One 5x5 conv-BN-ReLU layer followed by average pooling (Cnn6)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        nn.init.xavier_uniform_(self.conv1.weight)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return F.avg_pool2d(x, pool) if pool > 1 else x


@dataclass(frozen=True)
class PANNSpec:
    """Geometry of one PANN architecture at full width."""

    block: type[nn.Module]
    channels: tuple[int, ...]
    pools: tuple[int, ...]


class PANNEncoder(FeatureAudioEncoder):
    """Shared implementation of the PANN CNNs; use :class:`Cnn14`, :class:`Cnn10` or :class:`Cnn6`.

    Args:
        variant: ``base`` has the reference widths; ``small`` divides every width by 4 and
            ``tiny`` by 16 (for fast experiments and tests).
        frontend: log-mel front end, waveform -> ``[..., n_mels, frames]`` with ``n_mels`` and
            ``sample_rate`` attributes (default: LAION-CLAP's 48 kHz :class:`LogMel`; checkpoint
            converters pass a :class:`~clapkit.encoders.frontends.ConvLogMel`).
        classes_num: width of the AudioSet head ``fc_audioset`` (kept for checkpoint parity;
            its logits are returned in ``extras["clipwise_logits"]``).
        spec_augment: apply SpecAugment-style time/frequency masking while training
            (two 64-frame time stripes and two 8-bin frequency stripes, as in the reference).
        dropout: dropout after each conv block (0.2 in the reference).
        head_dropout: dropout before and after ``fc1`` (0.5 in the reference); 0 makes
            training deterministic across ranks (each rank draws its own masks).
        fusion: LAION-CLAP's ``aff_2d`` feature fusion: clips longer than the window become
            a global view + 3 crops (:mod:`clapkit.encoders.fusion`); the crops go through
            ``mel_conv2d`` (5x5 conv, stride (6, 2), BN, ReLU) and are merged into the first
            conv block's output by attentional feature fusion. The default front end becomes
            the reference's second mel path (HTK scale, no filter norm).
        clip_samples: the window in samples (LAION-CLAP: 480000). When set, clips of any
            length are filled (``pad_mode``) or cropped (centre in eval, random in training)
            to it, as :class:`~clapkit.encoders.fusion.ClipBatcher` documents; ``None`` (the
            default without fusion) runs on the waveform as given.
        pad_mode: how clips shorter than ``clip_samples`` are filled.
    """

    SPEC: ClassVar[PANNSpec]
    WIDTH_DIVISOR: ClassVar[dict[str, int]] = {"base": 1, "small": 4, "tiny": 16}

    def __init__(
        self,
        variant: Literal["base", "small", "tiny"] = "base",
        frontend: nn.Module | None = None,
        classes_num: int = 527,
        spec_augment: bool = False,
        dropout: float = 0.2,
        head_dropout: float = 0.5,
        fusion: bool = False,
        clip_samples: int | None = None,
        pad_mode: PadMode = "repeatpad",
    ):
        super().__init__()
        self.variant = variant
        if frontend is None:
            frontend = LogMel(mel_scale="htk", norm=None) if fusion else LogMel()
        self.frontend = frontend
        self.fusion = fusion
        if fusion and clip_samples is None:
            clip_samples = 480000
        self.batcher = ClipBatcher(clip_samples, pad_mode, fusion) if clip_samples is not None else None
        divisor = self.WIDTH_DIVISOR[variant]
        channels = [max(c // divisor, 4) for c in self.SPEC.channels]
        self.pools = self.SPEC.pools
        self.dropout = dropout
        self.head_dropout = head_dropout
        self.bn0 = nn.BatchNorm2d(self.frontend.n_mels)
        in_channels = 1
        for index, out_channels in enumerate(channels, start=1):
            setattr(self, f"conv_block{index}", self.SPEC.block(in_channels, out_channels))
            in_channels = out_channels
        self._num_blocks = len(channels)
        if fusion:
            self.mel_conv2d = nn.Sequential(
                nn.Conv2d(1, channels[0], kernel_size=5, stride=(6, 2), padding=2),
                nn.BatchNorm2d(channels[0]),
                nn.ReLU(inplace=True),
            )
            self.fusion_model = AttentionalFeatureFusion(channels[0])
        self._width = in_channels
        self.fc1 = nn.Linear(in_channels, in_channels)
        self.fc_audioset = nn.Linear(in_channels, classes_num)
        nn.init.xavier_uniform_(self.fc1.weight)
        nn.init.zeros_(self.fc1.bias)
        nn.init.xavier_uniform_(self.fc_audioset.weight)
        nn.init.zeros_(self.fc_audioset.bias)
        self.spec_augment = spec_augment

    @property
    def output_dim(self) -> int:
        return self._width

    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

    def spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform ``[B, T]`` (or ``[B, C, T]``, averaged) -> normalised log-mel ``[B, 1, frames, mels]``."""
        if waveform.dim() == 3:
            waveform = waveform.mean(dim=1)
        x = self.frontend(waveform).transpose(-1, -2).unsqueeze(1)  # [B, 1, T, F]
        return self.bn0(x.transpose(1, 3)).transpose(1, 3)

    def forward_spectrogram(self, x: torch.Tensor, longer: torch.Tensor | None = None) -> EncoderOutput:
        """Run the CNN on a normalised log-mel ``[B, C, frames, mels]`` (C = 4 views with fusion)."""
        if self.training and self.spec_augment:
            x = apply_spec_augment(x)
        features = []
        for index, pool in enumerate(self.pools, start=1):
            if index == 1 and self.fusion:
                x = self._fused_first_block(x, longer, pool)
            else:
                x = getattr(self, f"conv_block{index}")(x, pool)
            x = F.dropout(x, p=self.dropout, training=self.training)
            features.append(x)
        x = x.mean(dim=3)  # over mel bins -> [B, C, T']
        frames = x.transpose(1, 2)
        x = x.amax(dim=2) + x.mean(dim=2)
        x = F.dropout(x, p=self.head_dropout, training=self.training)
        hidden = F.relu(self.fc1(x))
        embedding = F.dropout(hidden, p=self.head_dropout, training=self.training)
        return EncoderOutput(
            embedding=embedding,
            features=features,
            tokens=frames,
            extras={"clipwise_logits": self.fc_audioset(hidden)},
        )

    def _fused_first_block(self, x: torch.Tensor, longer: torch.Tensor | None, pool: int) -> torch.Tensor:
        if longer is None:
            longer = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if self.training and not bool(longer.any()):
            # As the reference: fuse one random clip of an all-short batch so the fusion branch
            # trains. (The reference also does this in eval mode; clapkit keeps eval deterministic.)
            longer = longer.clone()
            longer[torch.randint(x.shape[0], (1,))] = True
        out = self.conv_block1(x[:, :1], pool)
        if bool(longer.any()):
            index = torch.nonzero(longer).squeeze(1)
            local = x[index, 1:]
            b, views, t, f = local.shape
            local = self.mel_conv2d(local.reshape(b * views, 1, t, f))
            local = local.view(b, views, *local.shape[1:]).permute(0, 2, 1, 3, 4).flatten(2, 3)
            rows = out.shape[-2]
            local = F.pad(local, (0, 0, 0, rows - local.shape[-2])) if local.shape[-2] < rows else local[..., :rows, :]
            out = out.index_put((index,), self.fusion_model(out[index], local))
        return out

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None,
                crop_starts: torch.Tensor | None = None) -> EncoderOutput:
        """Embed waveforms ``[B, T]`` (or ``[B, C, T]``); see ``clip_samples`` and ``fusion``.

        Args:
            waveform: the clips, zero-padded when ``lengths`` is given.
            lengths: valid samples per clip (used when ``clip_samples`` is set).
            crop_starts: ``[B, 3]`` fusion crop start frames for long clips.
        """
        if self.batcher is None:
            return self.forward_spectrogram(self.spectrogram(waveform))
        batch = self.batcher(self.frontend, waveform, lengths, crop_starts, self.training)
        return self.forward_mel(batch.mel, batch.longer)

    def forward_mel(self, mel: torch.Tensor, longer: torch.Tensor | None = None) -> EncoderOutput:
        """Run on a log-mel ``[B, C, frames, n_mels]`` from the front end (batch norm over mel
        bins, then the CNN), as HTSAT's method of the same name."""
        x = self.bn0(mel.transpose(1, 3)).transpose(1, 3)
        return self.forward_spectrogram(x, longer)


class Cnn14(PANNEncoder):
    """PANN Cnn14: six double-conv blocks 64..2048, embedding width 2048 (base)."""

    SPEC = PANNSpec(ConvBlock, (64, 128, 256, 512, 1024, 2048), (2, 2, 2, 2, 2, 1))


class Cnn10(PANNEncoder):
    """PANN Cnn10 as in LAION-CLAP: five double-conv blocks 64..1024, embedding width 1024."""

    SPEC = PANNSpec(ConvBlock, (64, 128, 256, 512, 1024), (2, 2, 2, 2, 2))


class Cnn6(PANNEncoder):
    """PANN Cnn6: four single 5x5 conv blocks 64..512, embedding width 512."""

    SPEC = PANNSpec(ConvBlock5x5, (64, 128, 256, 512), (2, 2, 2, 2))
