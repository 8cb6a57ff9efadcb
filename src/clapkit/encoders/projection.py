"""Projection heads that map a tower's embedding into the shared space.

Each head takes ``in_dim`` as its first argument so YAML can give it as a callable
(``class_path`` + ``init_args`` without ``in_dim``) and :class:`~clapkit.encoders.tower.Tower`
fills in the encoder's ``output_dim``.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearProjection(nn.Module):
    """A single linear map.

    Args:
        in_dim: input width (the encoder's ``output_dim``).
        out_dim: width of the shared embedding space.
        bias: whether the layer has a bias.
    """

    def __init__(self, in_dim: int, out_dim: int = 512, bias: bool = True):
        super().__init__()
        self.out_dim = out_dim
        self.linear = nn.Linear(in_dim, out_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class MLPProjection(nn.Module):
    """LAION-CLAP's head: ``Linear(in, hidden) -> ReLU -> Linear(hidden, out)``.

    Args:
        in_dim: input width (the encoder's ``output_dim``).
        out_dim: width of the shared embedding space.
        hidden_dim: hidden width (defaults to ``out_dim``).
    """

    def __init__(self, in_dim: int, out_dim: int = 512, hidden_dim: int | None = None):
        super().__init__()
        self.out_dim = out_dim
        hidden_dim = hidden_dim or out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResidualProjection(nn.Module):
    """MS-CLAP's head: ``LayerNorm(l1(x) + dropout(l2(gelu(l1(x)))))``.

    Args:
        in_dim: input width (the encoder's ``output_dim``).
        out_dim: width of the shared embedding space.
        dropout: dropout on the residual branch.
    """

    def __init__(self, in_dim: int, out_dim: int = 1024, dropout: float = 0.5):
        super().__init__()
        self.out_dim = out_dim
        self.linear1 = nn.Linear(in_dim, out_dim, bias=False)
        self.linear2 = nn.Linear(out_dim, out_dim, bias=False)
        self.drop = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embedded = self.linear1(x)
        return self.layer_norm(embedded + self.drop(self.linear2(nn.functional.gelu(embedded))))
