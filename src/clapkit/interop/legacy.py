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

from collections.abc import Callable, Mapping
from typing import Any

#: ``init_args`` of a format-1 task tree -> the format-2 model tree.
Translator = Callable[[Mapping[str, Any]], dict[str, Any]]

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


#: Format-1 task name -> its translator. The classification, separation and spatial tasks'
#: entries go here, beside the contrastive ones.
TASK_TRANSLATORS: dict[str, Translator] = {
    "ContrastiveTask": _tower_set(_CONTRASTIVE_DEFAULTS),
    "AudioCLIPTask": _tower_set(_AUDIOCLIP_DEFAULTS),
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
    legacy = legacy_builder(model_tree)
    if legacy is not None:
        return legacy(model_tree.get("init_args") or {}, lambda sub_tree: build(sub_tree, resolve))
    return build(model_tree, resolve)


# ------------------------------------------------------------------ format-1 builders (transitional)
# Classifier and SeparationNetwork do not yet take their whole config; until their translators
# join TASK_TRANSLATORS, a format-1 tree naming their task is built here directly.


def _separation_network(args, build):
    import copy

    from clapkit.encoders.separation.network import SeparationNetwork
    from clapkit.io.checkpoint import compact_buffers
    from clapkit.io.errors import PretrainedError

    args = {"copy_query_encoder": True, **args}
    query = build(args["query"])
    separator = build(args["separator"])
    if separator.encoder is None:
        # As SeparationTask does: CLAPSep tunes a copy of the query CLAP's audio encoder.
        if not args["copy_query_encoder"]:
            raise PretrainedError("the separator has no encoder and copy_query_encoder is False")
        separator.attach_encoder(copy.deepcopy(query.audio_encoder))
    network = SeparationNetwork(separator, query)
    compact_buffers(network)
    return network


def _classifier(args, build):
    from torch import nn

    from clapkit.encoders.classifier import Classifier

    args = {"multi_label": False, "use_head": True, "head_dropout": 0.0, "head": None, "input_key": "audio",
            "pass_lengths": False, "class_names": None, **args}
    encoder = build(args["encoder"])
    num_classes = int(args["num_classes"])
    if args["head"] is not None:
        head = build(args["head"])
    elif args["use_head"]:
        head = nn.Sequential(nn.Dropout(args["head_dropout"]), nn.Linear(encoder.output_dim, num_classes))
    else:
        head = nn.Identity()
    return Classifier(encoder, head, num_classes, multi_label=args["multi_label"], input_key=args["input_key"],
                      pass_lengths=args["pass_lengths"], class_names=args["class_names"])


#: Format-1 task name -> ``(init_args, build) -> plain module``, for tasks without a translator.
LEGACY_BUILDERS: dict[str, Callable[[Mapping[str, Any], Callable[[Any], Any]], Any]] = {
    "SeparationTask": _separation_network,
    "ClassificationTask": _classifier,
}


def legacy_builder(tree: Mapping[str, Any]) -> Callable[[Mapping[str, Any], Callable[[Any], Any]], Any] | None:
    """The :data:`LEGACY_BUILDERS` entry of a tree's task (``None``: build the tree as it is)."""
    name = task_name(str(tree.get("class_path", "")))
    return LEGACY_BUILDERS.get(name) if name is not None else None
