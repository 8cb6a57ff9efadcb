"""``msclap.CLAP`` on clapkit: ``from clapkit.compat.msclap import CLAP``.

The reference's inference API with the same argument names, shapes and dtypes::

    # text_model: a local folder holding a saved gpt2 tokenizer and config (never a hub name)
    clap = CLAP(model_fp="CLAP_weights_2023.pth", version="2023", use_cuda=False, text_model="/models/gpt2")
    audio = clap.get_audio_embeddings(["a.wav", "b.wav"])      # torch.float32 [N, 1024], not normalised
    text = clap.get_text_embeddings(["dog barking", "rain"])    # torch.float32 [N, 1024], not normalised
    logits = clap.compute_similarity(audio, text)               # [N_audio, N_text], logit_scale * cosine

Differences from msclap 1.3.4, all deliberate:

- **No downloads.** ``model_fp`` is required (an official ``.pth`` or a clapkit model
  directory). The reference builds its text model with ``AutoModel.from_pretrained('gpt2')``
  (2023) or ``'bert-base-uncased'`` (2022) from the hub; here ``text_model`` is the local
  directory of that model's tokenizer and config (the weights come from the checkpoint).
- **Deterministic.** A clip longer than the window (5 s for 2022, 7 s for 2023) is cut at the
  centre; the reference cuts at ``random.randrange``.
- Multi-channel files are averaged to mono (the reference flattens the channels end to end),
  and resampling to 44.1 kHz uses soxr (the reference: torchaudio's sinc resampler), so arrays
  agree exactly for mono 44.1 kHz files and to resampler differences otherwise.
- ``clapcap`` (captioning) is not provided.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from clapkit.inference.clap import CLAPModel

VERSIONS = {"2022": 5, "2023": 7}  # version -> window in seconds


class CLAP:
    """msclap's ``CLAP`` (``CLAPWrapper``) backed by clapkit.

    Args:
        model_fp: the checkpoint (``CLAP_weights_2023.pth``) or a clapkit model directory.
        version: ``2022`` or ``2023``; the checkpoint must be that version.
        use_cuda: run on CUDA when available.
        text_model: local directory of the text tower's tokenizer and config (``gpt2`` for
            2023, ``bert-base-uncased`` for 2022); not needed for a clapkit model directory.
    """

    def __init__(self, model_fp: str | os.PathLike | None = None, version: str = "2023", use_cuda: bool = False,
                 text_model: str | os.PathLike | None = None):
        if version not in VERSIONS:
            raise ValueError(f"The version {version} is not supported. The supported versions are "
                             f"{sorted(VERSIONS)} (clapcap is not provided by clapkit)")
        if not model_fp:
            raise ValueError("clapkit.compat.msclap never downloads: pass model_fp=<path of "
                             f"CLAP_weights_{version}.pth>")
        from clapkit.inference.load import load

        self.version = version
        self.use_cuda = use_cuda
        self.model_fp = model_fp
        device = "cuda" if use_cuda and torch.cuda.is_available() else "cpu"
        self.clap: CLAPModel = load(model_fp, text_model=text_model, device=device)
        cfg = self.clap.inference
        seconds = cfg.clip_samples / cfg.sample_rate
        if abs(seconds - VERSIONS[version]) > 1e-6:
            found = next((v for v, s in VERSIONS.items() if abs(seconds - s) < 1e-6), f"a {seconds:g} s model")
            raise ValueError(f"{model_fp}: version={version!r} but the checkpoint is MS-CLAP {found}")

    # ------------------------------------------------------------------ embeddings
    def get_audio_embeddings(self, audio_files: Sequence[str | os.PathLike], resample: bool = True) -> torch.Tensor:
        """Projected audio embeddings ``[N, 1024]`` (not normalised, as the reference).

        Args:
            audio_files: file paths.
            resample: resample to 44.1 kHz; ``False`` takes the samples as they are, at any rate
                (as the reference).
        """
        clap = self.clap
        clips = []
        for path in audio_files:
            if resample:
                clips.append(clap.prepare_audio(os.fspath(path)))
            else:
                from clapkit.audio import load_audio

                wave, _ = load_audio(Path(path), mono=True)
                clips.append(clap.prepare_audio(wave, clap.sample_rate, name=os.fspath(path)))
        waveform = torch.from_numpy(np.stack(clips)).to(clap.device)
        return self._projected(clap.audio_tower, waveform)

    def get_text_embeddings(self, class_labels: Sequence[str]) -> torch.Tensor:
        """Projected text embeddings ``[N, 1024]`` (not normalised, as the reference)."""
        return self._projected(self.clap.text_tower, list(class_labels))

    def compute_similarity(self, audio_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """``logit_scale * cosine`` ``[N_audio, N_text]`` (the model's learned scale, as the reference)."""
        audio = audio_embeddings / torch.norm(audio_embeddings, dim=-1, keepdim=True)
        text = text_embeddings / torch.norm(text_embeddings, dim=-1, keepdim=True)
        # msclap applies exp(logit_scale) unclamped; clapkit's public scale is clamped to [1, 100]
        log_scale = self.clap.model.logit_scales[f"{self.clap.audio_tower}__{self.clap.text_tower}"]
        return (log_scale.detach().float().exp() * text @ audio.T).T

    def get_audio_embeddings_per_batch(self, audio_files: Sequence[str | os.PathLike],
                                       batch_size: int) -> Iterator[torch.Tensor]:
        """:meth:`get_audio_embeddings` over consecutive batches (a generator, as the reference)."""
        for start in range(0, len(audio_files), batch_size):
            yield self.get_audio_embeddings(audio_files[start:start + batch_size])

    def get_text_embeddings_per_batch(self, class_labels: Sequence[str], batch_size: int) -> Iterator[torch.Tensor]:
        """:meth:`get_text_embeddings` over consecutive batches (a generator, as the reference)."""
        for start in range(0, len(class_labels), batch_size):
            yield self.get_text_embeddings(class_labels[start:start + batch_size])

    @torch.no_grad()
    def _projected(self, name: str, inputs) -> torch.Tensor:
        # msclap returns the projection's output before normalisation; clapkit's towers
        # normalise, so run the encoder and the projection head here.
        tower = self.clap.model.towers[name]
        return tower.projection(tower.encoder(inputs).embedding).float()
