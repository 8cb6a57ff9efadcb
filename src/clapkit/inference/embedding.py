"""Corpus-scale audio embedding: pipelined, resumable, data-parallel.

:func:`embed_corpus` embeds a fixed, ordered list of files with a
:class:`~clapkit.inference.clap.CLAPModel` and streams the result to parquet *parts* in a folder next
to the output (``<output>.parts/``). The pieces:

- **parts**: the file list is cut into parts of ``part_size`` files by position, so a part's
  content never depends on how many processes ran or where a run stopped. Each part is written
  atomically as it finishes; its name carries a key of (model fingerprint, part size, file
  list), so parts of another model or another folder are never reused, and a key of its own
  files' sizes and modification times (``st_mtime_ns``), so a part whose file was replaced after
  it finished is embedded again while the other parts are reused.
- **resume**: a rerun skips every part already on disk, so after a kill (even ``SIGKILL``) only
  the unfinished part is redone, and the merged index is the same as an uninterrupted run's.
- **data parallel**: rank ``r`` of ``W`` embeds the parts ``k`` with ``k % W == r`` (rank and
  world size from ``torchrun`` / ``torch.distributed`` environment variables or a SLURM array,
  see :func:`rank_from_env`); whichever rank finds every part done merges them in file order.
- **pipelining**: decoding and resampling run in worker processes ahead of the model with a
  bounded look-ahead (:class:`~clapkit.inference.decoding.Decoder`), so the model is never
  waiting for a decoder when there are enough cores; clips of one part are bucketed by length
  (fusion models take long clips whole) and put back in file order.
- **early decoding**: a command that knows the model's preprocessing before loading it (a
  native directory's ``config.yaml``) starts an :class:`~clapkit.inference.decoding.EarlyDecoder`
  before ``import torch``: one forked worker decodes the first files while the main process,
  single-threaded, imports torch and builds the model (3-4 s on a 2-core CPU, one core idle otherwise).

The parts' and the final file's format is :mod:`clapkit.inference.embeddings`; :func:`embed_files`
embeds any list of files (skipping bad ones where allowed) with the same decoder.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from clapkit.inference.decoding import Decoder, EarlyDecoder, Unusable
from clapkit.inference.decoding import InputError as EmbeddingInputError
from clapkit.inference.embeddings import PART_SIZE, PartStore
from clapkit.utils.finite import NonFiniteError

__all__ = ["EarlyDecoder", "EmbeddedFiles", "EmbeddingInputError", "EmbedRun", "PartStore", "RankSlice", "decode_order",
           "device_for_rank", "embed_corpus", "embed_files", "rank_from_env"]


@dataclass(frozen=True)
class RankSlice:
    """Which share of the parts this process embeds: parts ``k`` with ``k % world_size == rank``."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} of world size {self.world_size} is not a valid slice")

    def owns(self, part: int) -> bool:
        return part % self.world_size == self.rank


def rank_from_env(env: Mapping[str, str] | None = None) -> RankSlice:
    """This process's slice from the launcher's environment.

    ``torchrun`` / ``torch.distributed``: ``RANK`` and ``WORLD_SIZE``. A SLURM array
    (``sbatch --array=0-N``): ``SLURM_ARRAY_TASK_ID`` relative to ``SLURM_ARRAY_TASK_MIN``,
    out of ``SLURM_ARRAY_TASK_COUNT``. A SLURM job step with several tasks (``srun -n N``):
    ``SLURM_PROCID`` of ``SLURM_NTASKS``. Otherwise one process embeds everything.
    """
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env:
        return RankSlice(int(env["RANK"]), int(env["WORLD_SIZE"]))
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        return RankSlice(int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"]))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return RankSlice(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]))
    return RankSlice()


def device_for_rank(device: str, env: Mapping[str, str] | None = None) -> str:
    """``auto`` under ``torchrun`` / ``srun`` means this process's own GPU (``cuda:LOCAL_RANK``)."""
    env = os.environ if env is None else env
    local = env.get("LOCAL_RANK", env.get("SLURM_LOCALID"))
    if device != "auto" or local is None:
        return device
    import torch

    return f"cuda:{int(local) % max(torch.cuda.device_count(), 1)}" if torch.cuda.is_available() else "cpu"


@dataclass
class EmbedRun:
    """What :func:`embed_corpus` did.

    Attributes:
        embeddings: ``[N, D]`` of the whole corpus in file order when every part is done
            (this rank finished last), else ``None``.
        parts_written: parts this call embedded.
        parts_skipped: parts of this rank found done on disk (resumed).
        num_parts: parts of the whole job.
        store: the parts folder (call ``store.remove()`` once the output is written).
        skipped: ``(path, reason)`` of the files left out (their rows of ``embeddings`` are NaN),
            from every part once the corpus is complete (empty while ``embeddings`` is ``None``).
    """

    embeddings: np.ndarray | None
    parts_written: int
    parts_skipped: int
    num_parts: int
    store: PartStore
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def embed_corpus(
    model,
    files: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    part_size: int = PART_SIZE,
    workers: int = 2,
    ranks: RankSlice | None = None,
    resume: bool = True,
    lengths: Sequence[int] | None = None,
    progress: Callable[[int], None] | None = None,
    early: EarlyDecoder | None = None,
    may_skip: Callable[[str], bool] | None = None,
) -> EmbedRun:
    """Embed ``files`` with ``model`` (a :class:`~clapkit.inference.clap.CLAPModel`) into parts.

    Args:
        model: the inference model (``prepare_audio`` + ``embed_prepared``).
        files: the corpus, in output order.
        output: the final embeddings file; parts go to ``<output>.parts/``.
        part_size: files per part (the unit of resuming and of data parallelism).
        workers: decoding processes ahead of the model (``<= 1``: decode inline).
        ranks: this process's slice (default :func:`rank_from_env`).
        resume: skip parts already on disk (``False`` redoes them).
        lengths: per-file durations (any unit), used to bucket clips of a part by length.
        progress: called with the number of files finished (done parts count at once).
        early: decoding started before the model was loaded (its clips are used where they
            match; it is closed here). It must decode as ``model.prepare_audio`` does.
        may_skip: ``path -> bool``: a file that cannot be decoded or embedded (non-finite
            output) is skipped when this says so: its row is NaN, the part records it and the
            part is done (a resume does not retry it). ``None``: nothing is skipped.

    Raises:
        EmbeddingInputError: a file cannot be decoded and may not be skipped (parts finished
            before it are kept).
    """
    ranks = ranks or rank_from_env()
    names = [str(f) for f in files]
    store = PartStore(output, names, getattr(model, "fingerprint", ""), part_size)
    mine = [k for k in range(store.num_parts) if ranks.owns(k)]
    todo = [k for k in mine if not (resume and store.done(k))]
    skipped = len(mine) - len(todo)
    if progress is not None and skipped:
        progress(sum(len(store.part_files(k)) for k in mine if k not in todo))
    with Decoder(model.prepare_audio, workers, early) as decoder:
        for part in todo:
            paths, order = _part_plan(names, part, part_size, lengths)
            done = embed_files(model, paths, decoder, order=order, may_skip=may_skip, progress=progress)
            store.write(part, done.embeddings, done.skipped)
    embeddings, left_out = None, []
    if store.complete():
        try:
            embeddings, left_out = store.merge(), store.skipped()
        except FileNotFoundError:
            embeddings = None  # another rank finished at the same moment, merged and cleaned up
    return EmbedRun(embeddings, len(todo), skipped, store.num_parts, store, left_out)


@dataclass
class EmbeddedFiles:
    """What :func:`embed_files` did.

    Attributes:
        embeddings: ``[n, D]`` float32 in the order of the files given; NaN rows for the
            files skipped.
        skipped: ``(path, reason)`` of the files skipped, in file order.
    """

    embeddings: np.ndarray
    skipped: list[tuple[str, str]]


def embed_files(model, paths: Sequence[str], decoder: Decoder, *, order: Sequence[int] | None = None,
                ahead: int | None = None, may_skip: Callable[[str], bool] | None = None,
                progress: Callable[[int], None] | None = None) -> EmbeddedFiles:
    """Embed ``paths`` with ``model`` (``embed_prepared`` over clips ``decoder`` decodes ahead).

    Args:
        model: an inference model that :attr:`~clapkit.inference.base.InferenceModel.embeds`.
        paths: the files; the result's rows follow this order.
        decoder: an open :class:`~clapkit.inference.decoding.Decoder` of ``model.prepare_audio``.
        order: positions in the order to decode and embed them (length buckets); default as given.
        ahead: files decoded ahead (default: two batches, at least one per worker).
        may_skip: ``path -> bool``: a file that cannot be decoded or whose embedding is not
            finite is skipped when this says so (its row is NaN). ``None``: nothing is skipped.
        progress: called with the number of files finished (skipped ones included).

    A file whose embedding is not finite is found only after its batch ran: the files are then
    embedded again without it (each retry removes one file, so it ends).

    Raises:
        EmbeddingInputError: a file cannot be decoded or embedded and may not be skipped.
    """
    order = list(range(len(paths))) if order is None else list(order)
    ahead = ahead or max(2 * model.batch_size, decoder.workers)
    skippable = may_skip or (lambda _: False)
    bad: dict[int, str] = {}
    while True:
        kept: list[int] = []

        def clips(kept: list[int] = kept) -> Iterator[np.ndarray]:
            wanted = [i for i in order if i not in bad]
            for i, clip in zip(wanted, decoder.map([paths[i] for i in wanted], ahead=ahead, settle=True)):
                if isinstance(clip, Unusable):
                    if not skippable(paths[i]):
                        raise EmbeddingInputError(clip.reason)
                    bad[i] = clip.reason
                    if progress is not None:
                        progress(1)
                    continue
                kept.append(i)
                yield clip

        try:
            embedded = model.embed_prepared(clips(), progress=progress)
        except NonFiniteError as exc:  # huge samples overflowed the model: name the file
            if exc.index is None or not skippable(paths[kept[exc.index]]):
                name = paths[kept[exc.index]] if exc.index is not None else "a file of this part"
                raise EmbeddingInputError(str(exc.named(name))) from None
            bad[kept[exc.index]] = str(exc.named(paths[kept[exc.index]]))
            continue
        result = np.full((len(paths), embedded.shape[1]), np.nan, dtype=np.float32)
        if kept:
            result[kept] = embedded.numpy()
        return EmbeddedFiles(result, [(paths[i], _reason(paths[i], bad[i])) for i in sorted(bad)])


def _reason(path: str, message: str) -> str:
    return message[len(path) + 2:] if message.startswith(f"{path}: ") else message


def _part_plan(names: Sequence[str], part: int, part_size: int,
               lengths: Sequence[int] | None) -> tuple[list[str], list[int]]:
    """A part's files and the order they are decoded and embedded in."""
    paths = list(names[part * part_size : (part + 1) * part_size])
    return paths, _bucket_order(paths, lengths, part * part_size)


def decode_order(files: Sequence[str | os.PathLike], *, part_size: int = PART_SIZE, ranks: RankSlice | None = None,
                 lengths: Sequence[int] | None = None) -> Iterator[str]:
    """This rank's files in the order :func:`embed_corpus` decodes them (parts done on disk
    included: which are done is known only once the model, hence its fingerprint, is)."""
    ranks = ranks or rank_from_env()
    names = [str(f) for f in files]
    for part in range(-(-len(names) // part_size)):
        if ranks.owns(part):
            paths, order = _part_plan(names, part, part_size, lengths)
            yield from (paths[i] for i in order)


def _bucket_order(paths: Sequence[str], lengths: Sequence[int] | None, offset: int) -> list[int]:
    """Positions of a part's files sorted by length (stable), so a batch pads least."""
    if lengths is None:
        return list(range(len(paths)))
    own = lengths[offset : offset + len(paths)]
    return sorted(range(len(paths)), key=lambda i: own[i])


