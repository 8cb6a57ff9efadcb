"""``SpatialAlignmentModel``: the model a ``SpatialAlignmentTask`` trains (AVC + AVSA embeddings).

For each view direction of a clip the model rotates the ambiX FOA so the view is at the front and
takes a gnomonic crop of the 360 frame there (:mod:`clapkit.audio.foa`, :mod:`clapkit.audio.sphere`),
encodes both, and projects them into the clip-level (AVC) and per-view (AVSA) spaces. Its state
dict keys are ``audio_encoder.*``, ``image_encoder.*``, ``audio_context.*``, ``video_context.*``
and ``heads.*``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clapkit.audio.foa import rotate_to_front
from clapkit.audio.sphere import gnomonic_crop
from clapkit.encoders.model import SavedModel
from clapkit.encoders.projection import MLPProjection


@dataclass
class SpatialOutput:
    """Embeddings of one batch (all L2-normalised, 128-d by default).

    Attributes:
        audio_views: ``[B, K, D]`` AVSA audio embeddings, one per rotated view.
        video_views: ``[B, K, D]`` AVSA embeddings of the K crops.
        audio_clip: ``[B, D]`` AVC audio embedding.
        video_clip: ``[B, D]`` AVC video embedding.
    """

    audio_views: torch.Tensor
    video_views: torch.Tensor
    audio_clip: torch.Tensor
    video_clip: torch.Tensor


class SpatialAlignmentModel(SavedModel):
    """FOA audio and 360 frames embedded per view direction and per clip.

    Args:
        audio_encoder: FOA audio encoder (e.g. :class:`~clapkit.encoders.spatial.SpatialAudioEncoder`
            with 7-channel or 4-channel features); reads ``[N, 4, T]``.
        image_encoder: crop encoder (e.g. :class:`~clapkit.encoders.spatial.CropImageEncoder`);
            its ``image_size`` is the crop size.
        view_transformer: optional callable ``dim -> module`` applied to ``[B, K, dim]`` view
            features of each modality (one instance per modality), e.g.
            :class:`~clapkit.encoders.spatial.ViewTransformer`.
        embed_dim: width of the four projection heads (AVC and AVSA, audio and video).
        fov_degrees: field of view of the crops.
    """

    def __init__(self, audio_encoder: nn.Module, image_encoder: nn.Module,
                 view_transformer: Callable[[int], nn.Module] | None = None, embed_dim: int = 128,
                 fov_degrees: float = 90.0):
        super().__init__()
        self.audio_encoder = audio_encoder
        self.image_encoder = image_encoder
        audio_dim, video_dim = audio_encoder.output_dim, image_encoder.output_dim
        self.audio_context = view_transformer(audio_dim) if view_transformer else nn.Identity()
        self.video_context = view_transformer(video_dim) if view_transformer else nn.Identity()
        self.heads = nn.ModuleDict({
            "avc_audio": MLPProjection(audio_dim, embed_dim),
            "avc_video": MLPProjection(video_dim, embed_dim),
            "avsa_audio": MLPProjection(audio_dim, embed_dim),
            "avsa_video": MLPProjection(video_dim, embed_dim),
        })
        self.fov = math.radians(fov_degrees)

    def views(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated FOA ``[B, K, 4, T]`` and crops ``[B, K, 3, S, S]`` for ``batch["views"]``."""
        azimuth, elevation = batch["views"].float().unbind(-1)
        audio = rotate_to_front(batch["audio"].float(), azimuth, elevation)
        crops = gnomonic_crop(batch["image"], azimuth, elevation, fov=self.fov, size=self.image_encoder.image_size)
        return audio, crops

    def forward(self, batch: dict[str, Any]) -> SpatialOutput:
        """The four embeddings of ``batch`` (``audio [B, 4, T]``, ``image [B, 3, H, W]``, ``views [B, K, 2]``)."""
        audio, crops = self.views(batch)
        batch_size, num_views = audio.shape[:2]
        audio_feat = self.audio_encoder(audio.flatten(0, 1)).embedding.reshape(batch_size, num_views, -1)
        video_feat = self.image_encoder(crops.flatten(0, 1)).embedding.reshape(batch_size, num_views, -1)
        audio_ctx, video_ctx = self.audio_context(audio_feat), self.video_context(video_feat)
        return SpatialOutput(
            audio_views=F.normalize(self.heads["avsa_audio"](audio_ctx), dim=-1),
            video_views=F.normalize(self.heads["avsa_video"](video_ctx), dim=-1),
            audio_clip=F.normalize(self.heads["avc_audio"](audio_feat.mean(1)), dim=-1),
            video_clip=F.normalize(self.heads["avc_video"](video_feat.mean(1)), dim=-1),
        )

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Clip-level AVC embeddings ``[B, D]`` of FOA audio ``[B, 4, T]`` as it was recorded (no rotation)."""
        return F.normalize(self.heads["avc_audio"](self.audio_encoder(audio).embedding), dim=-1)
