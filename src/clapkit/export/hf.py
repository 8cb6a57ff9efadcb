"""clapkit CLAP models -> Hugging Face transformers ``ClapModel`` directories.

The inverse of :mod:`clapkit.interop.hf_clap`: a native model directory whose towers are an
HTSAT audio encoder and a RoBERTa text encoder (pooler output), each with an
``MLPProjection`` head (``Linear-ReLU-Linear``, hidden width = output width), becomes a
directory that ``transformers.ClapModel.from_pretrained`` and
``ClapProcessor.from_pretrained`` load: ``config.json`` + ``model.safetensors``, the tokenizer,
``preprocessor_config.json`` (the Hub layout) and ``processor_config.json`` (what
transformers 5 writes). HTSAT's ``qkv`` is split into ``query``/``key``/``value``; an explicit
key map with a coverage check fills every ``ClapModel`` weight; ``logit_scale_a`` and
``logit_scale_t`` both get the model's ``audio__text`` scale.

The feature extractor can only say what ``ClapFeatureExtractor`` computes: a periodic-Hann
power mel in dB (floor 1e-10, centred, reflect padding), Slaney scale and norm without fusion
(``truncation: rand_trunc``), HTK scale without norm with fusion (``truncation: fusion``).
A model whose front end computes something else is refused with the difference named.
Preprocessing transformers does differently from a LAION-converted clapkit model, reported as
notes (embeddings of such inputs then differ slightly): no int16 round trip; long clips cropped
at random instead of at the centre (``rand_trunc``); the fused global view resized without
antialiasing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clapkit.interop.hf_clap import AUDIO, MEL_FILTERS, split_qkv
from clapkit.interop.keymap import CheckpointError, KeyMap
from clapkit.utils.atomic import MODEL_DIRECTORY, check_target, replace_output

A = re.escape(AUDIO)
BLOCK = A + r"\.layers\.(\d+)\.blocks\.(\d+)\."
BLOCK_HF = r"audio_model.audio_encoder.layers.\1.blocks.\2."

EXPORT_RULES = [
    (BLOCK + r"norm1\.(.+)", BLOCK_HF + r"layernorm_before.\3"),
    (BLOCK + r"attn\.relative_position_bias_table", BLOCK_HF + "attention.self.relative_position_bias_table"),
    (BLOCK + r"attn\.q\.(.+)", BLOCK_HF + r"attention.self.query.\3"),
    (BLOCK + r"attn\.k\.(.+)", BLOCK_HF + r"attention.self.key.\3"),
    (BLOCK + r"attn\.v\.(.+)", BLOCK_HF + r"attention.self.value.\3"),
    (BLOCK + r"attn\.proj\.(.+)", BLOCK_HF + r"attention.output.dense.\3"),
    (BLOCK + r"norm2\.(.+)", BLOCK_HF + r"layernorm_after.\3"),
    (BLOCK + r"mlp\.fc1\.(.+)", BLOCK_HF + r"intermediate.dense.\3"),
    (BLOCK + r"mlp\.fc2\.(.+)", BLOCK_HF + r"output.dense.\3"),
    (A + r"\.layers\.(\d+)\.downsample\.(.+)", r"audio_model.audio_encoder.layers.\1.downsample.\2"),
    (A + r"\.bn0\.(.+)", r"audio_model.audio_encoder.batch_norm.\1"),
    (A + r"\.patch_embed\.(.+)", r"audio_model.audio_encoder.patch_embed.\1"),
    (A + r"\.norm\.(.+)", r"audio_model.audio_encoder.norm.\1"),
    (r"towers\.(audio|text)\.projection\.net\.0\.(.+)", r"\1_projection.linear1.\2"),
    (r"towers\.(audio|text)\.projection\.net\.2\.(.+)", r"\1_projection.linear2.\2"),
    (r"towers\.text\.encoder\.model\.(.+)", r"text_model.\1"),
    (r"logit_scales\.audio__text", "logit_scale_a"),
]


@dataclass
class HFExport:
    """What :func:`export_hf_clap` wrote.

    Attributes:
        path: the ``ClapModel`` directory.
        description: one line on the model.
        notes: preprocessing transformers does differently from the clapkit model.
    """

    path: Path
    description: str
    notes: list[str] = field(default_factory=list)


def _towers(task) -> tuple[Any, Any, Any, Any]:
    from clapkit.encoders.hf_text import HFTextEncoder
    from clapkit.encoders.htsat import HTSAT
    from clapkit.encoders.projection import MLPProjection

    towers = getattr(task, "towers", None)
    if towers is None or set(towers.keys()) != {"audio", "text"}:
        raise CheckpointError("a ClapModel has exactly an audio and a text tower")
    audio, text = towers["audio"], towers["text"]
    if not isinstance(audio.encoder, HTSAT):
        raise CheckpointError(f"ClapModel's audio tower is HTSAT, this model has {type(audio.encoder).__name__}")
    if not isinstance(text.encoder, HFTextEncoder) or text.encoder.model.config.model_type != "roberta":
        raise CheckpointError("ClapModel's text tower is RoBERTa (an HFTextEncoder over a roberta model)")
    if text.encoder.pooling != "pooler":
        raise CheckpointError(f"ClapModel pools text with RoBERTa's pooler, this model uses {text.encoder.pooling!r}")
    for name, tower in (("audio", audio), ("text", text)):
        head = tower.projection
        if not isinstance(head, MLPProjection) or head.net[0].out_features != head.net[2].out_features:
            raise CheckpointError(f"ClapModel's {name} head is Linear(d, p)-ReLU-Linear(p, p) (MLPProjection "
                                  "with hidden_dim = out_dim)")
    if audio.projection.net[2].out_features != text.projection.net[2].out_features:
        raise CheckpointError("audio and text heads have different widths")
    return audio.encoder, text.encoder, audio.projection, text.projection


def _mel_settings(encoder, frontend_args: dict[str, Any]) -> dict[str, Any]:
    """``ClapFeatureExtractor`` arguments equal to the encoder's front end, or an error naming the difference."""
    from clapkit.encoders.frontends import ConvLogMel, LogMel

    frontend = encoder.frontend
    truncation = "fusion" if encoder.fusion else "rand_trunc"
    want_scale, want_norm = MEL_FILTERS[truncation]
    if isinstance(frontend, LogMel):
        mel = frontend.mel
        got = {"mel_scale": mel.mel_scale.mel_scale, "norm": mel.mel_scale.norm, "power": mel.power,
               "center": mel.spectrogram.center, "pad_mode": mel.spectrogram.pad_mode,
               "win_length": mel.win_length, "amin": frontend.amin}
        want = {"mel_scale": want_scale, "norm": want_norm, "power": 2.0, "center": True, "pad_mode": "reflect",
                "win_length": mel.n_fft, "amin": 1e-10}
        wrong = [f"{k} {got[k]!r} (transformers: {want[k]!r})" for k in want if got[k] != want[k]]
        if wrong:
            raise CheckpointError(f"ClapFeatureExtractor ({truncation}) cannot compute this front end: {', '.join(wrong)}")
        return {"fft_window_size": mel.n_fft, "hop_length": mel.hop_length, "feature_size": frontend.n_mels,
                "frequency_min": float(mel.f_min), "frequency_max": float(mel.f_max), "top_db": frontend.top_db,
                "sampling_rate": frontend.sample_rate}
    if isinstance(frontend, ConvLogMel) and not encoder.fusion:
        f_min, f_max = float(frontend_args.get("f_min", 50.0)), float(frontend_args.get("f_max", 14000.0))
        with torch.device("cpu"):
            fresh = ConvLogMel(frontend.sample_rate, frontend.n_fft, frontend.hop_length, frontend.n_mels, f_min, f_max)
        same = all(torch.allclose(getattr(frontend, n).cpu(), getattr(fresh, n), atol=1e-6)
                   for n in ("conv_real", "conv_imag", "melW"))
        if not same or frontend.amin != 1e-10 or not frontend.center:
            raise CheckpointError("the front end's STFT kernels or mel matrix are not the periodic-Hann DFT and "
                                  f"Slaney filterbank ({f_min}-{f_max} Hz) ClapFeatureExtractor computes")
        return {"fft_window_size": frontend.n_fft, "hop_length": frontend.hop_length, "feature_size": frontend.n_mels,
                "frequency_min": f_min, "frequency_max": f_max, "top_db": None, "sampling_rate": frontend.sample_rate}
    raise CheckpointError(f"ClapFeatureExtractor cannot compute a {type(frontend).__name__} front end"
                          f"{' with fusion' if encoder.fusion else ''}")


def clap_config(task, projection_dim: int):
    """The ``transformers.ClapConfig`` of a clapkit CLAP."""
    from transformers import ClapConfig

    audio, text, _, _ = _towers(task)
    g = audio.geometry
    rc = text.model.config
    text_config = {name: getattr(rc, name) for name in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
        "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
        "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id")}
    audio_config = {
        "window_size": g.window_size, "num_mel_bins": audio.frontend.n_mels, "spec_size": audio.spec_size,
        "patch_size": audio.patch_size, "patch_stride": [audio.patch_size, audio.patch_size],
        "num_classes": audio.tscam_conv.out_channels, "hidden_size": audio.num_features,
        "depths": list(g.depths), "num_attention_heads": list(g.num_heads), "enable_fusion": audio.fusion,
        "patch_embeds_hidden_size": g.embed_dim,
    }
    return ClapConfig(text_config=text_config, audio_config=audio_config, projection_dim=projection_dim)


def _frontend_args(model_config: dict[str, Any]) -> dict[str, Any]:
    try:
        encoder = model_config["init_args"]["towers"]["audio"]["init_args"]["encoder"]
        return dict(encoder["init_args"]["frontend"].get("init_args") or {})
    except (KeyError, TypeError, AttributeError):
        return {}


def export_hf_clap(source: str | os.PathLike, output: str | os.PathLike, *, overwrite: bool = False) -> HFExport:
    """Write the native CLAP model at ``source`` as a transformers ``ClapModel`` directory ``output``.

    ``output`` is written through :func:`clapkit.utils.atomic.replace_output`: never inside or around
    ``source``, and ``overwrite`` replaces only a model directory.

    Raises:
        PretrainedError: ``source`` is not a native model, or not one ``ClapModel`` can express
            (the message names what differs).
    """
    from transformers import ClapFeatureExtractor, ClapModel, ClapProcessor

    from clapkit.hub.native import load_model
    from clapkit.io.checkpoint import PretrainedError

    output = Path(output)
    if output.exists() and not overwrite and (not output.is_dir() or any(output.iterdir())):
        raise PretrainedError(f"{output}: already exists (pass --overwrite to replace it)")
    check_target(output, inputs=[source], overwrite=overwrite)
    task = load_model(source)  # the plain TowerSet: its state dict keys are the export rules'
    config, inference = task.config, task.inference
    try:
        audio, text, audio_head, _ = _towers(task)
        if audio.frame_align != "interpolate":
            raise CheckpointError("ClapModel resizes frames bicubically; this HTSAT pads them (frame_align 'pad')")
        if "logit_scales.audio__text" not in task.state_dict():
            raise CheckpointError("no audio__text logit scale")
        mel = _mel_settings(audio, _frontend_args(config))
        if mel["sampling_rate"] != inference.sample_rate or inference.clip_samples % inference.sample_rate:
            raise CheckpointError(f"a window of {inference.clip_samples} samples at {inference.sample_rate} Hz is not "
                                  "a whole number of seconds (ClapFeatureExtractor's max_length_s)")
        hf_config = clap_config(task, audio_head.net[2].out_features)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: cannot export as a ClapModel: {exc}") from None
    notes = []
    if inference.int16_roundtrip:
        notes.append("clapkit quantises audio to int16 first, transformers does not")
    if not audio.fusion:
        notes.append("transformers crops clips longer than the window at random (clapkit: centre)")
    else:
        notes.append("transformers picks the fusion crops at random (clapkit: middle of each third)")
        if audio.batcher.antialias:
            notes.append("transformers resizes the fused global view without antialiasing (this model: with)")

    hf_model = ClapModel(hf_config).eval()
    target = hf_model.state_dict()
    keymap = KeyMap(
        rules=EXPORT_RULES,
        ignored={rf"^{A}\.frontend\.": "the front end is the feature extractor (preprocessor_config.json)",
                 rf"^{A}\.tscam_conv\.": "ClapAudioModel has no AudioSet head"},
        optional={r"^logit_scale_t$": "set to logit_scale_a",
                  r"\.relative_position_index$": "built by ClapModel from the window geometry",
                  r"\.embeddings\.(position_ids|token_type_ids)$": "built by ClapModel"},
        name="clapkit CLAP -> ClapModel",
    )
    try:
        mapped = keymap.apply(split_qkv(dict(task.state_dict())), target)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    mapped["logit_scale_t"] = mapped["logit_scale_a"].clone()
    hf_model.load_state_dict(mapped, strict=True)

    padding = inference.pad if inference.pad in ("repeatpad", "repeat") else "pad"
    features = ClapFeatureExtractor(
        feature_size=mel["feature_size"], sampling_rate=mel["sampling_rate"], hop_length=mel["hop_length"],
        max_length_s=inference.clip_samples // inference.sample_rate, fft_window_size=mel["fft_window_size"],
        frequency_min=mel["frequency_min"], frequency_max=mel["frequency_max"], top_db=mel["top_db"],
        truncation="fusion" if audio.fusion else "rand_trunc", padding=padding,
    )
    tokenizer = text.tokenizer
    tokenizer.model_max_length = int(inference.text_max_length or text.max_length)
    with replace_output(output, kind=MODEL_DIRECTORY, inputs=[source], overwrite=overwrite) as tmp:
        hf_model.save_pretrained(tmp)
        ClapProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(tmp)
        features.save_pretrained(tmp)  # preprocessor_config.json: the Hub layout older transformers read
    fusion = "fused" if audio.fusion else "unfused"
    description = f"HTSAT (dim {audio.geometry.embed_dim}, {fusion}) + RoBERTa -> transformers ClapModel"
    return HFExport(output, description, notes)
