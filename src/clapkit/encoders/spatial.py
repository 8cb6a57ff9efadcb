"""Encoders for spatial audio-visual alignment: FOA features, audio/crop CNNs, view transformer.

- :class:`FOAFeatures` turns ambiX FOA ``[B, 4, T]`` into 4 log-mel channels (W, Y, Z, X) and,
  optionally, 3 mel-projected intensity-vector channels (x, y, z): a 7-channel map.
- :class:`SpatialAudioEncoder` is a small CNN over those maps (4 or 7 channels).
- :class:`CropImageEncoder` is a small CNN over perspective crops of a 360 frame.
- :class:`ViewTransformer` lets the K views of one clip see each other (a set transformer:
  no positional code, so it is permutation-equivariant and cannot match views by index).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from clapkit.audio.foa import encode_mono, energy_density, intensity_vector
from clapkit.encoders.base import AudioEncoder, EncoderOutput, ImageEncoder
from clapkit.encoders.frontends import fp32
from clapkit.io.checkpoint import read_state_dict
from clapkit.utils import deps


class FOAFeatures(nn.Module):
    """FOA waveform ``[..., 4, T]`` -> ``[..., C, n_mels, frames]`` with ``C`` = 7 (or 4).

    Channels 0-3 are log-mel power (dB) of W, Y, Z, X. Channels 4-6 are the active intensity
    ``Re{conj(W) [X, Y, Z]}`` summed over each mel band and divided by the band's energy
    density ``(|W|^2 + |X|^2 + |Y|^2 + |Z|^2) / 2``: an energy-weighted unit direction, which
    is exactly the source direction for one plane wave and shrinks towards 0 when the band is
    diffuse. One STFT serves both, in fp32 even under autocast.

    Args:
        sample_rate: input rate in Hz.
        n_fft: FFT size (periodic Hann window of the same length).
        hop_length: hop in samples.
        n_mels: mel bands (HTK scale, unnormalised triangles).
        f_min: lowest mel edge in Hz.
        f_max: highest mel edge in Hz (Nyquist when ``None``).
        intensity: append the 3 intensity-vector channels.
        amin: floor of the power before the log and of the energy before dividing.
    """

    def __init__(
        self,
        sample_rate: int = 24000,
        n_fft: int = 512,
        hop_length: int = 240,
        n_mels: int = 64,
        f_min: float = 50.0,
        f_max: float | None = None,
        intensity: bool = True,
        amin: float = 1e-10,
    ):
        super().__init__()
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.intensity = intensity
        self.amin = amin
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        fbanks = deps.torchaudio().functional.melscale_fbanks(
            n_freqs=n_fft // 2 + 1, f_min=f_min, f_max=f_max or sample_rate / 2, n_mels=n_mels,
            sample_rate=sample_rate, norm=None, mel_scale="htk",
        )
        self.register_buffer("fbanks", fbanks, persistent=False)  # [F, M]

    @property
    def channels(self) -> int:
        return 7 if self.intensity else 4

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` (centred STFT)."""
        return num_samples // self.hop_length + 1

    @fp32
    def forward(self, foa: torch.Tensor) -> torch.Tensor:
        if foa.shape[-2] != 4:
            raise ValueError(f"FOAFeatures expects [..., 4, T] ambiX input, got {tuple(foa.shape)}")
        lead = foa.shape[:-2]
        spec = torch.stft(foa.reshape(-1, foa.shape[-1]), self.n_fft, self.hop_length, window=self.window,
                          center=True, pad_mode="reflect", return_complex=True)
        spec = spec.reshape(-1, 4, *spec.shape[-2:])  # [N, 4, F, frames]
        power = spec.real**2 + spec.imag**2
        mel = torch.einsum("ncft,fm->ncmt", power, self.fbanks)
        channels = [10.0 * torch.log10(mel.clamp_min(self.amin))]
        if self.intensity:
            active = torch.einsum("ncft,fm->ncmt", intensity_vector(spec), self.fbanks)
            energy = torch.einsum("nft,fm->nmt", energy_density(spec), self.fbanks)
            channels.append(active / energy.clamp_min(self.amin)[:, None])
        out = torch.cat(channels, 1)
        return out.reshape(*lead, *out.shape[1:])


def load_encoder_state(path: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """An encoder's state dict from a Lightning checkpoint (entries under ``prefix``) or safetensors.

    Raises:
        ValueError: naming the file when it holds no entry under ``prefix``.
    """
    path = Path(path)
    state = read_state_dict(path, "encoder weights")
    if path.suffix == ".safetensors":
        return state
    picked = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if not picked:
        raise ValueError(f"{path}: no weights under '{prefix}' (is it a SpatialAlignmentTask checkpoint?)")
    return picked


def _conv_block(cin: int, cout: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(convs):
        layers += [nn.Conv2d(cin if index == 0 else cout, cout, 3, padding=1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class ConvStack(nn.Module):
    """VGG-style blocks (``convs`` 3x3 convs + BN + ReLU, then 2x2 average pooling) -> feature maps.

    Args:
        in_channels: input channels (normalised per channel by a leading BatchNorm, which puts
            dB log-mels and unit intensity vectors on one scale).
        widths: output channels of each block.
        convs: convolutions per block.
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...], convs: int = 2):
        super().__init__()
        self.input_norm = nn.BatchNorm2d(in_channels)
        chans = (in_channels, *widths)
        self.blocks = nn.ModuleList(_conv_block(a, b, convs) for a, b in zip(chans[:-1], chans[1:]))
        self.pool = nn.AvgPool2d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.input_norm(x)
        features = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            features.append(x)
            if index < len(self.blocks) - 1:
                x = self.pool(x)
        return features


@dataclass(frozen=True)
class _CNNPreset:
    widths: tuple[int, ...]
    convs: int = 2


_AUDIO_PRESETS: dict[str, _CNNPreset] = {
    "tiny": _CNNPreset(widths=(16, 32, 64), convs=1),
    "small": _CNNPreset(widths=(32, 64, 128, 256)),
    "base": _CNNPreset(widths=(64, 128, 256, 512)),
}


class SpatialAudioEncoder(AudioEncoder):
    """A small CNN over FOA features; embedding = time-max + time-mean of the freq-averaged map.

    Args:
        variant: width preset (``tiny`` for tests, ``small``, ``base``).
        sample_rate: input rate in Hz.
        intensity: 7-channel input (log-mel + intensity vector) or 4-channel log-mel only.
        n_fft: FFT size of the front end.
        hop_length: hop of the front end.
        n_mels: mel bands of the front end.
        f_min: lowest mel edge in Hz.
        f_max: highest mel edge in Hz (Nyquist when ``None``).
        weights: optional checkpoint to start from: a Lightning checkpoint of a
            ``SpatialAlignmentTask`` (its ``audio_encoder.*`` entries) or a ``.safetensors``
            file of this encoder's state dict; loaded with ``weights_only=True``. This is how a
            linear probe picks up a trained encoder from YAML.
    """

    def __init__(
        self,
        variant: Literal["tiny", "small", "base"] = "small",
        sample_rate: int = 24000,
        intensity: bool = True,
        n_fft: int = 512,
        hop_length: int = 240,
        n_mels: int = 64,
        f_min: float = 50.0,
        f_max: float | None = None,
        weights: str | None = None,
    ):
        super().__init__()
        preset = _AUDIO_PRESETS[variant]
        self.frontend = FOAFeatures(sample_rate, n_fft, hop_length, n_mels, f_min, f_max, intensity=intensity)
        self.body = ConvStack(self.frontend.channels, preset.widths, preset.convs)
        self._dim = preset.widths[-1]
        self._sample_rate = sample_rate
        if weights is not None:
            self.load_state_dict(load_encoder_state(weights, prefix="audio_encoder."))

    @property
    def output_dim(self) -> int:
        return self._dim

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        """Embed ``[B, 4, T]`` ambiX FOA; mono ``[B, T]`` is encoded as a frontal plane wave.

        The mono path lets a linear probe score the encoder on ordinary labelled sets.
        """
        if waveform.dim() == 2:
            waveform = encode_mono(waveform, 0.0, 0.0)
        features = self.body(self.frontend(waveform))
        deepest = features[-1].mean(2)  # [B, C, frames]
        embedding = deepest.amax(-1) + deepest.mean(-1)
        return EncoderOutput(embedding=embedding, features=features, tokens=deepest.transpose(1, 2))


_IMAGE_PRESETS: dict[str, tuple[_CNNPreset, int]] = {
    "tiny": (_CNNPreset(widths=(16, 32, 64), convs=1), 32),
    "small": (_CNNPreset(widths=(32, 64, 128, 256)), 64),
    "base": (_CNNPreset(widths=(64, 128, 256, 512)), 112),
}


class CropImageEncoder(ImageEncoder):
    """A small CNN over perspective crops ``[B, 3, S, S]``; embedding = global average pool.

    Args:
        variant: width preset and default crop size (``tiny`` 32 px, ``small`` 64, ``base`` 112).
        image_size: crop side in pixels (overrides the preset's).
    """

    def __init__(self, variant: Literal["tiny", "small", "base"] = "small", image_size: int | None = None):
        super().__init__()
        preset, size = _IMAGE_PRESETS[variant]
        self._size = image_size or size
        self.body = ConvStack(3, preset.widths, preset.convs)
        self._dim = preset.widths[-1]

    @property
    def output_dim(self) -> int:
        return self._dim

    @property
    def image_size(self) -> int:
        return self._size

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        features = self.body(images)
        return EncoderOutput(embedding=features[-1].mean((-2, -1)), features=features)


_VIEW_PRESETS: dict[str, tuple[int, int]] = {"tiny": (1, 2), "small": (2, 4), "base": (2, 8)}


class ViewTransformer(nn.Module):
    """Set transformer across the K views of a clip: ``[B, K, D] -> [B, K, D]``.

    Pre-norm transformer layers without positional encoding, so the output for a view depends
    on the other views as a set. Give it to ``SpatialAlignmentTask`` as a callable of ``dim``.

    Args:
        dim: feature width (the encoder's ``output_dim``).
        variant: ``(layers, heads)`` preset: ``tiny`` (1, 2), ``small`` (2, 4), ``base`` (2, 8).
        dropout: dropout inside the layers.
    """

    def __init__(self, dim: int, variant: Literal["tiny", "small", "base"] = "small", dropout: float = 0.1):
        super().__init__()
        layers, heads = _VIEW_PRESETS[variant]
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.norm(self.encoder(views))
