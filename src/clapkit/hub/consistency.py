"""Contradictions between the parts of a model, refused when it is saved or loaded.

A model directory states some facts twice: the ``inference:`` section says at which rate, in
which window and with or without fusion audio reaches the model, while the audio encoder's own
config says what it was built for; a front end's ``sample_rate`` says which mel filterbank it
builds, while ``model.safetensors`` carries the filterbank it was trained with; a text tower's
tokenizer says how many token ids it makes, while the embedding matrix says how many it has
rows for. When the two disagree the model still loads and runs, and gives wrong answers (or, for
the vocabulary, an ``IndexError`` at query time). :func:`check_model` refuses each such
contradiction in one line naming both values, from the one place every native directory is
built or written (:func:`clapkit.hub.native.load_model`, :func:`clapkit.hub.native.save_pretrained`).

Which encoder the ``inference:`` section describes depends on the model: a contrastive model's
``audio`` tower, a classifier's encoder (rate, window and fusion), or a separator (its mixture
rate only: its window is the chunk it separates in, not an encoder's input).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from clapkit.audio.preprocess import InferenceConfig
from clapkit.io.checkpoint import PretrainedError

#: Rates a saved filterbank is compared with when it contradicts its front end's, to name the
#: rate it was built for.
COMMON_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 96000)

#: A saved filterbank matches its front end's when it differs by less than this fraction of the
#: largest filter weight: an official checkpoint's copy (librosa's) differs from torchaudio's by
#: float rounding, another sample rate by whole filters.
FILTERBANK_TOLERANCE = 1e-3


@dataclass(frozen=True)
class AudioInput:
    """The module the ``inference:`` section feeds.

    Attributes:
        name: where it sits in the model (``towers.audio.encoder``, ``separator``...).
        module: the encoder (or separator).
        windowed: whether ``clip_samples`` and ``fusion`` describe its input (``False`` for a
            separator, which is fed chunks).
    """

    name: str
    module: nn.Module
    windowed: bool


def audio_input(model: nn.Module) -> AudioInput | None:
    """The audio encoder (or separator) a model's ``inference:`` section describes, if any."""
    towers = getattr(model, "towers", None)
    if isinstance(towers, (Mapping, nn.ModuleDict)):
        if "audio" not in towers:
            return None
        tower = towers["audio"]
        encoder = getattr(tower, "encoder", tower)
        return AudioInput("towers.audio.encoder", encoder, True) if _has_rate(encoder) else None
    separator = getattr(model, "separator", None)
    if isinstance(separator, nn.Module) and _has_rate(separator):
        return AudioInput("separator", separator, False)
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, nn.Module) and _has_rate(encoder):
        return AudioInput("encoder", encoder, True)
    return None


def _has_rate(module: nn.Module) -> bool:
    rate = getattr(module, "sample_rate", None)
    return isinstance(rate, (int, float)) and not isinstance(rate, bool)


def encoder_window(encoder: nn.Module) -> int | None:
    """The window (samples) an audio encoder fits every clip to, ``None`` when it takes any length."""
    window = getattr(encoder, "clip_samples", None)
    if window is None:
        window = getattr(getattr(encoder, "batcher", None), "clip_samples", None)
    return int(window) if isinstance(window, int) else None


def problems(model: nn.Module, inference: InferenceConfig,
             state: Mapping[str, torch.Tensor] | None = None) -> Iterator[str]:
    """Every contradiction between ``model``, its ``inference`` settings and the weights
    ``state`` about to be loaded into it (``None``: the weights are not checked), one line each."""
    audio = audio_input(model)
    if audio is not None:
        kind = type(audio.module).__name__
        rate = audio.module.sample_rate
        if inference.sample_rate != rate:
            yield (f"inference.sample_rate {inference.sample_rate} contradicts the audio encoder's rate {rate} "
                   f"({audio.name}: {kind}); audio would reach it at the wrong rate")
        if audio.windowed:
            fusion = bool(getattr(audio.module, "fusion", False))
            if inference.fusion != fusion:
                yield (f"inference.fusion {str(inference.fusion).lower()} contradicts the audio encoder, built "
                       f"{'with' if fusion else 'without'} fusion ({audio.name}: {kind}, fusion "
                       f"{str(fusion).lower()})")
            window = encoder_window(audio.module)
            if window is not None and window != inference.clip_samples:
                yield (f"inference.clip_samples {inference.clip_samples} contradicts the audio encoder's window "
                       f"of {window} samples ({audio.name}.clip_samples)")
    if state is not None:
        yield from _filterbank_problems(model, state)
    yield from _vocabulary_problems(model)


def check_model(model: nn.Module, inference: InferenceConfig, state: Mapping[str, torch.Tensor] | None = None,
                *, where: str) -> None:
    """Refuse the first contradiction :func:`problems` finds.

    Args:
        model: the built module (a task or its plain modules), before its weights are loaded.
        inference: the ``inference:`` section.
        state: the weights about to be loaded (``None``: not checked).
        where: what the message names first (the ``config.yaml`` being read).

    Raises:
        PretrainedError: ``"<where>: <contradiction naming both values>"``.
    """
    for problem in problems(model, inference, state):
        raise PretrainedError(f"{where}: {problem}")


def _filterbank_problems(model: nn.Module, state: Mapping[str, torch.Tensor]) -> Iterator[str]:
    for name, module in model.named_modules():
        key = getattr(module, "FILTERBANK", None)
        if not isinstance(key, str) or not hasattr(module, "filterbank"):
            continue
        key = f"{name}.{key}" if name else key
        saved = state.get(key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchaudio's empty-filter warning, already given at build
            expected = module.filterbank()
        if saved is None or tuple(saved.shape) != tuple(expected.shape):
            continue  # absent (shared, or not read) or a shape the strict load reports
        if _same_filterbank(saved, expected):
            continue
        rate = int(module.sample_rate)
        built_for = _rate_of(module, saved, exclude=rate)
        said = f"was built for sample_rate {built_for}" if built_for else "is not the one it builds"
        yield (f"the mel filterbank {key} in the weights {said}, but the front end's config says sample_rate "
               f"{rate} ({type(module).__name__})")


def _same_filterbank(saved: torch.Tensor, expected: torch.Tensor) -> bool:
    saved, expected = saved.detach().double().cpu(), expected.detach().double()
    scale = float(expected.abs().max()) or 1.0
    return float((saved - expected).abs().max()) <= FILTERBANK_TOLERANCE * scale


def _rate_of(module: nn.Module, saved: torch.Tensor, exclude: int) -> int | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchaudio warns of empty filters at low rates
        for rate in COMMON_RATES:
            if rate != exclude and _same_filterbank(saved, module.filterbank(rate)):
                return rate
    return None


def _vocabulary_problems(model: nn.Module) -> Iterator[str]:
    for name, module in model.named_modules():
        # Read from __dict__: a tower whose tokenizer is a lazy property (CLIP's, built from
        # open_clip's own vocabulary file) is not built just to be checked.
        tokenizer = module.__dict__.get("tokenizer")
        embeddings = getattr(getattr(module, "model", None), "get_input_embeddings", None)
        if tokenizer is None or embeddings is None or not hasattr(tokenizer, "get_vocab"):
            continue
        table = embeddings()
        rows = getattr(table, "num_embeddings", None)
        if rows is None:
            continue
        tokens = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)
        if tokens > rows:
            yield (f"the text tower's tokenizer ({name or 'text'}) has {tokens} tokens but its embedding matrix has "
                   f"{rows} rows: token ids {rows} to {tokens - 1} would fail at query time")
