"""MaskNet: from decoder features and the mixture magnitude to a sigmoid magnitude mask."""

from __future__ import annotations

import torch
from torch import nn

from clapkit.encoders.separation.film import FiLM


class MaskNet(nn.Module):
    """Frame-wise transformer that predicts a ``[0, 1]`` magnitude mask.

    The mixture magnitude is batch-normalised per frequency bin, concatenated with the
    decoder's frame features, projected to ``d_model``, passed through a post-norm
    transformer encoder and mapped to one mask value per bin. CLAPSep: 64 decoder features
    + 513 bins -> 640 -> 3 layers, 8 heads -> 513.

    Args:
        num_bins: STFT bins of the mixture (``n_fft // 2 + 1``).
        feature_dim: width of the decoder's frame features (its mel-like axis).
        d_model: transformer width.
        num_heads: attention heads.
        num_layers: transformer layers.
        mlp_ratio: feed-forward width as a multiple of ``d_model``.
        dropout: dropout inside the transformer.
        norm_momentum: momentum of the magnitude batch norm.
        cond_dim: also modulate the projected frames by the query (FiLM, identity at
            initialisation) when given. CLAPSep's mask head sees the query only through the
            decoder's frame features (``None``, the default); a small decoder squeezes the
            query into a few features per frame, and the quick start's mask head learned
            to follow it only with this direct path (docs/BENCHMARKS.md, "CLAPSep quick start: reaching +15 dB").
    """

    def __init__(
        self,
        num_bins: int = 513,
        feature_dim: int = 64,
        d_model: int = 640,
        num_heads: int = 8,
        num_layers: int = 3,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        norm_momentum: float = 0.01,
        cond_dim: int | None = None,
    ):
        super().__init__()
        self.num_bins = num_bins
        self.feature_dim = feature_dim
        self.spec_norm = nn.BatchNorm1d(num_bins, momentum=norm_momentum)
        self.input_proj = nn.Linear(num_bins + feature_dim, d_model)
        self.input_norm = nn.LayerNorm(d_model)
        self.film = FiLM(cond_dim, d_model) if cond_dim else None
        layer = nn.TransformerEncoderLayer(
            d_model=d_model,
            nhead=num_heads,
            dim_feedforward=int(d_model * mlp_ratio),
            dropout=dropout,
            batch_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)
        self.output_proj = nn.Linear(d_model, num_bins)

    def forward(self, magnitude: torch.Tensor, features: torch.Tensor,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        """Mask ``[B, frames, bins]`` from ``magnitude [B, frames, bins]``, ``features [B, >=frames, F]``
        and, with ``cond_dim``, the query ``condition [B, cond_dim]``."""
        frames = magnitude.shape[1]
        if features.shape[1] < frames:
            raise ValueError(
                f"decoder gave {features.shape[1]} frames but the mixture has {frames}; "
                "the encoder's spectrogram must cover the whole mixture"
            )
        spec = self.spec_norm(magnitude.transpose(1, 2)).transpose(1, 2)
        h = torch.cat([spec, features[:, :frames].to(spec.dtype)], dim=-1)
        h = self.input_norm(self.input_proj(h))
        if self.film is not None:
            if condition is None:
                raise ValueError("this MaskNet is conditioned (cond_dim set): pass the query condition")
            h = self.film(h, condition.to(h.dtype))
        h = self.transformer(h)
        return torch.sigmoid(self.output_proj(h))
