"""A classification head made of class-name text embeddings (AudioCLIP-style fine-tuning).

AudioCLIP fine-tunes its audio head on ESC-50 / UrbanSound8K without a new linear layer: the
classifier is the frozen text tower's embedding of each class name, and the logits are the
scaled cosine similarities between the audio embedding and those class embeddings, exactly
as in zero-shot classification. Training then moves the audio embedding towards the text of
its class, keeping the joint space intact for the other modalities.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TextPromptClassifier(nn.Module):
    """Logits ``scale * cos(embedding, text(prompt(class)))`` over a fixed set of classes.

    Args:
        text: the text tower (a :class:`~clapkit.encoders.base.TextEncoder` or a
            :class:`~clapkit.encoders.tower.Tower`) whose space the embedding lives in; frozen
            (no gradients, always in eval mode).
        class_names: the class names in label order. ``None``: taken from the datamodule's
            ``class_names`` by :class:`~clapkit.lightning_modules.classification.ClassificationTask`.
        templates: prompt templates with one ``{}`` for the class name; the class embedding
            is the normalised mean over templates (a prompt ensemble). AudioCLIP uses the
            bare names (``["{}"]``).
        logit_scale: initial scale of the cosine similarities (AudioCLIP: 100).
        learn_scale: train the log-scale (clamped to at most ``log(100)``).
    """

    def __init__(
        self,
        text: nn.Module,
        class_names: list[str] | None = None,
        templates: list[str] | None = None,
        logit_scale: float = 100.0,
        learn_scale: bool = False,
    ):
        super().__init__()
        self.text = text.requires_grad_(False).eval()
        self.templates = list(templates or ["{}"])
        if any("{}" not in t for t in self.templates):
            raise ValueError(f"every template needs a '{{}}' for the class name, got {self.templates}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(logit_scale)), requires_grad=learn_scale)
        self.class_names: list[str] | None = None
        self._classes: torch.Tensor | None = None
        if class_names is not None:
            self.set_class_names(class_names)

    def set_class_names(self, class_names: list[str]) -> None:
        """Use these classes (label order); their embeddings are computed on the next call."""
        if not class_names:
            raise ValueError("TextPromptClassifier needs at least one class name")
        self.class_names = list(class_names)
        self._classes = None

    def train(self, mode: bool = True):
        super().train(mode)
        self.text.eval()  # a frozen teacher: no dropout, no BatchNorm updates
        return self

    @torch.no_grad()
    def class_embeddings(self, device: torch.device) -> torch.Tensor:
        """Normalised class embeddings ``[K, D]`` (cached until the class names change)."""
        if self.class_names is None:
            raise RuntimeError("TextPromptClassifier has no class names: pass class_names or use a datamodule "
                               "that exposes class_names")
        if self._classes is None or self._classes.device != device:
            per_template = [
                F.normalize(self.text([t.format(name) for name in self.class_names]).embedding.float(), dim=-1)
                for t in self.templates
            ]
            self._classes = F.normalize(torch.stack(per_template).mean(0), dim=-1).to(device)
        return self._classes

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K]`` for embeddings ``[B, D]``."""
        classes = self.class_embeddings(embedding.device)
        scale = self.log_scale.clamp(max=math.log(100.0)).exp()
        return scale * F.normalize(embedding.float(), dim=-1) @ classes.T
