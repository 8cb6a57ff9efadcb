"""Official LAION-CLAP checkpoints (``630k-audioset-best.pt`` and friends) -> clapkit models.

Supported layouts: the ``laion_clap`` package's ``{"state_dict": ...}`` files (with or without
the DDP ``module.`` prefix, with or without ``text_branch.embeddings.position_ids``), holding

- audio: HTSAT (any geometry; tiny / base / large presets are recognised) with or without
  ``aff_2d`` feature fusion, or PANN Cnn14 / Cnn10 / Cnn6 (with or without ``aff_2d``);
- text: RoBERTa (all official files) or BERT, pooled with the pooler output.

Everything is detected from the keys and shapes, never from the file name. The STFT kernels
and mel matrix the file carries (``spectrogram_extractor.stft.conv_real/conv_imag``,
``logmel_extractor.melW``) are loaded into a :class:`~clapkit.encoders.frontends.ConvLogMel`
front end, so embeddings match the reference in fp32. Fusion models never use those kernels
(the reference computes their mels with torchaudio, HTK scale), so for them the kernels are
dropped on purpose. Also dropped on purpose, with the reason recorded in the key map:
``logit_scale_t`` and ``audio_transform``/``text_transform`` (only used by LAION's optional
MLP loss), HTSAT's never-called ``head`` layer, and buffers clapkit recomputes
(``attn_mask``, ``relative_position_index``, ``position_ids``). ``logit_scale_a`` becomes
``logit_scales.audio__text``.

Preprocessing to reproduce the reference (recorded in the converted model's
:class:`~clapkit.inference.load.InferenceConfig`): 48 kHz, int16 round trip, ``repeatpad`` to 10 s,
long clips cropped at the centre (the reference crops at random) or, with fusion, passed whole
(deterministic crops, see :mod:`clapkit.encoders.fusion`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clapkit.audio.preprocess import InferenceConfig
from clapkit.interop.keymap import (
    CheckpointError,
    KeyMap,
    build_target_model,
    target_shapes,
    unwrap_state_dict,
)
from clapkit.interop.registry import CheckpointFormat, Converted

SAMPLE_RATE = 48000
CLIP_SAMPLES = 480000
HOP_LENGTH = 480
F_MIN, F_MAX = 50.0, 14000.0
TEXT_ASSET = "text_model"

HTSAT_PRESETS = {
    "tiny": (96, (2, 2, 6, 2), (4, 8, 16, 32), 8),
    "base": (128, (2, 2, 12, 2), (4, 8, 16, 32), 8),
    "large": (256, (2, 2, 12, 2), (4, 8, 16, 32), 8),
    "test": (16, (2, 2, 2, 2), (1, 2, 2, 4), 8),
}
PANN_WIDTHS = {64: "base", 16: "small", 4: "tiny"}

#: Defaults of ``roberta-base`` / ``bert-base-uncased`` that shapes cannot tell.
TEXT_DEFAULTS = {
    "roberta": {"layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2},
    "bert": {"layer_norm_eps": 1e-12, "pad_token_id": 0},
}


TOKENIZER_FILES = {"roberta": ("vocab.json", "merges.txt"), "bert": ("vocab.txt",)}


@dataclass
class LaionClapSpec:
    """What an official LAION-CLAP checkpoint contains (detected from its keys and shapes).

    Attributes:
        audio_family: ``HTSAT`` or ``PANN``.
        audio_name: e.g. ``HTSAT-tiny``, ``HTSAT-base``, ``PANN-14``, ``PANN-14-tiny``.
        fusion: the audio tower uses ``aff_2d`` feature fusion.
        audio_config: ``class_path``/``init_args`` of the clapkit audio encoder.
        text_family: ``roberta`` or ``bert``.
        text_shapes: config fields of the text model read from the weights.
        joint_dim: width of the shared embedding space.
    """

    audio_family: str
    audio_name: str
    fusion: bool
    audio_config: dict[str, Any]
    text_family: str
    text_shapes: dict[str, int]
    joint_dim: int

    @property
    def description(self) -> str:
        fusion = "with fusion (aff_2d)" if self.fusion else "without fusion"
        return f"LAION-CLAP {self.audio_name} {fusion} + {self.text_family} text"


# --------------------------------------------------------------------------- detection


def _count(state: Mapping[str, Any], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in state if (m := regex.match(k))})


def _shape(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    return tuple(state[key].shape)


def _frontend_config(state: Mapping[str, torch.Tensor], fusion: bool) -> dict[str, Any]:
    n_fft = _shape(state, "audio_branch.spectrogram_extractor.stft.conv_real.weight")[-1] \
        if "audio_branch.spectrogram_extractor.stft.conv_real.weight" in state else 1024
    n_mels = _shape(state, "audio_branch.bn0.weight")[0]
    common = {"sample_rate": SAMPLE_RATE, "n_fft": n_fft, "hop_length": HOP_LENGTH, "n_mels": n_mels,
              "f_min": F_MIN, "f_max": F_MAX}
    if fusion:
        # The reference's second mel path (training/data.py get_mel): HTK scale, no filter norm.
        return {"class_path": "clapkit.encoders.frontends.LogMel",
                "init_args": {**common, "mel_scale": "htk", "norm": None}}
    return {"class_path": "clapkit.encoders.frontends.ConvLogMel", "init_args": common}


def _fusion_kind(state: Mapping[str, torch.Tensor], prefix: str) -> str | None:
    if any(k.startswith("audio_branch.mel_conv1d.") for k in state):
        return "1-D fusion (daf_1d/aff_1d/iaff_1d)"
    if f"{prefix}mel_conv2d.weight" not in state and f"{prefix}mel_conv2d.0.weight" not in state:
        return None
    if any(k.startswith(f"{prefix}fusion_model.local_att2.") for k in state):
        return "iaff_2d"
    if not any(k.startswith(f"{prefix}fusion_model.local_att.") for k in state):
        return "daf_2d"
    return "aff_2d"


def _detect_htsat(state: Mapping[str, torch.Tensor]) -> tuple[str, bool, dict[str, Any]]:
    proj = _shape(state, "audio_branch.patch_embed.proj.weight")
    if proj[1] != 1:
        raise CheckpointError(f"HTSAT with {proj[1]}-channel patch embedding (fusion 'channel_map') is not supported")
    fusion_kind = _fusion_kind(state, "audio_branch.patch_embed.")
    if fusion_kind not in (None, "aff_2d"):
        raise CheckpointError(f"HTSAT with {fusion_kind} feature fusion is not supported (only aff_2d)")
    stages = _count(state, r"audio_branch\.layers\.(\d+)\.")
    depths = tuple(_count(state, rf"audio_branch\.layers\.{i}\.blocks\.(\d+)\.norm1\.weight") for i in range(stages))
    tables = [_shape(state, f"audio_branch.layers.{i}.blocks.0.attn.relative_position_bias_table") for i in range(stages)]
    heads = tuple(t[1] for t in tables)
    window = (math.isqrt(tables[0][0]) + 1) // 2
    geometry = (proj[0], depths, heads, window)
    variant = next((name for name, preset in HTSAT_PRESETS.items() if preset == geometry), None)
    init: dict[str, Any] = {"variant": variant or "tiny"}
    if variant is None:
        init.update(embed_dim=proj[0], depths=list(depths), num_heads=list(heads), window_size=window)
    fusion = fusion_kind is not None
    init.update(fusion=fusion, frontend=_frontend_config(state, fusion), clip_samples=CLIP_SAMPLES,
                classes_num=_shape(state, "audio_branch.tscam_conv.weight")[0])
    name = f"HTSAT-{variant}" if variant else f"HTSAT(dim {proj[0]}, depths {'-'.join(map(str, depths))})"
    return name, fusion, {"class_path": "clapkit.encoders.htsat.HTSAT", "init_args": init}


def _detect_pann(state: Mapping[str, torch.Tensor]) -> tuple[str, bool, dict[str, Any]]:
    conv1 = _shape(state, "audio_branch.conv_block1.conv1.weight")
    if conv1[-1] == 5:
        cls, name = "Cnn6", "PANN-6"
    elif "audio_branch.conv_block6.conv1.weight" in state:
        cls, name = "Cnn14", "PANN-14"
    elif "audio_branch.conv_block5.conv1.weight" in state:
        cls, name = "Cnn10", "PANN-10"
    else:
        raise CheckpointError("PANN audio tower with an unknown block layout (expected Cnn6, Cnn10 or Cnn14)")
    if conv1[1] != 1:
        raise CheckpointError(f"{name} with {conv1[1]}-channel input (fusion 'channel_map') is not supported")
    width = conv1[0]
    if width not in PANN_WIDTHS:
        raise CheckpointError(f"{name} with first-block width {width} is not supported (expected 64, 16 or 4)")
    variant = PANN_WIDTHS[width]
    fusion_kind = _fusion_kind(state, "audio_branch.")
    if fusion_kind not in (None, "aff_2d"):
        raise CheckpointError(f"{name} with {fusion_kind} feature fusion is not supported (only aff_2d)")
    fusion = fusion_kind is not None
    init = {"variant": variant, "fusion": fusion, "frontend": _frontend_config(state, fusion),
            "clip_samples": CLIP_SAMPLES, "classes_num": _shape(state, "audio_branch.fc_audioset.weight")[0]}
    if variant != "base":
        name = f"{name}-{variant}"
    return name, fusion, {"class_path": f"clapkit.encoders.pann.{cls}", "init_args": init}


def _detect_text(state: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, int]]:
    if "text_branch.shared.weight" in state:
        raise CheckpointError("BART text tower is not supported (LAION-CLAP's BART pooling is not mask-aware)")
    if "token_embedding.weight" in state or any(k.startswith("text_branch.resblocks.") for k in state):
        raise CheckpointError("CLIP-style transformer text tower is not supported by this converter")
    key = "text_branch.embeddings.word_embeddings.weight"
    if key not in state:
        raise CheckpointError("no text tower found (expected text_branch.embeddings.* of RoBERTa or BERT)")
    vocab, hidden = _shape(state, key)
    types = _shape(state, "text_branch.embeddings.token_type_embeddings.weight")[0]
    family = "roberta" if types == 1 else "bert"
    shapes = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": _count(state, r"text_branch\.encoder\.layer\.(\d+)\."),
        "intermediate_size": _shape(state, "text_branch.encoder.layer.0.intermediate.dense.weight")[0],
        "max_position_embeddings": _shape(state, "text_branch.embeddings.position_embeddings.weight")[0],
        "type_vocab_size": types,
    }
    return family, shapes


def inspect_state_dict(state: Mapping[str, torch.Tensor]) -> LaionClapSpec:
    """Detect audio model, fusion and text tower of an (unwrapped) LAION-CLAP state dict.

    Raises:
        CheckpointError: not a LAION-CLAP layout, or a variant clapkit does not support; the
            message names what the file contains.
    """
    if "audio_branch.patch_embed.proj.weight" in state:
        name, fusion, audio = _detect_htsat(state)
        family = "HTSAT"
    elif "audio_branch.conv_block1.conv1.weight" in state:
        name, fusion, audio = _detect_pann(state)
        family = "PANN"
    else:
        top = sorted({k.split(".")[0] for k in state})
        raise CheckpointError(f"not a LAION-CLAP HTSAT/PANN audio tower (top-level modules: {', '.join(top[:8])})")
    text_family, text_shapes = _detect_text(state)
    if "audio_projection.0.weight" not in state:
        raise CheckpointError("no audio_projection head found; not a LAION-CLAP checkpoint")
    joint = _shape(state, "audio_projection.2.weight")[0]
    return LaionClapSpec(family, name, fusion, audio, text_family, text_shapes, joint)


# --------------------------------------------------------------------------- model + key map


def model_config(spec: LaionClapSpec, text_model: str = f"./{TEXT_ASSET}") -> dict[str, Any]:
    """``class_path`` tree of the ``ContrastiveTask`` equivalent to the checkpoint."""

    def head() -> dict[str, Any]:
        return {"class_path": "clapkit.encoders.projection.MLPProjection",
                "init_args": {"out_dim": spec.joint_dim, "hidden_dim": spec.joint_dim}}

    text_encoder = {
        "class_path": "clapkit.encoders.hf_text.HFTextEncoder",
        "init_args": {"model": text_model, "pooling": "pooler", "max_length": 77, "padding": "max_length",
                      "load_weights": False},
    }
    return {
        "class_path": "clapkit.lightning_modules.contrastive.ContrastiveTask",
        "init_args": {
            "towers": {
                "audio": {"class_path": "clapkit.encoders.tower.Tower",
                          "init_args": {"encoder": spec.audio_config, "projection": head()}},
                "text": {"class_path": "clapkit.encoders.tower.Tower",
                         "init_args": {"encoder": text_encoder, "projection": head()}},
            },
            "pairs": [["audio", "text"]],
            "logit_scale_min": 1.0,
            "logit_scale_max": 100.0,
        },
    }


def audio_branch_rules(target: str) -> list[tuple[str, str]]:
    """Rules moving the reference's ``audio_branch.*`` (conv STFT, mel matrix, the rest as is) under ``target``."""
    return [
        (r"audio_branch\.spectrogram_extractor\.stft\.conv_(real|imag)\.weight", rf"{target}.frontend.conv_\1"),
        (r"audio_branch\.logmel_extractor\.melW", rf"{target}.frontend.melW"),
        (r"audio_branch\.(.+)", rf"{target}.\1"),
    ]


def key_map(spec: LaionClapSpec) -> KeyMap:
    """The explicit official -> clapkit key map for one detected checkpoint."""
    audio = "towers.audio.encoder"
    ignored = {
        r"^logit_scale_t$": "text-side scale of LAION's optional MLP loss; the CLIP loss uses logit_scale_a",
        r"^(audio|text)_transform\.": "MLP heads of LAION's optional MLP loss (clap_mlploss); not used for embeddings",
        r"^audio_branch\..*\.(attn_mask|relative_position_index)$": "recomputed from the window geometry",
        r"^audio_branch\.head\.": "HTSAT's `head` layer is built but never called by the reference",
    }
    optional = {}
    if spec.fusion:
        ignored[r"^audio_branch\.(spectrogram_extractor|logmel_extractor)\."] = (
            "unused by the reference's fusion path, which computes mels with torchaudio (HTK scale)"
        )
        optional[r"^towers\.audio\.encoder\.frontend\.mel\."] = "torchaudio filterbank/window, built from the front-end config"
    rules = [
        *audio_branch_rules(audio),
        (r"audio_projection\.(\d+)\.(weight|bias)", r"towers.audio.projection.net.\1.\2"),
        (r"text_projection\.(\d+)\.(weight|bias)", r"towers.text.projection.net.\1.\2"),
        (r"text_branch\.(.+)", r"towers.text.encoder.model.\1"),
        (r"logit_scale_a", "logit_scales.audio__text"),
    ]
    return KeyMap(rules=rules, ignored=ignored, optional=optional, name=spec.description)


def _prepare_text_dir(spec: LaionClapSpec, text_model: str | os.PathLike | None) -> Path:
    """The text-model directory to ship with the converted model (tokenizer + matching config).

    A ``config.json`` in ``text_model`` is checked against the weights' shapes; without one, a
    copy of the directory gets a config built from the shapes (``roberta-base`` defaults for
    what shapes cannot tell; heads = hidden / 64).
    """
    if text_model is None:
        raise CheckpointError(
            f"the checkpoint has a {spec.text_family} text tower: pass text_model=<local directory with its "
            "tokenizer (e.g. a saved roberta-base)>; nothing is downloaded"
        )
    path = Path(text_model)
    if not path.is_dir():
        raise CheckpointError(f"text model directory {path} does not exist")
    needed = TOKENIZER_FILES[spec.text_family]
    if not (path / "tokenizer.json").is_file() and not all((path / f).is_file() for f in needed):
        raise CheckpointError(
            f"{path} has no {spec.text_family} tokenizer (expected tokenizer.json or {' + '.join(needed)})"
        )
    config_path = path / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{config_path}: unreadable JSON ({exc})") from None
        wrong = [f"{k} {config.get(k)} (weights: {v})" for k, v in spec.text_shapes.items() if config.get(k) != v]
        if config.get("model_type") != spec.text_family:
            wrong.insert(0, f"model_type {config.get('model_type')!r} (weights: {spec.text_family!r})")
        if wrong:
            raise CheckpointError(f"{config_path} does not match the checkpoint's text tower: {', '.join(wrong)}")
        return path
    from transformers import AutoConfig

    staged = Path(tempfile.mkdtemp(prefix="clapkit-laion-text-"))
    for item in path.iterdir():
        if item.is_file():
            shutil.copy2(item, staged / item.name)
    hidden = spec.text_shapes["hidden_size"]
    AutoConfig.for_model(
        spec.text_family, **spec.text_shapes, num_attention_heads=max(1, hidden // 64),
        **TEXT_DEFAULTS[spec.text_family],
    ).save_pretrained(staged)
    return staged


class LaionClapFormat(CheckpointFormat):
    """The LAION-CLAP checkpoint layout (registered as ``laion-clap``)."""

    name = "laion-clap"

    def matches_state(self, state: Mapping[str, torch.Tensor]) -> bool:
        return any(k.startswith("audio_branch.") for k in state) and any(
            k.startswith(("text_branch.", "audio_projection.")) for k in state
        )

    def convert(self, checkpoint: Mapping[str, Any], *, text_model: str | os.PathLike | None = None) -> Converted:
        state = unwrap_state_dict(checkpoint)
        spec = inspect_state_dict(state)
        text_dir = _prepare_text_dir(spec, text_model)
        config = model_config(spec)
        try:
            target = build_target_model(config, {TEXT_ASSET: text_dir}, plain_modules=True)
        except Exception as exc:  # e.g. a text directory without tokenizer files
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"cannot build the clapkit model for {spec.description}: {reason}") from None
        mapped = key_map(spec).apply(state, target_shapes(target))
        inference = InferenceConfig(
            sample_rate=SAMPLE_RATE, clip_samples=CLIP_SAMPLES, pad="repeatpad", crop="center",
            int16_roundtrip=True, fusion=spec.fusion, text_max_length=77,
        )
        return Converted(config, mapped, inference, assets={TEXT_ASSET: text_dir}, description=spec.description)


CHECKPOINT_FORMAT = LaionClapFormat()


def convert_laion_clap(
    path: str | os.PathLike,
    text_model: str | os.PathLike | None = None,
    *,
    amodel: str | None = None,
    enable_fusion: bool | None = None,
    trust_pickle: bool = False,
) -> Converted:
    """Read and translate an official LAION-CLAP checkpoint.

    Args:
        path: the ``.pt`` file.
        text_model: local directory with the text tower's tokenizer (and optionally its
            ``config.json``), e.g. a saved ``roberta-base``.
        amodel: if given (``HTSAT-tiny``, ``HTSAT-base``, ``PANN-14``...), require the file to
            hold this audio model; a mismatch is an error naming what the file holds.
        enable_fusion: if given, require the file to be (or not be) a fusion model.
        trust_pickle: allow a checkpoint whose pickle needs code (never needed for official files).
    """
    from clapkit.io.checkpoint import read_checkpoint

    checkpoint = read_checkpoint(path, trust_pickle=trust_pickle)
    try:
        if not CHECKPOINT_FORMAT.matches(checkpoint):
            state = unwrap_state_dict(checkpoint)
            top = sorted({k.split(".")[0] for k in state})
            raise CheckpointError(f"not a LAION-CLAP checkpoint (top-level modules: {', '.join(top[:8])})")
        spec = inspect_state_dict(unwrap_state_dict(checkpoint))
        if amodel is not None and amodel != spec.audio_name:
            raise CheckpointError(f"expected {amodel}, but the file contains {spec.description}")
        if enable_fusion is not None and enable_fusion != spec.fusion:
            want = "a fusion model" if enable_fusion else "a model without fusion"
            raise CheckpointError(f"expected {want}, but the file contains {spec.description}")
        return CHECKPOINT_FORMAT.convert(checkpoint, text_model=text_model)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def load_laion_clap(path: str | os.PathLike, text_model: str | os.PathLike | None = None, **kwargs):
    """Convert an official checkpoint and return the ``ContrastiveTask`` (eval mode) with its weights.

    Keyword arguments go to :func:`convert_laion_clap`. (``clapkit.load`` gives the same model
    wrapped for inference; this builds it directly, without config validation, which is faster.)
    """
    from clapkit.interop.legacy import upgrade_task_state
    from clapkit.io.checkpoint import load_state_dict_strict

    converted = convert_laion_clap(path, text_model, **kwargs)
    model = build_target_model(converted.model_config, converted.assets, device="cpu")
    # The converted weights are the plain model's; the task holds it as ``model``.
    load_state_dict_strict(model, upgrade_task_state(model.state_dict(), converted.state_dict),
                           what=converted.description)
    return model.eval()
