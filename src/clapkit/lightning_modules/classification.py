"""Supervised classification of one encoder's embedding: taggers, fine-tuning and linear probes.

One module covers the supervised uses of an encoder:

- **multi-label tagging** (AudioSet): a sigmoid per class, binary cross-entropy, macro mAP;
- **single-label classification** (ESC-50, UrbanSound8K): softmax cross-entropy, accuracy;
- **linear probe**: ``freeze_encoder=True`` keeps the encoder in eval mode with no gradients and
  trains only the linear head, the standard way to score a frozen representation.

The encoder reads ``batch[input_key]`` (``"audio"`` by default; any tensor key works, for
example a multi-channel FOA batch) and the targets come from ``batch[label_key]``: ``int64
[B]`` class indices, or ``float [B, K]`` multi-hot targets when ``multi_label`` is set.
An encoder auxiliary loss (``EncoderOutput.extras["aux_loss"]``, e.g. ESResNeXt's FBSP
regulariser) is added to the objective with weight ``aux_loss_weight``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MultilabelAUROC,
    MultilabelAveragePrecision,
)

from clapkit.datamodules.base import is_empty_batch
from clapkit.encoders.classifier import Classifier
from clapkit.lightning_modules.base import BaseTask


def _default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)


class ClassificationTask(BaseTask):
    """Train a linear head (and optionally the encoder) to predict labels from an embedding.

    The encoder and head are the task's :attr:`model`, a :class:`~clapkit.encoders.classifier.Classifier`
    built from the arguments it takes (``encoder``, ``num_classes``, ``multi_label``, ``use_head``,
    ``head_dropout``, ``head``, ``input_key``, ``pass_lengths``, ``class_names``); the task keeps
    the loss, metrics and optimisation.

    Args:
        encoder: any clapkit encoder returning an ``EncoderOutput`` (audio, image or text);
            in YAML a ``class_path`` with ``init_args``.
        num_classes: number of classes ``K``.
        multi_label: ``True`` for multi-hot targets (BCE, mAP), ``False`` for class indices
            (cross-entropy, accuracy).
        freeze_encoder: linear probe: encoder frozen (no gradients, eval mode, BatchNorm
            statistics untouched); only the head trains.
        use_head: add ``Linear(encoder.output_dim, num_classes)``. ``False`` uses the
            encoder's embedding as the logits (it must then be ``num_classes`` wide, e.g. an
            ESResNeXt built with ``output_dim=527`` as the reference AudioSet tagger).
        head_dropout: dropout before the head.
        head: a custom head ``embedding -> logits`` replacing the linear one (``use_head`` is
            then ignored), e.g. :class:`~clapkit.encoders.prompt_head.TextPromptClassifier`
            for AudioCLIP's fine-tuning against class-name text embeddings. A head with
            ``set_class_names`` and no class names gets the datamodule's ``class_names``.
        input_key: batch key fed to the encoder.
        label_key: batch key of the targets.
        pass_lengths: also pass ``lengths=batch["lengths"]`` to the encoder when present
            (audio encoders accept it).
        aux_loss_weight: weight of ``extras["aux_loss"]`` from the encoder, when present.
        label_smoothing: single-label cross-entropy label smoothing.
        optimizer: a callable ``params -> Optimizer`` (YAML: ``class_path`` of a torch
            optimizer with its ``init_args``). Default AdamW(lr 1e-4, weight decay 0.01).
        scheduler: optional callable ``optimizer -> LR scheduler``, stepped per epoch.
        scheduler_monitor: metric a ``ReduceLROnPlateau`` scheduler watches.
        class_names: the ``num_classes`` class names, kept with the model (what
            :meth:`~clapkit.inference.tagger.TaggerModel.classify` reports).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        multi_label: bool = False,
        freeze_encoder: bool = False,
        use_head: bool = True,
        head_dropout: float = 0.0,
        head: nn.Module | None = None,
        input_key: str = "audio",
        label_key: str = "label",
        pass_lengths: bool = False,
        aux_loss_weight: float = 1.0,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = _default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_monitor: str = "val/loss",
        class_names: list[str] | None = None,
    ):
        super().__init__()
        self.save_config_hyperparameters(modules=["encoder", "head"], ignore=["optimizer", "scheduler"])
        if freeze_encoder and not use_head and head is None:
            raise ValueError("freeze_encoder=True with use_head=False leaves nothing to train")
        #: The encoder and its class head (:class:`~clapkit.encoders.classifier.Classifier`).
        self.model: Classifier = self.model_from_arguments(Classifier, locals())
        self.freeze_encoder = freeze_encoder
        self.label_key = label_key
        self.aux_loss_weight = aux_loss_weight
        self.label_smoothing = label_smoothing
        self.scheduler_monitor = scheduler_monitor
        self.set_optimization(optimizer, scheduler, monitor=scheduler_monitor, interval="epoch")
        if freeze_encoder:
            self.model.encoder.requires_grad_(False)
            self.model.encoder.eval()
        self.metrics = nn.ModuleDict({stage: self._make_metrics() for stage in ("val", "test")})
        self._updated: set[str] = set()

    @property
    def num_classes(self) -> int:
        """Number of classes ``K`` (the model's)."""
        return self.model.num_classes

    @property
    def multi_label(self) -> bool:
        """Multi-hot targets (the model's setting)."""
        return self.model.multi_label

    def setup(self, stage: str) -> None:
        head = self.model.head
        if getattr(head, "set_class_names", None) is None or getattr(head, "class_names", None):
            return
        names = getattr(getattr(self.trainer, "datamodule", None), "class_names", None)
        if not names:
            raise ValueError(f"{type(head).__name__} needs class names: pass them to the head or use a "
                             "datamodule with class_names")
        if len(names) != self.num_classes:
            raise ValueError(f"the datamodule has {len(names)} classes but num_classes is {self.num_classes}")
        head.set_class_names(list(names))

    def _make_metrics(self) -> MetricCollection:
        if self.multi_label:
            return MetricCollection(
                {
                    "mAP": MultilabelAveragePrecision(self.num_classes, average="macro"),
                    "AUROC": MultilabelAUROC(self.num_classes, average="macro"),
                }
            )
        metrics: dict[str, Any] = {"acc": MulticlassAccuracy(self.num_classes, average="micro")}
        if self.num_classes >= 5:
            metrics["acc_top5"] = MulticlassAccuracy(self.num_classes, top_k=5, average="micro")
        return MetricCollection(metrics)

    # --- forward -----------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoder:
            # a probe must not update BatchNorm running statistics or apply dropout in the encoder
            self.model.encoder.eval()
        return self

    def encode(self, batch: dict[str, Any]):
        """The encoder's ``EncoderOutput`` for a batch (no grad when frozen)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            return self.model.encode(batch)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Logits ``[B, K]``."""
        return self.model.head(self.encode(batch).embedding)

    def _step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.encode(batch)
        logits = self.model.head(out.embedding).float()
        target = batch[self.label_key]
        if self.multi_label:
            loss = F.binary_cross_entropy_with_logits(logits, target.float())
        else:
            loss = F.cross_entropy(logits, target.long(), label_smoothing=self.label_smoothing)
        aux = out.extras.get("aux_loss") if out.extras else None
        if aux is not None and not self.freeze_encoder and self.aux_loss_weight:
            loss = loss + self.aux_loss_weight * aux
        return loss, logits, target

    # --- Lightning hooks -----------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if is_empty_batch(batch):
            return None  # Lightning skips the optimizer step
        loss, logits, target = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        if not self.multi_label:
            acc = (logits.argmax(-1) == target).float().mean()
            self.log("train/acc", acc, batch_size=logits.shape[0])
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        if is_empty_batch(batch):
            return
        loss, logits, target = self._step(batch)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=logits.shape[0], sync_dist=True)
        if self.multi_label:
            self.metrics[stage].update(torch.sigmoid(logits), target.long())
        else:
            self.metrics[stage].update(logits, target.long())
        self._updated.add(stage)

    def _eval_epoch_end(self, stage: str) -> None:
        if stage not in self._updated:
            return
        self._updated.discard(stage)
        values = self.metrics[stage].compute()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=True, sync_dist=False)
        self.metrics[stage].reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        logits = self(batch).float()
        probs = torch.sigmoid(logits) if self.multi_label else logits.softmax(-1)
        return {"key": batch.get("key"), "probs": probs}

