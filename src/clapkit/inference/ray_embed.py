"""Ray Data as the scale-out engine of corpus embedding (``clapkit embed --engine ray``).

The same job as :func:`~clapkit.inference.embedding.embed_corpus`, the same parts and the same
result, spread over a Ray instance: a local one started here, or a cluster joined by address.

- **decode** runs in Ray tasks (one CPU each), one task per part: it decodes the part's files
  in the order ``embed_corpus`` does and yields one row per *model batch*, the files that could
  not be decoded set aside exactly where ``embed_corpus`` drops them. A batch is the unit the
  model computes together, and its composition decides the last bits of each embedding, so the
  batches are cut here, once, as the single-process command cuts them.
- **embed** runs in a fixed pool of actors that each hold the model (one GPU per actor where the
  cluster has GPUs); an actor embeds one row as one forward pass.
- **write**: this process gathers the rows of each part and writes the part through
  :class:`~clapkit.inference.embedding.PartStore` once all its files are in, so a rerun resumes
  from the parts on disk whichever engine wrote them.

Failures are Ray's to retry, with Ray Data's own policy: a decode task whose worker process
dies (or whose node is lost) is run again, an actor whose process dies is restarted and its
batch sent to an actor again (Ray Data gives its actors ``max_restarts=-1`` and
``max_task_retries=-1``). Rows are gathered by file position, so a batch delivered twice writes
the same values twice and no file is lost or counted twice. A file whose embedding is not finite
is found only after its batch ran: as in ``embed_corpus`` the part is embedded again without it
(another pass of the pipeline over those parts only).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clapkit.inference.decoding import InputError as EmbeddingInputError
from clapkit.inference.embedding import EmbedRun
from clapkit.inference.embeddings import PART_SIZE, PartStore
from clapkit.utils.deps import optional_import

__all__ = ["RayOptions", "embed_corpus_ray"]

#: Memory Ray reserves for one decode task (the batch of clips it holds and the file it decodes).
#: Declaring it also keeps the two stages apart: Ray Data fuses a task stage into the actor
#: stage after it when their resource requests match, and would then decode inside the actors.
DECODE_MEMORY = 256 * 2**20

@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray pipeline runs.

    Args:
        address: ``None`` starts a Ray instance on this machine for the job and stops it after;
            ``"auto"`` or ``"host:port"`` joins a running cluster (``ray start --head``). A Ray
            instance this process already started (``ray.init()``) is used as it is.
        actors: model holders; ``None``: one per GPU of the cluster, or one without GPUs.
        gpus: give each actor a GPU; ``None``: when the cluster has GPUs.
        num_cpus: CPUs of a local instance; ``None``: the machine's, at least one more than the
            actors take, so decoding always has a CPU.
        threads: torch threads of each actor; ``None``: Ray's (as many as the actor's CPUs).
            The command passes its own count to a local instance, so an actor computes as the
            plain command would on this machine (a thread count may change how a kernel splits
            a sum, hence the last bits).
    """

    address: str | None = None
    actors: int | None = None
    gpus: bool | None = None
    num_cpus: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"the Ray engine needs at least one actor, got {self.actors}")


def embed_corpus_ray(
    load: Callable[[], Any],
    prepare: Callable[[str], np.ndarray],
    files: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    fingerprint: str,
    dim: int,
    batch_size: int,
    part_size: int = PART_SIZE,
    resume: bool = True,
    lengths: Sequence[float] | None = None,
    progress: Callable[[int], None] | None = None,
    may_skip: Callable[[str], bool] | None = None,
    options: RayOptions | None = None,
) -> EmbedRun:
    """Embed ``files`` into the parts of ``output`` with Ray; the result of ``embed_corpus``.

    Args:
        load: builds the model inside an actor (picklable: a module-level function or a
            ``functools.partial`` of one); the model embeds batches of ``batch_size`` clips.
        prepare: one path -> the model input, exactly as the model's ``prepare_audio``
            (picklable; runs in the decode tasks).
        files: the corpus, in output order.
        output: the final embeddings file; parts go to ``<output>.parts/``.
        fingerprint: the model's fingerprint (the parts' key, as ``embed_corpus`` uses it).
        dim: embedding width (the rows of a part whose files were all skipped).
        batch_size: clips per forward pass, as the single-process command would use.
        part_size: files per part.
        resume: skip parts already on disk.
        lengths: per-file durations, to bucket clips of a part by length (fusion models).
        progress: called with the number of files finished.
        may_skip: ``path -> bool`` as in ``embed_corpus``; ``None``: nothing is skipped.
        options: where Ray runs and how many actors.

    Raises:
        EmbeddingInputError: a file cannot be embedded and may not be skipped (parts finished
            before it are kept).
        DependencyError: Ray is not installed.
    """
    optional_import("ray.data", "ray", "--engine ray")
    options = options or RayOptions()
    names = [str(f) for f in files]
    store = PartStore(output, names, fingerprint, part_size)
    todo = [k for k in range(store.num_parts) if not (resume and store.done(k))]
    resumed = store.num_parts - len(todo)
    if progress is not None and resumed:
        progress(sum(len(store.part_files(k)) for k in range(store.num_parts) if k not in todo))
    known: dict[int, dict[int, str]] = {k: {} for k in todo}  # part -> position -> why it is left out
    with _session(options) if todo else contextlib.nullcontext() as pool:
        plans = [_plan(store, k, lengths, known[k]) for k in todo]
        while plans:
            redo = _run_pass(plans, pool, load, prepare, batch_size, store, dim, may_skip, progress)
            for part, left_out in redo.items():
                known[part].update(left_out)
            plans = [_plan(store, k, lengths, known[k]) for k in sorted(redo)]
    embeddings, left_out = None, []
    if store.complete():
        embeddings, left_out = store.merge(), store.skipped()
    return EmbedRun(embeddings, len(todo), resumed, store.num_parts, store, left_out)


@dataclass(frozen=True)
class _Pool:
    """The actors a pass runs: how many, and what each asks of Ray."""

    actors: int
    resources: dict[str, float]
    threads: int | None = None


@contextlib.contextmanager
def _session(options: RayOptions) -> Iterator[_Pool]:
    import ray

    started = not ray.is_initialized()
    if started:
        quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
        if options.address is None:
            wanted = options.actors or 1
            cpus = options.num_cpus or max(os.cpu_count() or 1, wanted + 1)
            ray.init(num_cpus=cpus, include_dashboard=False, **quiet)
        else:
            ray.init(address=options.address, **quiet)
    try:
        cluster_gpus = int(ray.cluster_resources().get("GPU", 0))
        gpus = cluster_gpus > 0 if options.gpus is None else options.gpus
        if gpus and not cluster_gpus:
            raise EmbeddingInputError("the Ray engine was asked for GPU actors but the Ray cluster has no GPU")
        actors = options.actors or (cluster_gpus if gpus else 1)
        yield _Pool(actors, {"num_gpus": 1} if gpus else {"num_cpus": 1}, options.threads)
    finally:
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class _PartPlan:
    """One part for one pass: its files, their decoding order, and the positions left out."""

    part: int
    paths: list[str]
    order: list[int]
    known_bad: dict[int, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"part": self.part, "paths": self.paths, "order": self.order,
                           "known_bad": [[i, r] for i, r in self.known_bad.items()]})

    @classmethod
    def from_json(cls, text: str) -> _PartPlan:
        raw = json.loads(text)
        return cls(raw["part"], raw["paths"], raw["order"], {int(i): r for i, r in raw["known_bad"]})


def _plan(store: PartStore, part: int, lengths: Sequence[float] | None, known_bad: dict[int, str]) -> _PartPlan:
    paths = store.part_files(part)
    order = list(range(len(paths)))
    if lengths is not None:  # by length, stably, as embed_corpus buckets a part
        own = lengths[part * store.part_size : part * store.part_size + len(paths)]
        order.sort(key=lambda i: own[i])
    return _PartPlan(part, paths, order, dict(known_bad))


def _run_pass(plans: list[_PartPlan], pool: _Pool, load, prepare, batch_size: int, store: PartStore, dim: int,
              may_skip: Callable[[str], bool] | None, progress) -> dict[int, dict[int, str]]:
    """Run the pipeline over ``plans``, writing each part that completes; the parts to embed again,
    each with the positions to leave out then (the files it could not decode and the first one,
    in model order, whose embedding was not finite) and why."""
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # the command draws its own progress bar
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    items = [{"plan": plan.to_json()} for plan in plans]
    dataset = (
        ray.data.from_items(items, override_num_blocks=len(items))
        .map_batches(_decode_parts, batch_size=1, batch_format="numpy", num_cpus=1, memory=DECODE_MEMORY,
                     fn_kwargs={"prepare": prepare, "batch_size": batch_size})
        .map_batches(_Embedder, batch_size=1, batch_format="numpy",
                     fn_constructor_kwargs={"load": load, "threads": pool.threads},
                     compute=ray.data.ActorPoolStrategy(size=pool.actors), **pool.resources)
    )
    gathered = {plan.part: _Gathered(plan, dim) for plan in plans}
    for row in dataset.iter_rows():
        meta = json.loads(row["meta"])
        part = gathered[meta["part"]]
        fresh = part.add(meta, np.frombuffer(row["embeddings"], dtype=np.float32).reshape(-1, dim))
        for position, message in fresh + part.nonfinite:
            if may_skip is None or not may_skip(part.plan.paths[position]):
                raise EmbeddingInputError(message)
        if progress is not None:
            progress(len(meta["indices"]) + len(fresh))
        if part.complete() and not part.nonfinite and not part.written:
            store.write(part.plan.part, part.embeddings, part.skipped())
            part.written = True
    redo = {}
    for part in gathered.values():
        if part.nonfinite:
            position, message = min(part.nonfinite, key=lambda item: part.rank[item[0]])
            redo[part.plan.part] = {**part.bad, position: message}
        elif not part.written:  # cannot happen while Ray delivers every row; refuse rather than lose files
            raise RuntimeError(f"part {part.plan.part}: the Ray pipeline ended with files missing")
    return redo


class _Gathered:
    """The rows of one part as they arrive, keyed by file position (so a row Ray delivers
    twice after a retry changes nothing)."""

    def __init__(self, plan: _PartPlan, dim: int):
        self.plan = plan
        self.rank = {position: n for n, position in enumerate(plan.order)}
        self.embeddings = np.full((len(plan.paths), dim), np.nan, dtype=np.float32)
        self.bad: dict[int, str] = {}
        self.seen: set[int] = set()
        self.nonfinite: list[tuple[int, str]] = []
        self.written = False

    def add(self, meta: dict, embeddings: np.ndarray) -> list[tuple[int, str]]:
        """Take one row; the ``(position, message)`` of the files it newly found undecodable."""
        fresh = [(int(i), str(m)) for i, m in meta["bad"] if int(i) not in self.bad]
        for position, message in fresh:
            self.bad[position] = message
        if meta.get("nonfinite"):
            position, message = meta["nonfinite"]
            self.nonfinite.append((int(position), str(message)))
        else:
            self.embeddings[meta["indices"]] = embeddings
            self.seen.update(meta["indices"])
        self.seen.update(self.bad)
        fresh = [(i, m) for i, m in fresh if i not in self.plan.known_bad]
        return fresh

    def complete(self) -> bool:
        return len(self.seen) == len(self.plan.paths)

    def skipped(self) -> list[tuple[str, str]]:
        return [(self.plan.paths[i], _reason(self.plan.paths[i], self.bad[i])) for i in sorted(self.bad)]


def _reason(path: str, message: str) -> str:
    """The problem without the file's name, as a part records it."""
    return message[len(path) + 2:] if message.startswith(f"{path}: ") else message


# --------------------------------------------------------------------------- inside Ray


def _decode_parts(batch: dict[str, np.ndarray], prepare: Callable[[str], np.ndarray],
                  batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """A decode task: each part's clips in model order, one row per model batch.

    A row carries the batch's positions in the part, its clips (zero-padded to the longest,
    with their lengths) as raw float32 bytes, and the files dropped since the previous row.
    """
    for text in batch["plan"]:
        plan = _PartPlan.from_json(str(text))
        positions: list[int] = []
        clips: list[np.ndarray] = []
        bad: list[list] = []
        for position in plan.order:
            if position in plan.known_bad:  # found on an earlier pass: not decoded again
                bad.append([position, plan.known_bad[position]])
                continue
            clip = _decode(prepare, plan.paths[position])
            if isinstance(clip, str):
                bad.append([position, clip])
                continue
            positions.append(position)
            clips.append(clip)
            if len(clips) == batch_size:
                yield _batch_row(plan, positions, clips, bad)
                positions, clips, bad = [], [], []
        if clips or bad:
            yield _batch_row(plan, positions, clips, bad)


def _decode(prepare: Callable[[str], np.ndarray], path: str) -> np.ndarray | str:
    """The clip of ``path``, or the one-line message of why it cannot be decoded."""
    from clapkit.audio import AudioLoadError

    try:
        return prepare(path)
    except AudioLoadError as exc:
        return str(exc)
    except ValueError as exc:
        return f"{path}: {exc}"


def _batch_row(plan: _PartPlan, positions: list[int], clips: list[np.ndarray], bad: list[list]) -> dict:
    lengths = [int(c.shape[-1]) for c in clips]
    padded = np.zeros((len(clips), max(lengths, default=0)), dtype=np.float32)
    for row, clip in zip(padded, clips):
        row[: clip.shape[-1]] = clip
    meta = {"part": plan.part, "indices": positions, "lengths": lengths, "bad": bad,
            "paths": [plan.paths[i] for i in positions]}
    return {"meta": np.array([json.dumps(meta)], dtype=object), "clips": np.array([padded.tobytes()], dtype=object)}


class _Embedder:
    """An actor of the embedding pool: holds one model, embeds one row as one forward pass."""

    def __init__(self, load: Callable[[], Any], threads: int | None = None):
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.model = load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from clapkit.utils.finite import NonFiniteError

        metas, outputs = [], []
        for text, raw in zip(batch["meta"], batch["clips"]):
            meta = json.loads(str(text))
            embedded = np.zeros((0, 0), dtype=np.float32)
            if meta["indices"]:
                padded = np.frombuffer(raw, dtype=np.float32).reshape(len(meta["indices"]), -1)
                clips = [padded[i, :n] for i, n in enumerate(meta["lengths"])]
                try:
                    embedded = self.model.embed_prepared(clips, batch_size=len(clips)).numpy()
                except NonFiniteError as exc:  # the part is embedded again without this file
                    index = exc.index if exc.index is not None else 0
                    meta["nonfinite"] = [meta["indices"][index], str(exc.named(meta["paths"][index]))]
            metas.append(json.dumps(meta))
            outputs.append(np.ascontiguousarray(embedded, dtype=np.float32).tobytes())
        return {"meta": np.array(metas, dtype=object), "embeddings": np.array(outputs, dtype=object)}
