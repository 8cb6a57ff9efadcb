"""``SavedModel``: the base of every plain model a task owns and a model directory stores."""

from __future__ import annotations

from typing import Any

from torch import nn

from clapkit.audio.preprocess import InferenceConfig


class SavedModel(nn.Module):
    """A plain model that knows how to be rebuilt.

    Its constructor takes exactly what rebuilds it, so instantiating :attr:`config` and
    strict-loading the model's ``state_dict`` gives the same model.

    Attributes:
        config: its ``class_path``/``init_args`` tree (``None`` when built in Python without one).
        inference: its :class:`~clapkit.audio.preprocess.InferenceConfig` (``None`` until known).
    """

    config: dict[str, Any] | None = None
    inference: InferenceConfig | None = None
