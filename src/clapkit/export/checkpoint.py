"""Turn a training run's Lightning checkpoint into a native model directory (``clapkit export CKPT``).

A run started with ``clapkit fit --config x.yaml`` leaves ``config.yaml`` (LightningCLI's
resolved configuration) in its log directory and checkpoints below it
(``<log_dir>/checkpoints/*.ckpt``). :func:`export_checkpoint` finds that config beside or
above the checkpoint, rebuilds the model from its ``model:`` section, loads the checkpoint's
``state_dict`` with full key coverage and writes ``config.yaml`` + ``model.safetensors`` plus
every file the config names (tokenizer and text config folders: :mod:`clapkit.hub.assets`):
the ``--model`` of ``clapkit embed``, ``zeroshot``, ``retrieve`` and ``separate``.

The inference settings come from the run too: what the task set on its model itself (a
separation model's chunk length), else the preprocessing the model learned from its data at fit
start (kept in the checkpoint by :class:`~clapkit.lightning_modules.base.BaseTask`), else for an
older checkpoint the data section's (every default filled in by the datamodule's signature, at the
audio encoder's rate); the window, padding and int16 round trip can be overridden. The task is
saved as the plain model it owns (``task.model``) with its training arguments beside it; a
separation model's query CLAP folder comes along
(:attr:`~clapkit.hub.query_clap.PretrainedQueryNetwork.directory_assets`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from clapkit.audio.preprocess import InferenceConfig, inference_of_checkpoint
from clapkit.hub.directory import CONFIG_NAME, plain
from clapkit.hub.native import instantiate_model, save_pretrained
from clapkit.io.checkpoint import load_state_dict_strict, read_checkpoint
from clapkit.io.errors import PretrainedError
from clapkit.io.trust import check_code_values, lookup_packages, read_untrusted_config
from clapkit.utils.atomic import check_target

#: How many directories above the checkpoint are searched for the run's config.yaml
#: (``<log_dir>/checkpoints/last.ckpt`` is one level down; keep a margin for nested layouts).
SEARCH_DEPTH = 3


def find_run_config(checkpoint: str | os.PathLike) -> Path:
    """The LightningCLI ``config.yaml`` beside the checkpoint or in one of its parents."""
    checkpoint = Path(checkpoint).resolve()
    folder = checkpoint.parent
    for _ in range(SEARCH_DEPTH + 1):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
        if folder.parent == folder:
            break
        folder = folder.parent
    raise PretrainedError(
        f"{checkpoint}: no {CONFIG_NAME} beside it or up to {SEARCH_DEPTH} folders above "
        "(the one `clapkit fit` saves in the run's log directory); pass the config explicitly (--config)"
    )


def data_inference(config_path: str | os.PathLike, sample_rate: int,
                   allow: Iterable[str] = ()) -> InferenceConfig | None:
    """The preprocessing of a run config's data section at ``sample_rate``, defaults included.

    For checkpoints that do not carry their model's preprocessing (written before it was
    recorded; see :func:`export_inference`). The data section is parsed against its
    datamodule's signature (not instantiated, so no dataset is touched); the first mapping
    holding ``clip_seconds`` (a nested :class:`~clapkit.datamodules.pipeline.AudioPolicy` or
    a datamodule's own arguments) goes through the one conversion,
    :meth:`InferenceConfig.from_policy`. ``None`` when the config has no data section or no
    window. A data section naming code outside the allow-list (``allow`` extends it) is read
    as it is written, never parsed: parsing imports its ``class_path``.

    Raises:
        PretrainedError: a window setting of the wrong kind (naming the config file).
    """
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    document = read_untrusted_config(config_path, code_sections=())
    data = document.get("data")
    if not isinstance(data, Mapping):
        return None
    try:
        check_code_values(data, allow, where=str(config_path), key="data")
        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--data", type=LightningDataModule)
        tree = parser.parse_object({"data": data}).as_dict()["data"]
    except Exception:  # an unparsable or refused data section only loses the defaults it would give
        tree = dict(data)
    found = _first_with(tree, "clip_seconds")
    if found is None:
        return None
    try:
        return InferenceConfig.from_policy(found, sample_rate)
    except (TypeError, ValueError) as exc:
        raise PretrainedError(f"{config_path}: bad audio settings in the data section ({exc})") from None


def _first_with(value, key: str):
    if isinstance(value, Mapping):
        if key in value and isinstance(value[key], (int, float)):
            return value
        for child in value.values():
            found = _first_with(child, key)
            if found is not None:
                return found
    elif isinstance(value, list):
        for child in value:
            found = _first_with(child, key)
            if found is not None:
                return found
    return None


def _audio_sample_rate(task) -> int | None:
    model = getattr(task, "model", task)  # the plain model a task owns, else the task's own modules
    towers = getattr(model, "towers", None)
    encoders = [tower.encoder for tower in towers.values()] if towers is not None else []
    encoders.append(getattr(model, "encoder", None))
    for encoder in encoders:
        rate = getattr(encoder, "sample_rate", None)
        if isinstance(rate, int):
            return rate
    return None


def export_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    clip_seconds: float | None = None,
    pad: str | None = None,
    int16_roundtrip: bool | None = None,
    overwrite: bool = False,
    trust_pickle: bool = False,
    allow: Iterable[str] = (),
) -> Path:
    """Write the model of a Lightning checkpoint as a native model directory.

    Args:
        checkpoint: a ``.ckpt`` written by ``clapkit fit``.
        output: the model directory to create.
        config: the run's LightningCLI config (default: found with :func:`find_run_config`).
        clip_seconds: inference window (default: the one the model learned from its data, see
            :func:`export_inference`).
        pad: padding of short clips (default: likewise, else ``repeatpad``).
        int16_roundtrip: quantise inputs to int16 first (default: likewise).
        overwrite: replace an existing model directory; ``output`` may never be, contain or lie
            inside the checkpoint or the config (``-o RUN`` is refused).
        trust_pickle: let ``torch.load`` unpickle code (Lightning checkpoints whose
            hyper-parameters hold objects; only for files you trust).
        allow: module prefixes the run's ``model:`` section may name beyond clapkit,
            ``torch.nn`` and ``torch.optim`` (a run folder is read like a model directory:
            anything else is refused before it is imported).

    The run's config is read with :func:`clapkit.io.trust.read_untrusted_config`; a ``package:``
    text model in a config found in the run folder is looked up without importing the package
    (one the user passed with ``config`` is theirs, and resolves as in training).
    """
    from clapkit.io.checkpoint import trusting_code

    if not Path(checkpoint).is_file():
        raise PretrainedError(f"{checkpoint}: no such checkpoint file")
    config_path = Path(config) if config is not None else find_run_config(checkpoint)
    # Before the slow part: ``-o RUN --overwrite`` would otherwise replace the run folder itself.
    check_target(output, inputs=[checkpoint, config_path], overwrite=overwrite)
    allow = tuple(allow)
    document = read_untrusted_config(config_path, code_sections=("model",), allow=allow)
    if not isinstance(document.get("model"), dict):
        raise PretrainedError(f"{config_path}: no 'model' section")
    from clapkit.interop.legacy import query_tree

    tree = query_tree(plain(document["model"]))  # a run made before PretrainedQueryNetwork moved
    build_tree = tree if config is not None else lookup_packages(tree, where=str(config_path), key="model")
    with trusting_code(trust_pickle):
        return _export(checkpoint, output, config_path, tree, build_tree, clip_seconds=clip_seconds, pad=pad,
                       int16_roundtrip=int16_roundtrip, overwrite=overwrite, trust_pickle=trust_pickle, allow=allow)


def _export(checkpoint, output, config_path: Path, tree: dict[str, Any], build_tree: dict[str, Any], *,
            clip_seconds, pad, int16_roundtrip, overwrite: bool, trust_pickle: bool, allow: tuple[str, ...]) -> Path:
    state = read_checkpoint(checkpoint, trust_pickle=trust_pickle)
    weights = state.get("state_dict")
    if not isinstance(weights, Mapping):
        raise PretrainedError(f"{checkpoint}: not a Lightning checkpoint (no 'state_dict'; "
                              f"top-level keys: {', '.join(list(state)[:6])})")
    from clapkit.interop.legacy import upgrade_task_state

    task = instantiate_model(build_tree, allow=allow, where=str(config_path))
    # A run saved before its task owned ``self.model`` has the model's keys at the top level.
    weights = upgrade_task_state(task.state_dict(), weights)
    load_state_dict_strict(task, weights, what=f"{checkpoint} (for the model in {config_path})")
    task.eval()
    model = getattr(task, "model", task)
    if getattr(model, "inference", None) is not None:
        # The task set its model's preprocessing itself (a separation model's chunks): it decides,
        # and the task names the model's files (the query CLAP folder it copies in).
        return save_pretrained(model, output, model.inference, task.saved_model_config(tree), overwrite=overwrite,
                               inputs=[checkpoint, config_path])
    inference = export_inference(state, checkpoint, config_path, _audio_sample_rate(model), allow,
                                 clip_seconds=clip_seconds, pad=pad, int16_roundtrip=int16_roundtrip)
    # The run's config may name files outside any model directory (a text tower's folder, the
    # source model's assets after `clapkit fit --model DIR`): copy them in, so the export
    # survives the source moving and never reads outside itself.
    from clapkit.hub.assets import bundle_assets

    bundled = bundle_assets(tree)
    return save_pretrained(task, output, inference, bundled.config, assets=bundled.assets, overwrite=overwrite,
                           inputs=[checkpoint, config_path])


def export_inference(state: Mapping[str, Any], checkpoint, config_path: Path, rate: int | None,
                     allow: Iterable[str] = (), *, clip_seconds: float | None = None, pad: str | None = None,
                     int16_roundtrip: bool | None = None) -> InferenceConfig:
    """The ``inference:`` section of an exported model: what the checkpoint's model learned from
    its data (:func:`~clapkit.audio.preprocess.inference_of_checkpoint`), else the run config's
    data section at the audio encoder's ``rate`` (:func:`data_inference`); the given settings
    replace either's.

    Raises:
        PretrainedError: a bad checkpoint entry, a data rate other than the encoder's, no rate
            or no window to be found, or settings that do not make an :class:`InferenceConfig`.
    """
    try:
        inference = inference_of_checkpoint(state, where=str(checkpoint))
    except ValueError as exc:
        raise PretrainedError(str(exc)) from None
    if inference is not None and rate is not None and inference.sample_rate != rate:
        raise PretrainedError(f"{checkpoint}: the model learned {inference.sample_rate} Hz audio from its data, "
                              f"but its audio encoder takes {rate} Hz")
    if inference is None:
        if rate is None:
            raise PretrainedError(f"{config_path}: no audio encoder with a sample_rate in the model")
        inference = data_inference(config_path, rate, allow)
    changes: dict[str, Any] = {"pad": pad, "int16_roundtrip": int16_roundtrip}
    if clip_seconds is not None:
        changes["clip_samples"] = int(round(clip_seconds * (inference.sample_rate if inference else rate)))
    changes = {key: value for key, value in changes.items() if value is not None}
    if inference is None and "clip_samples" not in changes:
        raise PretrainedError(f"{config_path}: the data section gives no clip_seconds; pass the window "
                              "(--clip-seconds)")
    try:
        return replace(inference, **changes) if inference else InferenceConfig(sample_rate=rate, **changes)
    except (TypeError, ValueError) as exc:
        raise PretrainedError(f"{config_path}: bad inference settings ({exc})") from None
