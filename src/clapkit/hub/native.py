"""clapkit's native model format: save, read, and instantiate a model directory.

A native model is a directory::

    config.yaml          model:      class_path/init_args tree (LightningCLI's ``model:`` section)
                         inference:  how raw audio becomes the model's input (see InferenceConfig)
    model.safetensors    the weights (shared tensors stored once)
    <assets>/            optional files the model config points at with ``./<name>`` paths
                         (for example a text tower's tokenizer and HF config)

Relative paths (``./...``) inside ``model:`` are resolved against the directory, so a model
directory can be moved or copied as a whole.

A model directory may come from anywhere, so reading one never imports a module its config
names unless the name is inside the allow-list (:data:`ALLOWED_CLASS_PATHS` plus what the
caller passes as ``allow``): a ``class_path`` outside it is refused before anything is
imported.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from clapkit.audio.preprocess import CONFIG_NAME, InferenceConfig
from clapkit.hub.consistency import check_model
from clapkit.io.checkpoint import PretrainedError, load_state_dict_strict, unique_tensors
from clapkit.io.identity import (
    HASH_KEY,
    check_weights,
    file_sha256,
    files_fingerprint,
    native_fingerprint,
)
from clapkit.io.trust import (
    ALLOWED_CLASS_PATHS as ALLOWED_CLASS_PATHS,  # re-exported; it lives in clapkit.io.trust
)
from clapkit.io.trust import check_code_values, check_resolved_names, read_untrusted_config
from clapkit.utils.atomic import MODEL_DIRECTORY, replace_output

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"

def class_paths(tree: Any) -> list[str]:
    """Every ``class_path`` string in a config tree (depth first)."""
    found: list[str] = []
    if isinstance(tree, Mapping):
        if isinstance(tree.get("class_path"), str):
            found.append(tree["class_path"])
        for value in tree.values():
            found += class_paths(value)
    elif isinstance(tree, list):
        for value in tree:
            found += class_paths(value)
    return found


def check_class_paths(tree: Any, allow: Iterable[str] = (), *, where: str = CONFIG_NAME) -> None:
    """Refuse a config that names code outside the allow-list, before importing anything.

    Args:
        tree: the ``model:`` tree.
        allow: extra module prefixes or full class paths the caller trusts.
        where: what to name in the error (the config file).

    Every ``class_path`` and every other value jsonargparse would import (a dotted string, a
    type expression) is checked: see :func:`clapkit.io.trust.check_code_values`.

    Raises:
        PretrainedError: naming the file, the key and the refused value.
    """
    check_code_values(tree, allow, where=where, key="model")


def instantiate_model(model_config: Mapping[str, Any], resolve: Callable[[str], str] | None = None,
                      allow: Iterable[str] = (), *, where: str = "model config") -> nn.Module:
    """Build a module from a ``class_path``/``init_args`` tree the way LightningCLI does.

    Args:
        model_config: the tree (LightningCLI's ``model:`` section).
        resolve: maps each ``./relative`` path string to a real path.
        allow: module prefixes trusted beyond the allow-list: every name the tree makes
            jsonargparse import is checked first (:func:`clapkit.io.trust.check_code_values`), and
            the object it names must be defined inside the allow-list
            (:func:`clapkit.io.trust.check_resolved_names`).
        where: the file to name when a name is refused.
    """
    from jsonargparse import ArgumentParser

    config = map_paths(plain(model_config), resolve) if resolve else plain(model_config)
    check_code_values(config, allow, where=where, key="model")
    check_resolved_names(config, allow, where=where)
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


# --------------------------------------------------------------------------- saving


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike,
    inference: InferenceConfig | Mapping[str, Any],
    model_config: Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    assets: Mapping[str, str | os.PathLike] | None = None,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> Path:
    """Write ``model`` in clapkit's native format, atomically (:func:`clapkit.utils.atomic.replace_output`).

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
        overwrite: replace an existing model directory (never a folder of other files).
        inputs: the files and folders the model was read from; ``directory`` may not be, contain
            or lie inside one of them (nor inside an asset source).

    Every ``load_weights`` argument in the saved config is set to ``False``: the weights come
    from ``model.safetensors``, so loading pretrained ones while building the model is wasted.
    """
    directory = Path(directory)
    inference = inference if isinstance(inference, InferenceConfig) else InferenceConfig.from_dict(inference)
    assets = {**module_assets(model), **(assets or {})}
    config = portable(model_config_of(model, model_config), assets)
    if directory.exists() and not overwrite and (not directory.is_dir() or any(directory.iterdir())):
        raise PretrainedError(f"{directory}: already exists (pass overwrite=True / --overwrite to replace it)")
    with replace_output(directory, kind=MODEL_DIRECTORY, inputs=[*inputs, *(assets or {}).values()],
                        overwrite=overwrite) as tmp:
        for name, source in (assets or {}).items():
            _copy_asset(Path(source), tmp / name)
        from safetensors.torch import save_file

        state = unique_tensors(model.state_dict())
        check_model(model, inference, state, where=f"{directory}: the model to save")
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "clapkit_format": str(FORMAT_VERSION)})
        # The exact identity of the weights, hashed once here and verified whenever they are read.
        document = {"clapkit_format": FORMAT_VERSION, "model": config, "inference": inference.to_dict(),
                    HASH_KEY: file_sha256(tmp / WEIGHTS_NAME)}
        (tmp / CONFIG_NAME).write_text(yaml.safe_dump(plain(document), sort_keys=False))
    return directory


def module_assets(model: nn.Module) -> dict[str, str]:
    """Folders the model's modules ask to be copied into its directory (a module's
    ``directory_assets``: name -> source, e.g. a separation model's query CLAP)."""
    found: dict[str, str] = {}
    for module in model.modules():
        found.update(getattr(module, "directory_assets", None) or {})
    return found


# --------------------------------------------------------------------------- reading


def is_native(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory in clapkit's native format."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG_NAME).is_file()


def read_native_config(directory: str | os.PathLike, allow: Iterable[str] = (), *,
                       replace: Mapping[str, str] | None = None) -> tuple[dict[str, Any], InferenceConfig]:
    """The ``model:`` tree and :class:`InferenceConfig` of a native model directory.

    Read through :func:`clapkit.io.trust.read_untrusted_config`: a value that would import code
    outside the allow-list, or a path leading out of the directory, is refused before anything
    is imported; ``package:NAME`` becomes the package's folder, found without importing it.

    Args:
        directory: the model directory.
        allow: module prefixes trusted beyond :data:`ALLOWED_CLASS_PATHS` (see
            :func:`check_class_paths`).
        replace: config key -> a path the user gave (``clapkit.load(DIR, text_model=...)``)
            that replaces an outside path under that key instead of refusing it.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise PretrainedError(f"{directory}: not a clapkit model directory (no {CONFIG_NAME})")
    document = read_untrusted_config(config_path, code_sections=("model",), allow=allow, root=directory,
                                     replace=replace)
    if "model" not in document or "inference" not in document:
        raise PretrainedError(f"{config_path}: expected 'model' and 'inference' sections")
    version = document.get("clapkit_format", FORMAT_VERSION)
    if not isinstance(version, int):
        raise PretrainedError(f"{config_path}: clapkit_format {version!r} is not a format version")
    if version > FORMAT_VERSION:
        raise PretrainedError(f"{config_path}: format version {version} is newer than this clapkit ({FORMAT_VERSION})")
    try:
        inference = InferenceConfig.from_dict(document["inference"] or {})
    except (TypeError, ValueError) as exc:
        raise PretrainedError(f"{config_path}: bad inference section ({exc})") from None
    return document["model"], inference


#: The training task of a directory whose ``model:`` names a plain model: the task takes the
#: model's arguments flat and builds the model from them.
DEFAULT_TASKS: dict[str, str] = {
    "clapkit.encoders.classifier.Classifier": "clapkit.lightning_modules.classification.ClassificationTask",
    "clapkit.encoders.separation.network.SeparationNetwork": "clapkit.lightning_modules.separation.SeparationTask",
    "clapkit.encoders.spatial_model.SpatialAlignmentModel": "clapkit.lightning_modules.spatial.SpatialAlignmentTask",
}


def native_model_tree(directory: str | os.PathLike, allow: Iterable[str] = ()) -> dict[str, Any]:
    """The ``model:`` tree of a native directory with its ``./`` asset paths made absolute,
    ready for LightningCLI's ``--model`` (a plain model's as its :data:`DEFAULT_TASKS` task's)."""
    directory = Path(directory)
    config, _ = read_native_config(directory, allow)
    if (task := DEFAULT_TASKS.get(str(config.get("class_path")))) is not None:
        config = {"class_path": task, "init_args": config.get("init_args") or {}}
    tree = map_paths(plain(config), lambda p: str((directory / p).resolve()))
    # LightningCLI imports what the tree names: the names' objects must be inside the allow-list.
    check_resolved_names(tree, allow, where=str(directory / CONFIG_NAME))
    return tree


def read_native_weights(path: str | os.PathLike, prefixes: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a native directory's ``model.safetensors`` (or of a ``.safetensors`` file).

    Args:
        path: the model directory or the ``.safetensors`` file.
        prefixes: read only the tensors whose names start with one of these (``"towers.audio."``);
            the file is memory-mapped, so the others are never read. ``None`` reads them all.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    if not weights.is_file():
        raise PretrainedError(f"{path}: no {WEIGHTS_NAME}")
    try:
        if prefixes is None:
            return load_file(str(weights))
        prefixes = tuple(prefixes)
        with safe_open(str(weights), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys() if key.startswith(prefixes)}
    except (SafetensorError, OSError) as exc:
        raise PretrainedError(f"{weights}: truncated or not a safetensors file ({exc})") from None


def load_weights_into(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a native directory's weights into an already-built ``model``, requiring full coverage
    (a directory's weights are checked against the hash its ``config.yaml`` records)."""
    state = read_native_weights(path)
    if Path(path).is_dir() and (Path(path) / CONFIG_NAME).is_file():
        check_weights(Path(path) / WEIGHTS_NAME, Path(path) / CONFIG_NAME)
    load_state_dict_strict(model, state, what=str(path))


def load_native(directory: str | os.PathLike, load_weights: bool = True,
                allow: Iterable[str] = ()) -> tuple[nn.Module, dict[str, Any], InferenceConfig]:
    """Instantiate a native model directory: ``(module in eval mode, model config, inference)``.

    The module is what the config names, usually a LightningModule (``ContrastiveTask``...),
    for training, validation or conversion; inference builds only its plain modules
    (:func:`clapkit.hub.plain.load_plain`, what :func:`clapkit.load` uses), without Lightning.

    With ``load_weights=False`` only ``config.yaml`` (and its assets) are read: for a model
    nested in a larger one whose own ``model.safetensors`` carries every weight. ``allow``
    extends the class-path allow-list (see :func:`check_class_paths`).
    """
    where = str(Path(directory) / CONFIG_NAME)
    return load_directory(directory,
                          lambda config, resolve: instantiate_model(config, resolve=resolve, allow=allow, where=where),
                          load_weights=load_weights, allow=allow)


def load_directory(directory: str | os.PathLike, build: Callable[[dict[str, Any], Callable[[str], str]], nn.Module],
                   *, load_weights: bool = True, allow: Iterable[str] = (),
                   prefixes: Callable[[nn.Module], list[str] | None] = lambda module: None,
                   replace: Mapping[str, str] | None = None,
                   ) -> tuple[nn.Module, dict[str, Any], InferenceConfig]:
    """Read a native directory's config, ``build(config, resolve)`` a module from it, load its weights.

    The one loading sequence of :func:`load_native` (the task) and :func:`clapkit.hub.plain.load_plain`
    (its inference modules). ``resolve`` maps an asset path of the config into the directory;
    ``prefixes(module)`` names the tensors to read (``None``: all of them); ``replace`` is
    :func:`read_native_config`'s.
    """
    directory = Path(directory)
    config, inference = read_native_config(directory, allow, replace=replace)
    weights = directory / WEIGHTS_NAME
    if load_weights and not weights.is_file():
        raise PretrainedError(f"{directory}: no {WEIGHTS_NAME}")
    from clapkit.utils.fastinit import skip_random_init

    # The strict load below overwrites every weight: drawing random ones first is wasted time.
    with skip_random_init() if load_weights else contextlib.nullcontext():
        module = build(config, lambda p: str((directory / p).resolve()))
    state = read_native_weights(weights, prefixes(module)) if load_weights else None
    if load_weights:  # every byte of the weights, against the hash recorded at save (clapkit.io.identity)
        check_weights(weights, directory / CONFIG_NAME)
    check_model(module, inference, state, where=str(directory / CONFIG_NAME))
    if state is not None:
        load_state_dict_strict(module, state, what=f"{weights} (for the model in {CONFIG_NAME})")
    return module.eval(), config, inference


# --------------------------------------------------------------------------- config trees


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
    return plain(document["model"])


def model_config_of(model: nn.Module, model_config: Mapping[str, Any] | str | os.PathLike | None) -> dict[str, Any]:
    """The ``class_path``/``init_args`` tree of ``model`` (see :func:`save_pretrained`'s ``model_config``)."""
    if isinstance(model_config, (str, os.PathLike)):
        return read_model_section(model_config)
    if model_config is not None:
        return plain(model_config)
    hparams = dict(getattr(model, "hparams", {}) or {})
    if "_class_path" in hparams:
        hparams.pop("_instantiator", None)
        return plain({"class_path": hparams.pop("_class_path"), "init_args": hparams})
    raise PretrainedError(
        "the model's config is unknown: pass model_config (the class_path/init_args tree or the "
        "LightningCLI config.yaml it was trained with)"
    )


def plain(value):
    """Tuples -> lists, Paths -> str, nested Mappings -> dicts (YAML-safe, comparable)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def map_paths(value, resolve: Callable[[str], str]):
    """Apply ``resolve`` to every ``./relative`` string in a config tree."""
    if isinstance(value, dict):
        return {k: map_paths(v, resolve) for k, v in value.items()}
    if isinstance(value, list):
        return [map_paths(v, resolve) for v in value]
    if isinstance(value, str) and value.startswith("./"):
        return resolve(value)
    return value


#: Files an asset directory may hold that the native format never needs (weights live in
#: model.safetensors).
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.ot",
                "*.index.json")


def portable(config: dict[str, Any], assets: Mapping[str, str | os.PathLike]) -> dict[str, Any]:
    """``config`` with asset source paths written as ``./<name>`` and ``load_weights`` off."""
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


def file_fingerprint(*paths: Path) -> str:
    """The exact identity of model files: the sha256 of every byte of each (see
    :mod:`clapkit.io.identity`); embeddings files record it so a retrieval index is never searched
    with a different model."""
    return files_fingerprint(*paths)


def model_fingerprint(directory: str | os.PathLike) -> str:
    """The fingerprint of a native model directory (its ``config.yaml`` and verified weights)."""
    directory = Path(directory)
    return native_fingerprint(directory / CONFIG_NAME, directory / WEIGHTS_NAME)
