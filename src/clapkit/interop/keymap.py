"""Explicit key maps from official checkpoints to clapkit modules, with a coverage check.

Every interop module describes its translation as a :class:`KeyMap`: ordered regex rules
that rename official keys, official keys that are deliberately dropped (each with the reason),
and clapkit keys that may be absent from the file (each with the reason). :meth:`KeyMap.apply`
then guarantees that **every official key is consumed** (renamed to an existing clapkit key or
dropped on purpose) and **every clapkit key is filled** (or optional), with matching shapes, or
raises one :class:`CheckpointError` whose single line lists all problems on both sides.

:func:`unwrap_state_dict` (from :mod:`clapkit.io.checkpoint`, re-exported here) finds the tensors
inside the usual wrappers: ``{"state_dict": ...}`` (LAION-CLAP, Lightning), ``{"model": ...}``,
DDP's ``module.`` prefix on every key.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from clapkit.io.checkpoint import (  # noqa: F401  (re-exported: keymap is where interop code looks)
    WRAPPER_KEYS,
    CheckpointError,
    PretrainedError,
    _is_state_dict,  # noqa: F401
    describe_problems,
    module_state,
    read_state_dict,
    unwrap_state_dict,
)
from clapkit.io.checkpoint import preview as _preview  # noqa: F401  (old private name)

#: Keys no clapkit module stores and no official file needs: buffers transformers and the
#: Swin/HTSAT code recompute from the configuration.
COMMON_IGNORED: dict[str, str] = {
    r"(^|\.)embeddings\.position_ids$": "recomputed by transformers (absent from newer checkpoints)",
    r"(^|\.)embeddings\.token_type_ids$": "recomputed by transformers",
}

#: clapkit keys an official file may lack.
COMMON_OPTIONAL: dict[str, str] = {
    r"(^|\.)num_batches_tracked$": "BatchNorm step counter, unused at inference",
}

@dataclass
class KeyMap:
    """Translation of one official layout onto one clapkit module.

    Args:
        rules: ``(pattern, replacement)`` regex pairs tried in order on each official key; the
            first pattern that matches (``re.fullmatch``) renames it with ``re.sub`` semantics.
            A key that no rule matches keeps its name.
        ignored: official-key patterns dropped on purpose -> reason (shown in :meth:`report`).
        optional: clapkit-key patterns that may stay unfilled -> reason.
        name: what this map converts (for messages), e.g. ``"LAION-CLAP HTSAT-tiny"``.
    """

    rules: list[tuple[str, str]] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    optional: dict[str, str] = field(default_factory=dict)
    name: str = "checkpoint"

    def __post_init__(self) -> None:
        self.ignored = {**COMMON_IGNORED, **self.ignored}
        self.optional = {**COMMON_OPTIONAL, **self.optional}
        self._rules = [(re.compile(p), r) for p, r in self.rules]

    def rename(self, key: str) -> str:
        """The clapkit name of an official key."""
        for pattern, replacement in self._rules:
            if pattern.fullmatch(key):
                return pattern.sub(replacement, key)
        return key

    def is_ignored(self, key: str) -> bool:
        return any(re.search(p, key) for p in self.ignored)

    def is_optional(self, key: str) -> bool:
        return any(re.search(p, key) for p in self.optional)

    def apply(self, source: Mapping[str, torch.Tensor], target: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Rename ``source`` (official state dict) onto ``target`` (clapkit keys -> tensors or shapes).

        Returns:
            The renamed tensors, keyed like ``target``. Optional clapkit keys the file lacks are
            filled from ``target`` when it holds real tensors (values built by construction,
            e.g. a front end's filterbank), else with zeros of the right shape and dtype.

        Raises:
            CheckpointError: listing official keys not consumed, clapkit keys not filled,
                keys filled twice and shape mismatches, all in one line.
        """
        out: dict[str, torch.Tensor] = {}
        origin: dict[str, str] = {}
        unconsumed, duplicated, mismatched = [], [], []
        attempted: set[str] = set()
        for key, value in source.items():
            if self.is_ignored(key):
                continue
            new = self.rename(key)
            if new not in target:
                unconsumed.append(key if new == key else f"{key} (-> {new})")
                continue
            if new in out:
                duplicated.append(f"{new} (from {origin[new]} and {key})")
                continue
            attempted.add(new)
            shape = tuple(getattr(target[new], "shape", target[new]))
            if tuple(value.shape) != shape:
                mismatched.append(f"{key} {tuple(value.shape)} vs {new} {shape}")
                continue
            out[new], origin[new] = value, key
        for key, value in target.items():
            if key not in attempted and self.is_optional(key) and isinstance(value, torch.Tensor):
                out[key] = torch.zeros_like(value, device="cpu") if value.is_meta else value.detach().clone()
        unfilled = [k for k in target if k not in attempted and not self.is_optional(k)]
        problems = describe_problems([
            ("{n} official keys not consumed", sorted(unconsumed)), ("{n} clapkit keys not filled", sorted(unfilled)),
            ("keys filled twice", duplicated), ("shape mismatches", mismatched)])
        if problems:
            raise CheckpointError(f"{self.name}: weights do not map onto the clapkit model: {problems}")
        return out

    def report(self, source: Mapping[str, torch.Tensor]) -> dict[str, str]:
        """Official keys this map drops, each with its reason (for logs and docs)."""
        dropped = {}
        for key in source:
            for pattern, reason in self.ignored.items():
                if re.search(pattern, key):
                    dropped[key] = reason
                    break
        return dropped


def build_target_model(config: Any, assets: Mapping[str, Any], device: str = "meta", *,
                       plain_modules: bool = False) -> Any:
    """The clapkit model a converter fills, built from its ``class_path`` tree with each
    ``./<name>`` path resolved to ``assets[name]``; on the meta device by default (keys and shapes,
    no init cost). Some front ends (torchaudio's mel filterbank) cannot be built on meta: those are
    built on the CPU instead.

    ``plain_modules``: build the task's plain model (:func:`clapkit.interop.legacy.build_model`, same
    state dict keys, no Lightning import) instead of the task itself: enough for keys and shapes.
    """

    def resolve(path: str) -> str:
        name = path[2:] if path.startswith("./") else None
        return str(assets[name]) if name in assets else path

    def build():
        if plain_modules:
            from clapkit.interop.legacy import build_model

            return build_model(config, build_from_config, resolve)
        return build_from_config(config, resolve)

    try:
        with torch.device(device):
            return build()
    except Exception:
        if device != "meta":
            raise
        return build()


def build_from_config(config: Any, resolve: Callable[[str], str] | None = None) -> Any:
    """Instantiate a ``class_path``/``init_args`` tree directly (no jsonargparse validation).

    Converters use it to get the clapkit model's keys and shapes cheaply (typically inside
    ``torch.device("meta")``). An argument annotated as a ``Callable`` receives a
    ``functools.partial`` of its class (e.g. a :class:`~clapkit.encoders.tower.Tower`'s
    ``projection``), as LightningCLI does. ``resolve`` maps ``./relative`` path strings.
    """
    if isinstance(config, Mapping) and "class_path" in config:
        cls, kwargs = _class_and_args(config, resolve)
        hints = _init_hints(cls)
        for key, value in (config.get("init_args") or {}).items():
            if isinstance(value, Mapping) and "class_path" in value and "Callable" in str(hints.get(key)):
                inner_cls, inner_kwargs = _class_and_args(value, resolve)
                kwargs[key] = functools.partial(inner_cls, **inner_kwargs)
        return cls(**kwargs)
    if isinstance(config, Mapping):
        return {k: build_from_config(v, resolve) for k, v in config.items()}
    if isinstance(config, list):
        return [build_from_config(v, resolve) for v in config]
    if isinstance(config, str) and resolve is not None and config.startswith("./"):
        return resolve(config)
    return config


def _class_and_args(config: Mapping[str, Any], resolve) -> tuple[type, dict[str, Any]]:
    module_name, _, name = str(config["class_path"]).rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    hints = _init_hints(cls)
    kwargs = {}
    for key, value in (config.get("init_args") or {}).items():
        callable_arg = isinstance(value, Mapping) and "class_path" in value and "Callable" in str(hints.get(key))
        kwargs[key] = None if callable_arg else build_from_config(value, resolve)
    return cls, kwargs


def _init_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:
        return {k: p.annotation for k, p in inspect.signature(cls).parameters.items()}


def target_shapes(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's ``state_dict`` (tensors, possibly on the meta device), the ``target`` of :meth:`KeyMap.apply`."""
    return dict(module.state_dict())
