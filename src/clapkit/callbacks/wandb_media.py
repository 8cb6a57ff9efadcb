"""Validation media for Weights & Biases: spectrograms, audio, retrieval tables, confusion matrix.

At the end of each validation epoch (every ``every_n_epochs``) :class:`WandbMedia` logs, on
global rank zero only:

- ``media/spectrogram`` and ``media/audio``: the first ``num_examples`` clips of the first
  validation batch (log-mel from the audio encoder's own front end when it has one);
- for separation models (a ``separator`` and ``condition`` as in
  :class:`~clapkit.lightning_modules.separation.SeparationTask`): ``media/mixture``,
  ``media/target`` and ``media/estimate`` audio with their spectrograms, captioned with the
  query;
- ``media/retrieval``: a table of audio-to-text retrieval on that batch (clip, audio, ground
  truth caption, top-3 retrieved captions, rank of the ground truth);
- ``media/zeroshot_confusion``: a zero-shot confusion matrix over the first
  ``confusion_batches`` batches of the first validation dataloader with single labels, with
  the datamodule's ``class_names`` and the model's prompt ensemble (``zeroshot_classifier``).

Embeddings for the table and the matrix are recomputed on those few batches, so the cost is
bounded and the model's own evaluation is untouched. Without a ``WandbLogger`` the callback
does nothing (it warns once).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn

from clapkit.encoders.frontends import LogMel


def head(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` rows of every tensor and list in a batch dict."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            out[key] = value[:n]
        elif isinstance(value, (list, tuple)):
            out[key] = list(value[:n])
        else:
            out[key] = value
    return out


def spectrogram_image(db: torch.Tensor, dynamic_range: float = 80.0) -> np.ndarray:
    """``[mels, frames]`` dB -> ``uint8 [mels, frames]`` image, low frequencies at the bottom."""
    db = db.detach().float().cpu()
    top = float(db.max())
    scaled = ((db - (top - dynamic_range)) / dynamic_range).clamp(0, 1)
    return (scaled.flip(0) * 255).round().to(torch.uint8).numpy()


def _wandb():
    import wandb

    return wandb


class WandbMedia(Callback):
    """Log spectrograms, audio, retrieval examples and a zero-shot confusion matrix to W&B.

    Args:
        num_examples: clips from the first validation batch to log as audio/spectrograms and
            to list in the retrieval table.
        every_n_epochs: log on every n-th validation epoch.
        confusion_batches: labelled validation batches (from the first labelled dataloader)
            that feed the zero-shot confusion matrix; ``0`` disables it.
        log_audio: log waveforms as ``wandb.Audio``.
        log_spectrograms: log log-mel images.
        retrieval_table: log the audio-to-text retrieval table.
        log_on_sanity_check: also log during the sanity-check validation run.
    """

    def __init__(
        self,
        num_examples: int = 4,
        every_n_epochs: int = 1,
        confusion_batches: int = 16,
        log_audio: bool = True,
        log_spectrograms: bool = True,
        retrieval_table: bool = True,
        log_on_sanity_check: bool = False,
    ):
        super().__init__()
        self.num_examples = num_examples
        self.every_n_epochs = every_n_epochs
        self.confusion_batches = confusion_batches
        self.log_audio = log_audio
        self.log_spectrograms = log_spectrograms
        self.retrieval_table = retrieval_table
        self.log_on_sanity_check = log_on_sanity_check
        self._warned = False
        self._reset()

    def _reset(self) -> None:
        self._examples: dict[str, Any] | None = None
        self._labels: list[torch.Tensor] = []
        self._preds: list[torch.Tensor] = []
        self._classifier: torch.Tensor | None = None
        self._labelled_batches = 0
        self._confusion_loader: int | None = None

    # --- when ----------------------------------------------------------------------------------
    def _active(self, trainer: pl.Trainer) -> bool:
        if not trainer.is_global_zero:
            return False
        if trainer.sanity_checking and not self.log_on_sanity_check:
            return False
        if not isinstance(trainer.logger, WandbLogger):
            if not self._warned:
                rank_zero_warn("WandbMedia needs a WandbLogger as the trainer's first logger; nothing is logged")
                self._warned = True
            return False
        return trainer.current_epoch % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._reset()

    @torch.no_grad()
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not isinstance(batch, dict) or not self._active(trainer):
            return
        if self._examples is None and dataloader_idx == 0:
            self._examples = self._collect_examples(pl_module, head(batch, self.num_examples))
        if self._labelled_batches < self.confusion_batches and self._single_labels(batch) is not None:
            # the first labelled dataloader feeds the matrix (zero-shot sets need not come first)
            if self._confusion_loader is None:
                self._confusion_loader = dataloader_idx
            if dataloader_idx == self._confusion_loader:
                self._accumulate_zeroshot(trainer, pl_module, batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._active(trainer) or (self._examples is None and not self._preds):
            return
        payload = dict(self._examples or {})
        if self._preds:
            names = self._class_names(trainer, self._confusion_loader or 0)
            payload["media/zeroshot_confusion"] = _wandb().plot.confusion_matrix(
                y_true=torch.cat(self._labels).tolist(),
                preds=torch.cat(self._preds).tolist(),
                class_names=names,
                title="zero-shot confusion (validation)",
            )
        payload["trainer/global_step"] = trainer.global_step
        trainer.logger.experiment.log(payload)
        self._reset()

    # --- what ----------------------------------------------------------------------------------
    @staticmethod
    def _audio_setup(pl_module) -> tuple[str | None, Any]:
        """(audio batch key, audio encoder) of a contrastive module, or ``(None, None)``."""
        towers = getattr(getattr(pl_module, "model", None), "towers", None)  # a contrastive task's TowerSet
        if towers is None:
            return None, None
        name = getattr(pl_module, "eval_towers", ("audio", "text"))[0]
        if name not in towers:
            return None, None
        return name, towers[name].encoder

    def _spectrogram(self, waveform: torch.Tensor, sample_rate: int, frontend: Any = None) -> np.ndarray:
        frontend = frontend if isinstance(frontend, LogMel) else LogMel(sample_rate=sample_rate, f_max=None)
        frontend = frontend.to(waveform.device)
        wave = waveform.mean(0) if waveform.dim() == 2 else waveform
        return spectrogram_image(frontend(wave.float().unsqueeze(0))[0])

    def _media(self, prefix: str, waves: torch.Tensor, sample_rate: int, captions: list[str],
               frontend: Any = None) -> dict[str, Any]:
        wandb = _wandb()
        out: dict[str, Any] = {}
        if self.log_audio:
            out[f"media/{prefix}"] = [
                wandb.Audio(w.detach().float().cpu().numpy().T, sample_rate=sample_rate, caption=c)
                for w, c in zip(waves, captions)
            ]
        if self.log_spectrograms:
            out[f"media/{prefix}_spectrogram"] = [
                wandb.Image(self._spectrogram(w, sample_rate, frontend), caption=c) for w, c in zip(waves, captions)
            ]
        return out

    def _collect_examples(self, pl_module, batch: dict[str, Any]) -> dict[str, Any]:
        if "mixture" in batch and hasattr(pl_module, "separator") and hasattr(pl_module, "condition"):
            return self._separation_examples(pl_module, batch)
        name, encoder = self._audio_setup(pl_module)
        if name is None or name not in batch:
            return {}
        waves = batch[name]
        keys = batch.get("key") or [str(i) for i in range(len(waves))]
        texts = batch.get("text") or [caps[0] if caps else "" for caps in batch.get("captions", [])] or [""] * len(waves)
        captions = [f"{k}: {t}" if t else str(k) for k, t in zip(keys, texts)]
        rate = int(getattr(encoder, "sample_rate", 48000))
        payload = self._media("audio", waves, rate, captions, getattr(encoder, "frontend", None))
        if self.retrieval_table and batch.get("captions") and len(pl_module.model.towers) > 1:
            payload["media/retrieval"] = self._retrieval_table(pl_module, name, batch, rate)
        return payload

    def _retrieval_table(self, pl_module, name: str, batch: dict[str, Any], rate: int):
        wandb = _wandb()
        text_name = pl_module.eval_towers[1]
        audio = pl_module.embed(name, batch[name], lengths=batch.get("lengths"))
        truth = [caps[0] for caps in batch["captions"]]
        texts = pl_module.embed(text_name, truth)
        sim = (audio @ texts.T).float().cpu()
        order = sim.argsort(dim=1, descending=True)
        table = wandb.Table(columns=["key", "audio", "caption", "top1", "top2", "top3", "rank_of_caption", "similarity"])
        keys = batch.get("key") or [str(i) for i in range(len(truth))]
        for row in range(len(truth)):
            ranked = order[row].tolist()
            top = [truth[j] for j in ranked[:3]] + [""] * max(0, 3 - len(ranked))
            wave = batch[name][row].detach().float().cpu().numpy()
            table.add_data(keys[row], wandb.Audio(wave.T, sample_rate=rate), truth[row], *top[:3],
                           ranked.index(row) + 1, float(sim[row, row]))
        return table

    def _separation_examples(self, pl_module, batch: dict[str, Any]) -> dict[str, Any]:
        condition = pl_module.condition(batch, getattr(pl_module, "eval_query", "both"))
        estimate = pl_module(batch["mixture"], condition).waveform
        rate = int(getattr(pl_module.model.separator, "sample_rate", 32000))
        positive = batch.get("positive_text") or [""] * len(estimate)
        negative = batch.get("negative_text") or [""] * len(estimate)
        captions = [f"+{p!r} -{n!r}" for p, n in zip(positive, negative)]
        payload = self._media("mixture", batch["mixture"], rate, captions)
        if "target" in batch:
            payload.update(self._media("target", batch["target"], rate, captions))
        payload.update(self._media("estimate", estimate, rate, captions))
        return payload

    # --- zero-shot confusion -------------------------------------------------------------------
    @staticmethod
    def _single_labels(batch: dict[str, Any]) -> torch.Tensor | None:
        label = batch.get("label")
        if isinstance(label, torch.Tensor) and label.dim() == 1 and not label.is_floating_point():
            return label
        return None

    @staticmethod
    def _class_names(trainer: pl.Trainer, dataloader_idx: int) -> list[str] | None:
        """The datamodule's ``class_names`` for a dataloader (shared list, list of lists or dict)."""
        from clapkit.datamodules.base import class_names_for

        return class_names_for(getattr(getattr(trainer, "datamodule", None), "class_names", None), dataloader_idx)

    def _accumulate_zeroshot(self, trainer, pl_module, batch: dict[str, Any], dataloader_idx: int) -> None:
        name, _ = self._audio_setup(pl_module)
        names = self._class_names(trainer, dataloader_idx)
        if name is None or name not in batch or names is None or not hasattr(pl_module, "zeroshot_classifier"):
            return
        if self._classifier is None:
            self._classifier = pl_module.zeroshot_classifier(names)
        audio = pl_module.embed(name, batch[name], lengths=batch.get("lengths"))
        self._preds.append((audio @ self._classifier.T).argmax(dim=1).cpu())
        self._labels.append(self._single_labels(batch).cpu())
        self._labelled_batches += 1
