"""Load the released CLAPSep checkpoint layout into a separation model, with coverage.

The model is a :class:`~clapkit.encoders.separation.network.SeparationNetwork` (a
``SeparationTask``'s ``model``); "task" below names it, as its keys are the task's model keys.

The reference (Aisaka0v0/CLAPSep) is a Lightning module whose state dict holds:

- ``clap_model.model.*``: the frozen LAION-CLAP (query network);
- ``audio_branch.*``: its tuned HTSAT copy, where every window-attention ``qkv`` and ``proj``
  is a loralib ``Linear`` (``weight``, ``bias``, ``lora_A [r, in]``, ``lora_B [out, r]``;
  alpha 1, so the update is scaled by ``1/r``);
- ``decoder_model.*``: the HTSAT decoder (``film``, ``layers`` deep to shallow with
  ``downsample`` patch expansion, ``skip``, ``inverse_patch_embed``, ``spec_norm``,
  ``mask_net`` = Linear, LayerNorm, TransformerEncoder, Linear);
- ``stft.*`` / ``istft.*``: torchlibrosa's fixed transform kernels.

The file may be Lightning-wrapped (``{"state_dict": ...}``) or a flat dict, and may hold only
the tuned tensors (LoRA, attention biases, decoder) as the published ``best_model.ckpt`` does:
then the untuned encoder weights come from the CLAP, exactly as CLAPSep initialises them.
The query network is always the CLAP the task was built with (convert the LAION-CLAP
checkpoint first, :mod:`clapkit.interop.laion_clap`); ``clap_model.*`` tensors in the file are
that same frozen model and are not read.

Every official key is consumed (renamed onto the task or dropped for a stated reason) and
every task key is filled, or :class:`~clapkit.interop.keymap.CheckpointError` lists both.
The keys filled from the CLAP are reported (:class:`ClapsepLoad`); CLAPSep tunes the LoRA
adapters and the biases of the adapted ``attn.qkv`` / ``attn.proj`` layers, so a file that
lacks one of those tuned biases is refused (the CLAP's untuned value would be used silently)
unless ``allow_partial``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from clapkit.interop.keymap import CheckpointError, KeyMap, unwrap_state_dict
from clapkit.interop.laion_clap import audio_branch_rules

ENC = "separator.encoder"
DEC = "separator.decoder"
MASK = "separator.masknet"


def _film_rules(official: str, ours: str) -> list[tuple[str, str]]:
    # Named groups: ``official`` may itself contain a group (the skip index).
    return [
        (rf"decoder_model\.{official}\.skip_conv\.(?P<p>gamma|beta)\.(?P<t>weight|bias)", rf"{DEC}.{ours}.film.\g<p>.\g<t>"),
        (rf"decoder_model\.{official}\.feature_proj\.(?P<t>weight|bias)", rf"{DEC}.{ours}.proj.\g<t>"),
        (rf"decoder_model\.{official}\.norm\.(?P<t>weight|bias)", rf"{DEC}.{ours}.norm.\g<t>"),
    ]


def clapsep_key_map(task_keys: Mapping[str, Any]) -> KeyMap:
    """The released-layout -> separation model key map for a model with these keys."""
    rules = [
        # tuned HTSAT copy: loralib -> peft names
        (r"audio_branch\.(.+)\.attn\.(qkv|proj)\.lora_(A|B)", rf"{ENC}.\1.attn.\2.lora_\3.default.weight"),
        (r"audio_branch\.(.+)\.attn\.(qkv|proj)\.(weight|bias)", rf"{ENC}.\1.attn.\2.base_layer.\3"),
        *audio_branch_rules(ENC),
        # decoder
        *_film_rules("film", "bottleneck"),
        *_film_rules(r"skip\.(?P<i>\d+)", r"skips.\g<i>"),
        (r"decoder_model\.layers\.(\d+)\.downsample\.(expand|norm)\.(.+)", rf"{DEC}.stages.\1.expand.\2.\3"),
        (r"decoder_model\.layers\.(\d+)\.blocks\.(.+)", rf"{DEC}.stages.\1.blocks.\2"),
        (r"decoder_model\.inverse_patch_embed\.(.+)", rf"{DEC}.inverse_patch_embed.\1"),
        # mask head
        (r"decoder_model\.spec_norm\.(.+)", rf"{MASK}.spec_norm.\1"),
        (r"decoder_model\.mask_net\.0\.(.+)", rf"{MASK}.input_proj.\1"),
        (r"decoder_model\.mask_net\.1\.(.+)", rf"{MASK}.input_norm.\1"),
        (r"decoder_model\.mask_net\.2\.(.+)", rf"{MASK}.transformer.\1"),
        (r"decoder_model\.mask_net\.3\.(.+)", rf"{MASK}.output_proj.\1"),
    ]
    ignored = {
        r"^(stft|istft)\.": "torchlibrosa's fixed (I)STFT kernels; clapkit's STFT recomputes the same Hann transform",
        r"^(audio_branch|decoder_model)\..*\.(attn_mask|relative_position_index)$": "recomputed from the window geometry",
        r"^audio_branch\.head\.": "HTSAT's `head` layer is built but never called by the reference",
        r"^clap_model\.": "the frozen query CLAP: the task's query network already holds it",
    }
    optional = {
        r"^query\.": "the query network comes from the CLAP the task was built with",
        # Untuned encoder weights are absent from a tuned-only file; they are copied from the CLAP.
        r"^separator\.encoder\.": "filled from the CLAP's audio encoder when the file holds only tuned tensors",
    }
    if not any(k.startswith(f"{ENC}.frontend.conv_") for k in task_keys):
        ignored[r"^audio_branch\.(spectrogram_extractor|logmel_extractor)\."] = (
            "the encoder's torchaudio front end computes the same transform from its configuration"
        )
    return KeyMap(rules=rules, ignored=ignored, optional=optional, name="CLAPSep checkpoint")


def _encoder_from_clap(task) -> dict[str, torch.Tensor]:
    """The separator encoder's untuned weights as the CLAP's audio encoder holds them."""
    clap = task.query.audio_encoder.state_dict()
    out = {}
    for key in task.separator.encoder.state_dict():
        if "lora_" in key:
            continue
        source = key.replace(".base_layer.", ".")
        if source in clap:
            out[f"{ENC}.{key}"] = clap[source]
    return out


#: Encoder keys CLAPSep trains (``mark_only_lora_as_trainable(bias="lora_only")``): the
#: adapters and the biases of the adapted layers. Filling one from the CLAP is not a faithful load.
TUNED_ENCODER_KEY = re.compile(r"(\.lora_[AB]\.|\.attn\.(qkv|proj)\.base_layer\.bias$)")


@dataclass
class ClapsepLoad:
    """What :func:`load_clapsep_report` loaded.

    Attributes:
        task: the task, weights loaded, eval mode.
        filled_from_clap: separator-encoder keys absent from the file, copied from the CLAP's
            audio encoder (all untuned weights for a tuned-only file).
        tuned_from_clap: the subset of ``filled_from_clap`` that CLAPSep tunes (non-empty only
            with ``allow_partial``).
    """

    task: Any
    filled_from_clap: list[str] = field(default_factory=list)
    tuned_from_clap: list[str] = field(default_factory=list)


def clapsep_state_dict(checkpoint: Mapping[str, Any], task, *, allow_partial: bool = False) -> dict[str, torch.Tensor]:
    """Translate a released-layout checkpoint into ``task``'s state dict (full coverage checked)."""
    return _clapsep_fill(checkpoint, task, allow_partial)[0]


def _clapsep_fill(checkpoint: Mapping[str, Any], task, allow_partial: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    state = unwrap_state_dict(checkpoint, prefixes=("module.", "model."))
    if not any(k.startswith("decoder_model.") for k in state):
        top = sorted({k.split(".")[0] for k in state})[:6]
        raise CheckpointError(f"not a CLAPSep checkpoint: no 'decoder_model.' keys (top-level: {', '.join(top)})")
    target = task.state_dict()
    key_map = clapsep_key_map(target)
    mapped = key_map.apply(state, target)
    if not any(".lora_" in k for k in mapped) and task.separator.lora_rank > 0:
        raise CheckpointError("CLAPSep checkpoint has no LoRA tensors but the task's encoder has LoRA adapters")
    filled = dict(task.query.state_dict(prefix="query."))
    from_clap = _encoder_from_clap(task)
    for key, value in from_clap.items():
        filled.setdefault(key, value)
    # apply() may also return optional keys it did not find in the file; keep only what the file gave.
    sourced = {key_map.rename(k) for k in state if not key_map.is_ignored(k)}
    filled.update({k: v for k, v in mapped.items() if k in sourced})
    filled_from_clap = sorted(k for k in from_clap if k not in sourced)
    tuned = [k for k in filled_from_clap if TUNED_ENCODER_KEY.search(k)]
    if tuned and not allow_partial:
        raise CheckpointError(
            f"CLAPSep checkpoint lacks {len(tuned)} tuned keys that would be filled with the CLAP's untuned "
            f"values: {', '.join(tuned)}; pass allow_partial=True (CLI: --allow-partial) to accept that"
        )
    derived = [k for k in target if k.endswith("num_batches_tracked")]
    missing = sorted(k for k in target if k not in filled and k not in derived)
    if missing:
        preview = ", ".join(missing[:8]) + (f", ... ({len(missing) - 8} more)" if len(missing) > 8 else "")
        raise CheckpointError(f"CLAPSep checkpoint: {len(missing)} task keys not filled ({preview})")
    for key in derived:
        filled.setdefault(key, target[key])
    return filled, filled_from_clap


def load_clapsep(checkpoint: str | os.PathLike | Mapping[str, Any], task, *, trust_pickle: bool = False,
                 allow_partial: bool = False):
    """Load released CLAPSep weights into ``task`` (a ``SeparationNetwork`` built with the
    CLAPSep configuration and the converted LAION-CLAP as query network). Returns ``task``."""
    return load_clapsep_report(checkpoint, task, trust_pickle=trust_pickle, allow_partial=allow_partial).task


def load_clapsep_report(checkpoint: str | os.PathLike | Mapping[str, Any], task, *, trust_pickle: bool = False,
                        allow_partial: bool = False) -> ClapsepLoad:
    """:func:`load_clapsep`, also saying which keys came from the CLAP instead of the file.

    Raises:
        CheckpointError: a key is not covered, or (unless ``allow_partial``) a tuned key is missing.
    """
    path = None
    if not isinstance(checkpoint, Mapping):
        from clapkit.io.checkpoint import read_checkpoint

        path = checkpoint
        checkpoint = read_checkpoint(path, trust_pickle=trust_pickle)
    try:
        state, from_clap = _clapsep_fill(checkpoint, task, allow_partial)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}" if path is not None else str(exc)) from None
    task.load_state_dict(state, strict=True)
    tuned = [k for k in from_clap if TUNED_ENCODER_KEY.search(k)]
    return ClapsepLoad(task=task.eval(), filled_from_clap=from_clap, tuned_from_clap=tuned)


def released_layout(task) -> dict[str, torch.Tensor]:
    """``task``'s separator weights renamed into the released CLAPSep layout (the inverse map).

    Useful to export a clapkit-trained separator for the reference code, and to test the
    loader: every tensor the loader reads is produced here.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in task.separator.state_dict().items():
        name = _to_official(key)
        if name is not None:
            out[name] = value
    return out


_INVERSE = [
    (r"encoder\.(.+)\.attn\.(qkv|proj)\.lora_(A|B)\.default\.weight", r"audio_branch.\1.attn.\2.lora_\3"),
    (r"encoder\.(.+)\.attn\.(qkv|proj)\.base_layer\.(weight|bias)", r"audio_branch.\1.attn.\2.\3"),
    (r"encoder\.frontend\.conv_(real|imag)", r"audio_branch.spectrogram_extractor.stft.conv_\1.weight"),
    (r"encoder\.frontend\.melW", r"audio_branch.logmel_extractor.melW"),
    (r"encoder\.frontend\..*", None),
    (r"encoder\.(.+)", r"audio_branch.\1"),
    (r"decoder\.bottleneck\.film\.(gamma|beta)\.(.+)", r"decoder_model.film.skip_conv.\1.\2"),
    (r"decoder\.bottleneck\.proj\.(.+)", r"decoder_model.film.feature_proj.\1"),
    (r"decoder\.bottleneck\.norm\.(.+)", r"decoder_model.film.norm.\1"),
    (r"decoder\.skips\.(\d+)\.film\.(gamma|beta)\.(.+)", r"decoder_model.skip.\1.skip_conv.\2.\3"),
    (r"decoder\.skips\.(\d+)\.proj\.(.+)", r"decoder_model.skip.\1.feature_proj.\2"),
    (r"decoder\.skips\.(\d+)\.norm\.(.+)", r"decoder_model.skip.\1.norm.\2"),
    (r"decoder\.stages\.(\d+)\.expand\.(.+)", r"decoder_model.layers.\1.downsample.\2"),
    (r"decoder\.stages\.(\d+)\.blocks\.(.+)", r"decoder_model.layers.\1.blocks.\2"),
    (r"decoder\.inverse_patch_embed\.(.+)", r"decoder_model.inverse_patch_embed.\1"),
    (r"masknet\.spec_norm\.(.+)", r"decoder_model.spec_norm.\1"),
    (r"masknet\.input_proj\.(.+)", r"decoder_model.mask_net.0.\1"),
    (r"masknet\.input_norm\.(.+)", r"decoder_model.mask_net.1.\1"),
    (r"masknet\.transformer\.(.+)", r"decoder_model.mask_net.2.\1"),
    (r"masknet\.output_proj\.(.+)", r"decoder_model.mask_net.3.\1"),
]


def _to_official(key: str) -> str | None:
    import re

    for pattern, replacement in _INVERSE:
        if re.fullmatch(pattern, key):
            return None if replacement is None else re.sub(pattern, replacement, key)
    raise KeyError(f"no released-layout name for separator key {key!r}")
