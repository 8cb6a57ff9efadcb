"""Exact resume: a run killed at any step and resumed from its last checkpoint continues
exactly as the uninterrupted run would have (same batches, same random draws, same weights).

Lightning restores weights, optimizer, schedulers and loop counters, but not the random
number generators, and without a stateful data loader it starts a resumed epoch's data over.
This callback closes both gaps:

- **RNGs**: before every training batch, the torch (CPU and CUDA), numpy and Python RNGs are
  seeded from ``(seed, epoch, batch index)``, so the random state a step sees is a function
  of its position only; a resumed step draws what the uninterrupted one drew (dropout,
  random query sides, SpecAugment, caption picks...).
- **Data position**: each step marks ``(epoch, batches done)`` on the training loader's
  :class:`~clapkit.datamodules.resumable.ResumableSampler`; the
  :class:`~clapkit.datamodules.resumable.ResumableLoader` is stateful, so Lightning stores
  that position in the checkpoint and restores it before the resumed run's first batch; the
  sampler's order is a function of ``(seed, epoch)``.
- **Text caches**: a frozen text encoder's memoised outputs
  (:class:`~clapkit.encoders.text_cache.TextCache`, in the contrastive task and the separation
  query network) depend in their last bits on the batch each string was first embedded in, so
  the caches are saved in the checkpoint and restored: a resumed run embedding those strings
  again would drift from the uninterrupted one.

Requirements (met by clapkit's synthetic and mixture datamodules): the training loader is a
``ResumableLoader`` over a ``ResumableSampler``, and datasets draw their randomness from
``(epoch, index)``, never from the global RNGs (the synthetic corpus renders clip ``i`` from
``(seed, split, i)``; random mixtures from ``(seed, epoch, index)``). The guarantee holds on
one device; with several, Lightning wraps the sampler for the ranks (the position is then
not restored within an epoch). Shard streams (webdataset) resume at epoch granularity.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from clapkit.datamodules.resumable import ResumableSampler, default_seed
from clapkit.encoders.text_cache import TextCache

STATE_KEY = "clapkit_resume"
CACHE_KEY = "clapkit_text_caches"


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


class ExactResume(Callback):
    """Per-step RNG seeding and the data position in checkpoints, for bit-exact resumes.

    Args:
        seed: base seed (default: the run's ``seed_everything`` value).
    """

    def __init__(self, seed: int | None = None):
        self.seed = seed

    @property
    def base_seed(self) -> int:
        return default_seed() if self.seed is None else int(self.seed)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        epoch = trainer.current_epoch
        sampler = _resumable_sampler(trainer.train_dataloader)
        if sampler is not None:
            sampler.mark(epoch, batch_idx + 1)  # what a checkpoint saved after this batch resumes from
        seed = _seed(self.base_seed, epoch, batch_idx)
        torch.manual_seed(seed)  # also seeds every CUDA device
        np.random.seed(seed & 0xFFFFFFFF)
        random.seed(seed)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        caches = text_caches(pl_module)
        if caches:
            checkpoint[CACHE_KEY] = {key: cache.state_dict() for key, cache in caches.items()}

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(CACHE_KEY) or {}
        for key, cache in text_caches(pl_module).items():
            if key in saved:
                cache.load_state_dict(saved[key])


def text_caches(module: torch.nn.Module) -> dict[str, TextCache]:
    """Every :class:`TextCache` held by ``module`` or its sub-modules (directly or in a dict
    attribute), keyed by ``<module path>.<attribute>[.<dict key>]``."""
    found: dict[str, TextCache] = {}
    for path, sub in module.named_modules():
        for attr, value in vars(sub).items():
            items = value.items() if isinstance(value, dict) else [(None, value)]
            for name, item in items:
                if isinstance(item, TextCache):
                    found[".".join(p for p in (path, attr, name) if p)] = item
    return found


def _resumable_sampler(loader: Any) -> ResumableSampler | None:
    sampler = getattr(loader, "sampler", None)
    return sampler if isinstance(sampler, ResumableSampler) else None
