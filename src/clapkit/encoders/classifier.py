"""``Classifier``: the plain modules of a tagger (an encoder and its class head).

What :class:`~clapkit.inference.tagger.TaggerModel` holds for inference, and what :mod:`clapkit.hub.plain`
builds from a ``ClassificationTask`` config without the task; the task holds the same
``encoder`` and ``head``, so the state dict keys are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class Classifier(nn.Module):
    """An encoder's embedding mapped to class logits.

    Args:
        encoder: any clapkit encoder returning an ``EncoderOutput``.
        head: ``embedding -> logits`` (a linear head, ``nn.Identity`` when the encoder's
            embedding is the logits, or a custom head such as a text-prompt classifier).
        num_classes: number of classes ``K``.
        multi_label: sigmoid per class (``True``) or softmax (``False``) probabilities.
        input_key: the batch key the encoder reads.
        pass_lengths: also pass ``lengths=batch["lengths"]`` to the encoder when present.
        class_names: the ``K`` class names, when known.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, num_classes: int, multi_label: bool = False,
                 input_key: str = "audio", pass_lengths: bool = False, class_names: Sequence[str] | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.num_classes = int(num_classes)
        self.multi_label = bool(multi_label)
        self.input_key = input_key
        self.pass_lengths = pass_lengths
        self.class_names = list(class_names) if class_names is not None else None

    @classmethod
    def of(cls, model: nn.Module) -> Classifier:
        """``model`` itself, or the encoder and head of a ``ClassificationTask``."""
        if isinstance(model, Classifier):
            return model
        missing = [a for a in ("encoder", "head", "num_classes", "multi_label") if not hasattr(model, a)]
        if missing:
            raise TypeError(f"{type(model).__name__} is not a classifier (no {', '.join(missing)})")
        return cls(model.encoder, model.head, model.num_classes, model.multi_label,
                   getattr(model, "input_key", "audio"), getattr(model, "pass_lengths", False),
                   getattr(model, "class_names", None))

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Logits ``[B, K]`` of ``batch[input_key]``."""
        kwargs = {}
        if self.pass_lengths and batch.get("lengths") is not None:
            kwargs["lengths"] = batch["lengths"]
        return self.head(self.encoder(batch[self.input_key], **kwargs).embedding)
