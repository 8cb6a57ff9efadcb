"""A tower = encoder + optional projection head into the shared embedding space."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clapkit.encoders.base import EncoderOutput
from clapkit.encoders.model import SavedModel


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


def pair_key(a: str, b: str) -> str:
    """Name of a pair in ``logit_scales`` and in logs: ``"audio__text"``."""
    return f"{a}__{b}"


class TowerSet(SavedModel):
    """Named towers and the logit scales between them: a contrastive model without training.

    What a ``ContrastiveTask`` trains (``task.model``) and what inference holds
    (:class:`~clapkit.inference.clap.CLAPModel`). State dict keys: ``towers.<name>...`` and
    ``logit_scales.<a>__<b>``.

    Args:
        towers: named towers; each reads ``batch[name]`` (``audio``, ``text``, ``image``).
        pairs: tower pairs to contrast, each with its own logit scale. A pair may name a tower
            left out of ``towers`` (a model loaded with its audio tower only keeps every scale).
        logit_scale_init: initial inverse temperature of every pair (stored as its log).
        logit_scale_min: lower clamp of the inverse temperature.
        logit_scale_max: upper clamp of the inverse temperature.
        learn_logit_scale: train the logit scales (``False`` keeps them at their init value).
    """

    def __init__(
        self,
        towers: dict[str, Tower],
        pairs: Sequence[tuple[str, str]] = (("audio", "text"),),
        logit_scale_init: float = 1 / 0.07,
        logit_scale_min: float = 1.0,
        logit_scale_max: float = 100.0,
        learn_logit_scale: bool = True,
    ):
        super().__init__()
        if not pairs:
            raise ValueError("a TowerSet needs at least one pair of towers to contrast")
        if not 0 < logit_scale_min <= logit_scale_init <= logit_scale_max:
            raise ValueError(
                f"need 0 < logit_scale_min <= logit_scale_init <= logit_scale_max, got "
                f"{logit_scale_min}, {logit_scale_init}, {logit_scale_max}"
            )
        self.towers = towers if isinstance(towers, nn.ModuleDict) else nn.ModuleDict(dict(towers))
        self.pairs = [(str(a), str(b)) for a, b in pairs]
        self.logit_scales = nn.ParameterDict({
            pair_key(a, b): nn.Parameter(torch.tensor(math.log(logit_scale_init)), requires_grad=learn_logit_scale)
            for a, b in self.pairs
        })
        #: ``(low, high)`` the log scales are clamped to.
        self.log_scale_bounds = (math.log(logit_scale_min), math.log(logit_scale_max))

    def logit_scale(self, a: str, b: str) -> torch.Tensor:
        """Clamped inverse temperature of pair ``(a, b)``."""
        low, high = self.log_scale_bounds
        return self.logit_scales[pair_key(a, b)].clamp(low, high).exp()

    def clamp_logit_scales_(self) -> None:
        """Keep the stored log scales inside the clamp (after an optimiser step)."""
        low, high = self.log_scale_bounds
        with torch.no_grad():
            for param in self.logit_scales.values():
                param.clamp_(low, high)

    def embed(self, name: str, inputs, **kwargs) -> torch.Tensor:
        """L2-normalised embeddings of ``inputs`` from tower ``name``, with gradients when enabled
        (what ``ContrastiveTask.embed`` gives, without its training-time text cache)."""
        tower = self.towers[name]
        embedding = tower(inputs, **kwargs).embedding
        return embedding if getattr(tower, "normalize", False) else F.normalize(embedding, dim=-1)
