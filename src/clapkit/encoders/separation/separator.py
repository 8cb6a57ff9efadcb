"""CLAPSep: query-conditioned target sound extraction as encoder -> decoder -> mask -> ISTFT.

The mixture (32 kHz) is analysed by an STFT; the same mixture, resampled to the encoder's
rate (48 kHz for HTSAT), goes through a LoRA-tuned copy of the CLAP audio encoder whose
multi-level features feed a FiLM-conditioned decoder; MaskNet turns the decoder output and
the mixture magnitude into a sigmoid mask; the estimate is ``relu(mask * |X|)`` with the
mixture phase. Every piece is a module chosen by configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clapkit.audio import resample
from clapkit.encoders.base import FeatureAudioEncoder
from clapkit.encoders.separation.decoder import SeparationDecoder
from clapkit.encoders.separation.lora import DEFAULT_TARGETS, apply_lora
from clapkit.encoders.separation.masknet import MaskNet
from clapkit.encoders.separation.stft import STFT, Spectrum


@dataclass
class SeparationOutput:
    """What the separator returns.

    Attributes:
        waveform: ``[B, T]`` estimate of the queried source at the mixture rate.
        mask: ``[B, frames, bins]`` sigmoid magnitude mask.
        magnitude: ``[B, frames, bins]`` estimated magnitude ``relu(mask * |X|)``.
    """

    waveform: torch.Tensor
    mask: torch.Tensor
    magnitude: torch.Tensor


class CLAPSep(nn.Module):
    """The separation network (without the query network, which only supplies the condition).

    Args:
        decoder: a :class:`~clapkit.encoders.separation.decoder.SeparationDecoder`
            (:class:`PatchExpandDecoder`, :class:`UNetDecoder`, ...).
        masknet: the mask head.
        encoder: an audio encoder returning multi-level ``features`` (HTSAT). ``None`` defers
            it: :class:`~clapkit.lightning_modules.separation.SeparationTask` then copies the
            query network's audio encoder, as CLAPSep does.
        stft: mixture STFT (defaults to n_fft 1024, hop 320, Hann).
        sample_rate: mixture rate in Hz.
        lora_rank: LoRA rank on the encoder's attention projections; 0 freezes the encoder
            entirely.
        lora_alpha: LoRA alpha (scale ``alpha / rank``; CLAPSep: 1, i.e. 1/16 at rank 16).
        lora_targets: regular expression over the encoder's module names to adapt.
        train_lora_bias: also train the biases of the adapted layers (CLAPSep does).
    """

    def __init__(
        self,
        decoder: SeparationDecoder,
        masknet: MaskNet,
        encoder: nn.Module | None = None,
        stft: STFT | None = None,
        sample_rate: int = 32000,
        lora_rank: int = 16,
        lora_alpha: float = 1.0,
        lora_targets: str = DEFAULT_TARGETS,
        train_lora_bias: bool = True,
    ):
        super().__init__()
        self.decoder = decoder
        self.masknet = masknet
        self.stft = stft or STFT()
        self.sample_rate = sample_rate
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.lora_targets = lora_targets
        self.train_lora_bias = train_lora_bias
        self.encoder: nn.Module | None = None
        if encoder is not None:
            self.attach_encoder(encoder)

    def attach_encoder(self, encoder: nn.Module) -> None:
        """Install ``encoder``: freeze it and add LoRA adapters (when ``lora_rank > 0``)."""
        encoder.requires_grad_(False)
        if isinstance(encoder, FeatureAudioEncoder):
            # Decoder frames must line up with STFT frames: pad the spectrogram, never stretch it.
            encoder.align_frames_by_padding()
        if self.lora_rank > 0:
            encoder = apply_lora(encoder, self.lora_rank, self.lora_alpha, self.lora_targets,
                                 train_bias=self.train_lora_bias)
        self.encoder = encoder
        self.encoder.eval()

    def train(self, mode: bool = True) -> CLAPSep:
        super().train(mode)
        if self.encoder is not None:
            # The tuned encoder stays in eval mode (CLAPSep): its batch norm keeps the CLAP
            # statistics and only the LoRA weights move.
            self.encoder.eval()
        return self

    @property
    def window_seconds(self) -> float | None:
        """The longest mixture (seconds) the encoder takes: its ``clip_samples`` at its rate."""
        samples = getattr(self.encoder, "clip_samples", None)
        rate = getattr(self.encoder, "sample_rate", None)
        if not samples or not rate:
            return None
        return float(samples) / float(rate)

    @property
    def encoder_rate(self) -> int:
        return int(self.encoder.sample_rate)

    def encode(self, mixture: torch.Tensor) -> list[torch.Tensor]:
        """Multi-level encoder features of ``mixture`` (``[B, T]`` at :attr:`sample_rate`)."""
        if self.encoder is None:
            raise RuntimeError("CLAPSep has no encoder; pass one or attach the query network's copy")
        with torch.autocast(device_type=mixture.device.type, enabled=False):
            wave = resample(mixture.float(), self.sample_rate, self.encoder_rate)
        if isinstance(self.encoder, FeatureAudioEncoder):
            # Whole mixture, no window fitting: its frames are padded up to the encoder's image.
            out = self.encoder.forward_mel(self.encoder.mel(wave))
        else:
            out = self.encoder(wave)
        if not out.features:
            raise RuntimeError(f"{type(self.encoder).__name__} returned no multi-level features")
        return list(out.features)

    def forward(self, mixture: torch.Tensor, condition: torch.Tensor) -> SeparationOutput:
        """Extract the source described by ``condition [B, C]`` from ``mixture [B, T]``."""
        spec = self.stft.analyze(mixture)
        features = self.encode(mixture)
        frames = self.decoder(features, condition.to(features[-1].dtype))
        mask = self.masknet(spec.magnitude, frames, condition).float()
        return self.reconstruct(spec, mask)

    def reconstruct(self, spec: Spectrum, mask: torch.Tensor) -> SeparationOutput:
        """``relu(mask * |X|)`` with the mixture phase, back to a waveform."""
        magnitude = F.relu(mask * spec.magnitude)
        waveform = self.stft.synthesize(magnitude, spec.phase, spec.length)
        return SeparationOutput(waveform=waveform, mask=mask, magnitude=magnitude)
