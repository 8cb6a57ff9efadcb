"""An ONNX export run with onnxruntime: :class:`OnnxCLAPModel`, the embedding API of
:class:`~clapkit.inference.clap.CLAPModel` over the graphs :func:`clapkit.export.onnx.export_onnx`
writes.

Inputs, decoding and batching are those of every :class:`~clapkit.inference.base.InferenceModel`,
so embeddings agree with ``clapkit.load(model_dir)`` to float rounding. ``clapkit embed --runtime
onnx`` is this class over files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clapkit.audio.preprocess import InferenceConfig
from clapkit.inference.base import InferenceModel
from clapkit.io.checkpoint import PretrainedError

__all__ = ["OnnxCLAPModel", "is_onnx_export"]

# The export directory's file names: written by clapkit.export.onnx, read here.
AUDIO_FILE = "audio.onnx"
AUDIO_MEL_FILE = "audio_mel.onnx"
TEXT_FILE = "text.onnx"
META_FILE = "onnx.json"
TOKENIZER_DIR = "tokenizer"
OPSET = 18
#: Output of every graph (plain "embedding" collides with node names inside HF text models).
OUTPUT_NAME = "normalized_embedding"


def is_onnx_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory :func:`export_onnx` wrote."""
    return (Path(path) / META_FILE).is_file()


class OnnxCLAPModel(InferenceModel):
    """An ONNX export run with onnxruntime, with :class:`~clapkit.inference.clap.CLAPModel`'s embedding API.

    Audio is prepared exactly as the PyTorch model prepares it (resampling, int16 round trip,
    padding, deterministic crop: the same :class:`~clapkit.inference.base.InferenceModel` code),
    so embeddings agree with ``clapkit.load(model_dir)`` to float rounding. Runs on the CPU.

    Args:
        directory: a directory written by :func:`clapkit.export.onnx.export_onnx`.
        batch_size: clips or texts per run.
        providers: onnxruntime execution providers (default: CPU).
        threads: intra-op threads (``None``: onnxruntime's default).
    """

    embeds = True

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
            inference = InferenceConfig.from_dict(self.meta["inference"])
            graphs = {name: self._inside(graph["file"], f"graphs.{name}.file")
                      for name, graph in self.meta["graphs"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PretrainedError(f"{self.directory / META_FILE}: unreadable ({exc})") from None
        super().__init__(inference, device="cpu", batch_size=batch_size)
        self.fingerprint = str(self.meta.get("fingerprint", ""))
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
    def embedding_dim(self) -> int:
        return int(self.meta["embedding_dim"])

    def prepare_audio(self, audio, sample_rate: int | None = None, *, name: str | None = None) -> np.ndarray:
        """One clip -> the float32 window the audio graph takes (as :meth:`InferenceModel.prepare_audio`)."""
        wave = super().prepare_audio(audio, sample_rate, name=name)
        if wave.shape[-1] != self.inference.clip_samples:
            # a path is named by the caller (clapkit embed prefixes it to every error)
            raise ValueError(f"{name + ': ' if name else ''}longer than the {self.inference.clip_samples}-sample window; the ONNX "
                             "audio graph has no long-clip fusion (use the PyTorch runtime)")
        return wave

    def embed_prepared(self, clips: Iterable[np.ndarray], *, batch_size: int | None = None,
                       progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """Embed clips from :meth:`prepare_audio` (any iterable, consumed lazily)."""
        def run(batch: list[np.ndarray], _: int) -> torch.Tensor:
            return torch.from_numpy(self._run("audio", {"waveform": np.stack(batch).astype(np.float32, copy=False)}))

        outputs = self.map_batches(clips, run, batch_size=batch_size, progress=progress)
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

        def run(chunk: list[str], _: int) -> torch.Tensor:
            encoded = tokenizer([t + settings.get("text_suffix", "") for t in chunk], padding=settings["padding"],
                                truncation=True, max_length=settings["max_length"], return_tensors="np")
            feeds = {"input_ids": encoded["input_ids"].astype(np.int64),
                     "attention_mask": encoded["attention_mask"].astype(np.int64)}
            return torch.from_numpy(self._run("text", feeds))

        outputs = self.map_batches(texts, run, batch_size=batch_size, progress=progress)
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
