"""ESResNeXt-FBSP: AudioCLIP's audio tower (ResNeXt-50 32x4d with attention over FBSP spectrograms).

The waveform goes through the learnable FBSP front end (:mod:`clapkit.encoders.fbsp`): 1025
one-sided bins, the top 2 dropped, three bands of 341 bins stacked as the three "colour"
channels of an image ``[3, 341, frames]``. A ResNeXt trunk with *parallel attention blocks*
reads that image: next to each stage a small branch (adaptive max-pool to the stage's output
size, depthwise conv along frequency ``(3, 1)`` or time ``(1, 5)``, pointwise conv, BatchNorm,
sigmoid) computes a gate from the stage's *input* that multiplies the stage's output; a fifth
gate (``(3, 5)`` kernel) multiplies the globally pooled features. ``fc`` maps 2048 -> 1024.

Multi-channel audio: every channel is encoded separately and the pooled features are summed
before ``fc`` (the reference loops over channels; here channels are folded into the batch, which
is the same in eval mode; in training BatchNorm sees all channels' statistics together).

Input-scale convention: clapkit waveforms are floats in [-1, 1]. The reference was trained on
int16-range values and maps them to unit range with ``(x + 32768) * 2 / 65535 - 1``. The
encoder multiplies its input by ``input_scale`` (32768 by default, so [-1, 1] audio lands in
int16 range) and then applies the reference's map, so official checkpoints see the numbers
they were trained on. Pass ``input_scale=1.0`` to feed int16-range values directly.

Module names follow the reference (``conv1``, ``bn1``, ``layer{1-4}``, ``att{1-5}``, ``fc``;
front end ``fbsp.{m,fb,fc,bias}`` and ``window`` live under ``frontend.``), so official
checkpoints map key for key (see :mod:`clapkit.interop.audioclip`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

from clapkit.encoders.base import AudioEncoder, EncoderOutput
from clapkit.encoders.fbsp import FBSPSpectrogram
from clapkit.io.checkpoint import module_state, read_state_dict

log = logging.getLogger(__name__)

# where the audio head sits in the files `weights` accepts, most specific first
_AUDIO_PREFIXES = ("towers.audio.encoder.", "model.towers.audio.encoder.", "audio.", "encoder.")


def load_audio_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """ESResNeXt-FBSP weights from a local file, keyed like :class:`ESResNeXtFBSP`.

    Accepts safetensors or ``torch.load``-able files (``weights_only=True``): the official
    ``ESRNXFBSP.pt`` (bare keys) and ``AudioCLIP-*.pt`` (``audio.*``), clapkit Lightning
    checkpoints and native ``model.safetensors`` (``towers.audio.encoder.*`` or ``encoder.*``).
    The reference's ``fbsp.*`` and ``window`` keys move under ``frontend.``.
    """
    state = module_state(read_state_dict(path, "audio weights"), _AUDIO_PREFIXES, "conv1.")
    if "conv1.weight" not in state:
        raise ValueError(f"{path}: no ESResNeXt-FBSP audio weights found (no conv1.weight under "
                         f"{', '.join(repr(p) for p in _AUDIO_PREFIXES)} or at the top level)")
    out = {}
    for key, value in state.items():
        if key.startswith("fbsp.") or key == "window":
            key = "frontend." + key
        out[key] = value
    return out


def _mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    return [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
            if k in own and v.shape != own[k].shape]


class Attention2d(nn.Module):
    """Parallel attention gate: ``sigmoid(BN(pointwise(depthwise(maxpool_to(x, size)))))``.

    Args:
        in_channels: channels of the stage input.
        out_channels: channels of the stage output the gate multiplies.
        kernel_size: depthwise kernel (``(3, 1)`` along frequency, ``(1, 5)`` along time).
        padding: depthwise padding keeping the size.
        num_kernels: depthwise multiplier.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int],
                 padding: tuple[int, int], num_kernels: int = 1):
        super().__init__()
        self.conv_depth = nn.Conv2d(in_channels, in_channels * num_kernels, kernel_size,
                                    padding=padding, groups=in_channels)
        self.conv_point = nn.Conv2d(in_channels * num_kernels, out_channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
        x = F.adaptive_max_pool2d(x, size)
        return torch.sigmoid(self.bn(self.conv_point(self.conv_depth(x))))


@dataclass(frozen=True)
class ESResNeXtPreset:
    """Geometry of one ESResNeXt-FBSP size."""

    layers: tuple[int, int, int, int]
    planes: tuple[int, int, int, int]
    stem_width: int
    groups: int
    width_per_group: int
    n_fft: int
    hop_length: int
    win_length: int
    output_dim: int


PRESETS: dict[str, ESResNeXtPreset] = {
    # AudioCLIP: ResNeXt-50 32x4d, FBSP n_fft 2048 / hop 561 / win 1654, fc 2048 -> 1024.
    "base": ESResNeXtPreset((3, 4, 6, 3), (64, 128, 256, 512), 64, 32, 4, 2048, 561, 1654, 1024),
    # tests and CPU experiments: one block per stage, 1/8 width, short frames.
    "tiny": ESResNeXtPreset((1, 1, 1, 1), (8, 16, 32, 64), 8, 4, 8, 256, 128, 200, 64),
}

# attention gate (kernel, padding) after each stage: frequency, time, frequency, time.
_GATES = (((3, 1), (1, 0)), ((1, 5), (0, 2)), ((3, 1), (1, 0)), ((1, 5), (0, 2)))


class ESResNeXtFBSP(AudioEncoder):
    """AudioCLIP's ESResNeXt-FBSP audio encoder.

    Args:
        variant: ``base`` (AudioCLIP) or ``tiny`` (tests).
        sample_rate: expected input rate (44.1 kHz in AudioCLIP).
        output_dim: width of ``fc`` (the embedding); defaults to the preset (1024 / 64).
            Set it to the number of classes to use ``fc`` as a tagger head (the reference
            AudioSet ESResNeXt uses 527).
        n_fft: FBSP width; defaults to the preset.
        hop_length: frame hop; defaults to the preset.
        win_length: frame length; defaults to the preset.
        window: frame window (``blackmanharris`` in the reference).
        normalized: normalised FBSP filters.
        apply_attention: use the parallel attention gates (AudioCLIP: yes).
        input_scale: multiplier bringing the input into int16 range before the reference's
            int16 -> [-1, 1] map; 32768 for clapkit's [-1, 1] waveforms, 1.0 for int16-range
            input (see the module docstring).
        normalize_fbsp_grads: rescale FBSP parameter gradients as the reference does.
        weights: optional local file to initialise from (see :func:`load_audio_weights`):
            an official ``ESRNXFBSP.pt`` / ``AudioCLIP-*.pt``, a clapkit Lightning checkpoint
            or a native ``model.safetensors``. An ``fc`` of another width (the 527-class
            tagger head under a 1024-d embedding) is left at its initialisation, as the
            reference does when it stacks AudioCLIP on the AudioSet tagger.
    """

    def __init__(
        self,
        variant: Literal["base", "tiny"] = "base",
        sample_rate: int = 44100,
        output_dim: int | None = None,
        n_fft: int | None = None,
        hop_length: int | None = None,
        win_length: int | None = None,
        window: Literal["blackmanharris", "hann", "boxcar"] = "blackmanharris",
        normalized: bool = True,
        apply_attention: bool = True,
        input_scale: float = 32768.0,
        normalize_fbsp_grads: bool = True,
        weights: str | None = None,
    ):
        super().__init__()
        preset = PRESETS[variant]
        self.variant = variant
        self._sample_rate = sample_rate
        self.input_scale = input_scale
        self.apply_attention = apply_attention
        self.frontend = FBSPSpectrogram(
            n_fft=n_fft or preset.n_fft,
            hop_length=hop_length or preset.hop_length,
            win_length=win_length or preset.win_length,
            window=window,
            normalized=normalized,
            num_bands=3,
            normalize_grads=normalize_fbsp_grads,
        )
        self.groups = preset.groups
        self.base_width = preset.width_per_group
        self.inplanes = preset.stem_width
        self.conv1 = nn.Conv2d(3, preset.stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(preset.stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for index, (blocks, planes) in enumerate(zip(preset.layers, preset.planes), start=1):
            in_channels = self.inplanes
            setattr(self, f"layer{index}", self._make_layer(planes, blocks, stride=1 if index == 1 else 2))
            if apply_attention:
                (kernel, padding) = _GATES[index - 1]
                setattr(self, f"att{index}", Attention2d(in_channels, self.inplanes, kernel, padding))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        width = self.inplanes
        if apply_attention:
            self.att5 = Attention2d(width, width, (3, 5), (1, 2))
        self._output_dim = output_dim or preset.output_dim
        self.fc = nn.Linear(width, self._output_dim)
        self._init_weights()
        if weights is not None:
            self.load_weights(weights)

    def load_weights(self, path: str | os.PathLike) -> list[str]:
        """Initialise from a local file; returns the keys left at their initialisation (``fc``)."""
        state = load_audio_weights(path)
        own = self.state_dict()
        skipped = [k for k in state if k.startswith("fc.") and k in own and state[k].shape != own[k].shape]
        state = {k: v for k, v in state.items() if k not in skipped}
        mismatched = _mismatch(own, state)
        if mismatched:
            raise ValueError(f"{path}: audio weights do not fit ESResNeXtFBSP({self.variant!r}): {mismatched[:5]}")
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked") and k not in skipped]
        if missing or unexpected:
            raise ValueError(f"{path}: audio weights do not fit ESResNeXtFBSP({self.variant!r}): "
                             f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        if skipped:
            log.warning("%s: %s has another width; left at its initialisation", path, ", ".join(skipped))
        return skipped

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_channels = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = out_channels
        layers += [Bottleneck(self.inplanes, planes, groups=self.groups, base_width=self.base_width)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def output_dim(self) -> int:
        return self._output_dim

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    def spectrogram(self, waveform: torch.Tensor):
        """Waveform ``[B, T]`` / ``[B, C, T]`` in the ``input_scale`` convention -> FBSP output."""
        int16_range = waveform.float() * self.input_scale
        unit = (int16_range + 32768.0) * (2.0 / 65535.0) - 1.0
        return self.frontend(unit)

    def forward_spectrogram(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``[N, 3, H, W]`` dB image -> pooled features ``[N, width]`` and per-stage maps."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(image))))
        features = []
        for index in range(1, 5):
            stage = getattr(self, f"layer{index}")
            if self.apply_attention:
                gate_input = x
                x = stage(x)
                x = x * getattr(self, f"att{index}")(gate_input, x.shape[-2:])
            else:
                x = stage(x)
            features.append(x)
        pooled = self.avgpool(x)
        if self.apply_attention:
            pooled = pooled * self.att5(x, pooled.shape[-2:])
        return torch.flatten(pooled, 1), features

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        spec = self.spectrogram(waveform)
        log_power = spec.log_power  # [B, C, 3, H, W]
        batch, channels = log_power.shape[:2]
        pooled, features = self.forward_spectrogram(log_power.flatten(0, 1))
        pooled = pooled.view(batch, channels, -1).sum(1)
        if channels > 1:
            features = [f.view(batch, channels, *f.shape[1:]).sum(1) for f in features]
        return EncoderOutput(
            embedding=self.fc(pooled),
            features=features,
            extras={"aux_loss": spec.regularizer, "pooled": pooled},
        )
