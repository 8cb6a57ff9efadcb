"""Spatial audio-visual alignment from 360 video with first-order ambisonics (AVC + AVSA).

A batch holds ambiX FOA clips ``audio [B, 4, T]``, equirectangular frames ``image [B, 3, H, W]``
and K view directions per clip ``views [B, K, 2]`` (azimuth, elevation in radians). For each
view the module rotates the FOA so the view is at the front and takes a gnomonic crop of the
frame there (:mod:`clapkit.audio.foa` and :mod:`clapkit.audio.sphere`, on the accelerator, one
batched call each). Two objectives, both InfoNCE on L2-normalised 128-d embeddings:

- **AVC** (audio-visual correspondence): clip-level audio vs clip-level video, in-batch
  negatives, symmetric.
- **AVSA** (audio-visual spatial alignment): for view ``j`` of clip ``i`` the candidates are
  the K views of the same clip (positive at ``j``) plus view ``j`` of every other clip.
  ``avsa_acc`` is the within-clip K-way accuracy (chance ``1/K``), ``avsa_full_acc`` the
  accuracy over all ``K + B - 1`` candidates.

A curriculum trains AVC alone for ``avc_epochs`` epochs (or ``avc_steps`` steps), then
adds AVSA, which is hard to learn from scratch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from clapkit.encoders.spatial_model import SpatialAlignmentModel, SpatialOutput
from clapkit.lightning_modules.base import BaseTask


def _default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)


# --------------------------------------------------------------------------- losses


@dataclass
class ContrastiveResult:
    """A loss with its accuracies.

    Attributes:
        loss: scalar loss.
        accuracy: top-1 accuracy of the positive among all candidates.
        within_clip_accuracy: AVSA only: top-1 among the K views of the same clip.
    """

    loss: torch.Tensor
    accuracy: torch.Tensor
    within_clip_accuracy: torch.Tensor | None = None


def avc_loss(audio: torch.Tensor, video: torch.Tensor, temperature: float = 0.07) -> ContrastiveResult:
    """Symmetric cross-modal InfoNCE with in-batch negatives.

    Args:
        audio: ``[B, D]`` L2-normalised clip embeddings.
        video: ``[B, D]`` L2-normalised clip embeddings (row ``i`` pairs with audio row ``i``).
        temperature: softmax temperature.
    """
    logits = audio.float() @ video.float().T / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    accuracy = 0.5 * ((logits.argmax(1) == target).float().mean() + (logits.argmax(0) == target).float().mean())
    return ContrastiveResult(loss=loss, accuracy=accuracy)


def avsa_logits(anchor: torch.Tensor, candidates: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """AVSA logits ``[B, K, K + B]`` for anchors ``[B, K, D]`` against candidates ``[B, K, D]``.

    Columns ``0..K-1`` are the K views of the anchor's own clip (the positive of anchor
    ``(i, j)`` is column ``j``); columns ``K..K+B-1`` are view ``j`` of every clip, with the
    anchor's own clip masked to ``-inf`` since it already appears among the first K.
    """
    anchor, candidates = anchor.float(), candidates.float()
    within = torch.einsum("ijd,ikd->ijk", anchor, candidates)
    across = torch.einsum("ijd,mjd->ijm", anchor, candidates)
    own = torch.eye(anchor.shape[0], dtype=torch.bool, device=anchor.device)[:, None, :]
    across = across.masked_fill(own, float("-inf"))
    return torch.cat([within, across], -1) / temperature


def avsa_loss(
    audio: torch.Tensor, video: torch.Tensor, temperature: float = 0.07, symmetric: bool = True
) -> ContrastiveResult:
    """Audio-visual spatial alignment loss over ``[B, K, D]`` per-view embeddings.

    Audio view ``j`` of clip ``i`` must pick crop ``j`` of clip ``i`` among the K crops of that
    clip and crop ``j`` of every other clip; with ``symmetric`` the crops pick audio views the
    same way and the two cross-entropies are averaged. Accuracies are audio -> video.
    """
    batch, views = audio.shape[:2]
    target = torch.arange(views, device=audio.device).expand(batch, views)
    logits = avsa_logits(audio, video, temperature)
    loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
    if symmetric:
        reverse = avsa_logits(video, audio, temperature)
        loss = 0.5 * (loss + F.cross_entropy(reverse.flatten(0, 1), target.flatten()))
    accuracy = (logits.argmax(-1) == target).float().mean()
    within = (logits[..., :views].argmax(-1) == target).float().mean()
    return ContrastiveResult(loss=loss, accuracy=accuracy, within_clip_accuracy=within)


# --------------------------------------------------------------------------- module


class SpatialAlignmentTask(BaseTask):
    """Self-supervised AVC + AVSA training on FOA audio and 360 frames.

    The encoders, view transformers and heads are the task's :attr:`model`, a
    :class:`~clapkit.encoders.spatial_model.SpatialAlignmentModel` built from ``audio_encoder``,
    ``image_encoder``, ``view_transformer``, ``embed_dim`` and ``fov_degrees``; the task keeps the
    losses, the curriculum and the optimisation.

    Args:
        audio_encoder: FOA audio encoder (e.g. :class:`~clapkit.encoders.spatial.SpatialAudioEncoder`
            with 7-channel or 4-channel features); reads ``[N, 4, T]``.
        image_encoder: crop encoder (e.g. :class:`~clapkit.encoders.spatial.CropImageEncoder`);
            its ``image_size`` is the crop size.
        view_transformer: optional callable ``dim -> module`` applied to ``[B, K, dim]`` view
            features of each modality (one instance per modality), e.g.
            :class:`~clapkit.encoders.spatial.ViewTransformer`.
        embed_dim: width of the four projection heads (AVC and AVSA, audio and video).
        temperature: InfoNCE temperature.
        fov_degrees: field of view of the crops.
        avc_weight: weight of the AVC loss.
        avsa_weight: weight of the AVSA loss once the curriculum enables it.
        avc_epochs: epochs of AVC only before AVSA is added.
        avc_steps: when set, the curriculum counts optimiser steps instead of epochs.
        symmetric_avsa: also let crops pick audio views in the AVSA loss.
        optimizer: callable ``params -> Optimizer``; default AdamW(lr 1e-3, weight decay 1e-4).
        scheduler: optional callable ``optimizer -> LR scheduler``, stepped per epoch.
    """

    def __init__(
        self,
        audio_encoder: nn.Module,
        image_encoder: nn.Module,
        view_transformer: Callable[[int], nn.Module] | None = None,
        embed_dim: int = 128,
        temperature: float = 0.07,
        fov_degrees: float = 90.0,
        avc_weight: float = 1.0,
        avsa_weight: float = 1.0,
        avc_epochs: int = 0,
        avc_steps: int | None = None,
        symmetric_avsa: bool = True,
        optimizer: OptimizerCallable = _default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
    ):
        super().__init__()
        self.save_config_hyperparameters(modules=["audio_encoder", "image_encoder", "view_transformer"],
                                         ignore=["optimizer", "scheduler"])
        #: The encoders, view transformers and heads
        #: (:class:`~clapkit.encoders.spatial_model.SpatialAlignmentModel`).
        self.model: SpatialAlignmentModel = self.model_from_arguments(SpatialAlignmentModel, locals())
        self.temperature = temperature
        self.avc_weight = avc_weight
        self.avsa_weight = avsa_weight
        self.avc_epochs = avc_epochs
        self.avc_steps = avc_steps
        self.symmetric_avsa = symmetric_avsa
        self.set_optimization(optimizer, scheduler, interval="epoch")

    def forward(self, batch: dict[str, Any]) -> SpatialOutput:
        return self.model(batch)

    # --- objective -----------------------------------------------------------------------------
    @property
    def avsa_active(self) -> bool:
        """Whether the curriculum has switched the AVSA loss on."""
        if self.avc_steps is not None:
            return self.global_step >= self.avc_steps
        return self.current_epoch >= self.avc_epochs

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        # Every rank computes the loss over the global batch; gradients flow back through the
        # gather, and DDP's averaging then yields the exact full-batch gradient.
        if self._trainer is None or self.trainer.world_size == 1:
            return tensor
        return self.all_gather(tensor, sync_grads=True).flatten(0, 1)

    def _losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = self(batch)
        avc = avc_loss(self._gather(out.audio_clip), self._gather(out.video_clip), self.temperature)
        avsa = avsa_loss(self._gather(out.audio_views), self._gather(out.video_views), self.temperature,
                         self.symmetric_avsa)
        return {
            "avc_loss": avc.loss, "avc_acc": avc.accuracy,
            "avsa_loss": avsa.loss, "avsa_acc": avsa.within_clip_accuracy, "avsa_full_acc": avsa.accuracy,
        }

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        values = self._losses(batch)
        loss = self.avc_weight * values["avc_loss"]
        if self.avsa_active:
            loss = loss + self.avsa_weight * values["avsa_loss"]
        size = batch["audio"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in values.items()}, batch_size=size)
        self.log("train/avsa_on", float(self.avsa_active), batch_size=size)
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        values = self._losses(batch)
        loss = self.avc_weight * values["avc_loss"] + self.avsa_weight * values["avsa_loss"]
        size = batch["audio"].shape[0]
        self.log(f"{stage}/loss", loss, batch_size=size, sync_dist=True)
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, batch_size=size, sync_dist=True,
                      prog_bar=stage == "val")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Clip-level AVC embeddings of the FOA audio as it was recorded (no rotation)."""
        return {"key": batch.get("key"), "audio": self.model.embed_audio(batch["audio"])}
