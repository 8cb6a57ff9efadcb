"""Mid-epoch positions of shard streams, kept in training checkpoints.

A training :class:`~clapkit.datamodules.webdataset.ShardStream` slot (one rank's one worker)
produces a sequence of batches that is a function of ``(seed, epoch, slot)`` alone: its raw
samples come from a generator seeded by those, and each sample's random crop, each batch's
caption picks are drawn from ``(seed, epoch, slot, position)``. So the position of a slot is
one number, the raw samples it has read (bad ones included), and a resumed slot continues
exactly by reading and dropping that many raw samples (tar members are read, not decoded)
before it decodes again.

Every training batch carries its slot's position (``batch["stream"]``).
:class:`~clapkit.callbacks.resume.ExactResume` hands it to :meth:`EpochLoader.mark` before the
batch is trained on, the loader's ``state_dict`` (gathered from every rank under DDP, since
only rank 0 writes the checkpoint) goes into Lightning's checkpoint, and ``load_state_dict``
tells the stream where each of this rank's slots stopped. A ``DataLoader`` takes batches from
its workers in turn, so after ``B`` batches the next comes from worker ``B % W``: the resumed
loader's worker ``w`` plays the slot ``(w + B) % W``, and the batches arrive in the
uninterrupted order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from clapkit.datamodules.resumable import LazyIterator

log = logging.getLogger(__name__)


@dataclass
class RankPosition:
    """One rank's place in an epoch: batches trained on and, per slot, ``(raw samples read,
    batches produced)`` at the end of its last batch trained on."""

    batches: int = 0
    slots: dict[int, tuple[int, int]] = field(default_factory=dict)

    def as_state(self) -> dict[str, Any]:
        return {"batches": self.batches, "slots": [[s, r, b] for s, (r, b) in sorted(self.slots.items())]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RankPosition:
        return cls(int(state["batches"]), {int(s): (int(r), int(b)) for s, r, b in state["slots"]})


@dataclass
class StreamResume:
    """Where a resumed training epoch starts on this rank (set on the stream before its workers start).

    Args:
        epoch: the epoch it applies to (any other epoch starts from its beginning).
        position: this rank's position in that epoch.
    """

    epoch: int
    position: RankPosition

    def worker_shift(self, num_workers: int) -> int:
        """How far the loader's worker ids are rotated onto slots (the next batch's worker)."""
        return self.position.batches % max(1, num_workers)

    def start(self, slot_index: int) -> tuple[int, int]:
        """``(raw samples to drop, batches already produced)`` of one slot."""
        return self.position.slots.get(slot_index, (0, 0))


class EpochLoader(DataLoader):
    """DataLoader that tells its :class:`~clapkit.datamodules.webdataset.ShardStream` the epoch
    before the workers start and, for a training stream, keeps its mid-epoch position
    (``state_dict`` / ``load_state_dict``, which Lightning stores in checkpoints).

    Args:
        epoch_fn: returns the current epoch (the trainer's, so a resumed run continues the
            shard order where it stopped); default: count the loader's iterations.
    """

    def __init__(self, *args, epoch_fn: Callable[[], int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._iterations = 0
        self._epoch_fn = epoch_fn
        self._epoch = 0
        self._position = RankPosition()

    def __iter__(self) -> LazyIterator:
        return LazyIterator(self._start)  # the epoch and position as of the first batch (see LazyIterator)

    def _start(self):
        self.dataset.epoch = self._epoch_fn() if self._epoch_fn is not None else self._iterations
        self._iterations += 1
        return super().__iter__()

    def mark(self, epoch: int, batches: int, stream: dict[str, int] | None) -> None:
        """Record that ``batches`` batches of ``epoch`` were trained on, the last one carrying
        ``stream`` (its slot's position)."""
        if epoch != self._epoch:
            self._epoch, self._position = int(epoch), RankPosition()
        self._position.batches = int(batches)
        if stream:
            self._position.slots[int(stream["slot"])] = (int(stream["raw"]), int(stream["batches"]))

    def state_dict(self) -> dict[str, Any]:
        if getattr(self.dataset, "stage", "train") != "train":
            return {}
        slot = self.dataset.slot()
        ranks = {slot.rank: self._position.as_state()}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank builds the checkpoint, rank 0 alone writes it: it must hold all positions.
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (slot.rank, self._position.as_state()))
            ranks = dict(gathered)
        return {"epoch": self._epoch, "world_size": slot.world_size, "ranks": ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state or "ranks" not in state:
            return
        slot = self.dataset.slot()
        if int(state["world_size"]) != slot.world_size or slot.rank not in state["ranks"]:
            log.warning("the checkpoint's data position was saved by %d ranks, this run has %d: epoch %d "
                        "starts its shard streams over", state["world_size"], slot.world_size, state["epoch"])
            return
        self._epoch = int(state["epoch"])
        self._position = RankPosition.from_state(state["ranks"][slot.rank])
        self.dataset.resume = StreamResume(self._epoch, RankPosition.from_state(state["ranks"][slot.rank]))
