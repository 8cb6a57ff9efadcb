"""``Classifier``: an encoder and its class head, the model a ``ClassificationTask`` trains.

What :class:`~clapkit.inference.tagger.TaggerModel` runs for inference. The classifier builds its
own head from ``head`` / ``use_head`` / ``head_dropout``, so a model directory's config rebuilds it
alone; its state dict keys are ``encoder.*`` and ``head.*``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from clapkit.encoders.model import SavedModel


class Classifier(SavedModel):
    """An encoder's embedding mapped to class logits.

    Args:
        encoder: any clapkit encoder returning an ``EncoderOutput`` (audio, image or text).
        num_classes: number of classes ``K``.
        multi_label: sigmoid per class (``True``) or softmax (``False``) probabilities.
        use_head: add ``Dropout(head_dropout)`` and ``Linear(encoder.output_dim, num_classes)``.
            ``False`` uses the encoder's embedding as the logits (it must then be
            ``num_classes`` wide, e.g. an ESResNeXt built with ``output_dim=527``).
        head_dropout: dropout before the linear head.
        head: a custom head ``embedding -> logits`` replacing the linear one (``use_head`` is
            then ignored), e.g. :class:`~clapkit.encoders.prompt_head.TextPromptClassifier`.
        input_key: the batch key the encoder reads.
        pass_lengths: also pass ``lengths=batch["lengths"]`` to the encoder when present.
        class_names: the ``K`` class names, when known.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, multi_label: bool = False, use_head: bool = True,
                 head_dropout: float = 0.0, head: nn.Module | None = None, input_key: str = "audio",
                 pass_lengths: bool = False, class_names: Sequence[str] | None = None):
        super().__init__()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names for num_classes={num_classes}")
        self.encoder = encoder
        if head is not None:
            self.head: nn.Module = head
        elif use_head:
            self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(encoder.output_dim, num_classes))
        else:
            if encoder.output_dim != num_classes:
                raise ValueError(
                    f"use_head=False needs an encoder whose output_dim equals num_classes; "
                    f"got output_dim={encoder.output_dim}, num_classes={num_classes}"
                )
            self.head = nn.Identity()
        self.num_classes = int(num_classes)
        self.multi_label = bool(multi_label)
        self.input_key = input_key
        self.pass_lengths = pass_lengths
        self.class_names = list(class_names) if class_names is not None else None

    def encode(self, batch: dict[str, Any]):
        """The encoder's ``EncoderOutput`` for ``batch[input_key]``."""
        kwargs = {}
        if self.pass_lengths and batch.get("lengths") is not None:
            kwargs["lengths"] = batch["lengths"]
        return self.encoder(batch[self.input_key], **kwargs)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Logits ``[B, K]`` of ``batch[input_key]``."""
        return self.head(self.encode(batch).embedding)
