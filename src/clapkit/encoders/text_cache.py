"""Memoised text embeddings for a frozen text encoder.

A frozen encoder in eval mode is deterministic, so a string always embeds the same: caching is
exact, and a large saving when captions repeat (templated labels, prompts, small corpora).
Exact up to the batch a string was first embedded in: padding to another length changes the
last bits of an encoder's output (about 1e-6 for MiniLM on a CPU), so what the cache holds
depends on the run's history. A resumed run must therefore start from the cache the killed run
had: :meth:`TextCache.state_dict` is saved in training checkpoints by
:class:`clapkit.callbacks.resume.ExactResume`.
The contrastive task caches its frozen text encoder's output and the separation query network
its embeddings, both through :class:`TextCache`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

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
            device: where the rows must live; cached rows elsewhere (the module moved, or
                restored from a checkpoint on the CPU) are moved there first.
        """
        texts = list(texts)
        unique = list(dict.fromkeys(texts))
        if not self.capacity or len(unique) > self.capacity:
            return self._compute(unique, compute, batch_size, texts)
        if device is not None and self._store and next(iter(self._store.values())).device != torch.device(device):
            # moved, not recomputed: a row computed again in another batch differs in its last bits
            self._store = OrderedDict((t, row.to(device)) for t, row in self._store.items())
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

    def state_dict(self) -> dict[str, Any]:
        """The cached strings in least-recently-used order and their rows (on the CPU), as plain
        containers and one tensor (a checkpoint loadable with ``weights_only``)."""
        texts = list(self._store)
        rows = torch.stack([row.cpu() for row in self._store.values()]) if texts else None
        return {"texts": texts, "rows": rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the cache by a saved one (the rows stay on the CPU until the next call moves them)."""
        texts, rows = list(state.get("texts") or []), state.get("rows")
        if rows is None and texts or rows is not None and len(rows) != len(texts):
            raise ValueError(f"text cache state: {len(texts)} strings but {0 if rows is None else len(rows)} rows")
        self._store = OrderedDict(zip(texts, rows if rows is not None else []))

    @staticmethod
    def _compute(unique: list[str], compute, batch_size: int | None, texts: list[str]) -> torch.Tensor:
        step = batch_size or max(len(unique), 1)
        rows = {}
        for start in range(0, len(unique), step):
            chunk = unique[start : start + step]
            rows.update(zip(chunk, compute(chunk)))
        return torch.stack([rows[t] for t in texts])
