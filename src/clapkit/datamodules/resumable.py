"""A training sampler whose order is a function of ``(seed, epoch)`` and that can start mid-epoch.

``DataLoader(shuffle=True)`` draws each epoch's permutation from the global torch RNG, so a
run resumed from a checkpoint sees a different order (and, mid-epoch, starts the epoch over).
:class:`ResumableSampler` permutes with its own generator seeded by ``(seed, epoch)``
(Lightning calls :meth:`set_epoch` at every epoch start, also after a restore) and
:class:`ResumableLoader` makes Lightning keep the position (the batches trained on, which
:class:`~clapkit.callbacks.resume.ExactResume` marks each step) in the checkpoint and restore
it, so the resumed pass skips what was already trained on. A dataset with ``set_epoch`` (the random mixtures) is told the epoch too, so what it
draws for an index depends on ``(epoch, index)`` only. The indices themselves carry the epoch
(:class:`EpochIndex`, an ``int``): persistent worker processes keep the dataset copy they
started with and never see a later ``set_epoch``, but they do see each index.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sized

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


def default_seed() -> int:
    """The run's seed: Lightning's ``seed_everything`` value, else torch's initial seed."""
    value = os.environ.get("PL_GLOBAL_SEED")
    return int(value) if value is not None else int(torch.initial_seed() & 0xFFFFFFFF)


class EpochIndex(int):
    """A sample index that also says which epoch asked for it (``index.epoch``)."""

    epoch: int

    def __new__(cls, index: int, epoch: int) -> EpochIndex:
        obj = super().__new__(cls, index)
        obj.epoch = int(epoch)
        return obj

    def __reduce__(self):
        return EpochIndex, (int(self), self.epoch)


def index_epoch(index: int, default: int | None = None) -> int | None:
    """The epoch an :class:`EpochIndex` carries, else ``default`` (a plain index)."""
    return getattr(index, "epoch", default)


class ResumableSampler(Sampler[int]):
    """Indices ``0..len(data)-1``, shuffled per epoch from ``(seed, epoch)`` (or in order).

    Args:
        data: the dataset (its length; its ``set_epoch`` is called when it has one).
        shuffle: permute each epoch (training) or keep the order.
        seed: permutation seed (default: the run's ``seed_everything`` value).
    """

    def __init__(self, data: Sized, shuffle: bool = True, seed: int | None = None):
        self.data = data
        self.shuffle = shuffle
        self.seed = default_seed() if seed is None else int(seed)
        self.epoch = 0
        self._done = (0, 0)  # (epoch, batches trained on), marked by the training loop
        self._skip: tuple[int, int] | None = None  # (epoch, samples to skip in it)

    def __len__(self) -> int:
        return len(self.data)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next pass gives."""
        self.epoch = int(epoch)
        if hasattr(self.data, "set_epoch"):
            self.data.set_epoch(self.epoch)

    def mark(self, epoch: int, batches: int) -> None:
        """Record that ``batches`` batches of ``epoch`` have been trained on (what a checkpoint keeps)."""
        self._done = (int(epoch), int(batches))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._done[0], "batches": self._done[1], "seed": self.seed}

    def load_state_dict(self, state: dict[str, int], batch_size: int = 1, drop_last: bool = False) -> None:
        """Continue after the marked position: the rest of its epoch, or the next epoch when
        no batch of it is left."""
        batch_size = max(1, int(batch_size))
        epoch, skip = int(state["epoch"]), int(state["batches"]) * batch_size
        self.seed = int(state.get("seed", self.seed))
        left = len(self.data) - skip
        if left <= 0 or (drop_last and left < batch_size):
            epoch, skip = epoch + 1, 0
        self.set_epoch(epoch)
        self._skip = (epoch, skip)
        self._done = (epoch, skip // max(1, int(batch_size)))

    def order(self, epoch: int) -> list[int]:
        """The full index order of ``epoch``."""
        n = len(self.data)
        if not self.shuffle:
            return list(range(n))
        seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.order(self.epoch)
        if self._skip is not None:
            epoch, samples = self._skip
            self._skip = None
            if epoch == self.epoch:
                order = order[samples:]
        epoch = self.epoch
        return (EpochIndex(i, epoch) for i in order)


class LazyIterator:
    """An iterator made by ``make`` at its first ``next``.

    Lightning creates a training loader's iterator before it restores the loop from a checkpoint
    when the task asks for ``trainer.estimated_stepping_batches`` in ``configure_optimizers``,
    and does not create it again for the resumed epoch; a multi-worker ``DataLoader`` iterator
    draws its first indices (and pickles the dataset for its workers) as it is made. Made at the
    first ``next`` instead, it sees the restored position and epoch.
    """

    def __init__(self, make: Callable[[], Iterator]):
        self._make = make
        self._iterator: Iterator | None = None

    def __iter__(self) -> LazyIterator:
        return self

    def __next__(self):
        if self._iterator is None:
            self._iterator = self._make()
        return next(self._iterator)


class ResumableLoader(DataLoader):
    """A ``DataLoader`` Lightning saves and restores (``state_dict`` / ``load_state_dict``) when
    its sampler is a :class:`ResumableSampler`: a resumed run continues the epoch's order
    after the last batch trained on instead of starting the epoch's data over."""

    def __iter__(self) -> LazyIterator:
        return LazyIterator(super().__iter__)

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict() if isinstance(self.sampler, ResumableSampler) else {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state and isinstance(self.sampler, ResumableSampler):
            self.sampler.load_state_dict(state, self.batch_size or 1, self.drop_last)
