"""CLIP image and text towers built with open_clip (RN50 by default, any open_clip architecture).

AudioCLIP extends OpenAI's CLIP RN50 with an audio head; clapkit builds the two CLIP towers
separately so each can be a :class:`~clapkit.encoders.tower.Tower` of the contrastive module,
frozen (teacher) or trained. Weights are random unless ``weights`` names a local file (nothing
is downloaded): a full CLIP state dict (OpenAI/open_clip layout: ``visual.*``, ``transformer.*``,
``token_embedding.weight``, ``positional_embedding``, ``ln_final.*``, ``text_projection``,
``logit_scale``) as safetensors, a ``torch.save`` dict (loaded with ``weights_only=True``;
``state_dict``/``model`` nesting and ``module.`` prefixes are unwrapped) or OpenAI's
TorchScript archive. Each tower takes its own keys from the file.

The text tower tokenizes with the CLIP BPE tokenizer shipped in the open_clip package.
``arch="tiny"`` is a small custom open_clip config for tests (a 1-1-1-1 modified ResNet at
64 px and a 2-layer, 32-wide text transformer); ``arch`` may also be the path of an open_clip
JSON model config.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clapkit.encoders.base import EncoderOutput, ImageEncoder, TextEncoder, module_device
from clapkit.io.checkpoint import module_state, read_state_dict

# OpenAI CLIP image normalisation (also open_clip's OPENAI_DATASET_MEAN / STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def clip_config(arch: str) -> dict[str, Any]:
    """The open_clip model config for ``arch``: ``tiny``, an open_clip name, or a JSON file."""
    if arch == "tiny":
        return copy.deepcopy(TINY_CONFIG)
    if arch.endswith(".json"):
        path = Path(arch)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: open_clip model config not found")
        config = json.loads(path.read_text())
        return config.get("model_cfg", config)
    import open_clip

    config = open_clip.get_model_config(arch)
    if config is None:
        raise ValueError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    return copy.deepcopy(config)


def load_clip_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a CLIP checkpoint from a local file into a flat state dict (no code is unpickled).

    Accepts safetensors, a ``torch.save`` dict (``weights_only=True``), or a TorchScript archive
    (OpenAI's released ``RN50.pt``). Unwraps ``state_dict``/``model`` nesting and ``module.``.
    """
    return read_state_dict(path, "CLIP weights", torchscript=True)


def _subset(state: dict[str, torch.Tensor], keep) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if keep(k)}


# where the text tower's open_clip module sits in a clapkit task's checkpoint (AudioCLIP stage (c))
_TEXT_PREFIXES = ("", "towers.text.encoder.text.", "model.towers.text.encoder.text.")


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"{source}: weights do not match the architecture: {exc}") from None
    if missing or unexpected:
        raise ValueError(
            f"{source}: weights do not match the architecture; missing {sorted(missing)[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected {sorted(unexpected)[:8]}"
            f"{'...' if len(unexpected) > 8 else ''}"
        )


class CLIPImageEncoder(ImageEncoder):
    """CLIP's image tower (``visual``) from open_clip; the embedding includes CLIP's projection.

    Args:
        arch: open_clip architecture (``RN50``, ``ViT-B-32``, ...), ``tiny``, or a JSON config path.
        weights: optional local CLIP checkpoint; its ``visual.*`` keys are loaded.
        quick_gelu: QuickGELU activations, as OpenAI's released models (and AudioCLIP) use.
    """

    def __init__(self, arch: str = "RN50", weights: str | None = None, quick_gelu: bool = True):
        super().__init__()
        from open_clip.model import CLIPVisionCfg, _build_vision_tower

        config = clip_config(arch)
        self.arch = arch
        self._output_dim = int(config["embed_dim"])
        vision_cfg = CLIPVisionCfg(**config["vision_cfg"])
        self._image_size = vision_cfg.image_size if isinstance(vision_cfg.image_size, int) else vision_cfg.image_size[0]
        self.visual = _build_vision_tower(self._output_dim, vision_cfg, quick_gelu=quick_gelu)
        if weights is not None:
            state = load_clip_state_dict(weights)
            visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
            _load_into(self.visual, visual, str(weights))

    @property
    def output_dim(self) -> int:
        return self._output_dim

    @property
    def image_size(self) -> int:
        return self._image_size

    def preprocess(self, images: list) -> torch.Tensor:
        """PIL images -> normalised ``[B, 3, S, S]`` (resize shorter side, centre crop)."""
        from open_clip.transform import image_transform

        transform = image_transform(self.image_size, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)
        return torch.stack([transform(image) for image in images])

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        return EncoderOutput(embedding=self.visual(images))


class CLIPTextEncoder(TextEncoder):
    """CLIP's text tower from open_clip (EOT-token pooling and ``text_projection`` included).

    Args:
        arch: open_clip architecture, ``tiny``, or a JSON config path.
        weights: optional local CLIP checkpoint; its text keys (``transformer.*``,
            ``token_embedding.weight``, ``positional_embedding``, ``ln_final.*``,
            ``text_projection``) are loaded.
        quick_gelu: QuickGELU activations, as OpenAI's released models (and AudioCLIP) use.
        context_length: token length (defaults to the architecture's, 77 for CLIP).
    """

    def __init__(self, arch: str = "RN50", weights: str | None = None, quick_gelu: bool = True,
                 context_length: int | None = None):
        super().__init__()
        from open_clip.model import CLIPTextCfg, _build_text_tower

        config = clip_config(arch)
        self.arch = arch
        text_cfg = dict(config["text_cfg"])
        if context_length is not None:
            text_cfg["context_length"] = context_length
        if text_cfg.get("hf_model_name"):
            raise ValueError(
                f"open_clip architecture {arch!r} uses the Hugging Face text model "
                f"{text_cfg['hf_model_name']!r}; use clapkit.encoders.hf_text for that tower"
            )
        self._output_dim = int(config["embed_dim"])
        self.context_length = int(text_cfg.get("context_length", 77))
        self.text = _build_text_tower(self._output_dim, CLIPTextCfg(**text_cfg), quick_gelu=quick_gelu)
        self._tokenizer = None
        if weights is not None:
            state = module_state(load_clip_state_dict(weights), _TEXT_PREFIXES, "transformer.resblocks.0.")
            own = set(self.text.state_dict())
            text_state = _subset(state, lambda k: k in own)
            _load_into(self.text, text_state, str(weights))

    @property
    def output_dim(self) -> int:
        return self._output_dim

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            self._tokenizer = SimpleTokenizer(context_length=self.context_length)
        return self._tokenizer

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokenizer(list(texts), context_length=self.context_length)}

    def forward(self, texts: list[str] | dict[str, torch.Tensor]) -> EncoderOutput:
        tokens = self.tokenize(texts) if isinstance(texts, (list, tuple)) else texts
        input_ids = tokens["input_ids"].to(module_device(self))
        return EncoderOutput(embedding=self.text(input_ids))

    def __getstate__(self):
        # the tokenizer holds regex objects and a large BPE table; rebuild it lazily instead
        state = self.__dict__.copy()
        state["_tokenizer"] = None
        return state

