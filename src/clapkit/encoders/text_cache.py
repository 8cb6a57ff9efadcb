"""Memoised text embeddings for a frozen text encoder.

A frozen encoder in eval mode is deterministic, so a string always embeds the same: caching is
exact, and a large saving when captions repeat (templated labels, prompts, small corpora).
The contrastive task caches its frozen text encoder's output and the separation query network
its embeddings, both through :class:`TextCache`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch


class TextCache:
    """Least-recently-used cache of ``text -> tensor``, filled through a compute function.

    Args:
        capacity: how many distinct strings to keep; ``0`` turns the cache off.
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._store: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        self._store.clear()

    def __call__(self, texts: Sequence[str], compute: Callable[[list[str]], torch.Tensor],
                 batch_size: int | None = None, device: torch.device | None = None) -> torch.Tensor:
        """``[len(texts), ...]`` rows for ``texts``, computing only the strings not cached.

        Args:
            texts: the strings (repeats allowed).
            compute: strings -> stacked tensors (the encoder).
            batch_size: strings per ``compute`` call (default: all missing at once).
            device: where the rows must live; cached rows elsewhere (the module moved) are
                dropped first.
        """
        texts = list(texts)
        unique = list(dict.fromkeys(texts))
        if not self.capacity or len(unique) > self.capacity:
            return self._compute(unique, compute, batch_size, texts)
        if device is not None and self._store and next(iter(self._store.values())).device != torch.device(device):
            self.clear()
        missing = [t for t in unique if t not in self._store]
        for text in unique:
            if text in self._store:
                self._store.move_to_end(text)  # requested now: never evicted by this call
        step = batch_size or max(len(missing), 1)
        for start in range(0, len(missing), step):
            chunk = missing[start : start + step]
            self._store.update(zip(chunk, compute(chunk).detach()))
        while len(self._store) > self.capacity:
            self._store.popitem(last=False)
        return torch.stack([self._store[t] for t in texts])

    @staticmethod
    def _compute(unique: list[str], compute, batch_size: int | None, texts: list[str]) -> torch.Tensor:
        step = batch_size or max(len(unique), 1)
        rows = {}
        for start in range(0, len(unique), step):
            chunk = unique[start : start + step]
            rows.update(zip(chunk, compute(chunk)))
        return torch.stack([rows[t] for t in texts])
