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
- **Shard streams**: each training batch of a
  :class:`~clapkit.datamodules.webdataset.ShardStream` carries its (rank, worker) slot's
  position; it is marked on the :class:`~clapkit.datamodules.stream_state.EpochLoader`, whose
  state (every rank's, every slot's) goes into the checkpoint, and a resumed epoch continues each
  slot where it stopped (:mod:`clapkit.datamodules.stream_state`).
- **Text caches**: a frozen text encoder's memoised outputs
  (:class:`~clapkit.encoders.text_cache.TextCache`, in the contrastive task and the separation
  query network) depend in their last bits on the batch each string was first embedded in, so
  the caches are saved in the checkpoint and restored: a resumed run embedding those strings
  again would drift from the uninterrupted one.

Requirements (met by clapkit's synthetic and mixture datamodules): the training loader is a
``ResumableLoader`` over a ``ResumableSampler``, and datasets draw their randomness from
``(epoch, index)``, never from the global RNGs (the synthetic corpus renders clip ``i`` from
``(seed, split, i)``; random mixtures from ``(seed, epoch, index)``). The guarantee holds on
one device for map-style datasets (with several, Lightning wraps the sampler for the ranks and
the position is not restored within an epoch); shard streams resume mid-epoch under DDP too.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import CombinedLoader

from clapkit.datamodules.resumable import ResumableSampler, default_seed
from clapkit.datamodules.stream_state import EpochLoader
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
        loader = trainer.train_dataloader
        sampler = _resumable_sampler(loader)
        if sampler is not None:
            sampler.mark(epoch, batch_idx + 1)  # what a checkpoint saved after this batch resumes from
        if isinstance(loader, EpochLoader):
            loader.mark(epoch, batch_idx + 1, batch.get("stream") if isinstance(batch, dict) else None)
        seed = _seed(self.base_seed, epoch, batch_idx)
        torch.manual_seed(seed)  # also seeds every CUDA device
        np.random.seed(seed & 0xFFFFFFFF)
        random.seed(seed)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning restores the loaders' positions only when it builds the training loader after
        # the checkpoint's loops; a task that reads trainer.estimated_stepping_batches in
        # configure_optimizers (the contrastive task's warmup) makes it build the loader before,
        # and the resumed epoch would start its data over. Loading a state twice is harmless.
        # Caches restored here, not at load: moving a module (the strategy's model_to_device,
        # after the load) empties caches that clear themselves on .to() (the query network's).
        saved, self._cache_states = getattr(self, "_cache_states", {}), {}
        for key, cache in text_caches(pl_module).items():
            if key in saved:
                cache.load_state_dict(saved[key])
        states, self._loader_states = getattr(self, "_loader_states", []), []
        loaders = [dl for dl in CombinedLoader(trainer.train_dataloader).flattened
                   if hasattr(dl, "state_dict") and hasattr(dl, "load_state_dict")]
        if states and len(states) == len(loaders):
            for loader, state in zip(loaders, states):
                loader.load_state_dict(state)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        caches = text_caches(pl_module)
        if caches:
            checkpoint[CACHE_KEY] = {key: cache.state_dict() for key, cache in caches.items()}

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        self._loader_states = list(loop.get("combined_loader") or [])
        self._cache_states = dict(checkpoint.get(CACHE_KEY) or {})  # applied at train start


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
