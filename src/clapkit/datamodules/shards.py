"""Shard lists: URL expansion, ``sizes.json`` look-up and the rank x worker partition.

A shard source is written the way LAION-CLAP's training scripts take it: a directory of
``*.tar`` files, a brace pattern (``/data/audiocaps/train/{0..127}.tar``), a glob, a list
of any of these, or ``pipe:`` commands (``pipe:aws s3 cp s3://bucket/0.tar -``). Sizes come
from ``sizes.json`` next to the shards (``{"0.tar": 1000, ...}``, the LAION-CLAP and
webdataset convention) or from an explicit sizes file for remote shards.

The partition gives every (rank, worker) *slot* a disjoint share of the shards: a global
permutation seeded by ``(seed, epoch)`` (identical on every rank, no communication) dealt
round-robin to ``world_size * num_workers`` slots. With fewer shards than slots, every slot
reads every shard and keeps every ``n_slots``-th sample instead, which is still disjoint.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from webdataset.shardlists import expand_urls


@dataclass
class ShardSource:
    """One shard set of a (possibly mixed) stream.

    Args:
        urls: directory of ``*.tar``, brace pattern, glob, ``pipe:`` command, or a list of these.
        weight: relative sampling weight when several sources are mixed in training.
        sizes: path of a ``sizes.json`` for shards whose folder has none (remote shards).
        name: label for logs (defaults to the first URL).
        allow_pipe: run the ``pipe:`` commands written in ``urls`` (each is a shell command; off
            by default so that no shard spec runs one unless the config says so). Names found by
            a glob or in a directory are always files, never commands.
    """

    urls: str | list[str]
    weight: float = 1.0
    sizes: str | None = None
    name: str = ""
    allow_pipe: bool = False


@dataclass
class ResolvedSource:
    """A :class:`ShardSource` with concrete URLs and per-shard sample counts (``None`` if unknown)."""

    name: str
    urls: list[str]
    sizes: list[int] | None
    weight: float = 1.0
    allow_pipe: bool = False

    @property
    def num_samples(self) -> int | None:
        return sum(self.sizes) if self.sizes is not None else None


def _is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url


def as_file(path: str) -> str:
    """A file name found on disk, written so that no reader takes it for a URL or a command: a
    file called ``pipe:touch X #.tar`` in the current folder becomes ``./pipe:touch X #.tar``."""
    return path if path.startswith(("/", "./", "../")) else os.path.join(".", path)


def expand_shards(urls: str | Sequence[str]) -> list[str]:
    """Concrete shard URLs of a source spec (directories, braces, globs, ``pipe:``).

    Only a ``pipe:`` or ``scheme://`` spec written in ``urls`` stays a URL; what a glob or a
    directory listing finds is a file (:func:`as_file`), whatever its name. Whether a ``pipe:``
    spec may run is the stream's decision (:attr:`ShardSource.allow_pipe`).
    """
    specs = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for spec in specs:
        spec = os.path.expanduser(str(spec))
        if not _is_remote(spec) and os.path.isdir(spec):
            found = sorted(glob.glob(os.path.join(spec, "*.tar")))
            if not found:
                raise FileNotFoundError(f"{spec}: directory has no *.tar shards")
            out += [as_file(path) for path in found]
            continue
        for url in expand_urls(spec):
            if _is_remote(url):
                out.append(url)
            elif any(ch in url for ch in "*?["):
                matched = sorted(glob.glob(url))
                if not matched:
                    raise FileNotFoundError(f"{url}: pattern matches no shard")
                out += [as_file(path) for path in matched]
            else:
                if not os.path.isfile(url):
                    raise FileNotFoundError(f"{url}: shard not found")
                out.append(url)
    if not out:
        raise FileNotFoundError(f"{urls}: no shards")
    return out


def _shard_name(url: str) -> str:
    # `pipe:aws s3 cp s3://b/0.tar -` -> `0.tar`
    tokens = [t for t in url.replace("pipe:", " ").split() if t.endswith(".tar")]
    return os.path.basename(tokens[-1] if tokens else url)


def read_sizes(urls: list[str], sizes_file: str | None = None) -> list[int] | None:
    """Sample count of every shard from ``sizes.json``; ``None`` if any shard is not listed."""
    tables: dict[str, dict[str, int]] = {}
    counts = []
    for url in urls:
        path = sizes_file or (None if _is_remote(url) else str(Path(url).parent / "sizes.json"))
        if path is None:
            return None
        if path not in tables:
            try:
                tables[path] = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
            except ValueError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from None
        count = tables[path].get(_shard_name(url))
        if count is None:
            return None
        counts.append(int(count))
    return counts


def resolve(source: ShardSource | str) -> ResolvedSource:
    """Expand a source and look up its shard sizes."""
    if isinstance(source, str):
        source = ShardSource(source)
    urls = expand_shards(source.urls)
    return ResolvedSource(source.name or urls[0], urls, read_sizes(urls, source.sizes), source.weight,
                          source.allow_pipe)


def check_pipe(url: str, allowed: bool) -> None:
    """Refuse to open a ``pipe:`` shard (a shell command) unless its source allows it.

    Raises:
        ValueError: one line naming the command and the flag that allows it.
    """
    if url.startswith("pipe:") and not allowed:
        raise ValueError(f"{url}: a pipe: shard runs a shell command; set allow_pipe: true on its shard "
                         "source if you wrote it")


@dataclass(frozen=True)
class Slot:
    """Where this reader sits: ``rank`` of ``world_size`` processes, ``worker`` of ``num_workers``."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    @property
    def index(self) -> int:
        return self.rank * self.num_workers + self.worker

    @property
    def count(self) -> int:
        return self.world_size * self.num_workers


@dataclass(frozen=True)
class Assignment:
    """Shards of one slot; with ``stride > 1`` keep only samples ``i % stride == offset``."""

    shards: list[int]
    stride: int = 1
    offset: int = 0


def assign_shards(num_shards: int, slot: Slot, seed: int | None = None, epoch: int = 0) -> Assignment:
    """Disjoint share of ``num_shards`` for ``slot`` (see module docstring)."""
    order = np.arange(num_shards)
    if seed is not None:
        order = np.random.default_rng([seed, epoch]).permutation(num_shards)
    if num_shards >= slot.count:
        return Assignment([int(i) for i in order[slot.index :: slot.count]])
    return Assignment([int(i) for i in order], stride=slot.count, offset=slot.index)


def assigned_samples(sizes: list[int], assignment: Assignment) -> int:
    """How many samples an assignment yields (for epoch lengths and ``len``)."""
    if assignment.stride == 1:
        return sum(sizes[i] for i in assignment.shards)
    total = sum(sizes[i] for i in assignment.shards)
    return len(range(assignment.offset, total, assignment.stride))
