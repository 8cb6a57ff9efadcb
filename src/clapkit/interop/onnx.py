"""ONNX export of a CLAP model's towers, and an onnxruntime model with :class:`~clapkit.inference.clap.CLAPModel`'s API.

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
graph takes clips of exactly ``clip_samples`` samples (:class:`OnnxCLAPModel` pads and crops
them as the model's inference settings say). Long-clip feature fusion is not in the graph:
a fusion HTSAT's ONNX export embeds window-length clips (exactly as PyTorch does, since such
a clip never takes the fusion branch) and :class:`OnnxCLAPModel` refuses longer clips rather
than embedding them differently from PyTorch; a fusion PANN is refused at export.

The mel graph starts at the encoder's front-end output (``frontend(waveform)``, the log-mel
``[batch, n_mels, frames]`` in dB) for pipelines that compute features elsewhere; it needs an
encoder with ``forward_mel`` (HTSAT, PANN).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clapkit.audio.preprocess import InferenceConfig
from clapkit.io.errors import PretrainedError
from clapkit.utils.atomic import MODEL_DIRECTORY, check_target, replace_output

AUDIO_FILE = "audio.onnx"
AUDIO_MEL_FILE = "audio_mel.onnx"
TEXT_FILE = "text.onnx"
META_FILE = "onnx.json"
TOKENIZER_DIR = "tokenizer"
OPSET = 18
#: Output of every graph (plain "embedding" collides with node names inside HF text models).
OUTPUT_NAME = "normalized_embedding"


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


def is_onnx_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory :func:`export_onnx` wrote."""
    return (Path(path) / META_FILE).is_file()


class OnnxCLAPModel:
    """An ONNX export run with onnxruntime, with :class:`~clapkit.inference.clap.CLAPModel`'s embedding API.

    Audio is prepared exactly as the PyTorch model prepares it (resampling, int16 round trip,
    padding, deterministic crop), so embeddings agree with ``clapkit.load(model_dir)`` to
    float rounding.

    Args:
        directory: a directory written by :func:`export_onnx`.
        batch_size: clips or texts per run.
        providers: onnxruntime execution providers (default: CPU).
        threads: intra-op threads (``None``: onnxruntime's default).
    """

    def __init__(self, directory: str | os.PathLike, *, batch_size: int = 16,
                 providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None):
        from clapkit.utils.deps import optional_import

        ort = optional_import("onnxruntime", "onnx", "the ONNX runtime")
        self.directory = Path(directory)
        if not is_onnx_export(self.directory):
            raise PretrainedError(f"{self.directory}: not an ONNX export (no {META_FILE}; see clapkit export onnx)")
        from clapkit.io.trust import read_untrusted_config

        # Read like a model directory's config: every path it names must stay inside the export.
        self.meta = read_untrusted_config(self.directory / META_FILE, code_sections=(), root=self.directory)
        try:
            self.inference = InferenceConfig.from_dict(self.meta["inference"])
            graphs = {name: self._inside(graph["file"], f"graphs.{name}.file")
                      for name, graph in self.meta["graphs"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PretrainedError(f"{self.directory / META_FILE}: unreadable ({exc})") from None
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        self.fingerprint = str(self.meta.get("fingerprint", ""))
        self.device = torch.device("cpu")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self._sessions = {}
        for name, path in graphs.items():
            try:
                self._sessions[name] = ort.InferenceSession(str(path), options, providers=list(providers))
            except Exception as exc:  # onnxruntime's pybind errors share no public base class
                raise PretrainedError(f"{path}: onnxruntime cannot load it ({_first_line(exc)})") from None
        self._tokenizer = None

    def _inside(self, name: str, key: str) -> Path:
        from clapkit.io.trust import inside

        if not isinstance(name, str):
            raise PretrainedError(f"{self.directory / META_FILE}: {key}: expected a file name, found {name!r}")
        return inside(self.directory, name, where=str(self.directory / META_FILE), key=key)

    @property
    def sample_rate(self) -> int:
        """Rate the audio graph runs at; inputs at other rates are resampled."""
        return self.inference.sample_rate

    @property
    def embedding_dim(self) -> int:
        return int(self.meta["embedding_dim"])

    def prepare_audio(self, audio, sample_rate: int | None = None, *, name: str | None = None) -> np.ndarray:
        """One clip -> the float32 window the audio graph takes (as :meth:`CLAPModel.prepare_audio`)."""
        from clapkit.inference.clap import CLAPModel

        # The same preprocessing code as the PyTorch model (it reads only ``self.inference``).
        wave = CLAPModel.prepare_audio(self, audio, sample_rate, name=name)
        if wave.shape[-1] != self.inference.clip_samples:
            # a path is named by the caller (clapkit embed prefixes it to every error)
            raise ValueError(f"{name + ': ' if name else ''}longer than the {self.inference.clip_samples}-sample window; the ONNX "
                             "audio graph has no long-clip fusion (use the PyTorch runtime)")
        return wave

    def embed_audio(self, audio, sample_rate: int | None = None, *, batch_size: int | None = None,
                    progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """L2-normalised audio embeddings ``[N, D]`` (float32); inputs as :meth:`CLAPModel.embed_audio`."""
        from clapkit.inference.clap import CLAPModel

        items = CLAPModel._as_items(audio)
        clips = (self.prepare_audio(item, sample_rate, name=f"audio[{i}]") for i, item in enumerate(items))
        return self.embed_prepared(clips, batch_size=batch_size, progress=progress)

    def embed_prepared(self, clips, *, batch_size: int | None = None,
                       progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """Embed clips from :meth:`prepare_audio` (any iterable, consumed lazily)."""
        from clapkit.inference.clap import _batches

        outputs = []
        for batch in _batches(clips, batch_size or self.batch_size):
            embedding = self._run("audio", {"waveform": np.stack(batch).astype(np.float32, copy=False)})
            outputs.append(torch.from_numpy(embedding))
            if progress is not None:
                progress(len(batch))
        if not outputs:
            return torch.zeros(0, self.embedding_dim)
        return F.normalize(torch.cat(outputs).float(), dim=-1)

    def embed_mel(self, mel: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Embeddings of front-end outputs ``[B, n_mels, frames]`` through ``audio_mel.onnx``."""
        array = mel.detach().cpu().numpy() if isinstance(mel, torch.Tensor) else np.asarray(mel)
        embedding = self._run("audio_mel", {"mel": array.astype(np.float32, copy=False)})
        return F.normalize(torch.from_numpy(embedding).float(), dim=-1)

    def embed_text(self, texts: str | Sequence[str], *, batch_size: int | None = None,
                   progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """L2-normalised text embeddings ``[N, D]`` through ``text.onnx``."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        self._session("text")
        settings = self.meta["tokenizer"]
        tokenizer = self._load_tokenizer()
        size = batch_size or self.batch_size
        outputs = []
        for start in range(0, len(texts), size):
            chunk = texts[start:start + size]
            encoded = tokenizer([t + settings.get("text_suffix", "") for t in chunk], padding=settings["padding"],
                                truncation=True, max_length=settings["max_length"], return_tensors="np")
            feeds = {"input_ids": encoded["input_ids"].astype(np.int64),
                     "attention_mask": encoded["attention_mask"].astype(np.int64)}
            embedding = self._run("text", feeds)
            outputs.append(torch.from_numpy(embedding))
            if progress is not None:
                progress(len(chunk))
        if not outputs:
            return torch.zeros(0, self.embedding_dim)
        return F.normalize(torch.cat(outputs).float(), dim=-1)

    def similarity(self, audio_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarities ``[N_audio, N_text]``."""
        return audio_embeddings.float() @ text_embeddings.float().T

    def _session(self, name: str):
        if name not in self._sessions:
            raise PretrainedError(f"{self.directory}: the export has no {name} graph "
                                  f"(it holds {', '.join(self._sessions) or 'none'})")
        return self._sessions[name]

    def _run(self, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One graph run; an input the graph does not take, or anything onnxruntime refuses,
        is one :class:`PretrainedError` line naming the graph file (not a runtime traceback)."""
        session = self._session(name)
        path = self.directory / self.meta["graphs"][name]["file"]
        for spec in session.get_inputs():
            problem = _input_problem(spec, feeds.get(spec.name))
            if problem:
                raise PretrainedError(f"{path}: input {spec.name!r} {problem}")
        try:
            (output,) = session.run(None, feeds)
        except Exception as exc:  # onnxruntime's pybind errors share no public base class
            raise PretrainedError(f"{path}: onnxruntime refused the input ({_first_line(exc)})") from None
        return output

    def _load_tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from clapkit.encoders.hf_text import from_pretrained

            self._tokenizer = from_pretrained(AutoTokenizer, self._inside(self.meta["tokenizer"]["directory"], "tokenizer.directory"))
        return self._tokenizer


#: onnxruntime's type names of the graphs' inputs.
_ORT_DTYPES = {"tensor(float)": np.dtype(np.float32), "tensor(int64)": np.dtype(np.int64)}


def _input_problem(spec, array: np.ndarray | None) -> str:
    """What is wrong with ``array`` as the graph input ``spec`` (empty: nothing)."""
    if array is None:
        return "is missing"
    want = _ORT_DTYPES.get(spec.type)
    if want is not None and array.dtype != want:
        return f"must be {want}, got {array.dtype}"
    shape = list(spec.shape)
    fixed = [d if isinstance(d, int) else None for d in shape]
    if len(shape) != array.ndim or any(d is not None and d != n for d, n in zip(fixed, array.shape)):
        expected = "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) + "]"
        hint = ""
        if fixed and fixed[0] is not None and len(shape) == array.ndim:
            # graphs from older exports of HTSAT fixed the batch it was traced with
            hint = f"; the graph takes batches of exactly {fixed[0]}: export it again with clapkit export onnx"
        return f"of shape {list(array.shape)} does not fit the graph's {expected}{hint}"
    return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
