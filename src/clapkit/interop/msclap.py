"""Microsoft CLAP (the ``msclap`` package) checkpoints -> clapkit.

Two layouts, both ``{"model": state_dict}`` with keys ``audio_encoder.base.*``,
``audio_encoder.projection.*``, ``caption_encoder.base.*`` (a transformers model),
``caption_encoder.projection.*`` and ``logit_scale`` (log space):

- **2022** (``CLAP_weights_2022.pth``): PANN Cnn14 at 44.1 kHz, 5 s windows, n_fft 1024, hop
  320, 64 mels over 50-14000 Hz; BERT text tower pooled at the first (CLS) token of the last
  hidden state, texts padded/truncated to 100 tokens.
- **2023** (``CLAP_weights_2023.pth``): HTSAT-tiny at 44.1 kHz, 7 s windows (965 frames,
  resized to 1024), n_fft 1024, hop 320, 64 mels; GPT-2 text tower: every text gets
  ``" <|endoftext|>"`` appended, is padded with ``"!"`` to 77 tokens, and is pooled at
  position ``(number of non-pad tokens) - 1``.
  Its mel matrix is *not* the 50-8000 Hz one the package's YAML declares: ``HTSATWrapper``
  ignores its arguments and builds the filterbank from ``msclap/models/config.py`` (32 kHz,
  50-14000 Hz), then applies it to 44.1 kHz audio. The checkpoint carries that matrix
  (``logmel_extractor.melW``) and clapkit uses it as is; if a file lacks it the same matrix
  is rebuilt.

Both towers project to 1024 with :class:`~clapkit.encoders.projection.ResidualProjection`.
Clips shorter than the window are tiled and cut (``repeat``), as the reference does; longer
ones are cut at the centre (the reference picks a random offset; clapkit's inference is
deterministic).

The text tower's tokenizer and architecture come from a local directory (``text_model``:
``bert-base-uncased`` for 2022, ``gpt2`` for 2023); its weights come from the checkpoint.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clapkit.audio.preprocess import InferenceConfig
from clapkit.interop.keymap import KeyMap, build_target_model, target_shapes
from clapkit.interop.registry import CheckpointFormat, Converted
from clapkit.io.checkpoint import PretrainedError

SAMPLE_RATE = 44100
PROJECTION_DIM = 1024
TEXT_ASSET = "text_model"


def key_map(version: MSCLAPVersion) -> KeyMap:
    """The explicit official -> clapkit key map of one MS-CLAP release."""
    audio = re.escape(version.audio_prefix)
    rules = [
        # torchlibrosa's STFT kernels and mel matrix -> ConvLogMel's buffers.
        (audio + r"spectrogram_extractor\.stft\.conv_(real|imag)\.weight", r"towers.audio.encoder.frontend.conv_\1"),
        (audio + r"logmel_extractor\.melW", "towers.audio.encoder.frontend.melW"),
        (audio + r"(.+)", r"towers.audio.encoder.\1"),
        (r"audio_encoder\.projection\.(.+)", r"towers.audio.projection.\1"),
        (r"caption_encoder\.base\.(.+)", r"towers.text.encoder.model.\1"),
        (r"caption_encoder\.projection\.(.+)", r"towers.text.projection.\1"),
        (r"logit_scale", "logit_scales.audio__text"),
    ]
    ignored = {
        r"^caption_encoder\.base\.h\.\d+\.attn\.(bias|masked_bias)$": "GPT-2 causal-mask buffers older transformers saved",
        **version.ignored,
    }
    return KeyMap(rules=rules, ignored=ignored, name=version.description)


@dataclass(frozen=True)
class MSCLAPVersion:
    """One MS-CLAP release: where its audio keys live, its numerics, its text tower."""

    name: str
    description: str
    marker: str  # a key only this release's checkpoints have
    audio_prefix: str
    seconds: int
    mel_rate: int  # the rate the reference built its mel matrix for
    f_max: float
    text_types: tuple[str, ...]  # transformers model_type(s) of the text tower
    text_args: dict[str, Any]
    audio_encoder: Callable[[Mapping[str, torch.Tensor]], dict[str, Any]]
    ignored: dict[str, str] = field(default_factory=dict)  # official-key pattern -> why it is dropped

    @property
    def clip_samples(self) -> int:
        return self.seconds * SAMPLE_RATE

    def frontend(self, sample_rate: int = SAMPLE_RATE) -> dict[str, Any]:
        return {
            "class_path": "clapkit.encoders.frontends.ConvLogMel",
            "init_args": {"sample_rate": sample_rate, "n_fft": 1024, "hop_length": 320, "n_mels": 64,
                          "f_min": 50.0, "f_max": self.f_max},
        }


def _cnn14_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    from clapkit.encoders.pann import Cnn14, PANNEncoder

    width = state["audio_encoder.base.conv_block1.conv1.weight"].shape[0]
    by_width = {Cnn14.SPEC.channels[0] // div: name for name, div in PANNEncoder.WIDTH_DIVISOR.items()}
    if width not in by_width:
        raise PretrainedError(f"Cnn14 with {width} first-block channels matches no clapkit preset ({sorted(by_width)})")
    return {
        "class_path": "clapkit.encoders.pann.Cnn14",
        "init_args": {
            "variant": by_width[width],
            "frontend": VERSIONS["2022"].frontend(),
            "classes_num": int(state["audio_encoder.base.fc_audioset.weight"].shape[0]),
        },
    }


def _htsat_config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    prefix = "audio_encoder.base.htsat."
    depths: dict[int, int] = {}
    heads: dict[int, int] = {}
    table_rows = None
    for key, value in state.items():
        match = re.match(re.escape(prefix) + r"layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table$", key)
        if match:
            layer, block = int(match[1]), int(match[2])
            depths[layer] = max(depths.get(layer, 0), block + 1)
            heads[layer] = int(value.shape[1])
            table_rows = int(value.shape[0])
    if not depths or table_rows is None:
        raise PretrainedError("no HTSAT blocks found under audio_encoder.base.htsat.layers")
    window = (int(round(table_rows**0.5)) + 1) // 2
    version = VERSIONS["2023"]
    return {
        "class_path": "clapkit.encoders.htsat.HTSAT",
        "init_args": {
            "variant": "tiny",
            "embed_dim": int(state[prefix + "patch_embed.proj.weight"].shape[0]),
            "depths": [depths[i] for i in sorted(depths)],
            "num_heads": [heads[i] for i in sorted(heads)],
            "window_size": window,
            "classes_num": int(state[prefix + "tscam_conv.weight"].shape[0]),
            "frontend": version.frontend(),
            "clip_samples": version.clip_samples,
            "pad_mode": "repeat",
        },
    }


VERSIONS: dict[str, MSCLAPVersion] = {
    "2022": MSCLAPVersion(
        name="2022",
        description="MS-CLAP 2022 (Cnn14 + BERT, 44.1 kHz, 5 s)",
        marker="audio_encoder.base.conv_block1.conv1.weight",
        audio_prefix="audio_encoder.base.",
        seconds=5,
        mel_rate=SAMPLE_RATE,
        f_max=14000.0,
        text_types=("bert",),
        text_args={"pooling": "cls", "max_length": 100},
        audio_encoder=_cnn14_config,
    ),
    "2023": MSCLAPVersion(
        name="2023",
        description="MS-CLAP 2023 (HTSAT + GPT-2, 44.1 kHz, 7 s)",
        marker="audio_encoder.base.htsat.patch_embed.proj.weight",
        audio_prefix="audio_encoder.base.htsat.",
        seconds=7,
        mel_rate=32000,
        f_max=14000.0,
        text_types=("gpt2",),
        text_args={"pooling": "eot_count", "max_length": 77, "text_suffix": " <|endoftext|>", "pad_token": "!"},
        audio_encoder=_htsat_config,
        ignored={
            # `head` (Linear 527->527) is never called when the token-semantic head is on (always,
            # in msclap); the relative-position index and shifted-window masks are constants.
            r"^audio_encoder\.base\.htsat\.head\.": "unused classification head",
            r"^audio_encoder\.base\.htsat\..*\.(attn\.relative_position_index|attn_mask)$": "recomputed from the window geometry",
        },
    ),
}


class MSCLAPFormat(CheckpointFormat):
    """:class:`~clapkit.inference.load.CheckpointFormat` for MS-CLAP 2022 and 2023 files."""

    name = "msclap"

    def matches_state(self, state: Mapping[str, torch.Tensor]) -> bool:
        return "caption_encoder.projection.linear1.weight" in state and any(
            v.marker in state for v in VERSIONS.values()
        )

    def version(self, state: Mapping[str, torch.Tensor]) -> MSCLAPVersion:
        found = [v for v in VERSIONS.values() if v.marker in state]
        if len(found) != 1:
            raise PretrainedError("MS-CLAP checkpoint with neither (or both) the Cnn14 and HTSAT audio keys")
        return found[0]

    def convert(self, checkpoint: Mapping[str, Any], *, text_model: str | os.PathLike | None = None) -> Converted:
        state = {k: v for k, v in checkpoint["model"].items() if isinstance(v, torch.Tensor)}
        version = self.version(state)
        text_dir = _check_text_model(text_model, version, state)
        state = _with_frontend(state, version)
        config = model_config(version, version.audio_encoder(state), text_dir_ref=f"./{TEXT_ASSET}")
        target = build_target_model(config, {TEXT_ASSET: text_dir}, plain_modules=True)
        mapped = key_map(version).apply(state, target_shapes(target))
        inference = InferenceConfig(
            sample_rate=SAMPLE_RATE, clip_samples=version.clip_samples, pad="repeat", crop="center",
            int16_roundtrip=False, fusion=False, text_max_length=None,
        )
        return Converted(config, mapped, inference, assets={TEXT_ASSET: text_dir}, description=version.description)


def model_config(version: MSCLAPVersion, audio_encoder: dict[str, Any], text_dir_ref: str) -> dict[str, Any]:
    """The ``ContrastiveTask`` tree of an MS-CLAP model."""

    def tower(encoder: dict[str, Any]) -> dict[str, Any]:
        return {
            "class_path": "clapkit.encoders.tower.Tower",
            "init_args": {
                "encoder": encoder,
                "projection": {"class_path": "clapkit.encoders.projection.ResidualProjection",
                               "init_args": {"out_dim": PROJECTION_DIM}},
            },
        }

    text_encoder = {
        "class_path": "clapkit.encoders.hf_text.HFTextEncoder",
        "init_args": {"model": text_dir_ref, "load_weights": False, **version.text_args},
    }
    return {
        "class_path": "clapkit.lightning_modules.contrastive.ContrastiveTask",
        "init_args": {
            "towers": {"audio": tower(audio_encoder), "text": tower(text_encoder)},
            "pairs": [["audio", "text"]],
            # The trained scale is whatever the checkpoint holds; the bounds only matter if the
            # model is fine-tuned, and must admit it.
            "logit_scale_max": 1e4,
        },
    }


def _check_text_model(text_model, version: MSCLAPVersion, state: Mapping[str, torch.Tensor]) -> Path:
    from clapkit.utils.resources import resolve_model_path

    expected = " or ".join(version.text_types)
    if text_model is None:
        raise PretrainedError(
            f"{version.description} needs text_model (CLI: --text-model): a local directory with the "
            f"{expected} tokenizer and config.json"
        )
    try:
        path = resolve_model_path(text_model)
    except FileNotFoundError as exc:
        raise PretrainedError(str(exc)) from None
    config_file = path / "config.json"
    if not config_file.is_file():
        raise PretrainedError(f"{path}: no config.json; expected a {expected} model directory")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in version.text_types:
        raise PretrainedError(
            f"the checkpoint is {version.description}, whose text tower is {expected}, "
            f"but {path} holds a {model_type!r} model"
        )
    return path


def _with_frontend(state: dict[str, torch.Tensor], version: MSCLAPVersion) -> dict[str, torch.Tensor]:
    """Fill in the STFT kernels and mel matrix the reference would build if a file lacks them."""
    from clapkit.encoders.frontends import ConvLogMel

    names = {
        "spectrogram_extractor.stft.conv_real.weight": "conv_real",
        "spectrogram_extractor.stft.conv_imag.weight": "conv_imag",
        "logmel_extractor.melW": "melW",
    }
    missing = [k for k in names if version.audio_prefix + k not in state]
    if not missing:
        return state
    reference = ConvLogMel(**{**version.frontend(version.mel_rate)["init_args"]})
    buffers = dict(reference.named_buffers())
    return {**state, **{version.audio_prefix + k: buffers[names[k]].clone() for k in missing}}


CHECKPOINT_FORMAT = MSCLAPFormat()
