"""clapkit's native model format: save, build and load a model directory.

A directory (laid out in :mod:`clapkit.hub.directory`) stores one plain model
(:class:`~clapkit.encoders.model.SavedModel`: a ``TowerSet``...): ``config.yaml`` says how to
build it and ``model.safetensors`` holds its ``state_dict``. Loading is always the same: read
the config (:func:`clapkit.hub.directory.read_directory`, which translates older formats),
build the model, verify the weights' hash, strict-load them (:func:`load_model`). Training
rebuilds the task the directory records around that model (:func:`load_native`).

Relative paths (``./...``) inside ``model:`` are resolved against the directory, so a model
directory can be moved or copied as a whole.

A model directory may come from anywhere, so reading one never imports a module its config
names unless the name is inside the allow-list (:data:`clapkit.io.trust.ALLOWED_CLASS_PATHS`
plus what the caller passes as ``allow``): a ``class_path`` outside it is refused before
anything is imported.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from clapkit.audio.preprocess import InferenceConfig
from clapkit.encoders.model import SavedModel
from clapkit.hub.consistency import check_model
from clapkit.hub.directory import (
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    ModelDirectory,
    map_paths,
    plain,
    read_directory,
)
from clapkit.io.checkpoint import load_state_dict_strict, unique_tensors
from clapkit.io.errors import PretrainedError
from clapkit.io.identity import (
    HASH_KEY,
    check_weights,
    file_sha256,
    files_fingerprint,
    native_fingerprint,
)
from clapkit.io.trust import check_code_values, check_resolved_names
from clapkit.utils.atomic import MODEL_DIRECTORY, replace_output


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
    inference: InferenceConfig | Mapping[str, Any] | None = None,
    model_config: Mapping[str, Any] | str | os.PathLike | None = None,
    *,
    assets: Mapping[str, str | os.PathLike] | None = None,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> Path:
    """Write a model in clapkit's native format, atomically (:func:`clapkit.utils.atomic.replace_output`).

    Args:
        model: the plain model (a :class:`~clapkit.encoders.model.SavedModel`), or a task that
            owns one as ``task.model`` (saved as that model, with the task's class and training
            arguments in the ``task:`` section).
        directory: the model directory to create.
        inference: preprocessing settings (an :class:`InferenceConfig` or its dict); default
            the model's own ``inference``.
        model_config: the ``class_path``/``init_args`` tree of the model or of the task (a
            task's tree is split into the two: :func:`clapkit.interop.legacy.split_task_tree`),
            or a LightningCLI ``config.yaml`` whose ``model:`` section is used. Default: the
            model's ``config``, else the tree LightningCLI recorded in the task's ``hparams``.
        assets: name -> file or directory copied into the model directory (weight files
            excluded: every weight is in ``model.safetensors``); config strings naming the source
            path become ``./<name>``.
        overwrite: replace an existing model directory (never a folder of other files).
        inputs: the files and folders the model was read from; ``directory`` may not be, contain
            or lie inside one of them (nor inside an asset source).

    Every ``load_weights`` argument in the saved config is set to ``False``: the weights come
    from ``model.safetensors``, so loading pretrained ones while building the model is wasted.
    """
    from clapkit.interop.legacy import split_task_tree

    directory = Path(directory)
    owned = getattr(model, "model", None)
    saved = owned if isinstance(owned, SavedModel) else model
    inference = inference if inference is not None else getattr(saved, "inference", None)
    if inference is None:
        raise PretrainedError("the model's inference settings are unknown: pass inference (an InferenceConfig)")
    inference = inference if isinstance(inference, InferenceConfig) else InferenceConfig.from_dict(inference)
    assets = {**module_assets(saved), **(assets or {})}
    tree = model_config_of(model, model_config)
    model_tree, task_tree = split_task_tree(tree)
    if isinstance(saved, SavedModel):
        document = {"clapkit_format": FORMAT_VERSION, "model": portable(model_tree, assets or {})}
        if task_tree is not None:
            document["task"] = task_tree
    else:  # a task that does not own a plain model yet: its tree, as format 1 wrote it
        document = {"clapkit_format": 1, "model": portable(tree, assets or {})}
    if directory.exists() and not overwrite and (not directory.is_dir() or any(directory.iterdir())):
        raise PretrainedError(f"{directory}: already exists (pass overwrite=True / --overwrite to replace it)")
    with replace_output(directory, kind=MODEL_DIRECTORY, inputs=[*inputs, *(assets or {}).values()],
                        overwrite=overwrite) as tmp:
        for name, source in (assets or {}).items():
            _copy_asset(Path(source), tmp / name)
        from safetensors.torch import save_file

        state = unique_tensors(saved.state_dict())
        check_model(saved, inference, state, where=f"{directory}: the model to save")
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "clapkit_format": str(FORMAT_VERSION)})
        # The exact identity of the weights, hashed once here and verified whenever they are read.
        document.update({"inference": inference.to_dict(), HASH_KEY: file_sha256(tmp / WEIGHTS_NAME)})
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


def native_model_tree(directory: str | os.PathLike, allow: Iterable[str] = ()) -> dict[str, Any]:
    """The training task's tree of a model directory (:meth:`ModelDirectory.task_tree`) with its
    ``./`` asset paths made absolute, ready for LightningCLI's ``--model``."""
    found = read_directory(directory, allow)
    tree = map_paths(found.task_tree(), found.resolve)
    # LightningCLI imports what the tree names: the names' objects must be inside the allow-list.
    check_resolved_names(tree, allow, where=str(found.config_path))
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
    """Load a native directory's weights into an already-built ``model`` (the plain model or a
    task owning it as ``model``), requiring full coverage (a directory's weights are checked
    against the hash its ``config.yaml`` records)."""
    from clapkit.interop.legacy import upgrade_task_state

    state = read_native_weights(path)
    if Path(path).is_dir() and (Path(path) / CONFIG_NAME).is_file():
        check_weights(Path(path) / WEIGHTS_NAME, Path(path) / CONFIG_NAME)
    # A directory holds a plain model's weights; a task holds that model as ``model``.
    load_state_dict_strict(model, upgrade_task_state(model.state_dict(), state), what=str(path))


def load_model(directory: str | os.PathLike, *, towers: Sequence[str] | None = None, allow: Iterable[str] = (),
               replace: Mapping[str, str] | None = None, load_weights: bool = True) -> nn.Module:
    """Build a model directory's plain model and strict-load its verified weights (eval mode).

    The one loader: read the config (:func:`~clapkit.hub.directory.read_directory`: allow-list,
    paths inside the directory, older formats translated), build the ``model:`` tree, check the
    weights against the recorded hash, check model and preprocessing agree
    (:func:`clapkit.hub.consistency.check_model`), load every tensor. The model's ``config`` and
    ``inference`` are set from the directory.

    Args:
        directory: the model directory.
        towers: build and read only these towers of a model built from ``towers`` (a
            ``TowerSet``: ``("audio",)``); the others' tensors are never read from the
            memory-mapped ``model.safetensors``. ``None``, or a model without towers: the whole model.
        allow: module prefixes trusted beyond the allow-list (see :func:`check_class_paths`).
        replace: config key -> a path the user gave for an outside path under that key
            (see :func:`~clapkit.hub.directory.read_directory`).
        load_weights: read ``model.safetensors`` (``False``: only the config and its assets, for a
            model nested in a larger one whose own weights file carries every tensor).
    """
    found = read_directory(directory, allow, replace=replace)
    # ``towers`` chooses among a model's towers; a model built from none (a tagger) is loaded whole.
    partial = towers is not None and isinstance((found.model.get("init_args") or {}).get("towers"), Mapping)
    tree = _with_towers(found, towers) if partial else found.model
    return _build_and_load(found, tree, allow=allow, load_weights=load_weights, partial=partial)


def build_model(tree: Mapping[str, Any], *, resolve: Callable[[str], str] | None = None,
                build: Callable[..., nn.Module] | None = None) -> nn.Module:
    """The plain model of a model or task tree, with random weights
    (:func:`clapkit.interop.legacy.build_model` with :func:`instantiate_model` as ``build``)."""
    from clapkit.interop import legacy

    return legacy.build_model(tree, build or (lambda sub_tree, resolve=None: instantiate_model(sub_tree, resolve)),
                              resolve=resolve)


def load_native(directory: str | os.PathLike, load_weights: bool = True,
                allow: Iterable[str] = ()) -> tuple[nn.Module, dict[str, Any], InferenceConfig]:
    """The trainable module of a model directory: ``(module in eval mode, model tree, inference)``.

    The task the directory records (``task:``, or the model's default task) built around its
    model, the weights strict-loaded into ``task.model``; for training, validation or conversion.
    A directory that records no task gives its model alone (as :func:`load_model`).
    ``load_weights`` and ``allow`` as :func:`load_model`'s.
    """
    from clapkit.hub.directory import DEFAULT_TASKS
    from clapkit.utils.fastinit import skip_random_init

    found = read_directory(directory, allow)
    where = str(found.config_path)
    whole = found.task is None and str(found.model.get("class_path")) not in DEFAULT_TASKS
    tree = found.model if whole else found.task_tree()
    with skip_random_init() if load_weights else contextlib.nullcontext():
        module = instantiate_model(tree, resolve=found.resolve, allow=allow, where=where)
    # A task owns the model the weights are of; a tree naming no task is that model (or an old
    # task that does not own one yet, whose keys are its own).
    owned = getattr(module, "model", None)
    _fill(found, owned if not whole and isinstance(owned, SavedModel) else module, load_weights=load_weights)
    return module.eval(), found.model, found.inference


def _with_towers(found: ModelDirectory, towers: Sequence[str]) -> dict[str, Any]:
    """The model tree with only ``towers`` in its ``towers`` argument."""
    init_args = found.model.get("init_args") or {}
    trees = init_args["towers"]
    if unknown := sorted(set(towers) - set(trees)):
        raise PretrainedError(f"no tower {unknown[0]!r} in the model (towers: {', '.join(trees)})")
    return {**found.model, "init_args": {**init_args, "towers": {k: v for k, v in trees.items() if k in towers}}}


def _build_and_load(found: ModelDirectory, tree: dict[str, Any], *, allow: Iterable[str], load_weights: bool,
                    partial: bool = False) -> nn.Module:
    from clapkit.utils.fastinit import skip_random_init

    allow, where = tuple(allow), str(found.config_path)

    def build(sub_tree, resolve=None):
        return instantiate_model(sub_tree, resolve=found.resolve, allow=allow, where=where)

    # The strict load below overwrites every weight: drawing random ones first is wasted time.
    with skip_random_init() if load_weights else contextlib.nullcontext():
        module = build_model(tree, build=build)
    _fill(found, module, load_weights=load_weights, partial=partial)
    if isinstance(module, SavedModel):
        module.config = found.model
    with contextlib.suppress(AttributeError):
        module.inference = found.inference
    return module.eval()


def _fill(found: ModelDirectory, module: nn.Module, *, load_weights: bool, partial: bool = False) -> None:
    """Check ``module`` against the directory and load its weights (only its own tensors when ``partial``)."""
    weights = found.path / WEIGHTS_NAME
    if load_weights and not weights.is_file():
        raise PretrainedError(f"{found.path}: no {WEIGHTS_NAME}")
    # The tensors of the towers left out are never read: only the module's own top-level names.
    prefixes = sorted({key.split(".")[0] + "." for key in module.state_dict()} - {"towers."}
                      | {f"towers.{name}." for name in getattr(module, "towers", {})}) if partial else None
    state = read_native_weights(weights, prefixes) if load_weights else None
    if load_weights:  # every byte of the weights, against the hash recorded at save (clapkit.io.identity)
        check_weights(weights, found.config_path)
    check_model(module, found.inference, state, where=str(found.config_path))
    if state is not None:
        load_state_dict_strict(module, state, what=f"{weights} (for the model in {CONFIG_NAME})")


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
    """The ``class_path``/``init_args`` tree of ``model`` (see :func:`save_pretrained`'s ``model_config``):
    the one given, a plain model's ``config``, or the task tree in a task's ``hparams``."""
    if isinstance(model_config, (str, os.PathLike)):
        return read_model_section(model_config)
    if model_config is not None:
        return plain(model_config)
    if isinstance(model, SavedModel) and model.config is not None:
        return plain(model.config)
    hparams = dict(getattr(model, "hparams", {}) or {})
    if "_class_path" in hparams:
        hparams.pop("_instantiator", None)
        return plain({"class_path": hparams.pop("_class_path"), "init_args": hparams})
    raise PretrainedError(
        "the model's config is unknown: pass model_config (the class_path/init_args tree or the "
        "LightningCLI config.yaml it was trained with)"
    )


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
