"""Samplers that rebalance a long-tailed multi-label set (AudioSet).

Two standard recipes:

- ``weighted``: draw clips with replacement, each with weight ``sum over its labels of
  1 / count(label)`` (inverse label frequency, as in the AST/PSLA AudioSet weight files).
- ``balanced``: PANN's ``BalancedTrainSampler`` and LAION-CLAP's AudioSet queue: in rounds,
  shuffle the classes and take one random clip of each, so every class is seen equally often.

Both draw from a generator seeded with ``(seed, epoch)`` and advance their epoch on every
``__iter__``, so every rank produces the same index list; Lightning's distributed wrapper
then hands each rank a disjoint share of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def label_counts(labels: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """How many clips carry each class."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for ids in labels:
        counts[list(set(ids))] += 1
    return counts


def inverse_frequency_weights(labels: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """Per-clip weight ``sum_k 1/count_k`` over the clip's labels; unlabelled clips get the minimum."""
    counts = label_counts(labels, num_classes)
    inv = np.zeros(num_classes, dtype=np.float64)
    inv[counts > 0] = 1.0 / counts[counts > 0]
    weights = np.array([inv[list(set(ids))].sum() if len(ids) else 0.0 for ids in labels])
    floor = weights[weights > 0].min() if (weights > 0).any() else 1.0
    weights[weights == 0] = floor
    return weights


class LabelSampler(Sampler[int]):
    """Base of the rebalancing samplers: ``num_samples`` draws per epoch over labelled clips,
    from a generator seeded with ``(seed, epoch)``.

    Args:
        labels: class ids of each clip.
        num_classes: size of the label space.
        num_samples: draws per epoch (default: the dataset size).
        seed: base seed (the epoch is mixed in).
    """

    def __init__(self, labels: Sequence[Sequence[int]], num_classes: int, num_samples: int | None = None,
                 seed: int = 0):
        self.num_samples = int(num_samples or len(labels))
        self.seed = seed
        self.epoch = 0
        self._index(labels, num_classes)

    def _index(self, labels: Sequence[Sequence[int]], num_classes: int) -> None:
        """Precompute what :meth:`__iter__` draws from."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self) -> np.random.Generator:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1  # identical on every rank: each iterates once per epoch
        return rng


class WeightedLabelSampler(LabelSampler):
    """Draws ``num_samples`` clips with replacement by inverse label frequency (arguments as
    :class:`LabelSampler`)."""

    def _index(self, labels: Sequence[Sequence[int]], num_classes: int) -> None:
        weights = inverse_frequency_weights(labels, num_classes)
        self.probs = weights / weights.sum()

    def __iter__(self) -> Iterator[int]:
        rng = self._rng()
        return iter(rng.choice(len(self.probs), size=self.num_samples, p=self.probs).tolist())


class ClassBalancedSampler(LabelSampler):
    """PANN/LAION round-robin over shuffled classes, one random clip per class per round
    (arguments as :class:`LabelSampler`)."""

    def _index(self, labels: Sequence[Sequence[int]], num_classes: int) -> None:
        members: list[list[int]] = [[] for _ in range(num_classes)]
        for index, ids in enumerate(labels):
            for k in set(ids):
                members[k].append(index)
        self.members = [np.asarray(m) for m in members if m]
        if not self.members:
            raise ValueError("ClassBalancedSampler needs at least one labelled clip")

    def __iter__(self) -> Iterator[int]:
        rng = self._rng()
        out: list[int] = []
        while len(out) < self.num_samples:
            for k in rng.permutation(len(self.members)):
                pool = self.members[k]
                out.append(int(pool[rng.integers(len(pool))]))
        return iter(out[: self.num_samples])
