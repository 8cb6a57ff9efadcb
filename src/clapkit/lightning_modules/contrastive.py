"""``ContrastiveTask``: one LightningModule for CLAP (two towers), AudioCLIP (three) and friends.

Training
    The module holds named towers (:class:`~clapkit.encoders.tower.Tower`) and the list of
    pairs to contrast. A tower called ``name`` reads ``batch[name]``; audio towers also get
    ``lengths=batch.get("lengths")``. Each pair has its own learnable logit scale (stored in
    log space, clamped). The loss of a pair is symmetric InfoNCE over the *global* batch
    (features gathered with gradients across ranks, see
    :mod:`clapkit.lightning_modules.losses`); pairs whose inputs are missing from a batch are
    skipped, and the losses of present pairs are reduced by ``pair_reduction`` (see
    :data:`PAIR_REDUCTIONS`).
    ``frozen`` towers (or sub-modules, e.g. ``text.encoder``) are teachers: eval mode, no
    gradients, not in the optimiser.

Evaluation protocol (validation and test; datamodules follow this to get metrics)
    Every val/test batch is a dict as in :mod:`clapkit.datamodules.base`:

    - ``batch[a]`` (``a`` = ``eval_towers[0]``, default ``"audio"``) and ``"lengths"``: the clips.
    - ``"key"``: ``list[str]``, unique per clip. Needed to drop the copies a distributed sampler
      adds; without keys no de-duplication happens.
    - ``"captions"``: ``list[list[str]]`` (any number per clip) -> **retrieval** in both
      directions: ``a2t_R@{1,5,10}``, ``a2t_mAP@10``, ``a2t_medR``, ``a2t_meanR`` and the same
      for ``t2a`` (see :mod:`clapkit.lightning_modules.metrics` for the exact definitions).
    - ``"label"``: ``int64 [B]`` -> **zero-shot single-label** (``zeroshot_top1``,
      ``zeroshot_top5``); ``float [B, K]`` multi-hot -> **zero-shot multi-label**
      (``zeroshot_mAP``). Class names come from the datamodule: ``class_names`` is a
      ``list[str]`` shared by all labelled eval dataloaders, or a ``list``/``dict`` of such
      lists indexed by dataloader index. Each class is embedded through every prompt template
      (``"This is a sound of {}."`` by default); several templates form a prompt ensemble (mean
      of the normalised text embeddings, renormalised).
    - A batch that also holds every input of a pair (e.g. ``"text"``) adds ``{stage}/loss``.

    Embeddings are gathered from all ranks once at epoch end. Metrics are logged as
    ``{stage}/{metric}`` (``val/zeroshot_top1``, ``val/t2a_R@1``, ...). When several eval
    dataloaders produce the same metric, the datamodule's ``eval_set_names`` (one name per
    dataloader) or else the dataloader index is appended: ``val/t2a_R@1/clotho``. The results
    and their chance levels are also kept in :attr:`ContrastiveTask.eval_results`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from clapkit.datamodules.base import class_names_for, is_empty_batch
from clapkit.encoders.base import AudioEncoder, TextEncoder, module_device
from clapkit.encoders.text_cache import TextCache
from clapkit.encoders.tower import Tower
from clapkit.lightning_modules.base import BaseTask
from clapkit.lightning_modules.evaluation import ConsolidatedSet, EvalSet
from clapkit.lightning_modules.losses import contrastive_loss
from clapkit.lightning_modules.metrics import (
    retrieval_chance,
    retrieval_metrics,
    zeroshot_multi_label,
    zeroshot_single_label,
)

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)


@dataclass
class ContrastiveStepOutput:
    """What :meth:`ContrastiveTask.compute_loss` returns.

    Attributes:
        loss: reduced loss over the pairs present in the batch.
        pair_losses: loss of each present pair, keyed ``"a__b"``.
        embeddings: normalised embedding of every tower that ran, keyed by tower name.
        batch_size: rows in this rank's batch.
    """

    loss: torch.Tensor
    pair_losses: dict[str, torch.Tensor]
    embeddings: dict[str, torch.Tensor]
    batch_size: int


@dataclass
class WarmupCosine:
    """LR multiplier: linear warmup to 1 over ``warmup`` steps, then cosine to ``floor``.

    A dataclass rather than a lambda so the scheduler state stays picklable in checkpoints.

    Attributes:
        warmup: warmup steps.
        total: total optimizer steps (the cosine ends there; 0 or less keeps 1 after warmup).
        floor: final multiplier.
    """

    warmup: int
    total: int
    floor: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if self.total <= self.warmup:
            return 1.0
        progress = min(1.0, (step - self.warmup) / (self.total - self.warmup))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _audioclip_reduction(pair_losses: torch.Tensor) -> torch.Tensor:
    # The reference (AudioCLIP ``loss_fn``) adds ``ce(a->b) + ce(b->a)`` over the present pairs
    # and divides by ``n!`` for ``n`` present pairs: the mean over the three pairs of their
    # symmetric means when all three are present, their sum when two are.
    return 2.0 * pair_losses.sum() / math.factorial(pair_losses.numel())


#: How ``ContrastiveTask`` combines the symmetric losses (``(ce(a->b) + ce(b->a)) / 2``) of the
#: pairs present in a batch: ``mean`` (CLAP), ``sum``, or ``audioclip`` (the AudioCLIP
#: reference's rule, exactly).
PAIR_REDUCTIONS = {
    "mean": torch.mean,
    "sum": torch.sum,
    "audioclip": _audioclip_reduction,
}


def pair_key(a: str, b: str) -> str:
    """Name of a pair in ``logit_scales`` and in logs: ``"audio__text"``."""
    return f"{a}__{b}"


class ContrastiveTask(BaseTask):
    """Contrastive training of named towers, with retrieval and zero-shot evaluation built in.

    Args:
        towers: named towers; each reads ``batch[name]`` (``audio``, ``text``, ``image``).
        pairs: tower pairs to contrast, each with its own logit scale.
        frozen: towers (``"text"``) or sub-modules (``"text.encoder"``) to freeze: eval mode,
            ``requires_grad=False``, left out of the optimiser.
        local_loss: with several processes, compute each rank's rows against all gathered
            columns instead of the full global matrix (same gradients, less memory).
        pair_reduction: combine pair losses by ``mean`` (CLAP), ``sum``, or ``audioclip``
            (the AudioCLIP reference: summed two-way cross-entropies over ``n!`` for ``n``
            present pairs, i.e. the mean of the three pairs' symmetric losses).
        logit_scale_init: initial inverse temperature of every pair (stored as its log).
        logit_scale_min: lower clamp of the inverse temperature.
        logit_scale_max: upper clamp of the inverse temperature.
        learn_logit_scale: train the logit scales (``False`` keeps them at their init value).
        lr: peak learning rate (AdamW).
        weight_decay: decoupled weight decay; never applied to norms, biases, other 1-d
            parameters or logit scales.
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_steps: linear warmup length: an ``int`` number of optimiser steps, or a
            ``float`` below 1 read as a fraction of all training steps.
        min_lr_ratio: the cosine schedule ends at ``lr * min_lr_ratio``.
        prompt_templates: zero-shot prompts with one ``{}`` for the class name; several form a
            prompt ensemble.
        eval_towers: ``(audio tower, text tower)`` used for retrieval and zero-shot evaluation.
        text_batch_size: texts embedded per forward during evaluation (captions, prompts).
        text_cache_size: remember the encoder output of a *frozen* text encoder (``frozen``
            lists the tower or its ``encoder``) for up to this many distinct strings; ``0``
            turns it off. Exact, since a frozen encoder in eval mode is deterministic, and a
            large saving when captions repeat (templated labels, small corpora, prompts).
        optimizer: ``params -> Optimizer`` (in YAML: ``class_path: torch.optim.SGD`` with its
            ``init_args``), given the two parameter groups of :meth:`parameter_groups` (each
            with its weight decay). ``None``: AdamW with ``lr``, ``betas``, ``eps``.
        scheduler: ``optimizer -> LR scheduler``, stepped every optimiser step. ``None``: linear
            warmup over ``warmup_steps`` then cosine to ``lr * min_lr_ratio``.
    """

    def __init__(
        self,
        towers: dict[str, Tower],
        pairs: Sequence[tuple[str, str]] = (("audio", "text"),),
        frozen: Sequence[str] = (),
        local_loss: bool = False,
        pair_reduction: Literal["mean", "sum", "audioclip"] = "mean",
        logit_scale_init: float = 1 / 0.07,
        logit_scale_min: float = 1.0,
        logit_scale_max: float = 100.0,
        learn_logit_scale: bool = True,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        warmup_steps: int | float = 0,
        min_lr_ratio: float = 0.0,
        prompt_templates: Sequence[str] = ("This is a sound of {}.",),
        eval_towers: tuple[str, str] = ("audio", "text"),
        text_batch_size: int = 256,
        text_cache_size: int = 0,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
    ):
        super().__init__()
        # From a config the towers are kept as their class_path trees (load_from_checkpoint rebuilds
        # the model from them); built in Python they are modules, whose weights the checkpoint stores.
        self.save_config_hyperparameters(modules=["towers"], ignore=["optimizer", "scheduler"])
        self.set_optimization(optimizer, scheduler, interval="step")
        if not pairs:
            raise ValueError("ContrastiveTask needs at least one pair of towers to contrast")
        for a, b in pairs:
            for name in (a, b):
                if name not in towers:
                    raise ValueError(f"pair ({a!r}, {b!r}) names tower {name!r}; towers are {sorted(towers)}")
        if not 0 < logit_scale_min <= logit_scale_init <= logit_scale_max:
            raise ValueError(
                f"need 0 < logit_scale_min <= logit_scale_init <= logit_scale_max, got "
                f"{logit_scale_min}, {logit_scale_init}, {logit_scale_max}"
            )
        if pair_reduction not in PAIR_REDUCTIONS:
            raise ValueError(f"pair_reduction must be one of {', '.join(PAIR_REDUCTIONS)}, not {pair_reduction!r}")
        if not prompt_templates or any("{}" not in t for t in prompt_templates):
            raise ValueError("prompt_templates need a '{}' placeholder for the class name")
        self.towers = nn.ModuleDict(towers)
        self.pairs = [(str(a), str(b)) for a, b in pairs]
        self.logit_scales = nn.ParameterDict(
            {
                pair_key(a, b): nn.Parameter(
                    torch.tensor(math.log(logit_scale_init)), requires_grad=learn_logit_scale
                )
                for a, b in self.pairs
            }
        )
        self.log_scale_bounds = (math.log(logit_scale_min), math.log(logit_scale_max))
        self.frozen = list(frozen)
        for path in self.frozen:
            self._frozen_module(path).requires_grad_(False).eval()
        self.local_loss = local_loss
        self.pair_reduction = pair_reduction
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, tuple(betas), eps
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio
        self.prompt_templates = list(prompt_templates)
        self.eval_towers = tuple(eval_towers)
        self.text_batch_size = text_batch_size
        self.text_cache_size = text_cache_size
        self._text_cache: dict[str, TextCache] = {
            name: TextCache(text_cache_size)
            for name, tower in self.towers.items()
            if isinstance(tower.encoder, TextEncoder) and (name in self.frozen or f"{name}.encoder" in self.frozen)
        }
        self._eval_sets: dict[int, EvalSet] = {}
        self.eval_results: dict[str, dict[str, float]] = {}

    def _frozen_module(self, path: str) -> nn.Module:
        try:
            return self.towers.get_submodule(path)
        except AttributeError:
            raise ValueError(
                f"frozen entry {path!r} is not a tower or a sub-module of one; towers are {sorted(self.towers)}"
            ) from None

    # ------------------------------------------------------------------ model
    def train(self, mode: bool = True) -> ContrastiveTask:
        """Switch train/eval mode; frozen towers stay in eval mode (BatchNorm, dropout)."""
        super().train(mode)
        for path in getattr(self, "frozen", ()):
            self._frozen_module(path).eval()
        return self

    def logit_scale(self, a: str, b: str) -> torch.Tensor:
        """Clamped inverse temperature of pair ``(a, b)``."""
        low, high = self.log_scale_bounds
        return self.logit_scales[pair_key(a, b)].clamp(low, high).exp()

    def _run_tower(self, name: str, inputs: Any, lengths: torch.Tensor | None = None) -> torch.Tensor:
        tower = self.towers[name]
        kwargs = {"lengths": lengths} if isinstance(tower.encoder, AudioEncoder) else {}
        return self.embed(name, inputs, **kwargs)

    def embed(self, name: str, inputs: Any, **kwargs) -> torch.Tensor:
        """L2-normalised embeddings of ``inputs`` from tower ``name`` (waveforms, texts, images).

        Args:
            name: tower name.
            inputs: what the tower's encoder takes (``[B, T]`` waveforms, ``list[str]``, ...).
            **kwargs: passed to the tower (``lengths`` for audio).
        """
        tower = self.towers[name]
        if self.text_cache_size > 0 and name in self._text_cache and isinstance(inputs, (list, tuple)):
            embedding = tower.projection(self._cached_text_features(name, list(inputs)))
        else:
            embedding = tower(inputs, **kwargs).embedding
            if getattr(tower, "normalize", False):
                return embedding  # the tower normalised it already
        return F.normalize(embedding, dim=-1)

    @torch.no_grad()
    def _cached_text_features(self, name: str, texts: list[str]) -> torch.Tensor:
        encoder = self.towers[name].encoder
        return self._text_cache[name](texts, lambda chunk: encoder(chunk).embedding,
                                      batch_size=self.text_batch_size, device=module_device(encoder))

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Normalised embeddings of every tower whose input is in ``batch``."""
        return {
            name: self._run_tower(name, batch[name], batch.get("lengths"))
            for name in self.towers
            if name in batch
        }

    def compute_loss(self, batch: dict[str, Any], gather: bool = True) -> ContrastiveStepOutput:
        """Embed the towers the present pairs need and reduce their symmetric InfoNCE losses.

        Args:
            batch: batch dict; pairs with a missing input are skipped.
            gather: contrast against the global batch of all ranks (training); ``False``
                contrasts within this rank's batch (validation loss).
        """
        present = [(a, b) for a, b in self.pairs if a in batch and b in batch]
        if not present:
            raise ValueError(
                f"batch has none of the pairs {self.pairs} (keys: {sorted(batch)})"
            )
        needed = dict.fromkeys(name for pair in present for name in pair)
        embeddings = {name: self._run_tower(name, batch[name], batch.get("lengths")) for name in needed}
        pair_losses = {
            pair_key(a, b): contrastive_loss(
                embeddings[a], embeddings[b], self.logit_scale(a, b), local_loss=self.local_loss, gather=gather
            ).loss
            for a, b in present
        }
        stacked = torch.stack(list(pair_losses.values()))
        loss = PAIR_REDUCTIONS[self.pair_reduction](stacked)
        batch_size = next(iter(embeddings.values())).shape[0]
        return ContrastiveStepOutput(loss=loss, pair_losses=pair_losses, embeddings=embeddings, batch_size=batch_size)

    # --------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if is_empty_batch(batch):
            return None  # Lightning skips the optimizer step
        out = self.compute_loss(batch, gather=True)
        self.log("train/loss", out.loss, prog_bar=True, batch_size=out.batch_size)
        for name, value in out.pair_losses.items():
            if len(out.pair_losses) > 1:
                self.log(f"train/loss_{name}", value, batch_size=out.batch_size)
            a, b = name.split("__")
            self.log(f"train/logit_scale_{name}", self.logit_scale(a, b).detach(), batch_size=out.batch_size)
        return out.loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Keep the stored log-scales inside the clamp so momentum cannot park them far outside.
        low, high = self.log_scale_bounds
        with torch.no_grad():
            for param in self.logit_scales.values():
                param.clamp_(low, high)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: decayed weights, and undecayed norms/biases/1-d params/logit scales.

        Frozen parameters (``requires_grad=False``) are left out.
        """
        decay, no_decay, seen = [], [], set()
        scale_ids = {id(p) for p in self.logit_scales.values()}
        for module in self.modules():
            for name, param in module.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                exempt = (
                    isinstance(module, NORM_LAYERS) or param.ndim < 2 or name.endswith("bias") or id(param) in scale_ids
                )
                (no_decay if exempt else decay).append(param)
        return [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def optimizer_parameters(self) -> list[dict[str, Any]]:
        return self.parameter_groups()

    def configure_optimizers(self):
        # One fused kernel per step on CUDA and on the CPU: on a 2-core CPU an update of 175M
        # parameters took 0.55 s with torch's default CPU implementation and 0.14 s fused, next to a
        # ~3 s HTSAT-tiny + RoBERTa-base step (docs/BENCHMARKS.md, "Training step").
        if self.optimizer_factory is not None and self.scheduler_factory is not None:
            return super().configure_optimizers()
        if self.optimizer_factory is not None:
            optimizer = self.optimizer_factory(self.optimizer_parameters())
        else:
            optimizer = torch.optim.AdamW(self.parameter_groups(), lr=self.lr, betas=self.betas, eps=self.eps,
                                          fused=self.device.type in ("cuda", "cpu") or None)
        total = self.trainer.estimated_stepping_batches
        total = int(total) if math.isfinite(total) else 0
        warmup = self.warmup_steps
        if isinstance(warmup, float) and warmup < 1:
            warmup = int(warmup * total)
        schedule = WarmupCosine(warmup=int(warmup), total=total, floor=self.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------- evaluation
    def embed_texts(self, texts: list[str], name: str | None = None) -> torch.Tensor:
        """Embed many texts in chunks of ``text_batch_size`` (normalised ``[N, D]``)."""
        name = name or self.eval_towers[1]
        chunks = [
            self.embed(name, texts[i : i + self.text_batch_size])
            for i in range(0, len(texts), self.text_batch_size)
        ]
        return torch.cat(chunks)

    @torch.no_grad()
    def zeroshot_classifier(self, class_names: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """Normalised class embeddings ``[K, D]`` from the prompt (ensemble) of each class name."""
        templates = list(templates or self.prompt_templates)
        per_template = [
            self.embed_texts([t.format(c) for c in class_names]) for t in templates
        ]
        return F.normalize(torch.stack(per_template).mean(dim=0), dim=-1)

    def _eval_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int, stage: str) -> None:
        if is_empty_batch(batch):
            return
        audio_name, _ = self.eval_towers
        embeddings: dict[str, torch.Tensor] = {}
        if any(a in batch and b in batch for a, b in self.pairs):
            out = self.compute_loss(batch, gather=False)
            self.log(
                f"{stage}/loss{self._set_suffix(dataloader_idx) if dataloader_idx else ''}",
                out.loss, batch_size=out.batch_size, sync_dist=True, add_dataloader_idx=False,
            )
            embeddings = out.embeddings
        if audio_name not in batch or audio_name not in self.towers:
            return
        audio = embeddings.get(audio_name)
        if audio is None:
            audio = self._run_tower(audio_name, batch[audio_name], batch.get("lengths"))
        keys = batch.get("key") or [f"{self.global_rank}/{batch_idx}/{i}" for i in range(audio.shape[0])]
        captions, counts = None, None
        if "captions" in batch and self.eval_towers[1] in self.towers:
            counts = [len(c) for c in batch["captions"]]
            captions = self.embed_texts([c for caps in batch["captions"] for c in caps])
        store = self._eval_sets.setdefault(dataloader_idx, EvalSet())
        store.add(list(keys), audio, captions=captions, caption_counts=counts, labels=batch.get("label"))

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, batch_idx, dataloader_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, batch_idx, dataloader_idx, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        out: dict[str, Any] = dict(self(batch))
        if "key" in batch:
            out["key"] = batch["key"]
        return out

    def on_validation_epoch_start(self) -> None:
        self._eval_sets = {}

    def on_test_epoch_start(self) -> None:
        self._eval_sets = {}

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val")

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    def _datamodule_attr(self, name: str):
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        return getattr(datamodule, name, None)

    def _class_names_for(self, dataloader_idx: int) -> list[str] | None:
        return class_names_for(self._datamodule_attr("class_names"), dataloader_idx)

    def _finish_eval(self, stage: str) -> None:
        sets = {idx: store.consolidate() for idx, store in sorted(self._eval_sets.items())}
        self._eval_sets = {}
        results = {idx: self._evaluate_set(idx, data, stage) for idx, data in sets.items()}
        logged: dict[str, float] = {}
        for idx, metrics in results.items():
            for metric, value in metrics.items():
                shared = sum(metric in other for other in results.values()) > 1
                logged[f"{stage}/{metric}{self._set_suffix(idx) if shared else ''}"] = value
        for name, value in logged.items():
            if "_chance" not in name:  # chance levels are for reports, not for dashboards
                self.log(name, value, sync_dist=True, add_dataloader_idx=False)
        self.eval_results[stage] = logged

    def _set_suffix(self, dataloader_idx: int) -> str:
        names = self._datamodule_attr("eval_set_names")
        return f"/{names[dataloader_idx]}" if names and dataloader_idx < len(names) else f"/{dataloader_idx}"

    def _evaluate_set(self, dataloader_idx: int, data: ConsolidatedSet, stage: str) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if not data.keys:
            return metrics
        audio = data.audio.to(self.device)
        if data.captions is not None and bool((data.caption_counts > 0).all()):
            sim = audio @ data.captions.to(self.device).T
            metrics.update(retrieval_metrics(sim, data.caption_owner))
            chance = retrieval_chance(len(data.keys), data.caption_counts)
            metrics.update({f"{k}_chance": v for k, v in chance.items()})
        if data.labels is not None and self.eval_towers[1] in self.towers:
            class_names = self._class_names_for(dataloader_idx)
            if class_names is None:
                rank_zero_warn(
                    f"{stage} dataloader {dataloader_idx} has labels but the datamodule exposes no "
                    "`class_names`; zero-shot evaluation skipped"
                )
                return metrics
            classes = self.zeroshot_classifier(class_names)
            logits = audio @ classes.T
            labels = data.labels
            if labels.is_floating_point() and labels.dim() == 2:
                scale = self.logit_scale(*self._eval_pair()).detach()
                metrics.update(zeroshot_multi_label(scale * logits, labels))
            else:
                metrics.update(zeroshot_single_label(logits, labels))
                metrics["zeroshot_top1_chance"] = 1.0 / len(class_names)
        return metrics

    def _eval_pair(self) -> tuple[str, str]:
        a, b = self.eval_towers
        if (a, b) in self.pairs:
            return a, b
        if (b, a) in self.pairs:
            return b, a
        raise ValueError(f"eval_towers {self.eval_towers} is not one of the contrasted pairs {self.pairs}")

