"""``laion_clap.CLAP_Module`` on clapkit: ``from clapkit.compat import laion_clap``.

The reference's inference API with the same argument names, shapes and dtypes::

    # text_model: a local folder holding a saved roberta-base tokenizer and config (never a hub name)
    model = laion_clap.CLAP_Module(enable_fusion=False, amodel="HTSAT-tiny", text_model="/models/roberta-base")
    model.load_ckpt("630k-audioset-best.pt")
    audio = model.get_audio_embedding_from_filelist(["a.wav", "b.flac"])   # np.float32 [N, 512]
    audio = model.get_audio_embedding_from_data(x)                         # x: np [N, T] at 48 kHz
    audio = model.get_audio_embedding_from_data(tensor, use_tensor=True)   # torch, keeps gradients
    text = model.get_text_embedding(["a dog barking", "rain"])             # np.float32 [N, 512]

Differences from laion_clap 1.1.7, all deliberate:

- **No downloads.** ``load_ckpt`` needs ``ckpt`` (an official ``.pt`` or a clapkit model
  directory); the reference's ``model_id`` download is refused. The reference builds RoBERTa
  (or BERT/BART) with ``from_pretrained('roberta-base')`` from the hub; here ``text_model`` is
  the local directory of that text model's tokenizer and config (its weights come from the
  checkpoint). A clapkit model directory already carries it.
- **Deterministic.** Where the reference draws at random (``rand_trunc`` crop of a clip
  longer than 10 s without fusion, the three fusion crops), clapkit takes the centre crop and
  the middle of each third, so the same audio always gives the same embedding.
- The model is built by ``load_ckpt`` from the checkpoint (the reference builds a random one in
  ``__init__``), so embedding before ``load_ckpt`` is an error; a checkpoint whose audio model
  or fusion differs from ``amodel`` / ``enable_fusion`` is refused, as the reference's strict
  ``load_state_dict`` refuses it. ``verbose`` prints one line, not every parameter.
- Files are read with soundfile and resampled to 48 kHz with soxr (the reference: librosa,
  whose default resampler is also soxr's high quality mode).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from clapkit.hub.directory import is_native
from clapkit.inference.clap import CLAPModel
from clapkit.inference.load import load

SAMPLE_RATE = 48000


class CLAP_Module(nn.Module):  # noqa: N801 - the reference's name
    """LAION-CLAP's ``CLAP_Module`` backed by clapkit.

    Args:
        enable_fusion: the checkpoint must be a fusion model (``aff_2d``) or not.
        device: where the model runs; ``None`` picks ``cuda:0`` when available.
        amodel: the checkpoint's audio model (``HTSAT-tiny``, ``HTSAT-base``, ``PANN-14``...);
            ``None`` accepts whatever the checkpoint holds.
        tmodel: the text model family (``roberta``, ``bert``, ``bart``); informational: the
            checkpoint's keys decide.
        text_model: local directory of the text tower's Hugging Face tokenizer and config (a
            saved ``roberta-base``); not needed for a clapkit model directory.
    """

    def __init__(self, enable_fusion: bool = False, device: str | torch.device | None = None,
                 amodel: str | None = "HTSAT-tiny", tmodel: str = "roberta",
                 text_model: str | os.PathLike | None = None) -> None:
        super().__init__()
        if device is None:
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
        self.enable_fusion = enable_fusion
        self.amodel = amodel
        self.tmodel = tmodel
        self.text_model = text_model
        self._device = torch.device(device)
        self.clap: CLAPModel | None = None

    # ------------------------------------------------------------------ loading
    def load_ckpt(self, ckpt: str | os.PathLike | None = None, model_id: int = -1, verbose: bool = True) -> None:
        """Load an official LAION-CLAP checkpoint (or a clapkit model directory).

        Args:
            ckpt: the checkpoint path. Required: nothing is downloaded.
            model_id: the reference's download choice; refused.
            verbose: print what was loaded.
        """
        if ckpt is None:
            raise ValueError("clapkit.compat.laion_clap never downloads: pass ckpt=<path of a local .pt file "
                             f"or clapkit model directory> (model_id={model_id} is the reference's download choice)")
        if is_native(ckpt):
            clap = load(ckpt, device=self._device)
            if clap.inference.fusion != self.enable_fusion:
                raise ValueError(f"{ckpt}: enable_fusion={self.enable_fusion} but the model "
                                 f"{'uses' if clap.inference.fusion else 'does not use'} fusion")
            description = str(ckpt)
        else:
            from clapkit.hub.convert import build_converted_plain
            from clapkit.interop.laion_clap import convert_laion_clap

            converted = convert_laion_clap(ckpt, self.text_model, amodel=self.amodel,
                                           enable_fusion=self.enable_fusion)
            clap = CLAPModel(build_converted_plain(converted), converted.inference, device=self._device)
            description = converted.description
        self.clap = clap
        self.model = clap.model
        if verbose:
            print(f"Load the specified checkpoint {ckpt} from users: {description}")

    def tokenizer(self, text: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokens of the model's text tower (padded to its 77-token limit, like the reference)."""
        texts = [text] if isinstance(text, str) else list(text)
        return self._clap().model.towers[self._clap().text_tower].encoder.tokenize(texts)

    # ------------------------------------------------------------------ audio
    def get_audio_embedding_from_filelist(self, x: Sequence[str | os.PathLike], use_tensor: bool = False):
        """L2-normalised embeddings ``[N, D]`` of audio files (any rate and length).

        Returns ``np.float32`` or, with ``use_tensor``, a tensor on the model's device that
        keeps the graph to the model's parameters (as the reference, which runs without
        ``no_grad``), so a loss on it trains the audio tower.
        """
        clap = self._clap()
        files = [os.fspath(f) for f in x]
        if not use_tensor:
            return self._output(clap.embed_audio(files), use_tensor)
        # One batch, like the reference's get_audio_embedding(audio_input): a training loop
        # calling this expects one graph, not per-chunk ones built under no_grad.
        clips = [clap.prepare_audio(f, name=f) for f in files]
        if not clips:
            return torch.zeros(0, clap.embedding_dim, device=clap.device)
        lengths = [c.shape[-1] for c in clips]
        wave = torch.from_numpy(np.stack([np.pad(c, (0, max(lengths) - n)) for c, n in zip(clips, lengths)]))
        kwargs = {} if len(set(lengths)) == 1 else {"lengths": torch.tensor(lengths, device=clap.device)}
        return clap.model.embed(clap.audio_tower, wave.to(clap.device), **kwargs)

    def get_audio_embedding_from_data(self, x, use_tensor: bool = False):
        """L2-normalised embeddings ``[N, D]`` of mono 48 kHz waveforms ``[N, T]``.

        Without ``use_tensor``: ``x`` is a numpy array (or tensor), quantised to int16 and back as
        in the reference, and the result is ``np.float32``. With ``use_tensor``: ``x`` is a
        tensor, not quantised, and the result is a tensor that keeps gradients to ``x``.
        """
        clap = self._clap()
        if use_tensor:
            if not isinstance(x, torch.Tensor):
                raise TypeError("use_tensor=True expects a torch.Tensor [N, T]")
            if x.dim() != 2:
                raise ValueError(f"expected [N, T] waveforms, got shape {tuple(x.shape)}")
            model = clap.model
            return model.embed(clap.audio_tower, x.to(clap.device).float())
        rows = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if rows.ndim != 2:
            raise ValueError(f"expected [N, T] waveforms, got shape {tuple(rows.shape)}")
        return self._output(clap.embed_audio(list(rows.astype(np.float32)), SAMPLE_RATE), use_tensor)

    # ------------------------------------------------------------------ text
    def get_text_embedding(self, x: Sequence[str], tokenizer=None, use_tensor: bool = False):
        """L2-normalised text embeddings ``[N, D]``; ``tokenizer(x)`` (optional) returns the tokens."""
        clap = self._clap()
        texts = [x] if isinstance(x, str) else list(x)
        if tokenizer is None and not use_tensor:
            return self._output(clap.embed_text(texts), use_tensor)
        inputs = tokenizer(texts) if tokenizer is not None else texts
        if isinstance(inputs, dict):
            inputs = {k: v.to(clap.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        with torch.set_grad_enabled(use_tensor and torch.is_grad_enabled()):
            embedding = clap.model.embed(clap.text_tower, inputs)
        return embedding if use_tensor else embedding.detach().float().cpu().numpy()

    # ------------------------------------------------------------------ internals
    def _clap(self) -> CLAPModel:
        if self.clap is None:
            raise RuntimeError("call load_ckpt(path) first: clapkit builds the model from the checkpoint")
        return self.clap

    def _output(self, embedding: torch.Tensor, use_tensor: bool):
        if use_tensor:
            return embedding.to(self._clap().device)
        return embedding.detach().float().cpu().numpy()
