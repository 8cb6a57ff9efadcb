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
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric

from clapkit.encoders.separation.query import QueryNetwork, build_condition, interpolate_queries
from clapkit.encoders.separation.separator import CLAPSep, SeparationOutput
from clapkit.io.checkpoint import compact_buffers
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
        export_dir: after ``fit``, save the trained task here in clapkit's native format (the
            ``--model`` of ``clapkit separate``), using the LightningCLI ``config.yaml`` of the run.
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
        self.save_hyperparameters(ignore=["separator", "query", "optimizer", "scheduler"])
        if len(query_probs) != 3 or min(query_probs) < 0 or sum(query_probs) <= 0:
            raise ValueError(f"query_probs must be 3 non-negative weights (pos, neg, both), got {query_probs}")
        self.query = query
        self.separator = separator
        if separator.encoder is None:
            if not copy_query_encoder:
                raise ValueError("the separator has no encoder and copy_query_encoder is False")
            separator.attach_encoder(copy.deepcopy(query.audio_encoder))
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
        window = separator.window_seconds
        if export_chunk_seconds is None:
            export_chunk_seconds = window if window is not None else 10.0
        elif export_chunk_seconds <= 0 or (window is not None and export_chunk_seconds > window + 1e-9):
            raise ValueError(f"export_chunk_seconds must be in (0, {window:g}] (the separation encoder's "
                             f"window), got {export_chunk_seconds:g}")
        self.export_chunk_seconds = float(export_chunk_seconds)
        compact_buffers(self)
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
        text_emb = self.query.embed_text(list(text)).to(self.device) if text is not None else None
        if audio is None or audio_weight is None:
            return text_emb
        audio_emb = self.query.embed_audio(audio).to(self.device)
        return interpolate_queries(audio_emb, text_emb, audio_weight)

    def condition(self, batch: dict[str, Any], sides: QuerySides, audio_weight: float | None = None) -> torch.Tensor:
        """``normalize(concat(positive, negative))`` for the requested ``sides``."""
        pos = self.embed_side(batch, "positive", audio_weight) if sides in ("positive", "both") else None
        neg = self.embed_side(batch, "negative", audio_weight) if sides in ("negative", "both") else None
        return build_condition(pos, neg)

    def forward(self, mixture: torch.Tensor, condition: torch.Tensor) -> SeparationOutput:
        return self.separator(mixture, condition)

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
    def on_fit_end(self) -> None:
        if self.export_dir and self.trainer.is_global_zero:
            self.export(self.export_dir)

    def export(self, directory: str, model_config: Any = None, overwrite: bool = True, inputs=()) -> None:
        """Save in clapkit's native format (``model_config``: the run's ``config.yaml`` by default).

        ``overwrite`` replaces only a model directory; ``directory`` may not be, contain or lie
        inside one of ``inputs`` (the files the model was read from) or the query CLAP's folder.

        The directory is self-contained: a query network read from a CLAP directory
        (:class:`~clapkit.encoders.separation.PretrainedQueryNetwork`) is copied in as
        ``query_clap/`` without its weights, which this model's ``model.safetensors`` holds.
        """
        from pathlib import Path

        from clapkit.audio.preprocess import InferenceConfig
        from clapkit.hub.native import model_config_of, save_pretrained

        if model_config is None:
            log_dir = getattr(self.trainer, "log_dir", None) if self._trainer is not None else None
            candidate = Path(log_dir or ".") / "config.yaml"
            if not candidate.is_file():
                raise FileNotFoundError(f"{candidate}: no LightningCLI config to describe the model; pass model_config")
            model_config = candidate
        rate = self.separator.sample_rate
        inference = InferenceConfig(sample_rate=rate, clip_samples=int(round(self.export_chunk_seconds * rate)),
                                    pad="pad", crop="start")
        tree = model_config_of(self, model_config)
        clap_dir = getattr(self.query, "path", None)
        assets = None
        if clap_dir is not None:
            assets = {"query_clap": clap_dir}
            tree["init_args"]["query"].setdefault("init_args", {})["load_weights"] = False
        save_pretrained(self, directory, inference, tree, assets=assets, overwrite=overwrite, inputs=inputs)


