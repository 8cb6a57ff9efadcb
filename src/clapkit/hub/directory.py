"""Reading a model directory's ``config.yaml``, without torch: the format, its sections, old formats.

A model directory is::

    config.yaml          clapkit_format: 2
                         model:      class_path/init_args of the plain model (a TowerSet...)
                         inference:  how raw audio becomes the model's input (InferenceConfig)
                         task:       optional: the training task's class_path and its training
                                     arguments (what ``clapkit fit --model DIR`` rebuilds)
                         weights_sha256: the hash of model.safetensors
    model.safetensors    the model's weights (its ``state_dict``, shared tensors stored once)
    <assets>/            files the config points at with ``./<name>`` paths

Format 1 (``model:`` named the training task, whose arguments held the model's) is translated on
read by :mod:`clapkit.interop.legacy`, so every reader sees format 2. :func:`read_directory` is
the one reader: :mod:`clapkit.hub.native` builds from it, and commands read the ``inference:``
section from it before torch is imported (:func:`read_inference`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clapkit.audio.preprocess import InferenceConfig
from clapkit.interop.legacy import split_task_tree
from clapkit.io.errors import PretrainedError
from clapkit.io.trust import read_untrusted_config

#: The file holding a model directory's sections.
CONFIG_NAME = "config.yaml"
#: The file holding its weights.
WEIGHTS_NAME = "model.safetensors"
#: The format :func:`clapkit.hub.native.save_pretrained` writes; older ones are translated on read.
FORMAT_VERSION = 2

#: The task a model trains with when its directory records none (``clapkit fit --model DIR``).
DEFAULT_TASKS: dict[str, str] = {
    "clapkit.encoders.tower.TowerSet": "clapkit.lightning_modules.ContrastiveTask",
    "clapkit.encoders.classifier.Classifier": "clapkit.lightning_modules.classification.ClassificationTask",
    "clapkit.encoders.separation.network.SeparationNetwork": "clapkit.lightning_modules.separation.SeparationTask",
    "clapkit.encoders.spatial_model.SpatialAlignmentModel": "clapkit.lightning_modules.spatial.SpatialAlignmentTask",
}


@dataclass
class ModelDirectory:
    """A model directory's ``config.yaml``, read, checked and in format 2.

    Attributes:
        path: the directory.
        model: the plain model's ``class_path``/``init_args`` tree (``./`` paths unresolved).
        inference: its preprocessing.
        task: the training task's ``class_path`` and training ``init_args`` (``None``: none recorded).
        version: the format the file was written in (1 was translated).
    """

    path: Path
    model: dict[str, Any]
    inference: InferenceConfig
    task: dict[str, Any] | None = None
    version: int = FORMAT_VERSION

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    def resolve(self, relative: str) -> str:
        """A ``./`` path of the config as a real path inside the directory."""
        return str((self.path / relative).resolve())

    def task_tree(self) -> dict[str, Any]:
        """The training task's whole tree: its ``class_path``, training arguments and the model's
        arguments (a task takes them flat and builds its model from them)."""
        task = self.task
        if task is None:
            default = DEFAULT_TASKS.get(str(self.model.get("class_path")))
            if default is None:
                raise PretrainedError(f"{self.config_path}: records no training task for "
                                      f"{self.model.get('class_path')}; give the task's config")
            task = {"class_path": default, "init_args": {}}
        return {"class_path": task["class_path"],
                "init_args": {**(self.model.get("init_args") or {}), **(task.get("init_args") or {})}}


def read_directory(directory: str | os.PathLike, allow: Iterable[str] = (), *,
                   replace: Mapping[str, str] | None = None) -> ModelDirectory:
    """Read and check a model directory's ``config.yaml`` (format 1 translated to 2).

    Read through :func:`clapkit.io.trust.read_untrusted_config`: a value that would import code
    outside the allow-list (``allow`` extends it), or a path leading out of the directory, is
    refused before anything is imported; ``package:NAME`` becomes the package's folder.
    ``replace``: config key -> a path the user gave (``clapkit.load(DIR, text_model=...)``) that
    replaces an outside path under that key instead of refusing it.

    Raises:
        PretrainedError: one line naming the file and the problem.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise PretrainedError(f"{directory}: not a clapkit model directory (no {CONFIG_NAME})")
    document = read_untrusted_config(config_path, code_sections=("model", "task"), allow=allow, root=directory,
                                     replace=replace)
    version = document.get("clapkit_format", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise PretrainedError(f"{config_path}: clapkit_format {version!r} is not a format version")
    if version > FORMAT_VERSION:
        raise PretrainedError(f"{config_path}: format version {version} is newer than this clapkit ({FORMAT_VERSION})")
    if not isinstance(document.get("model"), dict) or "inference" not in document:
        raise PretrainedError(f"{config_path}: expected 'model' and 'inference' sections")
    try:
        inference = InferenceConfig.from_dict(document["inference"] or {})
    except (TypeError, ValueError) as exc:
        raise PretrainedError(f"{config_path}: bad inference section ({exc})") from None
    task = document.get("task")
    if task is not None and not (isinstance(task, dict) and isinstance(task.get("class_path"), str)):
        raise PretrainedError(f"{config_path}: the 'task' section needs a class_path")
    model = document["model"]
    if version < 2:
        model, task = split_task_tree(model)
    return ModelDirectory(directory, plain(model), inference, plain(task) if task is not None else None, version)


def read_inference(directory: str | os.PathLike) -> InferenceConfig | None:
    """The ``inference:`` section of a model directory, read without importing torch: ``None``
    when ``directory`` is not a usable model directory (loading it reports why). Commands use it
    to start decoding audio while torch and the model load."""
    try:
        return read_directory(directory).inference
    except PretrainedError:
        return None


def is_native(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory in clapkit's native format."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG_NAME).is_file()


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
