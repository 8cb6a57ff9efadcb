"""A native model directory's preprocessing wins over the data config's audio settings.

``clapkit validate --config configs/eval/x.yaml --model DIR`` evaluates the model in ``DIR``;
its ``config.yaml`` records how audio must reach it (``inference:`` sample rate, window,
padding, int16 round trip, fusion). An evaluation YAML is model-agnostic and carries one
family's values (LAION-CLAP's 48 kHz, 10 s), so a 44.1 kHz MS-CLAP model or a model trained
on 1 s windows would silently get the wrong input. :func:`apply_model_preprocessing` rewrites
the parsed ``data:`` section before anything is instantiated:

- each setting the model directory defines replaces the config's value, and every change is
  reported in one line;
- a setting the user gave explicitly on the command line (``--data.init_args.audio.<name>``,
  ``--data.audio.<name>``, or the whole ``audio`` group) is kept, and a conflict with the model
  directory is reported.

Datamodules with an ``audio`` policy (:class:`~clapkit.datamodules.pipeline.AudioPolicy`) get
``sample_rate``, ``clip_seconds``, ``pad``, ``int16`` and ``max_seconds`` (fusion); datamodules
with plain ``sample_rate`` / ``clip_seconds`` arguments (the synthetic corpus) get those two.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from clapkit.audio.preprocess import InferenceConfig
from clapkit.hub.directory import is_native, read_directory

#: Window a fusion model's evaluation batches may reach when the config sets none: Clotho's
#: longest clips are 30 s (LAION-CLAP's fusion models take long clips whole).
FUSION_MAX_SECONDS = 30.0


def wanted_audio(inference: InferenceConfig, current_max: float | None) -> dict[str, Any]:
    """AudioPolicy values that give the model in a directory its own preprocessing."""
    clip_seconds = inference.clip_samples / inference.sample_rate
    if inference.fusion:
        max_seconds = current_max if current_max is not None and current_max > clip_seconds else max(
            FUSION_MAX_SECONDS, clip_seconds)
    else:
        max_seconds = None
    return {
        "sample_rate": inference.sample_rate,
        "clip_seconds": clip_seconds,
        "pad": inference.pad,
        "int16": inference.int16_roundtrip,
        "max_seconds": max_seconds,
    }


def explicit_keys(argv: Sequence[str], group: str) -> set[str] | None:
    """Names under ``--data.init_args.<group>.`` / ``--data.<group>.`` given in ``argv``
    (``None``: the whole group was given); ``group=""`` looks at ``--data.init_args.<name>``."""
    prefixes = [f"--data.init_args.{group}.", f"--data.{group}."] if group else ["--data.init_args.", "--data."]
    wholes = {f"--data.init_args.{group}", f"--data.{group}"} if group else set()
    found: set[str] = set()
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name in wholes:
            return None
        for prefix in prefixes:
            if name.startswith(prefix):
                found.add(name[len(prefix):].split(".")[0])
    return found


def apply_model_preprocessing(config: Any, argv: Sequence[str],
                              report: Callable[[str], None] | None = None) -> list[str]:
    """Give ``config`` (a parsed subcommand namespace with ``weights`` and ``data``) the
    preprocessing of the native model directory in ``weights``; returns the report lines."""
    weights = _get(config, "weights")
    data = _get(config, "data")
    if not weights or not is_native(weights) or data is None:
        return []
    inference = read_directory(weights).inference
    init = _get(data, "init_args")
    if init is None:
        return []
    lines: list[str] = []
    changes: list[str] = []
    if _has(init, "audio"):
        audio = _get(init, "audio")
        if audio is None:
            from jsonargparse import Namespace

            from clapkit.datamodules.pipeline import AudioPolicy

            defaults = AudioPolicy()
            audio = Namespace(**{f.name: getattr(defaults, f.name) for f in fields(AudioPolicy)})
            _set(init, "audio", audio)
        explicit = explicit_keys(argv, "audio")
        flag = "--data.init_args.audio."
        target = audio
        wanted = wanted_audio(inference, _get(audio, "max_seconds"))
    elif _has(init, "sample_rate"):
        explicit = explicit_keys(argv, "")
        flag = "--data.init_args."
        target = init
        wanted = {"sample_rate": inference.sample_rate,
                  "clip_seconds": inference.clip_samples / inference.sample_rate}
        wanted = {k: v for k, v in wanted.items() if _has(init, k)}
    else:
        return []
    for name, value in wanted.items():
        current = _get(target, name)
        if _same(current, value):
            continue
        if explicit is None or name in explicit:
            lines.append(f"clapkit: warning: {flag}{name} {_show(current)} differs from model directory "
                         f"{weights} ({_show(value)}); using {_show(current)} as given")
            continue
        _set(target, name, value)
        changes.append(f"{name} {_show(value)} (config: {_show(current)})")
    if changes:
        what = "resamples to " if any(c.startswith("sample_rate ") for c in changes) else ""
        rate = f"{what}{inference.sample_rate} Hz; " if what else ""
        lines.insert(0, f"clapkit: model directory {weights}: {rate}its preprocessing replaces the config's: "
                        f"{', '.join(changes)}; pass {flag}<name> to choose otherwise")
    emit = report or _stderr
    for line in lines:
        emit(line)
    return lines


def _stderr(line: str) -> None:
    if os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0":
        print(line, file=sys.stderr)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) < 1e-9
    return a == b


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _has(namespace: Any, name: str) -> bool:
    return name in namespace if hasattr(namespace, "__contains__") else hasattr(namespace, name)


def _get(namespace: Any, name: str) -> Any:
    if isinstance(namespace, dict):
        return namespace.get(name)
    return getattr(namespace, name, None)


def _set(namespace: Any, name: str, value: Any) -> None:
    if isinstance(namespace, dict):
        namespace[name] = value
    else:
        setattr(namespace, name, value)
