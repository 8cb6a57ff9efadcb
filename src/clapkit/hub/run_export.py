"""Turn a training run's Lightning checkpoint into a native model directory (``clapkit export CKPT``).

A run started with ``clapkit fit --config x.yaml`` leaves ``config.yaml`` (LightningCLI's
resolved configuration) in its log directory and checkpoints below it
(``<log_dir>/checkpoints/*.ckpt``). :func:`export_checkpoint` finds that config beside or
above the checkpoint, rebuilds the model from its ``model:`` section, loads the checkpoint's
``state_dict`` with full key coverage and writes ``config.yaml`` + ``model.safetensors`` plus
every file the config names (tokenizer and text config folders: :mod:`clapkit.hub.assets`):
the ``--model`` of ``clapkit embed``, ``zeroshot``, ``retrieve`` and ``separate``.

The inference settings come from the run too: the sample rate is the audio encoder's, the
window (``clip_seconds``), padding and int16 round trip are the data section's (every default
filled in by the datamodule's signature), and any of them can be overridden. A task that owns
one plain model (``task.model``) is saved as that model; a separation model carries its own
inference settings (its chunk length) and its query CLAP folder
(:attr:`~clapkit.hub.query_clap.PretrainedQueryNetwork.directory_assets`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from clapkit.inference.load import (
    CONFIG_NAME,
    InferenceConfig,
    PretrainedError,
    instantiate_model,
    load_state_dict_strict,
    plain,
    read_checkpoint,
    save_pretrained,
)
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


def data_audio_settings(config_path: str | os.PathLike, allow: Iterable[str] = ()) -> dict[str, Any]:
    """``clip_seconds``, ``pad`` and ``int16`` of a run config's data section, defaults included.

    The data section is parsed against its datamodule's signature (not instantiated, so no
    dataset is touched); the first mapping holding ``clip_seconds`` (a datamodule argument or
    a nested :class:`~clapkit.datamodules.pipeline.AudioPolicy`) is used. Empty when the
    config has no data section or it does not parse. A data section naming code outside the
    allow-list (``allow`` extends it) is read as it is written, never parsed: parsing imports
    its ``class_path``.
    """
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    document = read_untrusted_config(config_path, code_sections=())
    data = document.get("data")
    if not isinstance(data, Mapping):
        return {}
    try:
        check_code_values(data, allow, where=str(config_path), key="data")
        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--data", type=LightningDataModule)
        tree = parser.parse_object({"data": data}).as_dict()["data"]
    except Exception:  # an unparsable or refused data section only loses the defaults it would give
        tree = dict(data)
    found = _first_with(tree, "clip_seconds")
    if found is None:
        return {}
    settings = {"clip_seconds": float(found["clip_seconds"])}
    if isinstance(found.get("pad"), str):
        settings["pad"] = found["pad"]
    for key in ("int16", "int16_roundtrip"):
        if isinstance(found.get(key), bool):
            settings["int16_roundtrip"] = found[key]
    return settings


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


def _audio_sample_rate(model) -> int | None:
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
        clip_seconds: inference window (default: the data section's ``clip_seconds``).
        pad: padding of short clips (default: the data section's, else ``repeatpad``).
        int16_roundtrip: quantise inputs to int16 first (default: the data section's ``int16``).
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
    # a checkpoint saved before the task held its modules under `model.` loads through the key map
    weights = upgrade_task_state(task.state_dict(), weights)
    load_state_dict_strict(task, weights, what=f"{checkpoint} (for the model in {config_path})")
    task.eval()
    # A task owning one plain model (`task.model`) is saved as that model; its inference
    # settings, when the task knows them (a separation model's chunks), win over the data's.
    model = getattr(task, "model", task)
    if getattr(model, "inference", None) is not None:
        return save_pretrained(model, output, model.inference, task.saved_model_config(tree), overwrite=overwrite,
                               inputs=[checkpoint, config_path])
    rate = _audio_sample_rate(model)
    if rate is None:
        raise PretrainedError(f"{config_path}: no audio encoder with a sample_rate in the model")
    settings = data_audio_settings(config_path, allow)
    for key, value in (("clip_seconds", clip_seconds), ("pad", pad), ("int16_roundtrip", int16_roundtrip)):
        if value is not None:
            settings[key] = value
    if "clip_seconds" not in settings:
        raise PretrainedError(f"{config_path}: the data section gives no clip_seconds; pass the window "
                              "(--clip-seconds)")
    seconds = settings.pop("clip_seconds")
    try:
        inference = InferenceConfig(sample_rate=rate, clip_samples=int(round(seconds * rate)), **settings)
    except (TypeError, ValueError) as exc:
        raise PretrainedError(f"{config_path}: bad inference settings ({exc})") from None
    # The run's config may name files outside any model directory (a text tower's folder, the
    # source model's assets after `clapkit fit --model DIR`): copy them in, so the export
    # survives the source moving and never reads outside itself.
    from clapkit.hub.assets import bundle_assets

    bundled = bundle_assets(tree)
    config = task.saved_model_config(bundled.config) if model is not task else bundled.config
    return save_pretrained(model, output, inference, config, assets=bundled.assets, overwrite=overwrite,
                           inputs=[checkpoint, config_path])
