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

The values come from the one conversion, :meth:`AudioPolicy.from_inference
<clapkit.datamodules.pipeline.AudioPolicy.from_inference>`: datamodules with an ``audio`` policy
get every setting the model decides (``sample_rate``, ``clip_seconds``, ``max_seconds`` for
fusion, ``pad``, ``int16``) and keep their own choices (training crop, silence, downmix, and
the evaluation crop of a config that sets an ``audio`` policy: an evaluation set scores a
reproducible excerpt per file; without one, the model's crop, so a fine-tuned model keeps it);
datamodules with plain arguments of those names (the synthetic corpus: ``sample_rate``,
``clip_seconds``) get those.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from typing import Any

from clapkit.audio.preprocess import InferenceConfig
from clapkit.datamodules.pipeline import AudioPolicy
from clapkit.hub.directory import is_native, read_directory


def wanted_audio(inference: InferenceConfig, current: Any, names: Sequence[str] | None = None, *,
                 own_crop: bool = True) -> dict[str, Any]:
    """The settings of ``current`` (a parsed policy namespace, or a datamodule's arguments) that
    give it the preprocessing ``inference`` says, through :meth:`AudioPolicy.from_inference`.

    A policy (``names`` ``None``) keeps its own choices (:meth:`AudioPolicy.choice_names`; the
    evaluation crop only with ``own_crop``) and fusion window cap; otherwise only ``names`` the
    model decides are looked at.
    """
    if names is None:
        names = [f.name for f in fields(AudioPolicy) if _has(current, f.name)]
        keep = AudioPolicy.choice_names() - (set() if own_crop else {"eval_crop"})
        choices = {name: _get(current, name) for name in names if name in keep}
        policy = AudioPolicy.from_inference(inference, _get(current, "max_seconds"), **choices)
    else:
        policy = AudioPolicy.from_inference(inference)
        names = [name for name in names if name not in AudioPolicy.choice_names()]
    values = asdict(policy)
    return {name: values[name] for name in names}


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
        own_crop = audio is not None
        if audio is None:
            from jsonargparse import Namespace

            audio = Namespace(**asdict(AudioPolicy()))
            _set(init, "audio", audio)
        explicit = explicit_keys(argv, "audio")
        flag = "--data.init_args.audio."
        target = audio
        wanted = wanted_audio(inference, audio, own_crop=own_crop)
    elif _has(init, "sample_rate"):
        explicit = explicit_keys(argv, "")
        flag = "--data.init_args."
        target = init
        wanted = wanted_audio(inference, init, [f.name for f in fields(AudioPolicy) if _has(init, f.name)])
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
