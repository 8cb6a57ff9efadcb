"""The data contract: sources yield :class:`Sample`; datamodules collate them into batch dicts.

A *source* is any iterable or indexable of :class:`Sample` (synthetic corpus, a CSV layout,
webdataset shards). Datamodules add resampling, crop/pad, caption templating, mixing,
batching and sharding. Batches are plain dicts whose keys are tower names, so the
contrastive module can look up ``batch[tower]`` for any set of towers:

- ``"audio"``: ``float32 [B, T]`` waveforms at the audio encoder's rate (``[B, C, T]`` for
  multi-channel models); ``"lengths"``: ``int64 [B]`` valid samples per row.
- ``"text"``: ``list[str]``, one caption per clip (training picks one at random).
- ``"captions"``: ``list[list[str]]``, every caption of each clip (retrieval evaluation).
- ``"image"``: ``float32 [B, 3, H, W]``.
- ``"label"``: ``int64 [B]`` (single-label) or ``float32 [B, K]`` multi-hot.
- ``"key"``: ``list[str]``, sample identifiers (file names, shard keys).

:class:`AudioDataModule` is the base of clapkit's datamodules: a model trained on one learns its
preprocessing from it (:meth:`AudioDataModule.inference_config`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule

from clapkit.audio.preprocess import InferenceConfig


class AudioDataModule(LightningDataModule):
    """A LightningDataModule that can say how its evaluation batches were made from raw audio.

    A task trained on it stores :meth:`inference_config` in its model and checkpoint, so an
    exported model reads audio the way its validation data did.
    """

    def inference_config(self) -> InferenceConfig | None:
        """The preprocessing of the evaluation path (rate, window, padding, crop, int16 round
        trip, fusion); ``None`` when it has none a model could reuse (the default)."""
        return None


@dataclass
class Sample:
    """One decoded example.

    Attributes:
        waveform: float32 ``[T]`` (or ``[C, T]``) samples.
        sample_rate: rate of ``waveform`` in Hz.
        texts: every caption of the clip (possibly empty).
        label: class index, list of class indices (multi-label) or ``None``.
        key: identifier for logs and error messages.
        meta: anything else (fold, source name, image, original path).
    """

    waveform: np.ndarray
    sample_rate: int
    texts: list[str] = field(default_factory=list)
    label: int | list[int] | None = None
    key: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def collate_samples(
    samples: Sequence[Sample],
    *,
    num_classes: int | None = None,
    pick_text: str = "first",
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """Stack fixed-length samples into a batch dict (see module docstring for keys).

    Waveforms must already share a length (datamodules apply the crop/pad policy in workers);
    the stack is one ``np.stack``, not a per-sample Python loop over tensors.

    Args:
        samples: decoded, equal-length samples.
        num_classes: when given, labels become multi-hot ``[B, num_classes]`` float targets.
        pick_text: ``first`` caption or a ``random`` one per clip.
        rng: generator for ``random`` caption picks.
    """
    waves = np.stack([s.waveform for s in samples]).astype(np.float32, copy=False)
    batch: dict[str, Any] = {
        "audio": torch.from_numpy(waves),
        "lengths": torch.tensor([s.meta.get("length", s.waveform.shape[-1]) for s in samples]),
        "key": [s.key for s in samples],
    }
    if all(s.texts for s in samples):
        if pick_text == "random":
            rng = rng or np.random.default_rng()
            batch["text"] = [s.texts[int(rng.integers(len(s.texts)))] for s in samples]
        else:
            batch["text"] = [s.texts[0] for s in samples]
        batch["captions"] = [list(s.texts) for s in samples]
    if all(s.label is not None for s in samples):
        if num_classes is not None:
            target = torch.zeros(len(samples), num_classes)
            for row, s in enumerate(samples):
                target[row, s.label] = 1.0
            batch["label"] = target
        else:
            batch["label"] = torch.tensor([int(s.label) for s in samples])
    return batch


def is_empty_batch(batch: Any) -> bool:
    """True for a batch in which every sample was skipped as bad.

    :func:`clapkit.datamodules.pipeline.collate_with_skips` keeps such a batch (its skip
    counts are logged) with a zero-row ``audio`` and nothing else to learn from; tasks
    return early on it instead of running the encoders on nothing.
    """
    audio = batch.get("audio") if isinstance(batch, dict) else None
    return isinstance(audio, torch.Tensor) and audio.shape[0] == 0


def class_names_for(names: Any, dataloader_idx: int) -> list[str] | None:
    """The class names of one eval dataloader from a datamodule's ``class_names``: a list shared
    by every labelled loader, a list of such lists, or a dict, indexed by dataloader index."""
    if isinstance(names, dict):
        names = names.get(dataloader_idx)
    elif names and isinstance(names[0], (list, tuple)):
        names = names[dataloader_idx] if dataloader_idx < len(names) else None
    return list(names) if names else None
