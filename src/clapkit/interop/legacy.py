"""Model directories and checkpoints saved the old way, read as the one-model layout.

Format 1 of a model directory named a task (``clapkit.lightning_modules.<module>.<Task>``) in its
``model:`` section; format 2 names the plain model the task trains. :data:`TASK_TRANSLATORS` turns a
task's ``init_args`` into the tree of its model, with the defaults the tasks had when format 1 was
written (frozen here: later changes to a task's defaults must not change what an old directory
means). The state dict keys of a format-1 directory are already the model's own.

An old Lightning checkpoint holds the task's modules without the ``model.`` prefix a task now puts
before its model's keys: :func:`upgrade_task_state` maps them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Tree = dict[str, Any]

#: The defaults format-1 task configs relied on for the arguments their models take.
CLASSIFICATION_DEFAULTS: Tree = {"multi_label": False, "use_head": True, "head_dropout": 0.0, "head": None,
                                 "input_key": "audio", "pass_lengths": False, "class_names": None}
SEPARATION_DEFAULTS: Tree = {"copy_query_encoder": True}
SPATIAL_DEFAULTS: Tree = {"view_transformer": None, "embed_dim": 128, "fov_degrees": 90.0}

#: Query networks that read a CLAP directory: their class paths before the class moved to the hub layer.
QUERY_CLASS_PATHS = {
    "clapkit.encoders.separation.PretrainedQueryNetwork": "clapkit.hub.query_clap.PretrainedQueryNetwork",
    "clapkit.encoders.separation.query.PretrainedQueryNetwork": "clapkit.hub.query_clap.PretrainedQueryNetwork",
}


def _model_tree(class_path: str, args: Mapping[str, Any], defaults: Mapping[str, Any],
                required: Iterable[str]) -> Tree:
    init_args = {name: copy.deepcopy(args[name]) for name in required if name in args}
    init_args.update({name: copy.deepcopy(args.get(name, value)) for name, value in defaults.items()})
    return {"class_path": class_path, "init_args": init_args}


def classification_model(args: Mapping[str, Any]) -> Tree:
    """A ``ClassificationTask``'s ``init_args`` -> the :class:`~clapkit.encoders.classifier.Classifier` tree."""
    return _model_tree("clapkit.encoders.classifier.Classifier", args, CLASSIFICATION_DEFAULTS,
                       ("encoder", "num_classes"))


def query_tree(tree: Any) -> Any:
    """``tree`` with every old ``PretrainedQueryNetwork`` class path moved to its new one (a run's or
    a directory's config written before the class moved)."""
    if isinstance(tree, Mapping):
        moved = {key: query_tree(value) for key, value in tree.items()}
        if moved.get("class_path") in QUERY_CLASS_PATHS:
            moved["class_path"] = QUERY_CLASS_PATHS[moved["class_path"]]
        return moved
    if isinstance(tree, list):
        return [query_tree(value) for value in tree]
    return tree


def separation_model(args: Mapping[str, Any]) -> Tree:
    """A ``SeparationTask``'s ``init_args`` -> the
    :class:`~clapkit.encoders.separation.network.SeparationNetwork` tree."""
    tree = _model_tree("clapkit.encoders.separation.network.SeparationNetwork", args, SEPARATION_DEFAULTS,
                       ("separator", "query"))
    if "query" in tree["init_args"]:
        tree["init_args"]["query"] = query_tree(tree["init_args"]["query"])
    return tree


def spatial_model(args: Mapping[str, Any]) -> Tree:
    """A ``SpatialAlignmentTask``'s ``init_args`` -> the
    :class:`~clapkit.encoders.spatial_model.SpatialAlignmentModel` tree."""
    return _model_tree("clapkit.encoders.spatial_model.SpatialAlignmentModel", args, SPATIAL_DEFAULTS,
                       ("audio_encoder", "image_encoder"))


#: Task class name -> how a format-1 ``init_args`` of that task becomes its model's tree.
TASK_TRANSLATORS: dict[str, Callable[[Mapping[str, Any]], Tree]] = {
    "ClassificationTask": classification_model,
    "SeparationTask": separation_model,
    "SpatialAlignmentTask": spatial_model,
}


def task_name(class_path: str) -> str | None:
    """The short name of a clapkit task named by ``class_path`` (its module, the
    ``clapkit.lightning_modules`` package or the bare name); ``None`` for any other class."""
    module, _, name = class_path.rpartition(".")
    if not module or module == "clapkit.lightning_modules" or module.startswith("clapkit.lightning_modules."):
        return name
    return None


def upgrade_task_state(expected: Mapping[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    """A task's checkpoint ``state_dict`` with the keys of a model saved at the task's top level
    (``separator...``, ``encoder...``) moved under ``model.``, where ``expected`` (the task's own
    state dict keys) has them; keys already in place are kept."""
    return {(f"model.{key}" if key not in expected and f"model.{key}" in expected else key): value
            for key, value in state.items()}
