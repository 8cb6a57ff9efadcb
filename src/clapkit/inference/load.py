"""The user facade: :func:`load` a model for inference from a native directory or an official
checkpoint.

Every source becomes one plain model (a :class:`~clapkit.encoders.model.SavedModel`: native
directories through :func:`clapkit.hub.native.load_model`, official checkpoints through
:mod:`clapkit.interop.registry`), and :data:`INFERENCE_CLASSES` says which inference object
wraps it.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from clapkit.hub.convert import build_converted_plain
from clapkit.hub.directory import is_native, read_directory
from clapkit.hub.native import file_fingerprint, load_model, model_fingerprint
from clapkit.interop.registry import convert_checkpoint
from clapkit.io.errors import PretrainedError

if TYPE_CHECKING:
    from clapkit.inference.clap import CLAPModel
    from clapkit.inference.separation import SeparationModel
    from clapkit.inference.tagger import TaggerModel

#: Plain model class -> ``"module:Class"`` of the inference object that wraps it (imported on
#: use: a CLAP load never imports the separation package). A subclass of a listed model gets its
#: base's entry.
INFERENCE_CLASSES: dict[str, str | None] = {
    "clapkit.encoders.tower.TowerSet": "clapkit.inference.clap:CLAPModel",
    "clapkit.encoders.classifier.Classifier": "clapkit.inference.tagger:TaggerModel",
    "clapkit.encoders.separation.network.SeparationNetwork": "clapkit.inference.separation:SeparationModel",
    # the spatial model answers its own queries: it is returned as it is, with its inference set
    "clapkit.encoders.spatial_model.SpatialAlignmentModel": None,
}


#: Clips per forward pass of a separation or tagging model when :func:`load` is given none.
DEFAULT_BATCH_SIZE = 16


def inference_class(model: nn.Module) -> type | None:
    """The :data:`INFERENCE_CLASSES` entry of ``model``'s class or of its nearest listed base
    (``None``: the model is its own inference object)."""
    for cls in type(model).__mro__:
        key = f"{cls.__module__}.{cls.__qualname__}"
        if key in INFERENCE_CLASSES:
            if INFERENCE_CLASSES[key] is None:
                return None
            module, _, name = INFERENCE_CLASSES[key].partition(":")
            return getattr(importlib.import_module(module), name)
    raise PretrainedError(f"no inference object for a {type(model).__name__} model "
                          f"(known models: {', '.join(INFERENCE_CLASSES)})")


def load(
    path: str | os.PathLike,
    *,
    text_model: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    precision: str = "32",
    batch_size: int | None = None,
    trust_pickle: bool = False,
    allow: Iterable[str] = (),
    towers: Sequence[str] | None = None,
) -> CLAPModel | SeparationModel | TaggerModel:
    """Load a model for inference.

    Args:
        path: a native model directory, a Hugging Face transformers ``ClapModel`` directory
            (``config.json`` with ``model_type: clap``), or an official LAION-CLAP / MS-CLAP /
            AudioCLIP checkpoint file (its layout is detected from its keys). A directory holding a
            separation model gives a :class:`~clapkit.inference.separation.SeparationModel`.
        text_model: for official checkpoints, the local directory of the text tower's
            Hugging Face tokenizer and config (for example a saved ``roberta-base``). For a
            native directory whose text tower names a path outside the directory (exports
            made before the text files were copied in), the directory to use instead: such a
            path is refused otherwise.
        device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto``.
        precision: ``32``, ``bf16`` or ``16`` (autocast), ``bf16-true`` or ``auto`` (see
            :mod:`clapkit.utils.precision`); front ends stay in fp32.
        batch_size: clips or texts per forward pass (``None``: the model type's default, see
            :class:`~clapkit.inference.clap.CLAPModel`; 16 for separation and tagging).
        trust_pickle: let ``torch.load`` run code from an official checkpoint, and let a CLIP
            tower read a TorchScript archive (only for files you trust; the default refuses
            such files).
        allow: module prefixes (or full class paths) a model directory's ``config.yaml`` may
            name beyond clapkit, ``torch.nn`` and ``torch.optim``; anything else is refused
            before it is imported.
        towers: for a native contrastive model, build and read only these towers now
            (``("audio",)`` for audio-only work: the text tower's weights are not read); another
            tower is loaded from the directory when first used. ``None``: every tower. Other
            sources always load every tower.

    The model is built as its plain model (:func:`clapkit.hub.native.load_model`), never as a
    LightningModule: a native directory loads without importing Lightning.

    Returns:
        a :class:`~clapkit.inference.clap.CLAPModel` with ``embed_audio`` and ``embed_text``, a
        :class:`~clapkit.inference.separation.SeparationModel` with ``separate`` (autocast at ``precision``), or
        for a classifier (tagger) a :class:`~clapkit.inference.tagger.TaggerModel` with ``classify``/``tag``.
    """
    from clapkit.io.checkpoint import trusting_code

    with trusting_code(trust_pickle):
        return _load(Path(path), text_model=text_model, device=device, precision=precision, batch_size=batch_size,
                     trust_pickle=trust_pickle, allow=allow, towers=towers)


def _load(path: Path, *, text_model, device, precision, batch_size, trust_pickle, allow, towers):
    lazy = None
    if path.is_dir() and not is_native(path):
        from clapkit.interop.hf_clap import is_hf_clap_dir

        if is_hf_clap_dir(path):
            return _load_hf_clap(path, device=device, precision=precision, batch_size=batch_size)
    if path.is_dir():
        from clapkit.io.trust import TEXT_PATH_KEYS

        replace = {key: str(text_model) for key in TEXT_PATH_KEYS} if text_model is not None else None
        model = load_model(path, towers=towers, allow=allow, replace=replace)
        inference = model.inference
        fingerprint = model_fingerprint(path)
        if towers is not None:
            lazy = tower_loader(path, allow, replace)
    elif path.is_file():
        converted = convert_checkpoint(path, text_model=text_model, trust_pickle=trust_pickle)
        model = build_converted_plain(converted)
        inference = converted.inference
        fingerprint = file_fingerprint(path)
    else:
        raise PretrainedError(f"{path}: no such model directory or checkpoint file")
    cls = inference_class(model)
    if cls is None:
        from clapkit.inference.base import resolve_device

        model = model.to(resolve_device(device)).eval()
        model.fingerprint = fingerprint
        return model
    accepted = inspect.signature(cls).parameters
    if batch_size is None and accepted["batch_size"].default is not None:
        batch_size = DEFAULT_BATCH_SIZE  # CLAPModel's None picks a size for the device itself
    options = {"device": device, "precision": precision, "batch_size": batch_size, "tower_loader": lazy}
    # Each inference object has its own default batch size and options (a tagger takes no precision).
    loaded = cls(model, inference, **{k: v for k, v in options.items() if k in accepted and v is not None})
    loaded.fingerprint = fingerprint
    return loaded


def tower_loader(directory: str | os.PathLike, allow: Iterable[str] = (),
                 replace=None) -> Callable[[str], nn.Module | None]:
    """``name -> tower`` (``None`` when the model has no such tower) built from a model directory
    with its weights: what a :class:`~clapkit.inference.clap.CLAPModel` loaded with some towers only
    uses when another is asked for."""
    names = set((read_directory(directory, allow, replace=replace).model.get("init_args") or {}).get("towers") or {})

    def load_tower(name: str) -> nn.Module | None:
        if name not in names:
            return None
        return load_model(directory, towers=(name,), allow=allow, replace=replace).towers[name]

    return load_tower


def _load_hf_clap(path: str | os.PathLike, **kwargs):
    """``clapkit.load`` for a ``ClapModel`` directory: a :class:`~clapkit.inference.clap.CLAPModel`.

    Keyword arguments (``device``, ``precision``, ``batch_size``) go to ``CLAPModel``.
    """
    import shutil

    from clapkit.inference.clap import CLAPModel
    from clapkit.interop.hf_clap import TEXT_ASSET, WEIGHT_NAMES, convert_hf_clap

    converted = convert_hf_clap(path)
    try:
        model = build_converted_plain(converted)
    finally:
        shutil.rmtree(converted.assets[TEXT_ASSET], ignore_errors=True)  # the tokenizer is in memory now
    clap = CLAPModel(model, converted.inference, **kwargs)
    path = Path(path)
    weights = [path / n for n in WEIGHT_NAMES if (path / n).is_file()]
    clap.fingerprint = file_fingerprint(path / "config.json", *weights)
    return clap
