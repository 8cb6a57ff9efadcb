"""The user facade: :func:`load` a model for inference from a native directory or an official
checkpoint.

The machinery lives one layer down, each in its own module (this module re-exports their
public names, so ``from clapkit.inference.load import ...`` keeps working):

- :mod:`clapkit.io.checkpoint`: safe reading, unwrapping, strict filling of weights;
- :mod:`clapkit.hub.native`: clapkit's native format (``config.yaml`` + ``model.safetensors``),
  with the class-path allow-list that keeps a model directory from importing other code;
- :mod:`clapkit.interop.registry`: official layouts (:data:`CHECKPOINT_FORMATS`) and their
  conversion;
- :mod:`clapkit.audio.preprocess`: :class:`InferenceConfig`, the preprocessing spec.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from clapkit.audio.preprocess import InferenceConfig
from clapkit.hub.native import (
    ALLOWED_CLASS_PATHS,
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHT_FILES,
    WEIGHTS_NAME,
    check_class_paths,
    file_fingerprint,
    instantiate_model,
    is_native,
    load_native,
    load_weights_into,
    map_paths,
    model_config_of,
    model_fingerprint,
    native_model_tree,
    plain,
    portable,
    read_model_section,
    read_native_config,
    read_native_weights,
    save_pretrained,
)
from clapkit.interop.registry import (
    CHECKPOINT_FORMATS,
    CheckpointFormat,
    Converted,
    asset_resolver,
    build_converted,
    build_converted_plain,
    checkpoint_format,
    convert_checkpoint,
    detect_format,
    save_converted,
)
from clapkit.io.checkpoint import (
    CheckpointError,
    PretrainedError,
    compact_buffers,
    fill_aliases,
    load_state_dict_strict,
    read_checkpoint,
    read_state_dict,
    unique_tensors,
    unwrap_state_dict,
)

if TYPE_CHECKING:
    from clapkit.inference.clap import CLAPModel
    from clapkit.inference.separation import SeparationModel
    from clapkit.inference.tagger import TaggerModel

from clapkit.hub.native import _copy_asset  # noqa: E402,F401
from clapkit.io.checkpoint import preview  # noqa: E402

# Old private names, kept for code that imported them from here.
_plain, _map_paths, _portable, _asset_resolver = plain, map_paths, portable, asset_resolver
_unique_tensors, _fill_aliases, _preview = unique_tensors, fill_aliases, preview

__all__ = [
    "ALLOWED_CLASS_PATHS", "CHECKPOINT_FORMATS", "CONFIG_NAME", "FORMAT_VERSION", "WEIGHTS_NAME", "WEIGHT_FILES",
    "CheckpointError", "CheckpointFormat", "Converted", "InferenceConfig", "PretrainedError", "build_converted",
    "check_class_paths", "checkpoint_format", "compact_buffers", "convert_checkpoint", "detect_format",
    "file_fingerprint", "instantiate_model", "is_native", "load", "load_native", "load_state_dict_strict",
    "load_weights_into", "model_config_of", "model_fingerprint", "native_model_tree", "read_checkpoint", "read_model_section",
    "read_native_config", "read_native_weights", "read_state_dict", "save_converted", "save_pretrained",
    "unwrap_state_dict",
]


#: The plain model's class path -> ``(module, class)`` of the inference object that runs it, imported
#: only when such a model is loaded (a CLAP load never imports the separation package and peft);
#: ``None``: the plain model itself is the inference object.
INFERENCE_CLASSES: dict[str, tuple[str, str] | None] = {
    "clapkit.encoders.classifier.Classifier": ("clapkit.inference.tagger", "TaggerModel"),
    "clapkit.encoders.separation.network.SeparationNetwork": ("clapkit.inference.separation", "SeparationModel"),
    "clapkit.encoders.spatial_model.SpatialAlignmentModel": None,
}


def inference_object(model: torch.nn.Module, inference: InferenceConfig, *, device, precision: str,
                     batch_size: int | None):
    """The :data:`INFERENCE_CLASSES` object running ``model`` (``None`` for a model not in the table)."""
    import importlib
    import inspect

    from clapkit.inference.clap import resolve_device

    key = f"{type(model).__module__}.{type(model).__qualname__}"
    if key not in INFERENCE_CLASSES:
        return None
    if INFERENCE_CLASSES[key] is None:
        model.inference = inference
        return model.to(resolve_device(device)).eval()
    module, name = INFERENCE_CLASSES[key]
    runner = getattr(importlib.import_module(module), name)
    options = {"device": device, "precision": precision, "batch_size": 16 if batch_size is None else batch_size}
    accepted = inspect.signature(runner).parameters
    return runner(model, inference, **{k: v for k, v in options.items() if k in accepted})


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

    The model is built as its plain modules (:mod:`clapkit.hub.plain`), never as a LightningModule:
    a native directory loads without importing Lightning.

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
    from clapkit.inference.clap import CLAPModel

    if path.is_dir() and not is_native(path):
        from clapkit.interop.hf_clap import is_hf_clap_dir, load_hf_clap

        if is_hf_clap_dir(path):
            return load_hf_clap(path, device=device, precision=precision, batch_size=batch_size)
    lazy = None
    if path.is_dir():
        from clapkit.hub.plain import load_plain, tower_loader
        from clapkit.io.trust import TEXT_PATH_KEYS

        replace = {key: str(text_model) for key in TEXT_PATH_KEYS} if text_model is not None else None
        model, _, inference = load_plain(path, towers=towers, allow=allow, replace=replace)
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
    if (runner := inference_object(model, inference, device=device, precision=precision,
                                   batch_size=batch_size)) is not None:
        runner.fingerprint = fingerprint
        return runner
    clap = CLAPModel(model, inference, device=device, precision=precision, batch_size=batch_size, tower_loader=lazy)
    clap.fingerprint = fingerprint
    return clap
