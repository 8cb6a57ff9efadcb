"""Embeddings cached per dataset and model fingerprint, so a rerun embeds nothing twice.

Audio goes through :func:`clapkit.inference.embedding.embed_corpus` into
``<cache>/<fingerprint>/<dataset>/audio.parquet.parts/``: parts of 256 clips written atomically
as they finish, their names keyed by the fingerprint and the clip list, so a run killed halfway
redoes only the unfinished part and a changed dataset or model never reuses stale rows. Text
embeddings (prompts, captions) are one ``.npy`` per list of texts under
``<cache>/<fingerprint>/text/``. The fingerprint is the one :func:`clapkit.load` gives the model
(``model.fingerprint``); a model without one is embedded into a temporary folder instead.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clapkit.utils.atomic import atomic_path

PART_SIZE = 256

#: ``progress(description, total)`` -> a context manager yielding ``advance(n)``.
ProgressFactory = Callable[[str, int], object]


@dataclass
class EmbeddingCounts:
    """What a run embedded and what it found in the cache.

    Attributes:
        audio_embedded: clips run through the audio tower.
        audio_cached: clips read back from the cache.
        text_embedded: texts run through the text tower.
        text_cached: texts read back from the cache.
    """

    audio_embedded: int = 0
    audio_cached: int = 0
    text_embedded: int = 0
    text_cached: int = 0


class EmbeddingCache:
    """Cached audio and text embeddings of one model.

    Args:
        model: a :class:`~clapkit.inference.clap.CLAPModel`.
        directory: cache root (``None``: a temporary folder removed by :meth:`close`).
        workers: decoding processes ahead of the model (``<= 1``: decode inline).
        progress: progress bar factory (``None``: silent).
    """

    def __init__(self, model, directory: str | os.PathLike | None, workers: int = 0,
                 progress: ProgressFactory | None = None):
        self.model = model
        fingerprint = getattr(model, "fingerprint", "") or ""
        self._temporary = None
        if directory is None or not fingerprint:
            self._temporary = tempfile.TemporaryDirectory(prefix="clapkit-benchmark-")
            directory = self._temporary.name
        self.root = Path(directory) / (fingerprint or "unidentified")
        self.workers = workers
        self.progress = progress
        self.counts = EmbeddingCounts()

    def close(self) -> None:
        if self._temporary is not None:
            self._temporary.cleanup()

    def audio(self, dataset: str, files: Sequence[str | os.PathLike], description: str) -> np.ndarray:
        """``[N, D]`` embeddings of ``files`` in order (parts found on disk are not embedded)."""
        from clapkit.inference.embedding import RankSlice, embed_corpus
        from clapkit.inference.embeddings import PartStore

        output = self.root / dataset / "audio.parquet"
        names = [str(f) for f in files]
        store = PartStore(output, names, self.model.fingerprint or "", PART_SIZE)
        done = sum(len(store.part_files(k)) for k in range(store.num_parts) if store.done(k))
        output.parent.mkdir(parents=True, exist_ok=True)
        with self._bar(description, len(names)) as advance:
            run = embed_corpus(self.model, names, output, part_size=PART_SIZE, workers=self.workers,
                               ranks=RankSlice(), progress=advance)
        self.counts.audio_cached += done
        self.counts.audio_embedded += len(names) - done
        assert run.embeddings is not None  # one rank: every part is done here
        return run.embeddings

    def text(self, texts: Sequence[str]) -> np.ndarray:
        """``[T, D]`` embeddings of ``texts`` (read back when this exact list was embedded before)."""
        digest = hashlib.sha256("\n".join(["v1", *texts]).encode()).hexdigest()[:20]
        path = self.root / "text" / f"{digest}.npy"
        if path.is_file():
            array = np.load(path, allow_pickle=False)
            if array.shape[0] == len(texts):
                self.counts.text_cached += len(texts)
                return array
        array = self.model.embed_text(list(texts)).numpy().astype(np.float32)
        self.counts.text_embedded += len(texts)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".npy") as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, array)
        return array

    def _bar(self, description: str, total: int):
        if self.progress is None:
            import contextlib

            return contextlib.nullcontext(lambda n: None)
        return self.progress(description, total)
