"""What clapkit saved before a task owned one plain model, mapped onto today's layout.

Model directories of format 1 named the training task in ``model:`` (``ContrastiveTask`` with
``towers``, ``pairs``...) where format 2 names the plain model (``TowerSet``) and keeps the
task's training arguments in ``task:``. :data:`TASK_TRANSLATORS` turns a format-1 task tree
into the format-2 model tree; the arguments a translator leaves out of the model stay the
task's. Each translator fills what the format-1 tree left out with the defaults the task had
when format 1 was written (frozen here: today's defaults may move on). The weights need no map:
the plain models keep the state dict keys the tasks had (``towers.audio...``,
``logit_scales.audio__text``).

Lightning checkpoints written before the task held ``self.model`` have the model's keys at the
top level; :func:`upgrade_task_state` moves them under ``model.``.

Torch-free at import: the directory reader (:mod:`clapkit.hub.directory`) uses this module
before torch is loaded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

#: ``init_args`` of a format-1 task tree -> the format-2 model tree.
Tree = dict[str, Any]
Translator = Callable[[Mapping[str, Any]], Tree]

#: The defaults of the format-1 contrastive tasks' model arguments.
_CONTRASTIVE_DEFAULTS = {"pairs": [["audio", "text"]], "logit_scale_init": 1 / 0.07, "logit_scale_min": 1.0,
                         "logit_scale_max": 100.0, "learn_logit_scale": True}
_AUDIOCLIP_DEFAULTS = {**_CONTRASTIVE_DEFAULTS, "pairs": [["audio", "text"], ["audio", "image"], ["image", "text"]],
                       "logit_scale_init": 100.0}


def _tower_set(defaults: Mapping[str, Any]) -> Translator:
    def translate(init_args: Mapping[str, Any]) -> dict[str, Any]:
        args = {"towers": init_args.get("towers") or {}}
        args.update({key: init_args.get(key, default) for key, default in defaults.items()})
        return {"class_path": "clapkit.encoders.tower.TowerSet", "init_args": args}

    return translate


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


#: Format-1 task name -> its translator.
TASK_TRANSLATORS: dict[str, Translator] = {
    "ContrastiveTask": _tower_set(_CONTRASTIVE_DEFAULTS),
    "AudioCLIPTask": _tower_set(_AUDIOCLIP_DEFAULTS),
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


def split_task_tree(tree: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A task's tree (format 1's ``model:`` section, or a LightningCLI ``model:`` section) as
    ``(model tree, task tree)``: the plain model's ``class_path``/``init_args`` and the task's
    ``class_path`` with its training arguments. A tree naming no translated task is a model
    tree already: ``(tree, None)``."""
    class_path = str(tree.get("class_path", ""))
    name = task_name(class_path)
    if name not in TASK_TRANSLATORS:
        return dict(tree), None
    init_args = dict(tree.get("init_args") or {})
    model = TASK_TRANSLATORS[name](init_args)
    training = {key: value for key, value in init_args.items() if key not in model["init_args"]}
    return model, {"class_path": class_path, "init_args": training}


def upgrade_task_state(expected: Mapping[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    """A task's checkpoint ``state_dict`` with the keys of a model saved at the task's top level
    (``towers.audio...``) moved under ``model.``, where ``expected`` (the task's own state dict
    keys) has them; keys already in place are kept."""
    return {(f"model.{key}" if key not in expected and f"model.{key}" in expected else key): value
            for key, value in state.items()}


def build_model(tree: Mapping[str, Any], build: Callable[..., Any],
                resolve: Callable[[str], str] | None = None) -> Any:
    """The plain model of a model tree, or of a task tree (its model's part: one path for format-1
    directories, converted checkpoints and run configs), with random weights.

    Args:
        tree: the ``class_path``/``init_args`` tree.
        build: ``(sub_tree, resolve) -> module`` for one ``class_path`` tree (the safe
            :func:`clapkit.hub.native.instantiate_model`, or a converter's direct build).
        resolve: maps each ``./relative`` path string to a real path.
    """
    model_tree, _ = split_task_tree(tree)
    return build(model_tree, resolve)
