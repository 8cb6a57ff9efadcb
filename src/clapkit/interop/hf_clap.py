"""Hugging Face transformers ``ClapModel`` directories -> clapkit models.

The layout of ``laion/clap-htsat-unfused``, ``laion/clap-htsat-fused`` and
``laion/larger_clap_{general,music,music_and_speech}``: ``config.json`` (``model_type: clap``),
``model.safetensors`` (or ``pytorch_model.bin``, or shards with an index), the RoBERTa
tokenizer files and the feature extractor settings (``preprocessor_config.json``, or the
``feature_extractor`` entry of ``processor_config.json`` that transformers 5 writes).

The audio tower becomes clapkit's :class:`~clapkit.encoders.htsat.HTSAT` (any geometry), the
text tower a RoBERTa :class:`~clapkit.encoders.hf_text.HFTextEncoder` pooled with its pooler,
the two ``ClapProjectionLayer`` heads :class:`~clapkit.encoders.projection.MLPProjection`.
transformers splits HTSAT's fused ``qkv`` attention projection into ``query``/``key``/
``value``; they are concatenated back (in that order) before the key map, whose coverage check
then guarantees that every weight of the directory is used and every clapkit weight filled.

Preprocessing follows the directory's own feature extractor (``ClapFeatureExtractor``), which
is the truth for that model, not LAION-CLAP's defaults:

- ``truncation: rand_trunc`` (unfused models): Slaney-scale, Slaney-normalised mel filters
  over ``frequency_min``-``frequency_max``; no int16 round trip. transformers crops a long clip
  at a random offset; clapkit crops at the centre (offset ``(n - window) // 2``).
- ``truncation: fusion`` (fused models): HTK-scale mel filters without normalisation; a long
  clip gives the whole mel resized to the window with plain bilinear interpolation (no
  antialiasing, unlike LAION-CLAP's ``torchvision`` resize) plus three window-long crops from
  the front, middle and back thirds. transformers draws the crop starts at random; clapkit
  takes the middle element of each third (:func:`clapkit.encoders.fusion.fusion_crop_starts`).
  A clip no longer than the window is not fused (``is_longer`` false), as transformers does
  whenever the batch holds a longer clip; when *no* clip of a batch is longer, transformers
  flags one at random as longer, clapkit never does (so an embedding does not depend on the
  other clips of its batch).
- ``padding``: ``repeatpad`` and ``repeat`` as transformers does them; any other value
  zero-pads, as transformers does.
- text: the directory's tokenizer, padded to the longest text, truncated at
  ``min(model_max_length, max_position_embeddings - 2)`` tokens.

Dropped on purpose: ``logit_scale_t`` (clapkit keeps one scale per pair; its
``audio__text`` scale is ``logit_scale_a``), the recomputed buffers ``relative_position_index``,
``position_ids``, ``token_type_ids``. clapkit's HTSAT AudioSet head (``tscam_conv``), which
``ClapAudioModel`` lacks, stays zero.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clapkit.audio.preprocess import InferenceConfig
from clapkit.interop.keymap import (
    CheckpointError,
    KeyMap,
    build_from_config,
    build_target_model,
    read_state_dict,
    target_shapes,
)
from clapkit.interop.registry import Converted

TEXT_ASSET = "text_model"
AUDIO = "towers.audio.encoder"
AUDIO_HF = r"audio_model\.audio_encoder"
BLOCK_HF = AUDIO_HF + r"\.layers\.(\d+)\.blocks\.(\d+)\."
BLOCK = AUDIO + r".layers.\1.blocks.\2."
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json")
#: transformers' fill rules; anything else zero-pads (as ``ClapFeatureExtractor`` does).
PAD_MODES = {"repeatpad": "repeatpad", "repeat": "repeat"}
#: The mel filters ``ClapFeatureExtractor`` uses for each truncation mode.
MEL_FILTERS = {"fusion": ("htk", None), "rand_trunc": ("slaney", "slaney")}

#: Swin sub-module names: transformers (after fusing q/k/v) <-> clapkit.
BLOCK_NAMES = [
    ("layernorm_before", "norm1"),
    ("attention.self.relative_position_bias_table", "attn.relative_position_bias_table"),
    ("attention.self.qkv", "attn.qkv"),
    ("attention.output.dense", "attn.proj"),
    ("layernorm_after", "norm2"),
    ("intermediate.dense", "mlp.fc1"),
    ("output.dense", "mlp.fc2"),
]
#: Everything else: (transformers prefix, clapkit prefix), as regexes without the trailing dot.
PREFIXES = [
    (AUDIO_HF + r"\.batch_norm", AUDIO + ".bn0"),
    (AUDIO_HF + r"\.patch_embed", AUDIO + ".patch_embed"),
    (AUDIO_HF + r"\.layers\.(\d+)\.downsample", AUDIO + r".layers.\1.downsample"),
    (AUDIO_HF + r"\.norm", AUDIO + ".norm"),
    (r"audio_projection\.linear1", "towers.audio.projection.net.0"),
    (r"audio_projection\.linear2", "towers.audio.projection.net.2"),
    (r"text_projection\.linear1", "towers.text.projection.net.0"),
    (r"text_projection\.linear2", "towers.text.projection.net.2"),
    (r"text_model", "towers.text.encoder.model"),
]


def is_hf_clap_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory whose ``config.json`` says ``model_type: clap``."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "clap"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


@dataclass
class HFClapDirectory:
    """What a ``ClapModel`` directory holds.

    Attributes:
        path: the directory.
        config: its ``transformers.ClapConfig`` (defaults filled in by transformers).
        features: its ``transformers.ClapFeatureExtractor``.
    """

    path: Path
    config: Any
    features: Any

    @property
    def fusion(self) -> bool:
        return bool(self.config.audio_config.enable_fusion)

    @functools.cached_property
    def text_max_length(self) -> int:
        from transformers import AutoTokenizer

        limit = int(self.config.text_config.max_position_embeddings) - 2  # RoBERTa's padding offset
        try:
            tokenizer_limit = AutoTokenizer.from_pretrained(str(self.path), trust_remote_code=False).model_max_length
        except Exception:
            tokenizer_limit = limit
        return int(min(limit, tokenizer_limit))

    @property
    def description(self) -> str:
        audio = self.config.audio_config
        geometry = f"dim {audio.patch_embeds_hidden_size}, depths {'-'.join(map(str, audio.depths))}"
        fusion = "fused" if self.fusion else "unfused"
        return f"Hugging Face ClapModel (HTSAT {geometry}, {fusion}) + RoBERTa text"


def read_hf_clap_dir(path: str | os.PathLike) -> HFClapDirectory:
    """Read and check the configuration of a ``ClapModel`` directory.

    Raises:
        CheckpointError: not such a directory, or a variant clapkit cannot run exactly.
    """
    from transformers import ClapConfig, ClapFeatureExtractor

    path = Path(path)
    if not is_hf_clap_dir(path):
        raise CheckpointError(f"{path}: not a Hugging Face ClapModel directory (no config.json with model_type clap)")
    try:
        config = ClapConfig.from_pretrained(str(path), trust_remote_code=False)
    except Exception as exc:
        raise CheckpointError(f"{path}/config.json: not a valid ClapConfig ({_first_line(exc)})") from None
    if not any((path / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        raise CheckpointError(f"{path}: no preprocessor_config.json (the ClapFeatureExtractor settings)")
    try:
        features = ClapFeatureExtractor.from_pretrained(str(path), trust_remote_code=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable feature extractor settings ({_first_line(exc)})") from None
    directory = HFClapDirectory(path, config, features)
    problems = _unsupported(directory)
    if problems:
        raise CheckpointError(f"{path}: cannot run this ClapModel exactly: {'; '.join(problems)}")
    return directory


def _unsupported(directory: HFClapDirectory) -> list[str]:
    audio, text, fx = directory.config.audio_config, directory.config.text_config, directory.features
    pairs = lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v, v)  # noqa: E731
    problems = []
    if pairs(audio.patch_size) != (4, 4) or pairs(audio.patch_stride) != (4, 4):
        problems.append(f"patch size/stride {audio.patch_size}/{audio.patch_stride} (clapkit's HTSAT: 4/4)")
    if audio.enable_fusion and audio.fusion_type == "channel_map":
        problems.append("fusion_type channel_map")
    checks = {
        "patch_embed_input_channels": (audio.patch_embed_input_channels, 1),
        "enable_patch_layer_norm": (audio.enable_patch_layer_norm, True),
        "flatten_patch_embeds": (audio.flatten_patch_embeds, True),
        "mlp_ratio": (float(audio.mlp_ratio), 4.0),
        "qkv_bias": (audio.qkv_bias, True),
        "audio hidden_act": (audio.hidden_act, "gelu"),
        "aff_block_r": (audio.aff_block_r, 4),
        "audio layer_norm_eps": (float(audio.layer_norm_eps), 1e-5),
        "projection_hidden_act": (directory.config.projection_hidden_act, "relu"),
        "num_mel_bins vs feature_size": (audio.num_mel_bins, fx.feature_size),
        "audio hidden_size": (audio.hidden_size, audio.patch_embeds_hidden_size * 2 ** (len(audio.depths) - 1)),
    }
    problems += [f"{name} {got!r} (expected {want!r})" for name, (got, want) in checks.items() if got != want]
    if audio.spec_size % audio.num_mel_bins:
        problems.append(f"spec_size {audio.spec_size} is not a multiple of num_mel_bins {audio.num_mel_bins}")
    truncation = fx.truncation
    if truncation not in MEL_FILTERS:
        problems.append(f"truncation {truncation!r} (transformers knows fusion and rand_trunc)")
    elif (truncation == "fusion") != bool(audio.enable_fusion):
        problems.append(f"truncation {truncation!r} with enable_fusion {audio.enable_fusion} "
                        "(transformers itself cannot run this pair)")
    if int(fx.nb_max_samples) != fx.nb_max_samples:
        problems.append(f"window of {fx.nb_max_samples} samples is not whole")
    if text.type_vocab_size != 1 or text.pad_token_id is None:
        problems.append("text tower is not RoBERTa-like (type_vocab_size 1, a pad token)")
    return problems


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- config translation


def frontend_config(fx) -> dict[str, Any]:
    """clapkit :class:`~clapkit.encoders.frontends.LogMel` equal to a ``ClapFeatureExtractor``'s mel."""
    mel_scale, norm = MEL_FILTERS[fx.truncation]
    return {"class_path": "clapkit.encoders.frontends.LogMel", "init_args": {
        "sample_rate": int(fx.sampling_rate), "n_fft": int(fx.fft_window_size), "hop_length": int(fx.hop_length),
        "n_mels": int(fx.feature_size), "f_min": float(fx.frequency_min), "f_max": float(fx.frequency_max),
        "mel_scale": mel_scale, "norm": norm, "top_db": None if fx.top_db is None else float(fx.top_db),
    }}


def audio_config(directory: HFClapDirectory) -> dict[str, Any]:
    """``class_path`` tree of the clapkit HTSAT equal to the directory's ``ClapAudioModel``."""
    from clapkit.encoders.htsat import PRESETS

    audio, fx = directory.config.audio_config, directory.features
    geometry = (audio.patch_embeds_hidden_size, tuple(audio.depths), tuple(audio.num_attention_heads),
                audio.window_size)
    variant = next((name for name, p in PRESETS.items()
                    if (p.embed_dim, p.depths, p.num_heads, p.window_size) == geometry), None)
    init: dict[str, Any] = {"variant": variant or "tiny"}
    if variant is None:
        init.update(embed_dim=geometry[0], depths=list(geometry[1]), num_heads=list(geometry[2]),
                    window_size=geometry[3])
    init.update(
        fusion=directory.fusion, frontend=frontend_config(fx), clip_samples=int(fx.nb_max_samples),
        pad_mode=PAD_MODES.get(fx.padding, "pad"), spec_size=int(audio.spec_size),
        classes_num=int(audio.num_classes), drop_path_rate=float(audio.drop_path_rate),
        fusion_antialias=False,
    )
    return {"class_path": "clapkit.encoders.htsat.HTSAT", "init_args": init}


def model_config(directory: HFClapDirectory, text_model: str = f"./{TEXT_ASSET}") -> dict[str, Any]:
    """``class_path`` tree of the clapkit ``ContrastiveTask`` equal to the ``ClapModel``."""
    joint = int(directory.config.projection_dim)

    def head() -> dict[str, Any]:
        return {"class_path": "clapkit.encoders.projection.MLPProjection",
                "init_args": {"out_dim": joint, "hidden_dim": joint}}

    text_encoder = {"class_path": "clapkit.encoders.hf_text.HFTextEncoder", "init_args": {
        "model": text_model, "pooling": "pooler", "max_length": directory.text_max_length, "padding": "longest",
        "load_weights": False,
    }}
    return {"class_path": "clapkit.lightning_modules.contrastive.ContrastiveTask", "init_args": {
        "towers": {
            "audio": {"class_path": "clapkit.encoders.tower.Tower",
                      "init_args": {"encoder": audio_config(directory), "projection": head()}},
            "text": {"class_path": "clapkit.encoders.tower.Tower",
                     "init_args": {"encoder": text_encoder, "projection": head()}},
        },
        "pairs": [["audio", "text"]],
        "logit_scale_min": 1.0,
        "logit_scale_max": 100.0,
    }}


def inference_config(directory: HFClapDirectory) -> InferenceConfig:
    fx = directory.features
    return InferenceConfig(
        sample_rate=int(fx.sampling_rate), clip_samples=int(fx.nb_max_samples), pad=PAD_MODES.get(fx.padding, "pad"),
        crop="center", int16_roundtrip=False, fusion=directory.fusion, text_max_length=directory.text_max_length,
    )


def roberta_config(text_config) -> dict[str, Any]:
    """``RobertaConfig`` fields of a ``ClapTextConfig`` (``ClapTextModel`` is RoBERTa with a pooler)."""
    fields = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
              "type_vocab_size", "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id")
    return {name: getattr(text_config, name) for name in fields}


# --------------------------------------------------------------------------- weights


def fuse_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' separate audio ``query``/``key``/``value`` -> one ``qkv`` (rows in that order)."""
    out = dict(state)
    for key in list(state):
        head, sep, kind = key.rpartition(".attention.self.query.")
        if not sep or not head.startswith("audio_model."):
            continue
        parts = [f"{head}.attention.self.{name}.{kind}" for name in ("query", "key", "value")]
        if all(p in state for p in parts):
            out[f"{head}.attention.self.qkv.{kind}"] = torch.cat([state[p] for p in parts], dim=0)
            for p in parts:
                del out[p]
    return out


def split_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """clapkit's audio ``attn.qkv`` -> ``attn.q`` / ``attn.k`` / ``attn.v`` (for export)."""
    out = {}
    for key, value in state.items():
        head, sep, kind = key.rpartition(".attn.qkv.")
        if sep and head.startswith(AUDIO):
            for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                out[f"{head}.attn.{name}.{kind}"] = part
        else:
            out[key] = value
    return out


def import_rules() -> list[tuple[str, str]]:
    """transformers -> clapkit renames; ``rest`` is the parameter name after the module path."""
    rules = [(BLOCK_HF + re.escape(hf) + r"(?P<rest>\..+)?", BLOCK + ck + r"\g<rest>") for hf, ck in BLOCK_NAMES]
    rules += [(hf + r"(?P<rest>\..+)", ck + r"\g<rest>") for hf, ck in PREFIXES]
    rules.append((r"logit_scale_a", "logit_scales.audio__text"))
    return rules


def key_map(directory: HFClapDirectory) -> KeyMap:
    """The explicit transformers (q/k/v fused) -> clapkit key map."""
    ignored = {
        r"^logit_scale_t$": "transformers' text-side scale; clapkit's audio__text scale is logit_scale_a",
        r"\.relative_position_index$": "recomputed from the window geometry",
    }
    optional = {
        rf"^{AUDIO}\.tscam_conv\.": "ClapAudioModel has no AudioSet head (tscam_conv); left zero",
        rf"^{AUDIO}\.frontend\.": "mel filters and window, built from the feature extractor settings",
    }
    return KeyMap(rules=import_rules(), ignored=ignored, optional=optional, name=directory.description)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a ``ClapModel`` directory (single file or shards listed in an index)."""
    for name in WEIGHT_NAMES:
        if (path / name).is_file():
            return read_state_dict(path / name, what="ClapModel weights")
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            try:
                shards = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
            except (OSError, json.JSONDecodeError, KeyError) as exc:
                raise CheckpointError(f"{path / index}: unreadable shard index ({_first_line(exc)})") from None
            from clapkit.io.trust import inside

            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                # A shard name is data from the directory: it may not lead out of it.
                file = inside(path, str(shard), where=str(path / index), key="weight_map")
                state.update(read_state_dict(file, what="ClapModel weight shard"))
            return state
    raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin")


def _stage_text_dir(directory: HFClapDirectory) -> Path:
    """Tokenizer files of the directory plus a RoBERTa ``config.json`` for clapkit's text tower."""
    from transformers import RobertaConfig

    files = [directory.path / name for name in TOKENIZER_FILES if (directory.path / name).is_file()]
    if not any(f.name in ("tokenizer.json", "vocab.json") for f in files):
        raise CheckpointError(f"{directory.path}: no tokenizer (expected tokenizer.json or vocab.json + merges.txt)")
    staged = Path(tempfile.mkdtemp(prefix="clapkit-hf-clap-text-"))
    try:
        for f in files:
            shutil.copy2(f, staged / f.name)
        RobertaConfig(**roberta_config(directory.config.text_config)).save_pretrained(staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def convert_hf_clap(path: str | os.PathLike) -> Converted:
    """Translate a ``ClapModel`` directory into a clapkit model (see the module docstring)."""
    directory = read_hf_clap_dir(path)
    state = fuse_qkv(read_weights(directory.path))
    text_dir = _stage_text_dir(directory)
    try:
        config = model_config(directory)
        try:
            target = build_target_model(config, {TEXT_ASSET: text_dir}, plain_modules=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot build the clapkit model ({_first_line(exc)})") from None
        try:
            mapped = key_map(directory).apply(state, target_shapes(target))
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        # The front end's buffers (window, filterbank) are computed, never read from the
        # directory; build them on the CPU so a meta-device target can never leave them zero.
        with torch.device("cpu"):
            frontend = build_from_config(frontend_config(directory.features))
    except BaseException:
        # The staged tokenizer folder belongs to the Converted this call returns; on failure
        # nobody else can remove it.
        shutil.rmtree(text_dir, ignore_errors=True)
        raise
    mapped.update({f"{AUDIO}.frontend.{k}": v for k, v in frontend.state_dict().items()})
    return Converted(config, mapped, inference_config(directory), assets={TEXT_ASSET: text_dir},
                     description=directory.description)
