"""Audio-text webdataset shards in the LAION-CLAP layout, streamed and decoded in workers.

Shard layout (what LAION-Audio-630K and ``clapkit make-shards`` write): tar files whose
members are ``<key>.flac`` (or wav/mp3/ogg) and ``<key>.json`` with ``"text"`` (a string or
a list of captions), optionally ``"tag"`` (class names or MIDs) and other caption fields,
plus a ``sizes.json`` per folder.

Epochs. In training every (rank, worker) slot streams its disjoint share of each source
(:mod:`clapkit.datamodules.shards`), cycling through it again if it runs dry, and stops
after exactly ``ceil(ceil(N / (batch * world)) / workers)`` batches, where ``N`` is
``samples_per_epoch`` (default: the sizes of all training sources). So every rank runs the
same number of steps, and when the shards split evenly every sample is seen exactly once
per epoch (LAION-CLAP's ``with_epoch`` rule; when they do not, a few samples repeat). The
sample shuffle buffer drains at the end of each pass so it never swaps samples across
passes. Several sources are mixed by drawing each sample's source with the given weights.
Evaluation reads each slot's share exactly once, partial last batch included.

Resume. A training slot's batches are a function of ``(seed, epoch, slot)``: its raw stream
(shard order, shuffle buffer, source mixing) has its own generator, and each sample's decoding
and each batch's caption picks draw from ``(seed, epoch, slot, position)``. Every training
batch carries ``"stream"`` (its slot's position), which :class:`EpochLoader` keeps in
checkpoints; a resumed epoch continues each slot after it (:mod:`clapkit.datamodules.stream_state`).

Batches are formed in the workers (``batch_size=None`` in the loader) by
:func:`~clapkit.datamodules.pipeline.collate_with_skips`: ``"skipped"`` carries the bad
samples counted since the worker's previous batch.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import tarfile_samples

from clapkit.audio.preprocess import InferenceConfig
from clapkit.datamodules.audioset import read_class_index
from clapkit.datamodules.base import AudioDataModule
from clapkit.datamodules.pipeline import AudioPolicy, Sample, Skipped, Stage, collate_with_skips
from clapkit.datamodules.shards import (
    Assignment,
    ResolvedSource,
    ShardSource,
    Slot,
    assign_shards,
    assigned_samples,
    check_pipe,
    resolve,
)
from clapkit.datamodules.stream_state import EpochLoader, StreamResume

log = logging.getLogger(__name__)

AUDIO_EXTS = ("flac", "wav", "mp3", "ogg", "opus")


class ShardStream(IterableDataset):
    """Iterable of batch dicts from webdataset shards (one instance per split).

    Args:
        sources: resolved shard sources.
        audio: decode/crop policy.
        batch_size: samples per batch (formed in the workers).
        stage: ``train`` (mixing, shuffling, fixed epoch length) or ``eval`` (exact).
        samples_per_epoch: training epoch size over all ranks (default: sum of sizes).
        shuffle_buffer: raw samples held for shuffling in training (0: off).
        seed: base seed of shard assignment, mixing and shuffling.
        text_fields: JSON fields whose captions are used (string or list each).
        tag_field: JSON field with class names/MIDs for multi-hot labels (needs ``tag_index``).
        tag_index: name or MID -> class id.
        num_classes: size of the label space for multi-hot targets.
        max_consecutive_skips: give up (with an error naming the shards) after this many
            bad samples in a row, so a stream of only bad data cannot spin forever.
    """

    def __init__(
        self,
        sources: list[ResolvedSource],
        audio: AudioPolicy,
        batch_size: int,
        stage: Stage = "train",
        samples_per_epoch: int | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        text_fields: tuple[str, ...] = ("text",),
        tag_field: str = "tag",
        tag_index: dict[str, int] | None = None,
        num_classes: int | None = None,
        max_consecutive_skips: int = 10000,
    ):
        if not sources:
            raise ValueError("ShardStream needs at least one source")
        self.sources, self.audio, self.batch_size, self.stage = sources, audio, batch_size, stage
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.text_fields, self.tag_field, self.tag_index = tuple(text_fields), tag_field, tag_index
        self.num_classes = num_classes
        self.max_consecutive_skips = max_consecutive_skips
        self.samples_per_epoch = samples_per_epoch
        if stage == "train" and samples_per_epoch is None:
            sizes = [s.num_samples for s in sources]
            if any(n is None for n in sizes):
                missing = [s.name for s, n in zip(sources, sizes) if n is None]
                raise ValueError(f"no sizes.json for {missing}: set samples_per_epoch")
            self.samples_per_epoch = int(sum(sizes))
        self.epoch = 0
        self.resume: StreamResume | None = None  # set by EpochLoader.load_state_dict
        self.rank: int | None = None
        self.world_size: int | None = None
        self.num_workers_hint = 1

    # -- topology ----------------------------------------------------------------------
    def slot(self) -> Slot:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            rank, world = 0, 1
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
                rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if self.resume is not None and self.resume.epoch == self.epoch and self.stage == "train":
            worker = (worker + self.resume.worker_shift(workers)) % workers  # see stream_state
        return Slot(rank, world, worker, workers)

    def batches_per_worker(self, slot: Slot) -> int:
        per_rank = math.ceil(self.samples_per_epoch / (self.batch_size * slot.world_size))
        return math.ceil(per_rank / slot.num_workers)

    def __len__(self) -> int:
        """Batches this rank yields per epoch (training exact; evaluation needs sizes)."""
        base = self.slot()
        workers = max(1, self.num_workers_hint)
        if self.stage == "train":
            return self.batches_per_worker(Slot(base.rank, base.world_size, 0, workers)) * workers
        total = 0
        for worker in range(workers):
            slot = Slot(base.rank, base.world_size, worker, workers)
            for src in self.sources:
                if src.sizes is None:
                    raise TypeError("length unknown: a source has no sizes.json")
                n = assigned_samples(src.sizes, assign_shards(len(src.urls), slot))
                total += math.ceil(n / self.batch_size)
        return total

    # -- raw sample streams ----------------------------------------------------------------
    def _read_shards(self, src: ResolvedSource, assignment: Assignment, order: list[int],
                     skips: Counter) -> Iterator[dict[str, Any]]:
        failed: set[int] = set()

        def handler(exc: Exception) -> bool:
            # One count per shard read: a truncated tar reports its end twice.
            if shard not in failed:
                failed.add(shard)
                skips["bad_shard"] += 1
                log.warning("skipping unreadable shard data: %s", exc)
            return True

        index = 0
        for shard in order:
            failed.discard(shard)
            for raw in tarfile_samples(iter([{"url": src.urls[shard]}]), handler=handler):
                keep = assignment.stride == 1 or index % assignment.stride == assignment.offset
                index += 1
                if keep:
                    yield raw

    def _shuffled(self, items: Iterator[dict[str, Any]], rng: np.random.Generator):
        if self.stage != "train" or self.shuffle_buffer <= 1:
            yield from items
            return
        buffer: list[dict[str, Any]] = []
        for item in items:
            buffer.append(item)
            if len(buffer) >= self.shuffle_buffer:
                j = int(rng.integers(len(buffer)))
                buffer[j], buffer[-1] = buffer[-1], buffer[j]
                yield buffer.pop()
        rng.shuffle(buffer)  # drain at the end of a pass
        yield from buffer

    def _source_stream(self, src: ResolvedSource, slot: Slot, skips: Counter,
                       rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        train = self.stage == "train"
        assignment = assign_shards(len(src.urls), slot, self.seed if train else None, self.epoch)
        if assignment.stride > 1 and slot.index == 0:
            log.warning("%s: %d shards for %d rank x worker slots; every slot reads every shard and keeps "
                        "1 sample in %d (write more, smaller shards to avoid the extra reading)",
                        src.name, len(src.urls), slot.count, slot.count)
        passes = 0
        while True:
            order = list(assignment.shards)
            if train and assignment.stride == 1:
                rng.shuffle(order)
            produced = False
            for raw in self._shuffled(self._read_shards(src, assignment, order, skips), rng):
                produced = True
                yield raw
            passes += 1
            if not train:
                return
            if not produced:
                if passes == 1 and not assignment.shards:
                    return
                raise RuntimeError(f"{src.name}: slot {slot} read no samples from its shards "
                                   f"{[src.urls[i] for i in assignment.shards[:3]]}...")

    def _raw_stream(self, slot: Slot, skips: Counter, rng: np.random.Generator):
        streams = [self._source_stream(s, slot, skips, rng) for s in self.sources]
        if self.stage != "train":
            for stream in streams:
                yield from stream
            return
        weights = np.array([s.weight for s in self.sources], dtype=np.float64)
        live = list(range(len(streams)))
        while live:
            p = weights[live] / weights[live].sum()
            pick = live[int(rng.choice(len(live), p=p))] if len(live) > 1 else live[0]
            try:
                yield next(streams[pick])
            except StopIteration:
                live.remove(pick)

    # -- decoding ---------------------------------------------------------------------------
    def _decode(self, raw: dict[str, Any], rng: np.random.Generator) -> Sample | Skipped:
        key = str(raw.get("__key__", ""))
        ext = next((e for e in AUDIO_EXTS if e in raw), None)
        if ext is None:
            return Skipped("missing", key)
        try:
            meta = json.loads(raw["json"]) if "json" in raw else {}
            if not isinstance(meta, dict):
                raise ValueError("json member is not an object")
        except (ValueError, UnicodeDecodeError):
            return Skipped("bad_metadata", key)
        texts: list[str] = []
        for field in self.text_fields:
            value = meta.get(field)
            texts += [value] if isinstance(value, str) else [t for t in (value or []) if isinstance(t, str)]
        texts = [t for t in texts if t.strip()]
        if not texts:
            return Skipped("no_text", key)
        label = None
        if self.tag_index is not None:
            tags = meta.get(self.tag_field) or []
            tags = [tags] if isinstance(tags, str) else tags
            label = sorted({self.tag_index[t] for t in tags if t in self.tag_index})
        return self.audio.load(raw[ext], key=key, stage=self.stage, texts=texts, label=label,
                               meta={"url": raw.get("__url__", "")}, rng=rng)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        slot = self.slot()
        rng = np.random.default_rng([self.seed, self.epoch, slot.index])  # the raw stream's alone
        skips: Counter = Counter()
        train = self.stage == "train"
        limit = self.batches_per_worker(slot) if train else None
        pick = "random" if train else "first"
        start, produced = (0, 0)
        if train and self.resume is not None and self.resume.epoch == self.epoch:
            start, produced = self.resume.start(slot.index)
            if produced >= limit:
                return

        def draws(kind: int, position: int) -> np.random.Generator:
            return np.random.default_rng([self.seed, self.epoch, slot.index, kind, position])

        def emit(items: list, extra: Counter) -> dict[str, Any]:
            return collate_with_skips(items, num_classes=self.num_classes, pick_text=pick, rng=draws(1, produced),
                                      extra_skips=Counter(extra))

        items: list[Sample] = []
        pending: dict[str, Any] | None = None  # eval holds one batch back to attach late skips
        streak = 0
        raws = self._raw_stream(slot, skips, rng)
        for _ in range(start):  # a resumed slot: read, without decoding, what it had read
            next(raws)
        skips.clear()  # counted before the kill
        for position, raw in enumerate(raws, start=start):
            item = self._decode(raw, draws(0, position))
            if isinstance(item, Skipped):
                skips[item.reason] += 1
                streak += 1
                if streak > self.max_consecutive_skips:
                    raise RuntimeError(f"{streak} bad samples in a row (last: {item.key}, {item.reason}); "
                                       f"check the shards of {[s.name for s in self.sources]}")
                continue
            streak = 0
            items.append(item)
            if len(items) == self.batch_size:
                batch = emit(items, skips)
                # Clear in place: the shard reader's error handler holds this same Counter, so
                # a bad shard met after the first batch is still counted.
                items = []
                skips.clear()
                if limit is not None:
                    produced += 1
                    batch["stream"] = {"slot": slot.index, "raw": position + 1, "batches": produced}
                    yield batch
                    if produced >= limit:
                        return
                else:
                    if pending is not None:
                        yield pending
                    pending = batch
        if limit is not None:
            if produced < limit:
                raise RuntimeError(f"slot {slot} ran out of samples after {produced} of {limit} batches")
            return
        if items:
            if pending is not None:
                yield pending
            yield emit(items, skips)
        elif pending is not None:
            pending["skipped"] = dict(Counter(pending["skipped"]) + skips)
            yield pending
        elif skips:
            # every sample of this slot was bad: an empty batch still carries the counts
            yield emit([], skips)


class ShardDataModule(AudioDataModule):
    """Audio-text pretraining from webdataset shards (LAION-CLAP layout), mixed sources.

    Args:
        train: training sources (mixed by ``weight``); a string is a single source.
        val: validation sources (read exactly once, in order).
        test: test sources (default: the validation sources).
        samples_per_epoch: training epoch size over all ranks (default: sum of sizes.json).
        audio: decode/crop policy.
        batch_size: samples per batch per rank.
        num_workers: decoding worker processes per rank.
        shuffle_buffer: raw samples held for shuffling in training.
        seed: seed of shard assignment, mixing and shuffling.
        text_fields: JSON fields holding captions.
        tag_field: JSON field with class names or MIDs.
        class_index: ``class_labels_indices.csv`` turning tags into multi-hot ``label``
            targets and exposing ``class_names`` (zero-shot evaluation on tagged shards).
        allow_pipe: run the ``pipe:`` shell commands written in the sources (a source can also
            allow its own with ``allow_pipe: true``); off, a ``pipe:`` source is refused in one
            line. Names a glob or a directory listing finds are files, never commands.
    """

    def __init__(
        self,
        train: list[ShardSource] | str | None = None,
        val: list[ShardSource] | str | None = None,
        test: list[ShardSource] | str | None = None,
        samples_per_epoch: int | None = None,
        audio: AudioPolicy | None = None,
        batch_size: int = 32,
        num_workers: int = 4,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        text_fields: list[str] | None = None,
        tag_field: str = "tag",
        class_index: str | None = None,
        allow_pipe: bool = False,
    ):
        super().__init__()
        self.specs = {"train": train, "val": val, "test": test if test is not None else val}
        self.allow_pipe = allow_pipe
        self.samples_per_epoch = samples_per_epoch
        self.audio = audio or AudioPolicy()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.text_fields = tuple(text_fields or ["text"])
        self.tag_field = tag_field
        self.class_names: list[str] = []
        self._tag_index: dict[str, int] | None = None
        if class_index is not None:
            mids, self.class_names = read_class_index(class_index)
            self._tag_index = {**{m: i for i, m in enumerate(mids)},
                               **{n: i for i, n in enumerate(self.class_names)}}
        self.streams: dict[str, ShardStream] = {}

    stream_class: type[ShardStream] = ShardStream

    def inference_config(self) -> InferenceConfig:
        """The evaluation path of :attr:`audio` (:meth:`AudioPolicy.inference_config`)."""
        return self.audio.inference_config()

    def stream_kwargs(self) -> dict:
        """Extra keyword arguments for :attr:`stream_class` (subclasses add their modality's)."""
        return {}

    def setup(self, stage: str | None = None) -> None:
        for split, spec in self.specs.items():
            if spec is None or split in self.streams:
                continue
            specs = [spec] if isinstance(spec, (str, ShardSource)) else list(spec)
            sources = [resolve(s) for s in specs]
            for source in sources:
                for url in source.urls:
                    check_pipe(url, source.allow_pipe or self.allow_pipe)
            self.streams[split] = self.stream_class(
                sources, self.audio, self.batch_size,
                stage="train" if split == "train" else "eval",
                samples_per_epoch=self.samples_per_epoch if split == "train" else None,
                shuffle_buffer=self.shuffle_buffer, seed=self.seed, text_fields=self.text_fields,
                tag_field=self.tag_field, tag_index=self._tag_index,
                num_classes=len(self.class_names) if self._tag_index else None,
                **self.stream_kwargs(),
            )
        trainer = getattr(self, "trainer", None)
        for stream in self.streams.values():
            stream.num_workers_hint = self.num_workers
            if trainer is not None:
                stream.rank, stream.world_size = trainer.global_rank, trainer.world_size

    def _loader(self, split: str) -> DataLoader:
        self.setup()
        if split not in self.streams:
            raise ValueError(f"{type(self).__name__}: no {split!r} shards configured")
        return EpochLoader(self.streams[split], batch_size=None, num_workers=self.num_workers,
                           pin_memory=torch.cuda.is_available(), prefetch_factor=4 if self.num_workers else None,
                           epoch_fn=self._trainer_epoch if getattr(self, "trainer", None) is not None else None)

    def _trainer_epoch(self) -> int:
        return int(self.trainer.current_epoch)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        # Lightning reads an empty list as "no validation", so fit runs without val shards.
        return self._loader("val") if self.specs["val"] is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
