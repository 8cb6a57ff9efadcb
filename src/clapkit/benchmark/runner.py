"""``run_benchmark``: every task of a protocol on the datasets present, with their published figures.

One dataset is embedded once (cached, see :mod:`clapkit.benchmark.cache`) and every task that
reads it uses the same embeddings (ESC-50 all clips, fold 1 and the linear probe). The result is
a :class:`BenchmarkReport`; :mod:`clapkit.benchmark.report` writes it as ``results.json``,
``results.md`` and ``results.png``.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clapkit.benchmark import figures as published
from clapkit.benchmark.cache import EmbeddingCache, EmbeddingCounts, ProgressFactory
from clapkit.benchmark.datasets import DATASETS, LoadedDataset, load_datasets, read_paths_file
from clapkit.benchmark.metrics import (
    laion_retrieval,
    linear_probe,
    multilabel_map,
    zeroshot_logits,
    zeroshot_scores,
)
from clapkit.benchmark.protocols import PROTOCOLS, TASKS, Protocol, Task, prompts_for, protocol
from clapkit.benchmark.separation import separation_scores


class BenchmarkError(ValueError):
    """The benchmark cannot run at all (wrong model kind, unknown protocol); one line."""


@dataclass
class DatasetReport:
    """One dataset as found: exact counts, or the line saying why it was skipped.

    Attributes:
        name: dataset key.
        title: display name with the split.
        root: folder read.
        clips: clips evaluated (after leaving out missing and unreadable files).
        captions: captions of those clips (retrieval sets; 0 for label sets).
        published_clips: size of the published split, when known.
        published_captions: captions of the published split, when known.
        left_out: clips of the table not evaluated, by reason.
        problem: why the dataset was skipped (``None`` when it ran).
    """

    name: str
    title: str
    root: str | None
    clips: int = 0
    captions: int = 0
    published_clips: int | None = None
    published_captions: int | None = None
    left_out: dict[str, int] = field(default_factory=dict)
    problem: str | None = None


@dataclass
class TaskResult:
    """One task's metrics and the matching published figures (best match first)."""

    task: str
    title: str
    kind: str
    dataset: str
    clips: int
    captions: int
    metrics: dict[str, float]
    shown: list[str]
    figures: dict[str, list[published.Figure]] = field(default_factory=dict)


@dataclass
class BenchmarkReport:
    """Everything ``clapkit benchmark`` writes.

    Attributes:
        model: the model path (or its type name when given as an object).
        fingerprint: the model's fingerprint (the cache key).
        protocol: protocol name; ``prompt`` its zero-shot prompt, ``prompt_ensemble`` whether
            prompts were averaged.
        reference: the reference model whose figures are shown first.
        datasets: every dataset the protocol reads, present or not.
        results: one per task that ran.
        skipped: one line per task that did not run.
        embeddings: what was embedded and what came from the cache.
        seconds: wall time.
        date: UTC time of the run.
    """

    model: str
    fingerprint: str
    protocol: str
    prompt: str
    prompt_ensemble: bool
    reference: str
    datasets: list[DatasetReport]
    results: list[TaskResult]
    skipped: list[str]
    embeddings: EmbeddingCounts
    seconds: float
    date: str


@dataclass
class _Context:
    proto: Protocol
    model: Any
    cache: EmbeddingCache
    ensemble: bool


def _class_text(ctx: _Context, class_names: list[str]) -> np.ndarray:
    prompts = prompts_for(ctx.proto, class_names, ctx.ensemble)
    flat = ctx.cache.text([p for group in prompts for p in group])
    per_class = flat.reshape(len(class_names), len(prompts[0]), -1).mean(axis=1)
    return per_class / np.linalg.norm(per_class, axis=1, keepdims=True).clip(1e-12)


def _rows(task: Task, data: LoadedDataset) -> np.ndarray:
    records = data.clips.records
    if task.folds is None:
        return np.arange(len(records))
    return np.array([i for i, r in enumerate(records) if r.meta.get("fold") in task.folds], dtype=np.int64)


def _zeroshot(task: Task, data: LoadedDataset, audio: np.ndarray, ctx: _Context) -> tuple[dict[str, float], int]:
    rows = _rows(task, data)
    labels = torch.tensor([data.clips.records[i].label for i in rows])
    text = _class_text(ctx, data.clips.class_names)
    logits = zeroshot_logits(torch.from_numpy(audio[rows]), torch.from_numpy(text), ctx.model.logit_scale)
    return zeroshot_scores(logits, labels), 0


def _multilabel(task: Task, data: LoadedDataset, audio: np.ndarray, ctx: _Context) -> tuple[dict[str, float], int]:
    names = data.clips.class_names
    targets = np.zeros((len(audio), len(names)), dtype=np.int64)
    for i, record in enumerate(data.clips.records):
        targets[i, record.label] = 1
    scores = zeroshot_logits(torch.from_numpy(audio), torch.from_numpy(_class_text(ctx, names))).numpy()
    return multilabel_map(scores, targets), 0


def _retrieval(task: Task, data: LoadedDataset, audio: np.ndarray, ctx: _Context) -> tuple[dict[str, float], int]:
    captions = [text for record in data.clips.records for text in record.texts]
    owner = [i for i, record in enumerate(data.clips.records) for _ in record.texts]
    text = ctx.cache.text(captions)
    metrics = laion_retrieval(torch.from_numpy(audio), torch.from_numpy(text), owner, ctx.model.logit_scale)
    return metrics, len(captions)


def _probe(task: Task, data: LoadedDataset, audio: np.ndarray, ctx: _Context) -> tuple[dict[str, float], int]:
    records = data.clips.records
    return linear_probe(audio, [r.label for r in records], [r.meta["fold"] for r in records]), 0


#: Task kind -> the code that scores it from the dataset's audio embeddings.
RUNNERS: dict[str, Callable[[Task, LoadedDataset, np.ndarray, _Context], tuple[dict[str, float], int]]] = {
    "zeroshot": _zeroshot,
    "zeroshot-multilabel": _multilabel,
    "retrieval": _retrieval,
    "linear-probe": _probe,
}


def _readable(data: LoadedDataset) -> None:
    """Leave out clips whose header cannot be read or that hold no samples (counted by reason),
    so one bad file does not stop a whole dataset."""
    from clapkit.audio import AudioLoadError, audio_info

    kept = []
    for record in data.clips.records:
        try:
            reason = "empty" if audio_info(record.path).frames == 0 else None
        except AudioLoadError:
            reason = "unreadable"
        if reason is None:
            kept.append(record)
        else:
            data.left_out[reason] = data.left_out.get(reason, 0) + 1
    data.clips.records = kept


def run_benchmark(
    model,
    data_root: str | os.PathLike | None = None,
    *,
    protocol_name: str | None = None,
    paths: str | os.PathLike | dict[str, dict[str, Any]] | None = None,
    tasks: list[str] | None = None,
    reference: str | None = None,
    prompt_ensemble: bool = False,
    cache_dir: str | os.PathLike | None = None,
    mixtures_csv: str | os.PathLike | None = None,
    max_targets: int | None = None,
    workers: int = 0,
    progress: ProgressFactory | None = None,
    log: Callable[[str], None] | None = None,
) -> BenchmarkReport:
    """Run a protocol's tasks on the datasets present and return the report (nothing written).

    Args:
        model: a model directory / checkpoint (loaded with :func:`clapkit.load`), a loaded
            :class:`~clapkit.inference.clap.CLAPModel`, or a :class:`~clapkit.inference.separation.SeparationModel`
            (CLAPSep protocol).
        data_root: folder holding the datasets (each found by its published metadata file).
        protocol_name: ``laion-clap`` (default for a contrastive model), ``ms-clap``, ``audioclip``;
            ``clapsep`` (default for a separation model).
        paths: per-dataset folders (a YAML file or its parsed mapping), beside or instead of ``data_root``.
        tasks: run only these tasks (default: all of the protocol's).
        reference: the reference model whose figures are shown first (default: the protocol's).
        prompt_ensemble: average the embeddings of several prompt templates per class.
        cache_dir: embeddings cache (``None``: a temporary folder, nothing reused).
        mixtures_csv: separation only: the published fixed mixture list (``read_specs_csv``
            format) instead of mixtures drawn from the AudioCaps test clips.
        max_targets: separation only: use at most this many target clips.
        workers: decoding processes ahead of the model.
        progress: progress bar factory ``(description, total) -> context yielding advance(n)``.
        log: called with one line per dataset or task skipped.
    """
    start = time.perf_counter()
    say = log or (lambda line: None)
    source = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    if isinstance(model, (str, os.PathLike)):
        from clapkit.inference.load import load

        model = load(model)
    separation = hasattr(model, "separate_batch")
    proto = _protocol_for(protocol_name, separation)
    if reference is not None and reference not in published.references():
        raise BenchmarkError(f"unknown reference {reference!r}; known: {', '.join(published.references())}")
    selected = [TASKS[name] for name in (tasks or proto.tasks) if _known_task(name)]
    if isinstance(paths, (str, os.PathLike)):
        paths = read_paths_file(paths)
    needed = list(dict.fromkeys(task.dataset for task in selected))
    loaded = load_datasets(needed, data_root, paths)
    cache = EmbeddingCache(model, cache_dir, workers, progress)
    ctx = _Context(proto, model, cache, prompt_ensemble)
    reports, results, skipped = [], [], []
    try:
        for name in needed:
            data, spec = loaded[name], DATASETS[name]
            if data.present:
                _readable(data)
            report = DatasetReport(name, spec.title, str(data.root) if data.root else None,
                                   published_clips=spec.published_clips, published_captions=spec.published_captions)
            reports.append(report)
            if not data.present:
                report.problem = data.problem or f"{spec.title}: no readable clip"
                report.left_out = dict(data.left_out)
                say(f"skipped {report.problem}")
                continue
            report.clips = len(data.clips)
            report.captions = sum(len(r.texts) for r in data.clips.records) if spec.captioned else 0
            report.left_out = dict(data.left_out)
            try:
                audio = None if separation else cache.audio(name, [r.path for r in data.clips.records], spec.title)
            except ValueError as exc:  # a clip that cannot be decoded past its header
                report.problem = f"{spec.title}: {str(exc).splitlines()[0]}"
                say(f"skipped {report.problem}")
                continue
            for task in (t for t in selected if t.dataset == name):
                clips = len(_rows(task, data))
                if clips == 0:
                    skipped.append(f"{task.title}: no clip of folds {list(task.folds or ())} is present")
                    say(f"skipped {skipped[-1]}")
                    continue
                try:
                    if separation:
                        metrics, clips = separation_scores(model, data.clips, mixtures_csv=mixtures_csv,
                                                           max_targets=max_targets, progress=progress)
                        captions = 0
                    else:
                        metrics, captions = RUNNERS[task.kind](task, data, audio, ctx)
                except ValueError as exc:  # e.g. a clip without captions, a probe fold with one class
                    skipped.append(f"{task.title}: {str(exc).splitlines()[0]}")
                    say(f"skipped {skipped[-1]}")
                    continue
                figures = {m: published.matching(task.name, m, proto.name, reference) for m in task.metrics}
                results.append(TaskResult(task.name, task.title, task.kind, name, clips, captions, metrics,
                                          list(task.metrics), figures))
    finally:
        cache.close()
    return BenchmarkReport(
        model=source, fingerprint=getattr(model, "fingerprint", "") or "", protocol=proto.name, prompt=proto.prompt,
        prompt_ensemble=prompt_ensemble, reference=reference or published.default_references(proto.name)[0],
        datasets=reports, results=results, skipped=skipped, embeddings=cache.counts,
        seconds=time.perf_counter() - start,
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def _protocol_for(name: str | None, separation: bool) -> Protocol:
    """The protocol called ``name`` (default: ``clapsep`` for a separation model, else
    ``laion-clap``), refused when it does not fit the model's kind."""
    try:
        proto = protocol(name or ("clapsep" if separation else "laion-clap"))
    except ValueError as exc:
        raise BenchmarkError(str(exc)) from None
    if proto.separation != separation:
        fitting = ", ".join(p for p, v in PROTOCOLS.items() if v.separation == separation)
        kind = "a separation model" if separation else "a contrastive model"
        raise BenchmarkError(f"--protocol {proto.name} does not fit {kind} (protocols for it: {fitting})")
    return proto


def _known_task(name: str) -> bool:
    if name not in TASKS:
        raise BenchmarkError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return True
