"""``SeparationTask``: train and evaluate a query-conditioned separator (CLAPSep).

Each training step embeds the positive (target) and negative (interferer) queries with the
frozen query network, mixing audio and text embeddings as ``a * audio + (1 - a) * text`` with
``a ~ U(0, 1)`` when the batch carries query audio, draws which sides the step conditions on
(positive only, negative only, both: probabilities ``query_probs``, CLAPSep .25/.25/.5; a
missing side is zeros) and minimises ``-(w * SNR + (1 - w) * SI-SNR)`` of the estimate.

Validation and test use text queries (``eval_query`` picks the sides) and report, per
mixture and averaged: ``sdri`` (BSS-eval style SDR improvement, torchmetrics), ``si_sdri``,
``snri`` and the absolute ``sdr``, ``si_sdr``, ``snr``. Batches come from
:class:`~clapkit.datamodules.mixtures.MixtureDataModule`: ``mixture`` and ``target``
``[B, T]``, ``positive_text`` / ``negative_text`` lists and optionally ``positive_audio`` /
``negative_audio`` ``[B, T_q]`` at the query network's rate.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric

from clapkit.audio.preprocess import InferenceConfig
from clapkit.encoders.separation.network import SeparationNetwork
from clapkit.encoders.separation.query import QueryNetwork, build_condition, interpolate_queries
from clapkit.encoders.separation.separator import CLAPSep, SeparationOutput
from clapkit.lightning_modules.base import BaseTask
from clapkit.lightning_modules.sep_metrics import METRICS, separation_loss, separation_metrics

QuerySides = Literal["both", "positive", "negative"]
_SIDES: tuple[QuerySides, ...] = ("positive", "negative", "both")


def _default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4)


def _default_scheduler(optimizer: torch.optim.Optimizer):
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.3, patience=5, min_lr=5e-6)


class SeparationTask(BaseTask):
    """Query-conditioned target sound extraction.

    The separator and query network are the task's :attr:`model`, a
    :class:`~clapkit.encoders.separation.network.SeparationNetwork` (which also carries the
    chunking ``clapkit separate`` uses, from ``export_chunk_seconds``); the task keeps the loss,
    the query sampling, the metrics and the optimisation.

    Args:
        separator: the separation network (:class:`~clapkit.encoders.separation.CLAPSep`).
        query: the frozen query network (a CLAP's audio and text towers).
        copy_query_encoder: when the separator has no encoder, give it a copy of the query
            network's audio encoder (CLAPSep initialises its tuned HTSAT from the CLAP).
        snr_weight: ``w`` in the loss ``-(w * SNR + (1 - w) * SI-SNR)``.
        query_probs: probabilities of conditioning a training step on the positive query only,
            the negative only, or both.
        interpolate_audio: with query audio in the batch, mix audio and text embeddings with a
            random weight per step (otherwise text only).
        eval_query: sides used in validation and test.
        compute_sdr: also compute BSS-style SDR(i) in evaluation (float64; the slowest metric).
        optimizer: callable ``params -> Optimizer`` (default AdamW, lr 1e-4).
        scheduler: callable ``optimizer -> scheduler`` (default ReduceLROnPlateau on
            ``monitor``, x0.3, patience 5 epochs, floor 5e-6); ``None`` for a constant rate.
        monitor: metric the plateau scheduler maximises.
        scheduler_interval: step the scheduler every ``epoch`` (default, the plateau scheduler)
            or every optimiser ``step`` (a schedule over a step budget, e.g. the quick start's
            cosine decay over ``trainer.max_steps``).
        export_dir: after ``fit``, save the trained :attr:`model` here in clapkit's native format
            (the ``--model`` of ``clapkit separate``), described by the config the run was built from.
        export_chunk_seconds: chunk length ``clapkit separate`` uses with the exported model;
            ``None`` (default): the separation encoder's window (``clip_samples`` at its rate:
            10 s for CLAPSep, the training window of the quick start). Longer than that window
            is refused, since the encoder cannot take it.
    """

    def __init__(
        self,
        separator: CLAPSep,
        query: QueryNetwork,
        copy_query_encoder: bool = True,
        snr_weight: float = 0.9,
        query_probs: tuple[float, float, float] = (0.25, 0.25, 0.5),
        interpolate_audio: bool = True,
        eval_query: QuerySides = "both",
        compute_sdr: bool = True,
        optimizer: OptimizerCallable = _default_optimizer,
        scheduler: LRSchedulerCallable | None = _default_scheduler,
        monitor: str = "val/si_sdri",
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        export_dir: str | None = None,
        export_chunk_seconds: float | None = None,
    ):
        super().__init__()
        self.save_config_hyperparameters(modules=["separator", "query"], ignore=["optimizer", "scheduler"])
        if len(query_probs) != 3 or min(query_probs) < 0 or sum(query_probs) <= 0:
            raise ValueError(f"query_probs must be 3 non-negative weights (pos, neg, both), got {query_probs}")
        #: The separator and its query network (:class:`~clapkit.encoders.separation.network.SeparationNetwork`).
        self.model: SeparationNetwork = self.model_from_arguments(SeparationNetwork, locals())
        self.snr_weight = snr_weight
        probs = torch.tensor(query_probs, dtype=torch.float)
        self.query_probs = (probs / probs.sum()).tolist()
        self.interpolate_audio = interpolate_audio
        self.eval_query = eval_query
        self.compute_sdr = compute_sdr
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        self.set_optimization(optimizer, scheduler, monitor=monitor, interval=scheduler_interval)
        self.export_dir = export_dir
        window = self.model.separator.window_seconds
        if export_chunk_seconds is None:
            export_chunk_seconds = window if window is not None else 10.0
        elif export_chunk_seconds <= 0 or (window is not None and export_chunk_seconds > window + 1e-9):
            raise ValueError(f"export_chunk_seconds must be in (0, {window:g}] (the separation encoder's "
                             f"window), got {export_chunk_seconds:g}")
        self.export_chunk_seconds = float(export_chunk_seconds)
        rate = self.model.separator.sample_rate
        # What `clapkit separate` cuts inputs into: part of the model a directory stores.
        self.model.inference = InferenceConfig(sample_rate=rate, clip_samples=int(round(self.export_chunk_seconds * rate)),
                                               pad="pad", crop="start")
        names = [n for n in METRICS if compute_sdr or n != "sdr"]
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict({key: MeanMetric() for n in names for key in (n, f"{n}i")})
                for stage in ("val", "test")
            }
        )

    # --- queries -----------------------------------------------------------------------------
    def embed_side(self, batch: dict[str, Any], side: str, audio_weight: float | None) -> torch.Tensor | None:
        """Embedding of one query side from ``{side}_text`` and/or ``{side}_audio``."""
        text = batch.get(f"{side}_text")
        audio = batch.get(f"{side}_audio")
        text_emb = self.model.query.embed_text(list(text)).to(self.device) if text is not None else None
        if audio is None or audio_weight is None:
            return text_emb
        audio_emb = self.model.query.embed_audio(audio).to(self.device)
        return interpolate_queries(audio_emb, text_emb, audio_weight)

    def condition(self, batch: dict[str, Any], sides: QuerySides, audio_weight: float | None = None) -> torch.Tensor:
        """``normalize(concat(positive, negative))`` for the requested ``sides``."""
        pos = self.embed_side(batch, "positive", audio_weight) if sides in ("positive", "both") else None
        neg = self.embed_side(batch, "negative", audio_weight) if sides in ("negative", "both") else None
        return build_condition(pos, neg)

    def forward(self, mixture: torch.Tensor, condition: torch.Tensor) -> SeparationOutput:
        return self.model(mixture, condition)

    # --- steps -------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        sides = _SIDES[int(torch.multinomial(torch.tensor(self.query_probs), 1))]
        has_audio = "positive_audio" in batch or "negative_audio" in batch
        weight = float(torch.rand(())) if (has_audio and self.interpolate_audio) else None
        out = self(batch["mixture"], self.condition(batch, sides, weight))
        loss = separation_loss(out.waveform, batch["target"], self.snr_weight)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["mixture"].shape[0])
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> dict[str, torch.Tensor]:
        out = self(batch["mixture"], self.condition(batch, self.eval_query))
        values = self._metric_values(out.waveform, batch["mixture"], batch["target"])
        for name, value in values.items():
            self.metrics[stage][name].update(value)
        return values

    def _metric_values(self, estimate, mixture, target) -> dict[str, torch.Tensor]:
        names = [n for n in METRICS if self.compute_sdr or n != "sdr"]
        return separation_metrics(estimate, mixture, target, names=names)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_epoch(self, stage: str) -> None:
        for name, metric in self.metrics[stage].items():
            if metric.update_count:
                self.log(f"{stage}/{name}", metric.compute(), prog_bar=name == "si_sdri", sync_dist=False)
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        out = self(batch["mixture"], self.condition(batch, self.eval_query))
        return {"key": batch.get("key"), "waveform": out.waveform}

    # --- export ------------------------------------------------------------------------------
    def saved_model_config(self, task_config: dict[str, Any] | None = None) -> dict[str, Any]:
        """:meth:`BaseTask.saved_model_config`, with a query network that reads its weights from a CLAP
        directory told not to: a saved model's ``model.safetensors`` holds them."""
        tree = copy.deepcopy(super().saved_model_config(task_config))
        query = tree["init_args"].get("query")
        if isinstance(query, dict) and "load_weights" in inspect.signature(type(self.model.query)).parameters:
            query.setdefault("init_args", {})["load_weights"] = False
        return tree

    def on_fit_end(self) -> None:
        if self.export_dir and self.trainer.is_global_zero:
            from clapkit.hub.native import save_pretrained

            save_pretrained(self.model, self.export_dir, self.model.inference, self.saved_model_config(), overwrite=True)
