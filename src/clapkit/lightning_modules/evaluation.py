"""Accumulating evaluation embeddings per dataloader and gathering them across ranks.

Validation and test batches are embedded where they are (each rank its shard); at epoch end
every rank's store is gathered **once** and rows that a distributed sampler repeated to even
out the shards are dropped by sample key. Everything is moved to CPU first: evaluation sets
are small next to training and this keeps accelerator memory free.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from clapkit.lightning_modules.losses import world_info


@dataclass
class EvalSet:
    """Everything embedded from one evaluation dataloader.

    Attributes:
        keys: sample key of each clip (dedupe across ranks).
        audio: ``[N, D]`` normalised clip embeddings.
        caption_counts: captions per clip (``0`` when the batch had none).
        captions: ``[sum(counts), D]`` normalised caption embeddings, clip by clip.
        labels: ``int64 [N]`` or multi-hot ``float [N, K]`` (``None`` when unlabelled).
    """

    keys: list[str] = field(default_factory=list)
    audio: list[torch.Tensor] = field(default_factory=list)
    caption_counts: list[int] = field(default_factory=list)
    captions: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)

    def add(
        self,
        keys: list[str],
        audio: torch.Tensor,
        captions: torch.Tensor | None = None,
        caption_counts: list[int] | None = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        """Store one batch (tensors are detached and moved to CPU)."""
        self.keys.extend(keys)
        self.audio.append(audio.detach().float().cpu())
        if captions is not None and caption_counts is not None:
            self.captions.append(captions.detach().float().cpu())
            self.caption_counts.extend(int(c) for c in caption_counts)
        else:
            self.caption_counts.extend([0] * len(keys))
        if labels is not None:
            self.labels.append(labels.detach().cpu())

    @property
    def has_captions(self) -> bool:
        return bool(self.captions)

    @property
    def has_labels(self) -> bool:
        return bool(self.labels)

    def consolidate(self) -> ConsolidatedSet:
        """Concatenate, gather from every rank (once) and drop repeated keys."""
        local = {
            "keys": self.keys,
            "audio": torch.cat(self.audio) if self.audio else torch.empty(0),
            "counts": torch.tensor(self.caption_counts, dtype=torch.long),
            "captions": torch.cat(self.captions) if self.captions else None,
            "labels": torch.cat(self.labels) if self.labels else None,
        }
        _, world = world_info()
        parts = [local]
        if world > 1:
            parts = [None] * world
            dist.all_gather_object(parts, local)
        return _merge_unique(parts)


@dataclass
class ConsolidatedSet:
    """One evaluation set after gathering: unique clips in a stable order."""

    keys: list[str]
    audio: torch.Tensor
    caption_counts: torch.Tensor
    captions: torch.Tensor | None
    labels: torch.Tensor | None

    @property
    def caption_owner(self) -> torch.Tensor:
        """Row of ``audio`` each caption belongs to."""
        return torch.arange(len(self.keys)).repeat_interleave(self.caption_counts)


def _merge_unique(parts: list[dict]) -> ConsolidatedSet:
    keys: list[str] = []
    audio, counts, captions, labels = [], [], [], []
    seen: set[str] = set()
    for part in parts:
        starts = torch.cat([torch.zeros(1, dtype=torch.long), part["counts"].cumsum(0)])
        for row, key in enumerate(part["keys"]):
            if key in seen:
                continue  # a distributed sampler repeated this clip to even out the shards
            seen.add(key)
            keys.append(key)
            audio.append(part["audio"][row])
            counts.append(int(part["counts"][row]))
            if part["captions"] is not None:
                captions.append(part["captions"][starts[row] : starts[row + 1]])
            if part["labels"] is not None:
                labels.append(part["labels"][row])
    return ConsolidatedSet(
        keys=keys,
        audio=torch.stack(audio) if audio else torch.empty(0),
        caption_counts=torch.tensor(counts, dtype=torch.long),
        captions=torch.cat(captions) if captions else None,
        labels=torch.stack(labels) if labels else None,
    )
