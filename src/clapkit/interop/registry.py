"""The registry of official checkpoint layouts and the conversion entry points.

Each family module (``laion_clap``, ``msclap``, ``audioclip``, ...) exposes a
:class:`CheckpointFormat` instance; :data:`CHECKPOINT_FORMATS` names them by
``"module:attribute"`` so a family is imported only when a checkpoint needs it (a broken
optional interop module never breaks native loading). A new format is a new module plus one
line here.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clapkit.audio.preprocess import InferenceConfig
from clapkit.io.checkpoint import (
    CheckpointError,
    PretrainedError,
    read_checkpoint,
    unwrap_state_dict,
)


@dataclass
class Converted:
    """A model described in clapkit's terms, ready to instantiate or save.

    Attributes:
        model_config: ``class_path``/``init_args`` tree of the LightningModule (its plain model
            is built through :func:`clapkit.interop.legacy.split_task_tree`). Paths written as
            ``./<name>`` refer to ``assets[name]``.
        state_dict: weights keyed like the plain model's ``state_dict``.
        inference: audio/text preprocessing of the model.
        assets: name -> source directory or file, copied into the native directory.
        description: one line saying what the checkpoint contains (for messages).
    """

    model_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    inference: InferenceConfig
    assets: dict[str, Path] = field(default_factory=dict)
    description: str = ""


class CheckpointFormat(ABC):
    """One official checkpoint layout (an entry of :data:`CHECKPOINT_FORMATS`).

    Subclasses say what a layout's tensors look like in :meth:`matches_state`; :meth:`matches`
    finds the tensors inside the file's wrappers first (``state_dict``, ``model``, DDP's
    ``module.``), once for every format.
    """

    #: Short name used on the command line (``clapkit convert <name> ...``).
    name: str = ""

    def matches(self, checkpoint: Mapping[str, Any]) -> bool:
        """Whether a loaded checkpoint (the object ``torch.load`` returned) has this layout."""
        try:
            state = unwrap_state_dict(checkpoint)
        except CheckpointError:
            return False
        return self.matches_state(state)

    def matches_state(self, state: Mapping[str, torch.Tensor]) -> bool:
        """Whether the unwrapped ``{key: tensor}`` dict has this layout (a format implements this,
        or overrides :meth:`matches` itself when its files are not state dicts)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither matches_state nor matches")

    @abstractmethod
    def convert(self, checkpoint: Mapping[str, Any], *, text_model: str | os.PathLike | None = None) -> Converted:
        """Translate the checkpoint; raise :class:`PretrainedError` naming what is wrong."""


#: Official layouts ``load`` and ``clapkit convert`` understand: name -> "module:attribute" of a
#: :class:`CheckpointFormat` instance (imported on first use).
CHECKPOINT_FORMATS: dict[str, str] = {
    "laion-clap": "clapkit.interop.laion_clap:CHECKPOINT_FORMAT",
    "msclap": "clapkit.interop.msclap:CHECKPOINT_FORMAT",
    "audioclip": "clapkit.interop.audioclip:CHECKPOINT_FORMAT",
}


def checkpoint_format(name: str) -> CheckpointFormat:
    """The registered :class:`CheckpointFormat` called ``name``."""
    if name not in CHECKPOINT_FORMATS:
        raise PretrainedError(f"unknown checkpoint format {name!r}; known: {', '.join(CHECKPOINT_FORMATS)}")
    module_name, attribute = CHECKPOINT_FORMATS[name].split(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise PretrainedError(f"checkpoint format {name!r} is unavailable: {exc}") from None


def detect_format(checkpoint: Mapping[str, Any], path: str | os.PathLike = "<checkpoint>") -> CheckpointFormat:
    """The registered format whose layout ``checkpoint`` has."""
    available = []
    for name in CHECKPOINT_FORMATS:
        try:
            fmt = checkpoint_format(name)
        except PretrainedError:
            continue
        available.append(name)
        if fmt.matches(checkpoint):
            return fmt
    keys = ", ".join(list(checkpoint)[:6])
    raise PretrainedError(
        f"{path}: unrecognised checkpoint layout (top-level keys: {keys}); "
        f"known layouts: {', '.join(available) or 'none installed'}"
    )


def convert_checkpoint(
    path: str | os.PathLike,
    *,
    format: str | None = None,
    text_model: str | os.PathLike | None = None,
    trust_pickle: bool = False,
) -> Converted:
    """Read an official checkpoint and translate it (layout detected unless ``format`` given)."""
    checkpoint = read_checkpoint(path, trust_pickle=trust_pickle)
    if format is None:
        fmt = detect_format(checkpoint, path)
    else:
        fmt = checkpoint_format(format)
        if not fmt.matches(checkpoint):
            raise PretrainedError(f"{path}: not a {format} checkpoint (top-level keys: {', '.join(list(checkpoint)[:6])})")
    try:
        return fmt.convert(checkpoint, text_model=text_model)
    except PretrainedError as exc:
        raise PretrainedError(f"{path}: {exc}") from None
