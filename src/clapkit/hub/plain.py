"""The plain inference modules of a model config: what :func:`clapkit.load` builds, without the task.

A native model directory's ``config.yaml`` names the LightningModule the model was trained as
(``ContrastiveTask``, ``SeparationTask``...). Inference needs only the plain ``nn.Module``\\ s
that task wraps, and the task's ``init_args`` say how to build them. :data:`PLAIN_BUILDERS`
is the one place that says, for every clapkit task, which plain module its ``init_args``
become:

- ``ContrastiveTask``, ``AudioCLIPTask`` -> :class:`~clapkit.encoders.tower.TowerSet`, from
  ``towers``, ``pairs``, ``logit_scale_min`` / ``logit_scale_max``;
- ``SeparationTask`` -> :class:`~clapkit.encoders.separation.network.SeparationNetwork`, from
  ``separator``, ``query``, ``copy_query_encoder``;
- ``ClassificationTask`` -> :class:`~clapkit.encoders.classifier.Classifier`, from ``encoder``,
  ``head`` / ``use_head`` / ``head_dropout``, ``num_classes``, ``multi_label``, ``input_key``,
  ``pass_lengths``, ``class_names``.

Each plain module holds the task's sub-modules under the task's attribute names, so the state
dict keys of a model directory's ``model.safetensors`` fit it unchanged: directories saved from
a task (every directory so far) load as they are. The table is keyed by class name and lives
here rather than on the task classes because reading it off a class would import the class, and
with it Lightning and torchmetrics. Defaults of the arguments a builder reads are the tasks' own
(:data:`TASK_DEFAULTS`, which ``tests/test_plain.py`` checks against the task signatures). A
config naming any other class (a user's task passed through ``allow=``, or a plain module such as ``TowerSet``)
is instantiated whole and its plain modules taken out of it, as before.

Audio-only work builds the audio tower only: ``towers=("audio",)`` builds those towers of a
contrastive model and reads only their tensors from the memory-mapped ``model.safetensors``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from clapkit.audio.preprocess import CONFIG_NAME, InferenceConfig
from clapkit.hub.native import (
    instantiate_model,
    load_directory,
    map_paths,
    plain,
    read_native_config,
)
from clapkit.io.checkpoint import PretrainedError, load_state_dict_strict

#: A builder: ``(init_args, build, towers) -> plain module``; ``build`` instantiates one
#: ``class_path``/``init_args`` sub-tree, ``towers`` is the subset of towers asked for (or ``None``).
Builder = Callable[[Mapping[str, Any], Callable[[Any], nn.Module], "Sequence[str] | None"], nn.Module]

#: The defaults of the task arguments the builders read, for configs that leave them out (the
#: tasks' own defaults; ``tests/test_plain.py`` checks them against the task signatures).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "ContrastiveTask": {"pairs": [["audio", "text"]], "logit_scale_min": 1.0, "logit_scale_max": 100.0},
    "AudioCLIPTask": {"pairs": [["audio", "text"], ["audio", "image"], ["image", "text"]],
                      "logit_scale_min": 1.0, "logit_scale_max": 100.0},
    "SeparationTask": {"copy_query_encoder": True},
    "ClassificationTask": {"multi_label": False, "use_head": True, "head_dropout": 0.0, "head": None,
                           "input_key": "audio", "pass_lengths": False, "class_names": None},
}


def _tower_set(args, build, towers):
    from clapkit.encoders.tower import TowerSet

    trees = dict(args.get("towers") or {})
    wanted = list(trees) if towers is None else [name for name in trees if name in towers]
    if towers is not None and (unknown := sorted(set(towers) - set(trees))):
        raise PretrainedError(f"no tower {unknown[0]!r} in the model (towers: {', '.join(trees)})")
    bounds = (math.log(args["logit_scale_min"]), math.log(args["logit_scale_max"]))
    # The log scales' values come with the weights; their init does not matter.
    scales = {f"{a}__{b}": nn.Parameter(torch.zeros(())) for a, b in args["pairs"]}
    return TowerSet({name: build(trees[name]) for name in wanted}, scales, bounds)


def _translated(args, build, towers):
    """These tasks' trees become their models' trees through :mod:`clapkit.interop.legacy`
    (:func:`build_plain` does it before building)."""
    raise NotImplementedError


#: Task class name -> how its ``init_args`` become the plain inference modules.
PLAIN_BUILDERS: dict[str, Builder] = {
    "ContrastiveTask": _tower_set,
    "AudioCLIPTask": _tower_set,
    "SeparationTask": _translated,
    "ClassificationTask": _translated,
}


def task_name(class_path: str) -> str | None:
    """The :data:`PLAIN_BUILDERS` key of a config's ``class_path`` (``None`` for other classes).

    clapkit's tasks are named by their module (``clapkit.lightning_modules.contrastive.ContrastiveTask``),
    the package (``clapkit.lightning_modules.ContrastiveTask``) or their short name."""
    module, _, name = class_path.rpartition(".")
    if name in PLAIN_BUILDERS and (not module or module == "clapkit.lightning_modules"
                                   or module.startswith("clapkit.lightning_modules.")):
        return name
    return None


def build_plain(model_config: Mapping[str, Any], *, resolve: Callable[[str], str] | None = None,
                towers: Sequence[str] | None = None, build: Callable[[Any], nn.Module] | None = None) -> nn.Module:
    """The plain inference module of a ``class_path``/``init_args`` tree (random weights).

    Args:
        model_config: the tree (a native directory's ``model:`` section, or a converted
            checkpoint's config).
        resolve: maps each ``./relative`` path string to a real path.
        towers: for a contrastive model, build only these towers (``("audio",)``).
        build: instantiates one sub-tree (default :func:`clapkit.hub.native.instantiate_model`).
    """
    build = build or instantiate_model
    config = map_paths(plain(model_config), resolve) if resolve else plain(model_config)
    from clapkit.interop.legacy import TASK_TRANSLATORS
    from clapkit.interop.legacy import task_name as legacy_task

    name = task_name(str(config.get("class_path", "")))
    if name is None or PLAIN_BUILDERS[name] is _translated:
        # a format-1 tree naming a classification, separation or spatial task: its model's tree
        translate = TASK_TRANSLATORS.get(legacy_task(str(config.get("class_path", ""))) or "")
        return _plain_of(build(translate(config.get("init_args") or {}) if translate else config), towers)
    args = {**TASK_DEFAULTS[name], **(config.get("init_args") or {})}
    return PLAIN_BUILDERS[name](args, build, towers)


def build_plain_with_weights(model_config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], *,
                             resolve: Callable[[str], str] | None = None, what: str = "weights") -> nn.Module:
    """:func:`build_plain` filled with ``state_dict`` (every tensor checked), in eval mode: for a
    converted official checkpoint, whose state dict has the task's keys."""
    from clapkit.utils.fastinit import skip_random_init

    with skip_random_init():
        module = build_plain(model_config, resolve=resolve)
    load_state_dict_strict(module, state_dict, what=what)
    return module.eval()


def _plain_of(model: nn.Module, towers: Sequence[str] | None) -> nn.Module:
    """The plain modules of a whole instantiated model (a class outside :data:`PLAIN_BUILDERS`)."""
    from clapkit.encoders.tower import TowerSet

    if getattr(model, "towers", None) is not None:
        tower_set = TowerSet.of(model)
        if towers is not None:
            tower_set = TowerSet({k: v for k, v in tower_set.towers.items() if k in towers}, tower_set.logit_scales,
                                 getattr(tower_set, "log_scale_bounds", None))
        return tower_set
    return model


def load_plain(directory: str | os.PathLike, *, towers: Sequence[str] | None = None, load_weights: bool = True,
               allow: Iterable[str] = (), replace: Mapping[str, str] | None = None,
               ) -> tuple[nn.Module, dict[str, Any], InferenceConfig]:
    """Build a native model directory's plain inference modules: ``(module in eval mode, config, inference)``.

    Args:
        directory: the model directory.
        towers: for a contrastive model, only these towers (``("audio",)``): the others are
            neither built nor read from ``model.safetensors``. ``None``: every tower.
        load_weights: read ``model.safetensors`` (``False``: only the config and its assets, for a
            model nested in a larger one whose own weights file carries every tensor).
        allow: module prefixes trusted beyond the allow-list (see :func:`clapkit.hub.native.check_class_paths`).
        replace: config key -> a path the user gave for an outside path under that key
            (see :func:`clapkit.hub.native.read_native_config`).
    """
    def prefixes(module: nn.Module) -> list[str] | None:
        if towers is None or getattr(module, "towers", None) is None:
            return None
        return [f"towers.{name}." for name in module.towers] + ["logit_scales."]

    allow = tuple(allow)
    where = os.path.join(os.fspath(directory), CONFIG_NAME)

    def build(tree):
        return instantiate_model(tree, allow=allow, where=where)

    return load_directory(directory,
                          lambda config, resolve: build_plain(config, resolve=resolve, towers=towers, build=build),
                          load_weights=load_weights, allow=allow, prefixes=prefixes, replace=replace)


def tower_loader(directory: str | os.PathLike, allow: Iterable[str] = (),
                 replace: Mapping[str, str] | None = None) -> Callable[[str], nn.Module | None]:
    """``name -> tower`` (``None`` when the model has no such tower) built from a native directory
    with its weights: what a :class:`~clapkit.inference.clap.CLAPModel` loaded with some towers only
    uses when another is asked for."""

    config, _ = read_native_config(directory, allow, replace=replace)
    names = set((config.get("init_args") or {}).get("towers") or {})

    def load_tower(name: str) -> nn.Module | None:
        if names and name not in names:
            return None
        module, _, _ = load_plain(directory, towers=(name,), allow=allow, replace=replace)
        return module.towers[name] if name in module.towers else None

    return load_tower
