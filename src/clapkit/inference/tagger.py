"""The inference API of a tagger: :class:`TaggerModel` scores audio against a fixed set of classes.

``clapkit.load(dir)`` returns one for a model directory (or checkpoint) holding a
:class:`~clapkit.encoders.classifier.Classifier` (the model a ``ClassificationTask`` trains), for example the AudioCLIP
ESResNeXt-FBSP AudioSet tagger (``clapkit convert audioclip ESRNXFBSP.pt``). Audio is
prepared as every :class:`~clapkit.inference.base.InferenceModel` prepares it (resampling,
padding, deterministic crop). A tagger has class scores, not a joint embedding space: the
embedding methods refuse with one line saying so (:attr:`TaggerModel.refusal`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from clapkit.audio.preprocess import AudioInput, InferenceConfig
from clapkit.encoders.classifier import Classifier
from clapkit.inference.base import InferenceModel, NotAnEmbeddingModel

__all__ = ["NotAnEmbeddingModel", "TagOutput", "TaggerModel"]


@dataclass
class TagOutput:
    """Scores of clips against the tagger's classes.

    Attributes:
        logits: ``[N, K]`` float32 class logits.
        probabilities: ``[N, K]``: sigmoid per class for a multi-label tagger, softmax otherwise.
        class_names: the ``K`` class names (``class_0`` ... when the model has none).
    """

    logits: torch.Tensor
    probabilities: torch.Tensor
    class_names: list[str]

    def top(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable ``(class name, probability)`` of every clip, best first."""
        k = min(k, len(self.class_names))
        values, indices = self.probabilities.topk(k, dim=-1)
        return [[(self.class_names[j], float(v)) for v, j in zip(row_v, row_i)]
                for row_v, row_i in zip(values.tolist(), indices.tolist())]


class TaggerModel(InferenceModel):
    """A loaded classification model (tagger) for inference.

    Args:
        task: the :class:`~clapkit.encoders.classifier.Classifier` (a ``ClassificationTask``'s ``model``).
        inference: the directory's preprocessing settings.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        batch_size: clips per forward pass.
    """

    def __init__(self, task, inference: InferenceConfig, *, device: str | torch.device = "cpu", batch_size: int = 16):
        super().__init__(inference, device=device, batch_size=batch_size)
        #: The encoder and class head (a plain module; the attribute keeps its older name).
        if not isinstance(task, Classifier):
            raise TypeError(f"TaggerModel runs a Classifier, not a {type(task).__name__}")
        self.task = task.to(self.device).eval()

    @property
    def class_names(self) -> list[str]:
        """The model's class names (``class_0`` ... ``class_{K-1}`` when it was saved without any)."""
        names = getattr(self.task, "class_names", None) or getattr(self.task.head, "class_names", None)
        return list(names) if names else [f"class_{i}" for i in range(self.task.num_classes)]

    @property
    def refusal(self) -> str:
        """Why this model gives no embeddings (the one-line message of the embedding methods)."""
        return (f"a {self.task.num_classes}-class tagger ({type(self.task.encoder).__name__}) has class scores, "
                "not a joint audio-text embedding: use classify()/tag() (or a CLAP / AudioCLIP model to embed)")

    @torch.no_grad()
    def classify(self, audio: AudioInput | Sequence[AudioInput], sample_rate: int | None = None, *,
                 batch_size: int | None = None, progress: Callable[[int], None] | None = None) -> TagOutput:
        """Class logits and probabilities of clips (inputs as :meth:`InferenceModel.embed_audio`)."""
        def run(batch: list[np.ndarray], _: int) -> torch.Tensor:
            wave = torch.from_numpy(np.stack(batch)).to(self.device)
            with self.autocast():
                return self.task({self.task.input_key: wave}).float().cpu()

        chunks = self.map_batches(self.prepared(self.as_items(audio), sample_rate), run, batch_size=batch_size,
                                  progress=progress)
        logits = torch.cat(chunks) if chunks else torch.zeros(0, self.task.num_classes)
        probabilities = torch.sigmoid(logits) if self.task.multi_label else logits.softmax(dim=-1)
        return TagOutput(logits=logits, probabilities=probabilities, class_names=self.class_names)

    def tag(self, audio: AudioInput | Sequence[AudioInput], sample_rate: int | None = None, *,
            top_k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``top_k`` ``(class name, probability)`` of every clip, best first."""
        return self.classify(audio, sample_rate).top(top_k)
