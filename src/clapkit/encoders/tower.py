"""A tower = encoder + optional projection head into the shared embedding space."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clapkit.encoders.base import EncoderOutput


@dataclass
class TowerOutput:
    """What a tower returns.

    Attributes:
        embedding: projected embedding ``[B, D]``, L2-normalised when the tower normalises.
        encoder: the encoder's full output (pooled embedding, features, tokens).
    """

    embedding: torch.Tensor
    encoder: EncoderOutput


class Tower(nn.Module):
    """One modality's branch of a contrastive model.

    Args:
        encoder: any :class:`~clapkit.encoders.base.AudioEncoder`, ``TextEncoder`` or
            ``ImageEncoder``.
        projection: a callable taking the encoder's ``output_dim`` and returning the head
            (in YAML: ``class_path`` of a head in :mod:`clapkit.encoders.projection` with its
            ``init_args`` minus ``in_dim``). ``None`` keeps the encoder's embedding.
        normalize: L2-normalise the projected embedding.
    """

    def __init__(
        self,
        encoder: nn.Module,
        projection: Callable[[int], nn.Module] | None = None,
        normalize: bool = True,
    ):
        super().__init__()
        self.encoder = encoder
        self.projection = projection(encoder.output_dim) if projection is not None else nn.Identity()
        self.normalize = normalize

    @property
    def output_dim(self) -> int:
        return getattr(self.projection, "out_dim", self.encoder.output_dim)

    def forward(self, inputs, **kwargs) -> TowerOutput:
        out = self.encoder(inputs, **kwargs)
        emb = self.projection(out.embedding)
        if self.normalize:
            emb = F.normalize(emb, dim=-1)
        return TowerOutput(embedding=emb, encoder=out)
