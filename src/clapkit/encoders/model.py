"""``SavedModel``: the base of every plain model a task trains and a model directory stores."""

from __future__ import annotations

from typing import Any

from torch import nn

from clapkit.audio.preprocess import InferenceConfig


class SavedModel(nn.Module):
    """A plain model that knows how to be rebuilt: `config` is its class_path/init_args tree (None when
    built in Python without one), `inference` its InferenceConfig (None until known)."""

    config: dict[str, Any] | None = None
    inference: InferenceConfig | None = None
