"""Encoder contracts: small ABCs every tower implements, and the typed output they return.

Encoders are plain ``nn.Module``s (no Lightning). A LightningModule only relies on what is
declared here: ``output_dim`` for every encoder, ``sample_rate`` for audio, and ``forward``
returning an :class:`EncoderOutput`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


class Extras(dict):
    """``EncoderOutput.extras``: a dict whose costly entries may be computed on first access.

    A value set through :meth:`lazy` is a function of no arguments that runs when the entry is
    first read (``[]``, ``get``, ``items``, ``values``) and is then stored. HTSAT's AudioSet
    head is one: an embedding never reads it, and it was 5% of a CPU embedding.
    """

    _pending: dict[str, Callable[[], Any]]

    def lazy(self, key: str, compute: Callable[[], Any]) -> None:
        """Set ``key`` to ``compute()``, run when first read."""
        self.__dict__.setdefault("_pending", {})[key] = compute
        super().__setitem__(key, None)

    def _resolve(self, key: str) -> None:
        pending = self.__dict__.get("_pending")
        if pending and key in pending:
            super().__setitem__(key, pending.pop(key)())

    def __getitem__(self, key):
        self._resolve(key)
        return super().__getitem__(key)

    def __setitem__(self, key, value) -> None:
        self.__dict__.get("_pending", {}).pop(key, None)
        super().__setitem__(key, value)

    def get(self, key, default=None):
        return self[key] if key in self else default

    def pop(self, key, *default):
        self._resolve(key)
        return super().pop(key, *default)

    def _resolve_all(self) -> None:
        for key in list(self.__dict__.get("_pending", ())):
            self._resolve(key)

    def items(self):
        self._resolve_all()
        return super().items()

    def values(self):
        self._resolve_all()
        return super().values()

    def __reduce__(self):
        # Pickles and deep copies hold the computed values, as a plain dict (no closures).
        self._resolve_all()
        return (dict, (dict(super().items()),))

    def __iter__(self):
        # Overriding iteration makes dict(extras) and {**extras} read through __getitem__.
        return super().__iter__()


@dataclass
class EncoderOutput:
    """What every encoder returns.

    Attributes:
        embedding: pooled representation ``[B, output_dim]`` (before any projection head).
        features: optional multi-level features, shallow to deep (for example HTSAT's patch
            embedding and each stage, as ``[B, C, H, W]`` maps); separation decoders read them.
        tokens: optional per-token or per-frame sequence ``[B, L, C]``.
        extras: anything model specific (fusion flags, framewise logits, auxiliary losses).
    """

    embedding: torch.Tensor
    features: list[torch.Tensor] | None = None
    tokens: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=Extras)


class Encoder(nn.Module, ABC):
    """Common base: every encoder knows the width of the embedding it returns."""

    @property
    @abstractmethod
    def output_dim(self) -> int:
        """Width of ``EncoderOutput.embedding``."""


class AudioEncoder(Encoder):
    """An audio tower: waveforms ``[B, T]`` (or ``[B, C, T]``) at ``sample_rate`` in, embedding out.

    Front ends (STFT, mel, log) live inside the encoder so they run batched on the accelerator.
    ``lengths`` gives each waveform's valid sample count when a batch is padded.
    """

    @property
    @abstractmethod
    def sample_rate(self) -> int:
        """Sample rate the encoder expects, in Hz."""

    @abstractmethod
    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput: ...


class FeatureAudioEncoder(AudioEncoder):
    """An audio encoder a separator can build on (CLAPSep), with its steps exposed one by one.

    The contract CLAPSep relies on, instead of probing attributes:

    - ``frontend``: the log-mel front end module (``waveform [B, T] -> [B, n_mels, frames]``);
    - :meth:`mel`: the whole waveform's log-mel ``[B, 1, frames, n_mels]``, no window fitting;
    - :meth:`forward_mel`: the encoder from a log-mel on, returning multi-level ``features``
      (shallow to deep) in its :class:`EncoderOutput`;
    - :meth:`align_frames_by_padding`: from now on pad the frames up to the encoder's input
      (never stretch them), so decoder frames line up with the mixture's STFT frames.

    ``forward(waveform)`` is ``forward_mel`` of the window-fitted log-mel.
    """

    frontend: nn.Module

    def mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` waveforms at :attr:`sample_rate` -> log-mel ``[B, 1, frames, n_mels]``."""
        return self.frontend(waveform).transpose(-1, -2).unsqueeze(1)

    @abstractmethod
    def forward_mel(self, mel: torch.Tensor, longer: torch.Tensor | None = None) -> EncoderOutput:
        """Run on a log-mel ``[B, C, frames, n_mels]`` (``C`` = 4 views with fusion)."""

    def align_frames_by_padding(self) -> None:
        """Pad rather than resize the frame axis (no-op for encoders that never resize)."""


class TextEncoder(Encoder):
    """A text tower: a list of strings (or tokens from :meth:`tokenize`) in, embedding out."""

    @abstractmethod
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Turn strings into the tensors ``forward`` accepts (CPU tensors)."""

    @abstractmethod
    def forward(self, texts: list[str] | dict[str, torch.Tensor]) -> EncoderOutput: ...


class ImageEncoder(Encoder):
    """An image tower: ``[B, 3, H, W]`` normalised images in, embedding out."""

    @property
    def image_size(self) -> int:
        """Square input resolution the encoder expects."""
        return 224

    @abstractmethod
    def forward(self, images: torch.Tensor) -> EncoderOutput: ...


def module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer (CPU for an empty module)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")
