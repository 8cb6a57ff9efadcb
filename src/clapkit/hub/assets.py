"""Make a model config self-contained: the files it names outside the model directory.

A training run's config points at whatever the user had: ``hf/roberta-base`` relative to the
run's working directory, the absolute ``text_model`` folder of the model it was fine-tuned from
(``clapkit fit --model DIR`` resolves a model directory's ``./`` paths), ``package:<module>``
for a tokenizer shipped in a Python package, a ``.pt`` file the encoder read its pretrained
weights from. A model directory that keeps those paths breaks when the source moves, and a
model directory is never allowed to read outside itself. :func:`bundle_assets` lists what to
copy in and rewrites the config to ``./<name>`` paths; weight files are dropped instead (every
weight is in ``model.safetensors``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clapkit.hub.native import WEIGHT_FILES
from clapkit.utils.resources import PACKAGE_PREFIX, resolve_model_path


@dataclass
class BundledConfig:
    """A model config rewritten to be self-contained.

    Attributes:
        config: the ``class_path``/``init_args`` tree with ``./<name>`` asset paths and no
            weight-file paths.
        assets: name -> source file or folder to copy into the model directory as ``<name>``.
        dropped: dotted keys whose weight-file path was set to ``null``.
    """

    config: dict[str, Any]
    assets: dict[str, Path] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)


def _is_weight_file(path: Path) -> bool:
    return path.is_file() and any(fnmatch.fnmatch(path.name, pattern) for pattern in WEIGHT_FILES)


def _local_path(value: str) -> Path | None:
    """The existing file or folder a config string names, or ``None`` for any other string."""
    if value.startswith(PACKAGE_PREFIX):
        try:
            return resolve_model_path(value)
        except FileNotFoundError:
            return None
    if value.startswith("./") or "/" not in value and "\\" not in value:
        return None  # already relative to a model directory, or a plain word (pooling: mean)
    path = Path(value).expanduser()
    return path if path.exists() else None


def bundle_assets(config: Mapping[str, Any]) -> BundledConfig:
    """Rewrite ``config`` so that every file or folder it names is copied into the model directory.

    Asset names are the source's base name (``text_model``, ``roberta-base``), suffixed
    ``_2``, ``_3``... when two sources share one; the same source named twice is copied once.
    """
    assets: dict[str, Path] = {}
    by_source: dict[Path, str] = {}
    dropped: list[str] = []

    def name_for(path: Path) -> str:
        key = path.resolve()
        if key not in by_source:
            base = path.resolve().name or "asset"
            name, number = base, 1
            while name in assets:
                number += 1
                name = f"{base}_{number}"
            assets[name] = key
            by_source[key] = name
        return by_source[key]

    def walk(value, where: str):
        if isinstance(value, Mapping):
            return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{where}.{i}") for i, v in enumerate(value)]
        if isinstance(value, str) and not where.endswith("class_path"):
            path = _local_path(value)
            if path is not None:
                if _is_weight_file(path):
                    dropped.append(where)
                    return None
                return f"./{name_for(path)}"
        return value

    return BundledConfig(walk(dict(config), ""), assets, dropped)
