"""clapkit's native model format, official-checkpoint dispatch, and :func:`load`.

A native model is a directory::

    config.yaml          model:      class_path/init_args tree (LightningCLI's ``model:`` section)
                         inference:  how raw audio becomes the model's input (see InferenceConfig)
    model.safetensors    the weights (shared tensors stored once)
    <assets>/            optional files the model config points at with ``./<name>`` paths
                         (for example a text tower's tokenizer and HF config)

Relative paths (``./...``) inside ``model:`` are resolved against the directory, so a model
directory can be moved or copied as a whole.

Official checkpoints (LAION-CLAP, MS-CLAP) are recognised by their layout through the
:data:`CHECKPOINT_FORMATS` registry: each entry is a :class:`CheckpointFormat` that says whether
a loaded checkpoint is its kind and converts it into a :class:`Converted` model (config +
state dict + inference settings). :func:`load` accepts either kind of path.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch import nn

from clapkit.audio.crop import CropMode, PadMode

if TYPE_CHECKING:
    from clapkit.inference import CLAPModel
    from clapkit.separator import SeparationModel

FORMAT_VERSION = 1
CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.safetensors"


class PretrainedError(ValueError):
    """A model file or directory cannot be used; the message names the path and the problem."""


@dataclass
class InferenceConfig:
    """How :class:`~clapkit.inference.CLAPModel` turns raw audio and text into model inputs.

    Attributes:
        sample_rate: rate the audio tower expects; inputs are resampled to it.
        clip_samples: the window, in samples at ``sample_rate``.
        pad: policy for clips shorter than the window: ``repeatpad`` (LAION-CLAP: tile
            ``floor(window / length)`` times, zero-pad the rest), ``repeat`` (MS-CLAP: tile and
            cut) or ``pad`` (zeros).
        crop: where a clip longer than the window is cut when ``fusion`` is off. Inference
            never crops at random, so the same audio always gives the same embedding.
        int16_roundtrip: quantise to int16 and back first (LAION-CLAP does this).
        fusion: the audio tower takes clips longer than the window whole (feature fusion)
            instead of a crop.
        text_max_length: token limit for the text tower, ``None`` for the tower's own.
    """

    sample_rate: int = 48000
    clip_samples: int = 480000
    pad: PadMode = "repeatpad"
    crop: CropMode = "center"
    int16_roundtrip: bool = False
    fusion: bool = False
    text_max_length: int | None = None

    def __post_init__(self) -> None:
        if self.crop == "random":
            raise ValueError("InferenceConfig.crop must be deterministic (start, center or seeded), not random")
        if self.sample_rate <= 0 or self.clip_samples <= 0:
            raise ValueError("InferenceConfig.sample_rate and clip_samples must be positive")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> InferenceConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown inference settings {unknown}; expected some of {sorted(known)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Converted:
    """A model described in clapkit's terms, ready to instantiate or save.

    Attributes:
        model_config: ``class_path``/``init_args`` tree of the LightningModule. Paths written
            as ``./<name>`` refer to ``assets[name]``.
        state_dict: weights keyed like the instantiated module's ``state_dict``.
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
    """One official checkpoint layout (an entry of :data:`CHECKPOINT_FORMATS`)."""

    #: Short name used on the command line (``clapkit convert <name> ...``).
    name: str = ""

    @abstractmethod
    def matches(self, checkpoint: Mapping[str, Any]) -> bool:
        """Whether a loaded checkpoint (the object ``torch.load`` returned) has this layout."""

    @abstractmethod
    def convert(self, checkpoint: Mapping[str, Any], *, text_model: str | os.PathLike | None = None) -> Converted:
        """Translate the checkpoint; raise :class:`PretrainedError` naming what is wrong."""


#: Official layouts ``load`` and ``clapkit convert`` understand: name -> "module:attribute" of a
#: :class:`CheckpointFormat` instance (imported on first use, so a broken optional interop
#: module never breaks native loading).
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


def read_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> Mapping[str, Any]:
    """``torch.load`` a checkpoint on CPU, safely (``weights_only=True``) unless ``trust_pickle``.

    Raises:
        PretrainedError: missing, truncated, not a checkpoint, or a pickle that needs code.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise PretrainedError(f"{path}: empty file, not a checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise PretrainedError(
                f"{path}: refusing to unpickle code from the checkpoint ({reason}); "
                "if you trust the file, pass trust_pickle=True (CLI: --trust-checkpoint)"
            ) from None
        raise PretrainedError(f"{path}: not a PyTorch checkpoint ({reason})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PretrainedError(f"{path}: truncated or not a PyTorch checkpoint ({reason})") from None
    if not isinstance(checkpoint, Mapping):
        raise PretrainedError(f"{path}: expected a dict checkpoint, found {type(checkpoint).__name__}")
    return checkpoint


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


# --------------------------------------------------------------------------- instantiation


def instantiate_model(model_config: Mapping[str, Any], resolve: Callable[[str], str] | None = None) -> nn.Module:
    """Build a module from a ``class_path``/``init_args`` tree the way LightningCLI does.

    Args:
        model_config: the tree (LightningCLI's ``model:`` section).
        resolve: maps each ``./relative`` path string to a real path.
    """
    from jsonargparse import ArgumentParser

    config = _map_paths(_plain(model_config), resolve) if resolve else _plain(model_config)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=nn.Module)
    try:
        namespace = parser.parse_object({"model": config})
        return parser.instantiate(namespace).model
    except Exception as exc:
        # jsonargparse nests one line per level of the config; keep the innermost (the cause).
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        message = " ".join(lines[-2:]) if lines else type(exc).__name__
        raise PretrainedError(f"cannot build the model from its config: {message[:400]}") from None


def build_converted(converted: Converted) -> nn.Module:
    """Instantiate a :class:`Converted` model and load its weights, requiring full coverage."""
    model = instantiate_model(converted.model_config, resolve=_asset_resolver(converted.assets))
    load_state_dict_strict(model, converted.state_dict, what=converted.description or "checkpoint")
    return model.eval()


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "weights") -> None:
    """``load_state_dict`` that names every missing/unexpected key and shape mismatch on failure."""
    expected = model.state_dict()
    state_dict = _fill_aliases(expected, state_dict)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys ({_preview(missing)})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys ({_preview(unexpected)})")
        if mismatched:
            parts.append(f"shape mismatch ({_preview(mismatched)})")
        raise PretrainedError(f"{what} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(dict(state_dict), strict=True)


# --------------------------------------------------------------------------- native format


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike,
    inference: InferenceConfig | Mapping[str, Any],
    model_config: Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    assets: Mapping[str, str | os.PathLike] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` in clapkit's native format, atomically (temp directory, then rename).

    Args:
        model: the LightningModule (for example a ``ContrastiveTask``).
        directory: the model directory to create.
        inference: preprocessing settings (an :class:`InferenceConfig` or its dict).
        model_config: the module's ``class_path``/``init_args`` tree, or a LightningCLI
            ``config.yaml`` whose ``model:`` section is used. Defaults to the tree LightningCLI
            records in ``model.hparams`` when it built the module.
        assets: name -> file or directory copied into the model directory (weight files
            excluded: every weight is in ``model.safetensors``); config strings naming the source
            path become ``./<name>``.
        overwrite: replace an existing directory.

    Every ``load_weights`` argument in the saved config is set to ``False``: the weights come
    from ``model.safetensors``, so loading pretrained ones while building the model is wasted.
    """
    directory = Path(directory)
    inference = inference if isinstance(inference, InferenceConfig) else InferenceConfig.from_dict(inference)
    config = _portable(model_config_of(model, model_config), assets or {})
    if directory.exists() and not overwrite and (not directory.is_dir() or any(directory.iterdir())):
        raise PretrainedError(f"{directory}: already exists (pass overwrite=True / --overwrite to replace it)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        for name, source in (assets or {}).items():
            _copy_asset(Path(source), tmp / name)
        document = {"clapkit_format": FORMAT_VERSION, "model": config, "inference": inference.to_dict()}
        (tmp / CONFIG_NAME).write_text(yaml.safe_dump(_plain(document), sort_keys=False))
        from safetensors.torch import save_file

        save_file(_unique_tensors(model.state_dict()), str(tmp / WEIGHTS_NAME),
                  metadata={"format": "pt", "clapkit_format": str(FORMAT_VERSION)})
        _replace_directory(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def save_converted(converted: Converted, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Instantiate a converted checkpoint (checking every weight) and save it natively."""
    model = build_converted(converted)
    return save_pretrained(
        model,
        directory,
        converted.inference,
        converted.model_config,
        assets=converted.assets,
        overwrite=overwrite,
    )


def is_native(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory in clapkit's native format."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG_NAME).is_file()


def read_native_config(directory: str | os.PathLike) -> tuple[dict[str, Any], InferenceConfig]:
    """The ``model:`` tree and :class:`InferenceConfig` of a native model directory."""
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise PretrainedError(f"{directory}: not a clapkit model directory (no {CONFIG_NAME})")
    try:
        document = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as exc:
        raise PretrainedError(f"{config_path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(document, dict) or "model" not in document or "inference" not in document:
        raise PretrainedError(f"{config_path}: expected 'model' and 'inference' sections")
    version = document.get("clapkit_format", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise PretrainedError(f"{config_path}: format version {version} is newer than this clapkit ({FORMAT_VERSION})")
    try:
        inference = InferenceConfig.from_dict(document["inference"] or {})
    except (TypeError, ValueError) as exc:
        raise PretrainedError(f"{config_path}: bad inference section ({exc})") from None
    return document["model"], inference


def native_model_tree(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``model:`` tree of a native directory with its ``./`` asset paths made absolute,
    ready for LightningCLI's ``--model``."""
    directory = Path(directory)
    config, _ = read_native_config(directory)
    return _map_paths(_plain(config), lambda p: str((directory / p).resolve()))


def read_native_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a native directory's ``model.safetensors`` (or of a ``.safetensors`` file)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    if not weights.is_file():
        raise PretrainedError(f"{path}: no {WEIGHTS_NAME}")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise PretrainedError(f"{weights}: truncated or not a safetensors file ({exc})") from None


def load_weights_into(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a native directory's weights into an already-built ``model``, requiring full coverage."""
    load_state_dict_strict(model, read_native_weights(path), what=str(path))


def load_native(directory: str | os.PathLike, load_weights: bool = True) -> tuple[nn.Module, dict[str, Any], InferenceConfig]:
    """Instantiate a native model directory: ``(module in eval mode, model config, inference)``.

    With ``load_weights=False`` only ``config.yaml`` (and its assets) are read: for a model
    nested in a larger one whose own ``model.safetensors`` carries every weight.
    """
    directory = Path(directory)
    config, inference = read_native_config(directory)
    weights = directory / WEIGHTS_NAME
    if load_weights and not weights.is_file():
        raise PretrainedError(f"{directory}: no {WEIGHTS_NAME}")
    from clapkit.fastinit import skip_random_init

    # The strict load below overwrites every weight: drawing random ones first is wasted time.
    with skip_random_init() if load_weights else contextlib.nullcontext():
        model = instantiate_model(config, resolve=lambda p: str((directory / p).resolve()))
    if load_weights:
        load_state_dict_strict(model, read_native_weights(weights), what=f"{weights} (for the model in {CONFIG_NAME})")
    return model.eval(), config, inference


def load(
    path: str | os.PathLike,
    *,
    text_model: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    precision: str = "32",
    batch_size: int = 16,
    trust_pickle: bool = False,
) -> CLAPModel | SeparationModel:
    """Load a model for inference.

    Args:
        path: a native model directory, a Hugging Face transformers ``ClapModel`` directory
            (``config.json`` with ``model_type: clap``), or an official LAION-CLAP / MS-CLAP /
            AudioCLIP checkpoint file (its layout is detected from its keys). A directory holding a
            separation model gives a :class:`~clapkit.separator.SeparationModel`.
        text_model: for official checkpoints, the local directory of the text tower's
            Hugging Face tokenizer and config (for example a saved ``roberta-base``).
        device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto``.
        precision: ``32``, ``bf16`` or ``16`` (autocast), ``bf16-true`` or ``auto`` (see
            :mod:`clapkit.precision`); front ends stay in fp32.
        batch_size: clips or texts per forward pass.
        trust_pickle: let ``torch.load`` run code from an official checkpoint (only for files
            you trust; the default refuses such files).

    Returns:
        a :class:`~clapkit.inference.CLAPModel` with ``embed_audio`` and ``embed_text``, or a
        :class:`~clapkit.separator.SeparationModel` with ``separate`` (``precision`` unused).
    """
    from clapkit.inference import CLAPModel

    path = Path(path)
    if path.is_dir() and not is_native(path):
        from clapkit.interop.hf_clap import is_hf_clap_dir, load_hf_clap

        if is_hf_clap_dir(path):
            return load_hf_clap(path, device=device, precision=precision, batch_size=batch_size)
    if path.is_dir():
        model, _, inference = load_native(path)
        from clapkit.separator import SeparationModel, is_separation_task

        if is_separation_task(model):
            return SeparationModel(model, inference, device=device, batch_size=batch_size)
        fingerprint = file_fingerprint(path / CONFIG_NAME, path / WEIGHTS_NAME)
    elif path.is_file():
        converted = convert_checkpoint(path, text_model=text_model, trust_pickle=trust_pickle)
        model = build_converted(converted)
        inference = converted.inference
        fingerprint = file_fingerprint(path)
    else:
        raise PretrainedError(f"{path}: no such model directory or checkpoint file")
    clap = CLAPModel(model, inference, device=device, precision=precision, batch_size=batch_size)
    clap.fingerprint = fingerprint
    return clap


# --------------------------------------------------------------------------- helpers


def read_model_section(path: str | os.PathLike) -> dict[str, Any]:
    """The ``model:`` tree (``class_path``/``init_args``) of a LightningCLI config file.

    Raises:
        PretrainedError: the file cannot be read or parsed, or has no ``model`` mapping.
    """
    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PretrainedError(f"{path}: cannot read the config ({str(exc).splitlines()[0]})") from None
    if not isinstance(document, dict) or not isinstance(document.get("model"), dict):
        raise PretrainedError(f"{path}: no 'model' section")
    return _plain(document["model"])


def model_config_of(model: nn.Module, model_config: Mapping[str, Any] | str | os.PathLike | None) -> dict[str, Any]:
    """The ``class_path``/``init_args`` tree of ``model`` (see :func:`save_pretrained`'s ``model_config``)."""
    if isinstance(model_config, (str, os.PathLike)):
        return read_model_section(model_config)
    if model_config is not None:
        return _plain(model_config)
    hparams = dict(getattr(model, "hparams", {}) or {})
    if "_class_path" in hparams:
        hparams.pop("_instantiator", None)
        return _plain({"class_path": hparams.pop("_class_path"), "init_args": hparams})
    raise PretrainedError(
        "the model's config is unknown: pass model_config (the class_path/init_args tree or the "
        "LightningCLI config.yaml it was trained with)"
    )


def _plain(value):
    """Tuples -> lists, Paths -> str, nested Mappings -> dicts (YAML-safe, comparable)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _map_paths(value, resolve: Callable[[str], str]):
    if isinstance(value, dict):
        return {k: _map_paths(v, resolve) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_paths(v, resolve) for v in value]
    if isinstance(value, str) and value.startswith("./"):
        return resolve(value)
    return value


def _asset_resolver(assets: Mapping[str, Path]) -> Callable[[str], str]:
    def resolve(relative: str) -> str:
        head, _, rest = relative[2:].partition("/")
        if head in assets:
            return str(Path(assets[head]) / rest) if rest else str(assets[head])
        return relative

    return resolve


#: Files an asset directory may hold that the native format never needs (weights live in
#: model.safetensors).
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.ot",
                "*.index.json")


def _portable(config: dict[str, Any], assets: Mapping[str, str | os.PathLike]) -> dict[str, Any]:
    sources = {}
    for name, source in assets.items():
        sources[os.fspath(source)] = f"./{name}"
        sources[str(Path(source).resolve())] = f"./{name}"

    def walk(value):
        if isinstance(value, dict):
            return {k: (False if k == "load_weights" and v is True else walk(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, str) and value in sources:
            return sources[value]
        return value

    return walk(config)


def _copy_asset(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(*WEIGHT_FILES))
    elif source.is_file():
        shutil.copy2(source, target)
    else:
        raise PretrainedError(f"{source}: asset not found")


def _replace_directory(tmp: Path, directory: Path) -> None:
    if not directory.exists():
        os.replace(tmp, directory)
        return
    # A directory cannot be renamed over a non-empty one: move the old aside first, so the
    # target path always holds either the complete old model or the complete new one.
    trash = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.old-"))
    os.replace(directory, trash / "old")
    try:
        os.replace(tmp, directory)
    except BaseException:
        os.replace(trash / "old", directory)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def _unique_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Compact, contiguous CPU copies with each shared tensor stored once (under its first name).

    safetensors refuses views and shared storage; the names left out are aliases (tied weights,
    a module registered twice) that :func:`_fill_aliases` restores on load.
    """
    seen: set[tuple] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                    tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() and identity in seen:
            continue
        seen.add(identity)
        out[name] = tensor.detach().to("cpu", copy=True).contiguous()
    return out


def _fill_aliases(expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A module registered under two names (HTSAT's front end is also ``batcher.frontend``)
    shows its tensors under both; a checkpoint fills one, so copy it to the other names."""
    groups: dict[tuple, list[str]] = {}
    for key, tensor in expected.items():
        if tensor.numel() and tensor.device.type != "meta":
            groups.setdefault((tensor.data_ptr(), tuple(tensor.shape), tensor.dtype), []).append(key)
    filled = dict(state_dict)
    for keys in groups.values():
        if len(keys) < 2:
            continue
        present = [k for k in keys if k in state_dict]
        if present:
            for k in keys:
                filled.setdefault(k, state_dict[present[0]])
    return filled


def _preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit})" if len(items) > limit else "")


def file_fingerprint(*paths: Path, sample_bytes: int = 1 << 20) -> str:
    """A short hash identifying model files (size + first and last MiB of each), cheap even for
    GB checkpoints; embeddings files record it so a retrieval index is never searched with a
    different model."""
    import hashlib

    digest = hashlib.sha256()
    for path in paths:
        size = path.stat().st_size
        digest.update(str(size).encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(sample_bytes))
            if size > sample_bytes:
                handle.seek(max(sample_bytes, size - sample_bytes))
                digest.update(handle.read())
    return digest.hexdigest()[:16]
