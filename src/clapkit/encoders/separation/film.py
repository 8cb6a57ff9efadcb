"""Feature-wise linear modulation (FiLM) by a query embedding, and FiLM'd skip connections."""

from __future__ import annotations

import torch
from torch import nn


class FiLM(nn.Module):
    """``gamma(c) * x + beta(c)`` for channels-last features ``x [B, ..., C]`` and a condition ``c [B, D]``.

    Args:
        cond_dim: width of the condition vector.
        dim: channel width of the modulated features.
        identity_init: start as the identity map (``gamma = 1``, ``beta = 0``) so an untrained
            decoder passes its features through; otherwise both maps start near zero.
    """

    def __init__(self, cond_dim: int, dim: int, identity_init: bool = True):
        super().__init__()
        self.identity_init = identity_init
        self.gamma = nn.Linear(cond_dim, dim)
        self.beta = nn.Linear(cond_dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if not self.identity_init:
            return
        nn.init.zeros_(self.gamma.weight)
        nn.init.ones_(self.gamma.bias)
        nn.init.zeros_(self.beta.weight)
        nn.init.zeros_(self.beta.bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        condition = condition.view(condition.shape[0], *([1] * (x.dim() - 2)), condition.shape[-1])
        return self.gamma(condition) * x + self.beta(condition)


class FiLMSkip(nn.Module):
    """Project encoder tokens to the decoder width, modulate them, add the decoder path, normalise.

    ``LayerNorm(FiLM(Linear(skip), c) + x)``; with ``x`` omitted it conditions the bottleneck.

    Args:
        in_dim: channel width of the encoder features.
        out_dim: channel width of the decoder stage.
        cond_dim: width of the condition vector.
        film: modulate the projected features (False gives a plain projected skip).
    """

    def __init__(self, in_dim: int, out_dim: int, cond_dim: int, film: bool = True):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.film = FiLM(cond_dim, out_dim) if film else None
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, skip: torch.Tensor, condition: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        out = self.proj(skip)
        if self.film is not None:
            out = self.film(out, condition)
        return self.norm(out if x is None else out + x)
