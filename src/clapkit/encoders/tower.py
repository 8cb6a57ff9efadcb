"""A tower = encoder + optional projection head into the shared embedding space."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


class TowerSet(nn.Module):
    """Named towers and the logit scales between them: a contrastive model without training.

    What inference holds (:class:`~clapkit.inference.clap.CLAPModel`); a ``ContrastiveTask`` wraps
    the same towers for training, so the state dict keys (``towers.audio...``,
    ``logit_scales.audio__text``) are the same.

    Args:
        towers: name -> tower (``audio``, ``text``, ``image``).
        logit_scales: pair name (``"audio__text"``) -> log inverse temperature.
        log_scale_bounds: ``(low, high)`` the log scales are clamped to, as in training.
    """

    def __init__(self, towers: Mapping[str, nn.Module], logit_scales: Mapping[str, nn.Parameter] | None = None,
                 log_scale_bounds: tuple[float, float] | None = None):
        super().__init__()
        if log_scale_bounds is not None:
            self.log_scale_bounds = tuple(log_scale_bounds)
        self.towers = towers if isinstance(towers, nn.ModuleDict) else nn.ModuleDict(dict(towers))
        scales = logit_scales if logit_scales is not None else {}
        self.logit_scales = scales if isinstance(scales, nn.ParameterDict) else nn.ParameterDict(dict(scales))

    @classmethod
    def of(cls, model: nn.Module) -> TowerSet:
        """``model`` itself when it is a :class:`TowerSet`, else its ``towers`` and
        ``logit_scales`` (for example a ``ContrastiveTask``'s)."""
        if isinstance(model, TowerSet):
            return model
        towers = getattr(model, "towers", None)
        if towers is None:
            raise TypeError(f"{type(model).__name__} has no towers: not a contrastive model")
        return cls(towers, getattr(model, "logit_scales", None), getattr(model, "log_scale_bounds", None))

    def embed(self, name: str, inputs, **kwargs) -> torch.Tensor:
        """L2-normalised embeddings of ``inputs`` from tower ``name``, with gradients when enabled
        (what ``ContrastiveTask.embed`` gives, without its training-time text cache)."""
        tower = self.towers[name]
        embedding = tower(inputs, **kwargs).embedding
        return embedding if getattr(tower, "normalize", False) else F.normalize(embedding, dim=-1)
