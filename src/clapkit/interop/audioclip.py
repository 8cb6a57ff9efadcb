"""AudioCLIP checkpoints (AndreyGuzhov/AudioCLIP) -> clapkit.

Layouts (flat state dicts, optionally wrapped in ``state_dict``/``model`` or prefixed ``module.``):

- **AudioCLIP-Full-Training.pt / AudioCLIP-Partial-Training.pt**: OpenAI CLIP RN50 keys
  (``visual.*``, ``transformer.*``, ``token_embedding.weight``, ``positional_embedding``,
  ``ln_final.*``, ``text_projection``, ``logit_scale``), the ESResNeXt-FBSP audio head under
  ``audio.`` (``audio.conv1.*`` ... ``audio.att5.*``, ``audio.fc.*`` 2048 -> 1024, the FBSP
  parameters ``audio.fbsp.{m,fb,fc}``, an empty ``audio.fbsp.bias`` and the Blackman-Harris
  ``audio.window`` buffer) and the audio logit scales ``logit_scale_ai``, ``logit_scale_at``.
  Converted to an :class:`~clapkit.lightning_modules.audioclip.AudioCLIPTask` with towers
  ``audio``, ``image``, ``text`` (no extra projections) and logit scales
  ``audio__image`` <- ``logit_scale_ai``, ``audio__text`` <- ``logit_scale_at``,
  ``image__text`` <- ``logit_scale`` (all in log space, as stored).
- **ESRNXFBSP.pt**: the AudioSet-pretrained ESResNeXt-FBSP alone (same keys without ``audio.``,
  ``fc`` 2048 -> 527). Converted to a multi-label
  :class:`~clapkit.encoders.classifier.Classifier` (a ``ClassificationTask``'s model) whose encoder's ``fc``
  is the tagger head.

Input-scale convention: the reference feeds int16-range waveforms. clapkit's
:class:`~clapkit.encoders.esresnext.ESResNeXtFBSP` takes [-1, 1] audio and multiplies by
``input_scale=32768`` before the reference's own int16 -> unit map, so converted models see the
numbers the checkpoint was trained on. AudioCLIP's windows: 44.1 kHz, 5 s (ESC-50), zero
padding, centre crop at inference.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from clapkit.audio.preprocess import InferenceConfig
from clapkit.interop.keymap import CheckpointError, KeyMap, target_shapes, unwrap_state_dict
from clapkit.interop.registry import CheckpointFormat, Converted

SAMPLE_RATE = 44100
CLIP_SECONDS = 5.0

_TEXT_KEYS = r"transformer\..*|token_embedding\.weight|positional_embedding|ln_final\..*|text_projection"

AUDIOCLIP_KEYMAP = KeyMap(
    name="AudioCLIP",
    rules=[
        (r"visual\.(.*)", r"towers.image.encoder.visual.\1"),
        (rf"({_TEXT_KEYS})", r"towers.text.encoder.text.\1"),
        (r"logit_scale", "logit_scales.image__text"),
        (r"logit_scale_ai", "logit_scales.audio__image"),
        (r"logit_scale_at", "logit_scales.audio__text"),
        (r"audio\.(fbsp\..*|window)", r"towers.audio.encoder.frontend.\1"),
        (r"audio\.(.*)", r"towers.audio.encoder.\1"),
    ],
    ignored={
        r"^(input_resolution|context_length|vocab_size)$": "OpenAI CLIP metadata, implied by the architecture",
        r"(^|\.)attn_mask$": "causal mask, rebuilt from the context length",
    },
)

ESRNXFBSP_KEYMAP = KeyMap(
    name="ESRNXFBSP",
    rules=[
        (r"(fbsp\..*|window)", r"encoder.frontend.\1"),
        (r"(.+)", r"encoder.\1"),
    ],
)


def _tower(encoder: dict[str, Any]) -> dict[str, Any]:
    return {"class_path": "clapkit.encoders.tower.Tower", "init_args": {"encoder": encoder}}


def audioclip_config(audio_variant: str = "base", clip_arch: str = "RN50", sample_rate: int = SAMPLE_RATE,
                     input_scale: float = 32768.0) -> dict[str, Any]:
    """``class_path``/``init_args`` tree of a tri-modal AudioCLIP model."""
    return {
        "class_path": "clapkit.lightning_modules.audioclip.AudioCLIPTask",
        "init_args": {
            "towers": {
                "audio": _tower({"class_path": "clapkit.encoders.esresnext.ESResNeXtFBSP",
                                 "init_args": {"variant": audio_variant, "sample_rate": sample_rate,
                                               "input_scale": input_scale}}),
                "image": _tower({"class_path": "clapkit.encoders.clip.CLIPImageEncoder",
                                 "init_args": {"arch": clip_arch}}),
                "text": _tower({"class_path": "clapkit.encoders.clip.CLIPTextEncoder",
                                "init_args": {"arch": clip_arch}}),
            },
            "pairs": [["audio", "text"], ["audio", "image"], ["image", "text"]],
        },
    }


def esrnxfbsp_config(num_classes: int = 527, audio_variant: str = "base", sample_rate: int = SAMPLE_RATE,
                     input_scale: float = 32768.0) -> dict[str, Any]:
    """``class_path``/``init_args`` tree of the ESResNeXt-FBSP AudioSet tagger."""
    return {
        "class_path": "clapkit.encoders.classifier.Classifier",
        "init_args": {
            "encoder": {"class_path": "clapkit.encoders.esresnext.ESResNeXtFBSP",
                        "init_args": {"variant": audio_variant, "sample_rate": sample_rate,
                                      "output_dim": num_classes, "input_scale": input_scale}},
            "num_classes": num_classes,
            "multi_label": True,
            "use_head": False,
        },
    }


def _target(config: dict[str, Any]) -> dict[str, torch.Size]:
    from clapkit.interop.keymap import build_from_config
    from clapkit.interop.legacy import build_model  # the task's plain model: its keys, without Lightning

    with torch.device("meta"):
        return target_shapes(build_model(config, build_from_config))


def is_audioclip(state: Mapping[str, Any]) -> bool:
    """Tri-modal AudioCLIP layout (CLIP keys plus ``audio.fbsp``)."""
    return "audio.fbsp.m" in state and any(k.startswith("visual.") for k in state)


def is_esrnxfbsp(state: Mapping[str, Any]) -> bool:
    """Audio-only ESResNeXt-FBSP layout."""
    return "fbsp.m" in state and "conv1.weight" in state and "layer4.0.conv1.weight" in state


def convert_audioclip(checkpoint: Mapping[str, Any], *, audio_variant: str = "base", clip_arch: str = "RN50",
                      sample_rate: int = SAMPLE_RATE, clip_seconds: float = CLIP_SECONDS,
                      input_scale: float = 32768.0) -> Converted:
    """Translate an AudioCLIP (or ESRNXFBSP) state dict, checking every key both ways.

    Args:
        checkpoint: the loaded file (flat or wrapped state dict).
        audio_variant: ESResNeXt preset (``base`` for the released files).
        clip_arch: CLIP architecture of the image and text towers (``RN50`` for the released files).
        sample_rate: audio rate (44.1 kHz for the released files).
        clip_seconds: inference window.
        input_scale: see the module docstring (32768 maps clapkit's [-1, 1] audio to int16 range).
    """
    state = unwrap_state_dict(checkpoint)
    inference = InferenceConfig(sample_rate=sample_rate, clip_samples=int(round(clip_seconds * sample_rate)),
                                pad="pad", crop="center")
    if is_audioclip(state):
        config = audioclip_config(audio_variant, clip_arch, sample_rate, input_scale)
        mapped = AUDIOCLIP_KEYMAP.apply(state, _target(config))
        what = "AudioCLIP (ESResNeXt-FBSP audio + CLIP image/text)"
    elif is_esrnxfbsp(state):
        num_classes = int(state["fc.weight"].shape[0])
        config = esrnxfbsp_config(num_classes, audio_variant, sample_rate, input_scale)
        mapped = ESRNXFBSP_KEYMAP.apply(state, _target(config))
        what = f"ESResNeXt-FBSP tagger ({num_classes} classes)"
    else:
        raise CheckpointError("not an AudioCLIP or ESRNXFBSP checkpoint: no 'audio.fbsp.m' / 'fbsp.m' key")
    return Converted(model_config=config, state_dict=mapped, inference=inference, description=what)


class AudioCLIPFormat(CheckpointFormat):
    """The released AudioCLIP / ESRNXFBSP checkpoints (``clapkit convert audioclip ...``)."""

    name = "audioclip"

    def matches_state(self, state: Mapping[str, torch.Tensor]) -> bool:
        return is_audioclip(state) or is_esrnxfbsp(state)

    def convert(self, checkpoint: Mapping[str, Any], *, text_model: str | os.PathLike | None = None) -> Converted:
        # CLIP's BPE tokenizer ships with open_clip: no text_model directory is needed.
        return convert_audioclip(checkpoint)


CHECKPOINT_FORMAT = AudioCLIPFormat()
