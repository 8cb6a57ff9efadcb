"""The inference API: :class:`CLAPModel` embeds audio and text with a trained contrastive model.

``clapkit.load(path)`` returns one. Audio of any rate and length is resampled (soxr), optionally
int16-quantised, then padded, cropped (deterministically) or handed whole to a fusion tower, as
the checkpoint's :class:`~clapkit.audio.preprocess.InferenceConfig` says; inputs are batched;
every embedding comes back L2-normalised, float32, on the CPU. The model is in eval mode, so the
same input always gives the same embedding.

:class:`CLAPModel` holds plain modules only (the towers and their logit scales, as a
:class:`~clapkit.encoders.tower.TowerSet`): inference imports neither Lightning nor torchmetrics.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clapkit.audio.io import audio_files
from clapkit.audio.preprocess import AudioInput, InferenceConfig
from clapkit.audio.stream import DEFAULT_MAX_SECONDS
from clapkit.encoders.tower import TowerSet
from clapkit.inference.base import InferenceModel, resolve_device
from clapkit.io.images import image_pixels
from clapkit.utils.finite import NonFiniteError, require_finite
from clapkit.utils.precision import PRECISIONS, resolve_precision, store_in_dtype

__all__ = ["AudioInput", "CLAPModel", "InferenceConfig", "UnknownTokensWarning", "audio_files", "resolve_device"]


class UnknownTokensWarning(UserWarning):
    """A text query made only of symbols its tokenizer does not know (see :meth:`CLAPModel.embed_text`)."""


class CLAPModel(InferenceModel):
    """A contrastive model wrapped for inference (what :func:`clapkit.load` returns).

    Inputs, decoding, batching and precision as every :class:`~clapkit.inference.base.InferenceModel`.

    Args:
        model: the :class:`~clapkit.encoders.tower.TowerSet` (a ``ContrastiveTask``'s ``model``).
        inference: preprocessing settings of the checkpoint.
        device: where the model runs (``cpu``, ``cuda``, ``auto``...).
        precision: ``32``; ``bf16`` or ``16`` (autocast of the forward pass); ``bf16-true``
            (the audio trunk stored in bf16, front end and head fp32); ``auto`` (``bf16-true``
            on a CPU with bf16 matrix units, else ``32``). See :mod:`clapkit.utils.precision`.
        batch_size: clips or texts per forward pass; ``None``: 8 on a CPU (ten-second clips
            embedded fastest in batches of 4-8 on a 2-core CPU, docs/BENCHMARKS.md: the activations
            stay in cache), 16 on an accelerator.
        audio_tower: name of the audio tower.
        text_tower: name of the text tower.
        tower_loader: ``name -> tower`` for a tower ``model`` lacks, called the first time that
            tower is used (``clapkit.load(path, towers=("audio",))`` passes one that builds the
            tower from the directory), so audio-only work never builds the text tower.
        max_seconds: the cap on audio decoded whole (a fusion model takes long files whole; a
            model reading one window decodes only that window whatever the file's length);
            longer files are refused. ``None``: no cap. Also settable as an attribute.
    """

    embeds = True

    def __init__(
        self,
        model: nn.Module,
        inference: InferenceConfig,
        *,
        device: str | torch.device = "cpu",
        precision: str = "32",
        batch_size: int | None = None,
        audio_tower: str = "audio",
        text_tower: str = "text",
        tower_loader: Callable[[str], nn.Module] | None = None,
        max_seconds: float | None = DEFAULT_MAX_SECONDS,
    ):
        resolved = resolve_device(device)
        if batch_size is None:
            batch_size = 8 if resolved.type == "cpu" else 16
        # ``auto`` becomes the precision it chose (read back from ``self.precision``).
        super().__init__(inference, device=resolved, precision=resolve_precision(precision, resolved),
                         batch_size=batch_size, max_seconds=max_seconds)
        #: The towers and logit scales (a plain module).
        if not isinstance(model, TowerSet):
            raise TypeError(f"CLAPModel takes a TowerSet (a ContrastiveTask's .model), not a {type(model).__name__}")
        self.model = model.to(self.device).eval()
        self.audio_tower = audio_tower
        self.text_tower = text_tower
        self._tower_loader = tower_loader
        for name, tower in self.model.towers.items():
            self._prepare_tower(name, tower)

    def _prepare_tower(self, name: str, tower: nn.Module) -> None:
        if name == self.text_tower and self.inference.text_max_length is not None \
                and hasattr(tower.encoder, "max_length"):
            tower.encoder.max_length = self.inference.text_max_length
        if name == self.audio_tower and self.precision == "bf16-true":
            store_in_dtype(tower, PRECISIONS[self.precision])

    # ------------------------------------------------------------------ properties

    @property
    def logit_scale(self) -> float:
        """Learned inverse temperature between the audio and text towers, clamped as in training
        (see :attr:`logit_scales`)."""
        return self.logit_scales.get(f"{self.audio_tower}__{self.text_tower}",
                                     self.logit_scales.get(f"{self.text_tower}__{self.audio_tower}", 1.0))

    @property
    def logit_scales(self) -> dict[str, float]:
        """Inverse temperature of every contrasted pair, keyed ``"a__b"`` (``audio__text``,
        ``audio__image``, ``image__text`` for AudioCLIP): ``exp`` of the learned log scale clamped
        to the model's bounds (the reference's: AudioCLIP ``[1, 100]``, LAION-CLAP ``[1, 100]``)."""
        scales = getattr(self.model, "logit_scales", None)
        if scales is None:
            return {}
        low, high = getattr(self.model, "log_scale_bounds", (float("-inf"), float("inf")))
        return {key: float(value.detach().float().clamp(low, high).exp()) for key, value in scales.items()}

    def pair_logit_scale(self, a: str, b: str) -> float:
        """:attr:`logit_scales` of the pair ``(a, b)`` in either order (``KeyError`` if not contrasted)."""
        scales = self.logit_scales
        for key in (f"{a}__{b}", f"{b}__{a}"):
            if key in scales:
                return scales[key]
        raise KeyError(f"the model does not contrast {a!r} with {b!r}; pairs: {', '.join(scales) or 'none'}")

    # ------------------------------------------------------------------ audio

    def embed_prepared(
        self,
        clips: Iterable[np.ndarray],
        *,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Embed clips already passed through :meth:`prepare_audio` (any iterable, consumed lazily).

        Raises:
            NonFiniteError: a clip's embedding is NaN or Inf (its ``index`` is the clip's position).
        """
        def run(batch: list[np.ndarray], done: int) -> torch.Tensor:
            embedding = self._embed_audio_batch(batch)
            require_finite(embedding, "audio embedding", offset=done, inputs=batch)
            return embedding

        outputs = self.map_batches(clips, run, batch_size=batch_size, progress=progress)
        if not outputs:
            return torch.zeros(0, self.embedding_dim)
        return torch.cat(outputs)

    def _embed_audio_batch(self, clips: list[np.ndarray]) -> torch.Tensor:
        lengths = [c.shape[-1] for c in clips]
        longest = max(lengths)
        if all(n == longest for n in lengths):
            wave = torch.from_numpy(np.stack(clips))
            kwargs = {}
        else:
            # Only fusion keeps clips longer than the window; pad them to a common length and
            # tell the tower how many samples of each row are real.
            wave = torch.from_numpy(np.stack([np.pad(c, (0, longest - c.shape[-1])) for c in clips]))
            kwargs = {"lengths": torch.tensor(lengths, device=self.device)}
        return self._embed(self.audio_tower, wave.to(self.device), **kwargs)

    # ------------------------------------------------------------------ text

    def embed_text(
        self,
        texts: str | Sequence[str],
        *,
        batch_size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """L2-normalised text embeddings ``[N, D]`` (float32, CPU).

        A text its tokenizer turns into nothing but the unknown token (a script a WordPiece
        vocabulary lacks) gets an :class:`UnknownTokensWarning` naming it: every such text embeds
        the same."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"embed_text expects strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
        self._warn_unknown_only(texts)

        def run(chunk: list[str], start: int) -> torch.Tensor:
            embedding = self._embed(self.text_tower, chunk)
            try:
                require_finite(embedding, "text embedding", offset=start)
            except NonFiniteError as exc:
                raise exc.named(f"text {texts[exc.index]!r}") from None
            return embedding

        outputs = self.map_batches(texts, run, batch_size=batch_size, progress=progress)
        if not outputs:
            return torch.zeros(0, self.embedding_dim)
        return torch.cat(outputs)

    # ------------------------------------------------------------------ images

    def embed_image(
        self,
        images,
        *,
        batch_size: int | None = None,
        image_tower: str = "image",
    ) -> torch.Tensor:
        """L2-normalised image embeddings ``[N, D]`` (float32, CPU) from a model with an image tower.

        Args:
            images: an image path, a PIL image, a list of those, or a tensor ``[3, H, W]`` /
                ``[B, 3, H, W]`` already resized and normalised. Files and PIL images are resized
                (shorter side) and centre-cropped to the tower's ``image_size`` and normalised
                with CLIP's statistics, as in evaluation.
            batch_size: images per forward pass (default: the model's).
            image_tower: name of the image tower.
        """
        if self._tower(image_tower) is None:
            raise ValueError(f"the model has no {image_tower!r} tower (towers: "
                             f"{', '.join(getattr(self.model, 'towers', {})) or 'none'})")
        if isinstance(images, torch.Tensor):
            pixels = images[None] if images.dim() == 3 else images
            if pixels.dim() != 4 or pixels.shape[1] != 3:
                raise ValueError(f"expected [3, H, W] or [B, 3, H, W] images, got shape {tuple(images.shape)}")
            items = list(pixels)
        else:
            items = [images] if isinstance(images, (str, os.PathLike)) or hasattr(images, "convert") else list(images)
        size = int(getattr(self._tower(image_tower).encoder, "image_size", 224))

        def run(chunk: list, start: int) -> torch.Tensor:
            pixels = torch.stack([image_pixels(item, size) for item in chunk])
            embedding = self._embed(image_tower, pixels.to(self.device))
            try:
                require_finite(embedding, "image embedding", offset=start)
            except NonFiniteError as exc:
                item = items[exc.index]
                raise exc.named(str(item) if isinstance(item, (str, os.PathLike)) else f"image[{exc.index}]") from None
            return embedding

        outputs = self.map_batches(items, run, batch_size=batch_size)
        if not outputs:
            return torch.zeros(0, self.embedding_dim)
        return torch.cat(outputs)

    # ------------------------------------------------------------------ scoring

    def similarity(self, audio_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarities ``[N_audio, N_text]`` of normalised embeddings."""
        return audio_embeddings.float() @ text_embeddings.float().T

    def classify(self, audio_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Zero-shot probabilities ``[N_audio, N_labels]``: softmax of scaled similarities."""
        return (self.logit_scale * self.similarity(audio_embeddings, text_embeddings)).softmax(dim=-1)

    @property
    def embedding_dim(self) -> int:
        tower = self._tower(self.audio_tower) or self._tower(self.text_tower)
        return int(tower.output_dim) if tower is not None else 0

    # ------------------------------------------------------------------ internals

    def unknown_only(self, texts: Sequence[str]) -> list[str]:
        """The texts the text tower's tokenizer turns into nothing but its unknown token (none
        for byte-level tokenizers, which know every byte)."""
        check = getattr(getattr(self._tower(self.text_tower), "encoder", None), "unknown_only", None)
        return check(list(texts)) if check is not None else []

    def _warn_unknown_only(self, texts: list[str]) -> None:
        encoder = getattr(self._tower(self.text_tower), "encoder", None)
        unknown = getattr(getattr(encoder, "tokenizer", None), "unk_token", None)
        for text in self.unknown_only(texts):
            warnings.warn(f"text {text[:200]!r} tokenizes to nothing but the unknown token {unknown!r}: its "
                          "embedding is the same as that of any other text the tokenizer knows no symbol of",
                          UnknownTokensWarning, stacklevel=3)

    def _tower(self, name: str):
        if name not in self.model.towers and self._tower_loader is not None:
            tower = self._tower_loader(name).to(self.device).eval()
            self._prepare_tower(name, tower)
            self.model.towers[name] = tower
        return self.model.towers[name] if name in self.model.towers else None

    @torch.no_grad()
    def _embed(self, tower: str, inputs, **kwargs) -> torch.Tensor:
        if self._tower(tower) is None:
            raise ValueError(f"the model has no {tower!r} tower (towers: {', '.join(self.model.towers) or 'none'})")
        with self.autocast():
            out = self.model.towers[tower](inputs, **kwargs)
        out = getattr(out, "embedding", out)
        tower_normalised = getattr(self.model.towers[tower], "normalize", False)
        if tower_normalised and PRECISIONS[self.precision] is None:
            return out.float().cpu()
        # Normalise (again) in fp32: under autocast the tower's own normalisation ran in low precision.
        return F.normalize(out.float(), dim=-1).cpu()
