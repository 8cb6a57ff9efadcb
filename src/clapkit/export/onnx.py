"""ONNX export of a CLAP model's towers (run them with :class:`clapkit.inference.onnx.OnnxCLAPModel`).

:func:`export_onnx` writes a directory::

    audio.onnx        waveform [batch, clip_samples] float32 -> normalized_embedding [batch, D]
    audio_mel.onnx    (optional) log-mel [batch, n_mels, frames] -> normalized_embedding
    text.onnx         input_ids, attention_mask [batch, tokens] int64 -> normalized_embedding
    tokenizer/        the text tower's tokenizer (Hugging Face format)
    onnx.json         the model's preprocessing (clapkit's InferenceConfig), tokeniser settings,
                      input names and the source model's fingerprint

The batch axis (and the token axis of the text graph) is dynamic. Graphs are traced with
``torch.onnx.export(dynamo=True)`` from the model in eval mode, so they compute what
``clapkit.load(dir).embed_*`` computes for inputs already fitted to the window: the audio
graph takes clips of exactly ``clip_samples`` samples (:class:`~clapkit.inference.onnx.OnnxCLAPModel` pads and crops
them as the model's inference settings say). Long-clip feature fusion is not in the graph:
a fusion HTSAT's ONNX export embeds window-length clips (exactly as PyTorch does, since such
a clip never takes the fusion branch) and the onnxruntime model refuses longer clips rather
than embedding them differently from PyTorch; a fusion PANN is refused at export.

The mel graph starts at the encoder's front-end output (``frontend(waveform)``, the log-mel
``[batch, n_mels, frames]`` in dB) for pipelines that compute features elsewhere; it needs an
encoder with ``forward_mel`` (HTSAT, PANN).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clapkit.inference.onnx import (
    AUDIO_FILE,
    AUDIO_MEL_FILE,
    META_FILE,
    OPSET,
    OUTPUT_NAME,
    TEXT_FILE,
    TOKENIZER_DIR,
)
from clapkit.io.checkpoint import PretrainedError
from clapkit.utils.atomic import MODEL_DIRECTORY, check_target, replace_output


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Attributes:
        directory: the export directory.
        files: graph name (``audio``, ``audio_mel``, ``text``) -> ``.onnx`` path.
        embedding_dim: width of every graph's output.
    """

    directory: Path
    files: dict[str, Path]
    embedding_dim: int


class _AudioGraph(nn.Module):
    """Waveform -> normalised embedding (the audio tower in eval mode)."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.tower(waveform).embedding, dim=-1)


class _MelGraph(nn.Module):
    """Front-end output ``[B, n_mels, frames]`` -> normalised embedding."""

    def __init__(self, tower: nn.Module, views: int):
        super().__init__()
        self.tower = tower
        self.views = views

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        # The encoders take the ClipBatch layout [B, views, frames, n_mels]; a window-length
        # clip's fusion views are all the global one (what ClipBatcher builds).
        x = mel.transpose(-1, -2).unsqueeze(1).expand(-1, self.views, -1, -1)
        encoder_out = self.tower.encoder.forward_mel(x)
        return F.normalize(self.tower.projection(encoder_out.embedding), dim=-1)


class _TextGraph(nn.Module):
    """Token ids + mask -> normalised embedding."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.tower({"input_ids": input_ids, "attention_mask": attention_mask})
        return F.normalize(out.embedding, dim=-1)


def _window_only(tower: nn.Module) -> nn.Module:
    """The audio tower as it runs on window-length clips, for tracing.

    In eval mode a window-length clip never takes the fusion branch (its ``longer`` flag is
    false), but whether it does is decided per clip at run time, which ONNX cannot express; a
    copy of HTSAT with the branch switched off computes exactly the window-length result.
    """
    encoder = tower.encoder
    if not getattr(encoder, "fusion", False):
        return tower
    patch = getattr(encoder, "patch_embed", None)
    if not hasattr(patch, "fusion"):
        raise PretrainedError(f"{type(encoder).__name__} with feature fusion does not export to ONNX (its fusion "
                              "branch is chosen per clip at run time); export a model without fusion")
    tower = copy.deepcopy(tower)
    tower.encoder.patch_embed.fusion = False
    return tower


def _export(module: nn.Module, args: tuple, path: Path, input_names: list[str], dynamic: dict) -> None:
    module.eval()
    with torch.no_grad():
        program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic, opset_version=OPSET,
                                    input_names=input_names, output_names=[OUTPUT_NAME], verbose=False)
    program.save(str(path))


def export_onnx(
    model,
    directory: str | os.PathLike,
    *,
    audio_inputs: Sequence[str] = ("waveform",),
    text: bool = True,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike | None] = (),
) -> OnnxExport:
    """Export a CLAP model's audio and text towers to ONNX (see the module docstring).

    Args:
        model: a :class:`~clapkit.inference.clap.CLAPModel` or the path of a model directory /
            checkpoint :func:`clapkit.load` accepts.
        directory: the export directory to create (written atomically).
        audio_inputs: which audio graphs to write: ``waveform`` (``audio.onnx``) and/or ``mel``
            (``audio_mel.onnx``).
        text: also export the text tower (it needs a Hugging Face tokenizer).
        overwrite: replace an existing export or model directory (never a folder of other files).
        inputs: what the model was read from (a path given as ``model`` counts too): the
            directory may not be, contain or lie inside one of them.
    """
    from clapkit.inference.clap import CLAPModel

    inputs = list(inputs)
    if not isinstance(model, CLAPModel):
        from clapkit.inference.load import load

        inputs.append(model)
        check_target(directory, inputs=inputs, overwrite=overwrite)
        model = load(model)
        if not isinstance(model, CLAPModel):
            raise PretrainedError(f"{type(model).__name__}: only contrastive (CLAP) models export to ONNX")
    unknown = sorted(set(audio_inputs) - {"waveform", "mel"})
    if unknown:
        raise ValueError(f"audio_inputs must be waveform and/or mel, not {unknown}")
    directory = Path(directory)
    if directory.exists() and not overwrite and (not directory.is_dir() or any(directory.iterdir())):
        raise PretrainedError(f"{directory}: already exists (pass overwrite=True / --overwrite to replace it)")
    towers = getattr(model.model, "towers", {})
    audio = towers[model.audio_tower] if model.audio_tower in towers else None
    if audio is None:
        raise PretrainedError(f"the model has no {model.audio_tower!r} tower to export")
    text_tower = towers[model.text_tower] if text and model.text_tower in towers else None
    tokenizer = getattr(getattr(text_tower, "encoder", None), "tokenizer", None)
    if text and (text_tower is None or not hasattr(tokenizer, "save_pretrained")):
        raise PretrainedError("the text tower has no Hugging Face tokenizer to export with it; pass text=False "
                              "(CLI: --no-text)")
    audio = _window_only(audio)
    if "mel" in audio_inputs and not hasattr(audio.encoder, "forward_mel"):
        raise PretrainedError(f"{type(audio.encoder).__name__} has no forward_mel: export the waveform graph only")
    model.model.cpu().eval()
    cfg = model.inference
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    generator = torch.Generator().manual_seed(0)
    example = 0.1 * torch.randn(2, cfg.clip_samples, generator=generator)

    files: dict[str, Path] = {}
    meta: dict = {"clapkit_onnx": 1, "inference": cfg.to_dict(), "embedding_dim": model.embedding_dim,
                  "fingerprint": getattr(model, "fingerprint", ""), "opset": OPSET, "graphs": {}}
    with replace_output(directory, kind=MODEL_DIRECTORY, inputs=inputs, overwrite=overwrite) as tmp:
        if "waveform" in audio_inputs:
            _export(_AudioGraph(audio), (example,), tmp / AUDIO_FILE, ["waveform"], {"waveform": {0: batch}})
            files["audio"] = directory / AUDIO_FILE
            meta["graphs"]["audio"] = {"file": AUDIO_FILE, "inputs": ["waveform"]}
        if "mel" in audio_inputs:
            frontend = audio.encoder.frontend
            mel = frontend(example)
            views = 4 if getattr(audio.encoder, "fusion", False) else 1
            _export(_MelGraph(audio, views), (mel,), tmp / AUDIO_MEL_FILE, ["mel"], {"mel": {0: batch}})
            files["audio_mel"] = directory / AUDIO_MEL_FILE
            meta["graphs"]["audio_mel"] = {"file": AUDIO_MEL_FILE, "inputs": ["mel"],
                                          "n_mels": int(mel.shape[1]), "frames": int(mel.shape[2])}
        if text_tower is not None:
            encoder = text_tower.encoder
            tokens = encoder.tokenize(["a short example text", "another one"])
            ids, mask = tokens["input_ids"], tokens.get("attention_mask", torch.ones_like(tokens["input_ids"]))
            length = torch.export.Dim("tokens", min=1, max=int(getattr(encoder, "max_length", 512) or 512))
            _export(_TextGraph(text_tower), (ids, mask), tmp / TEXT_FILE, ["input_ids", "attention_mask"],
                    {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}})
            tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
            files["text"] = directory / TEXT_FILE
            meta["graphs"]["text"] = {"file": TEXT_FILE, "inputs": ["input_ids", "attention_mask"]}
            meta["tokenizer"] = {"directory": TOKENIZER_DIR, "padding": getattr(encoder, "padding", "longest"),
                                 "max_length": getattr(encoder, "max_length", None),
                                 "text_suffix": getattr(encoder, "text_suffix", "")}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return OnnxExport(directory=directory, files=files, embedding_dim=model.embedding_dim)


