"""``AudioCLIPTask``: tri-modal contrastive training (audio, image, text) with AudioCLIP's extras.

A thin :class:`~clapkit.lightning_modules.contrastive.ContrastiveTask` subclass that adds
what AudioCLIP needs beyond CLAP:

- **encoder auxiliary losses**: an encoder may return ``extras["aux_loss"]`` (ESResNeXt's FBSP
  filter-norm regulariser); it is added to the contrastive loss with ``aux_loss_weight`` and
  logged as ``train/aux_loss``. Frozen towers contribute nothing.
- **cross-modal querying** on every evaluation set: for every ordered pair of modalities present
  in the batches (``a2i``, ``i2a``, ``t2a``, ...) P@1, R@1 and mAP
  (:mod:`clapkit.lightning_modules.querying`), logged as ``{stage}/query_{pair}_{metric}``
  (``val/query_a2i_R@1``); chance levels are kept in :attr:`eval_results`. Relevance is
  class-based when the batches have ``"label"``, pairing-based otherwise.

AudioCLIP's defaults: pairs (audio, text), (audio, image), (image, text); logit scales start
at 100 and are clamped to [1, 100]; pair losses are reduced as the reference's ``loss_fn``
does (``pair_reduction="audioclip"``: the mean of the three pairs' symmetric cross-entropies,
the sum of two pairs'), plus the FBSP regulariser with weight 1; zero-shot prompts are the
bare class names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from clapkit.encoders.base import AudioEncoder
from clapkit.encoders.tower import Tower
from clapkit.lightning_modules.contrastive import ContrastiveStepOutput, ContrastiveTask
from clapkit.lightning_modules.evaluation import EvalSet
from clapkit.lightning_modules.querying import cross_modal_querying


class AudioCLIPTask(ContrastiveTask):
    """Contrastive training of audio, image and text towers with FBSP regularisation and querying.

    Args:
        towers: named towers (``audio``, ``image``, ``text``); each reads ``batch[name]``.
        pairs: tower pairs to contrast, each with its own logit scale.
        frozen: towers or sub-modules kept frozen (teachers), e.g. ``["image", "text"]``.
        pair_reduction: ``audioclip`` (the reference's rule), ``mean`` or ``sum``.
        logit_scale_init: initial inverse temperature (AudioCLIP: 100).
        logit_scale_min: lower clamp (AudioCLIP: 1).
        logit_scale_max: upper clamp (AudioCLIP: 100).
        prompt_templates: zero-shot prompts (AudioCLIP embeds bare class names: ``"{}"``).
        aux_loss_weight: weight of the encoders' ``extras["aux_loss"]``.
        querying: compute cross-modal querying metrics in validation and test.
        query_towers: towers used for querying (default: every tower whose input is in the batch).
        **kwargs: further :class:`~clapkit.lightning_modules.contrastive.ContrastiveTask`
            arguments (``lr``, ``weight_decay``, ``warmup_steps``, ``eval_towers``, ...).
    """

    def __init__(
        self,
        towers: dict[str, Tower],
        pairs: Sequence[tuple[str, str]] = (("audio", "text"), ("audio", "image"), ("image", "text")),
        frozen: Sequence[str] = (),
        pair_reduction: Literal["mean", "sum", "audioclip"] = "audioclip",
        logit_scale_init: float = 100.0,
        logit_scale_min: float = 1.0,
        logit_scale_max: float = 100.0,
        prompt_templates: Sequence[str] = ("{}",),
        aux_loss_weight: float = 1.0,
        querying: bool = True,
        query_towers: Sequence[str] | None = None,
        **kwargs: Any,
    ):
        super().__init__(
            towers=towers,
            pairs=pairs,
            frozen=frozen,
            pair_reduction=pair_reduction,
            logit_scale_init=logit_scale_init,
            logit_scale_min=logit_scale_min,
            logit_scale_max=logit_scale_max,
            prompt_templates=prompt_templates,
            **kwargs,
        )
        self.aux_loss_weight = aux_loss_weight
        self.querying = querying
        self.query_towers = list(query_towers) if query_towers is not None else None
        self._aux_losses: dict[str, torch.Tensor] = {}
        self._embedded: dict[str, torch.Tensor] = {}
        self._query_sets: dict[tuple[int, str], EvalSet] = {}
        self._last_aux: torch.Tensor | None = None

    # ------------------------------------------------------------------ training
    def _run_tower(self, name: str, inputs: Any, lengths: torch.Tensor | None = None) -> torch.Tensor:
        tower = self.model.towers[name]
        kwargs = {"lengths": lengths} if isinstance(tower.encoder, AudioEncoder) else {}
        out = tower(inputs, **kwargs)
        aux = out.encoder.extras.get("aux_loss") if out.encoder.extras else None
        if aux is not None and aux.requires_grad:
            self._aux_losses[name] = aux
        embedding = F.normalize(out.embedding, dim=-1)
        self._embedded[name] = embedding
        return embedding

    def compute_loss(self, batch: dict[str, Any], gather: bool = True) -> ContrastiveStepOutput:
        """Contrastive loss of the present pairs plus the weighted encoder auxiliary losses."""
        self._aux_losses = {}
        out = super().compute_loss(batch, gather=gather)
        self._last_aux = None
        if self._aux_losses and self.aux_loss_weight:
            aux = torch.stack([value.float() for value in self._aux_losses.values()]).sum()
            out.loss = out.loss + self.aux_loss_weight * aux
            self._last_aux = aux.detach()
        self._aux_losses = {}
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        if self._last_aux is not None:
            self.log("train/aux_loss", self._last_aux, batch_size=len(batch.get("key", [])) or None)
        return loss

    # ---------------------------------------------------------------- evaluation
    def _eval_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int, stage: str) -> None:
        self._embedded = {}
        super()._eval_step(batch, batch_idx, dataloader_idx, stage)
        if not self.querying:
            return
        names = [n for n in (self.query_towers or list(self.model.towers)) if n in batch and n in self.model.towers]
        if len(names) < 2:
            return
        embeddings = {
            name: self._embedded[name] if name in self._embedded
            else self._run_tower(name, batch[name], batch.get("lengths"))
            for name in names
        }
        rows = next(iter(embeddings.values())).shape[0]
        keys = batch.get("key") or [f"{self.global_rank}/{batch_idx}/{i}" for i in range(rows)]
        for name, embedding in embeddings.items():
            store = self._query_sets.setdefault((dataloader_idx, name), EvalSet())
            store.add(list(keys), embedding, labels=batch.get("label"))

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._query_sets = {}

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._query_sets = {}

    def _finish_eval(self, stage: str) -> None:
        super()._finish_eval(stage)
        sets, self._query_sets = self._query_sets, {}
        loaders = sorted({idx for idx, _ in sets})
        results: dict[int, dict[str, float]] = {}
        for idx in loaders:
            consolidated = {name: store.consolidate() for (i, name), store in sets.items() if i == idx}
            if len(consolidated) < 2:
                continue
            first = next(iter(consolidated.values()))
            embeddings = {name: data.audio for name, data in consolidated.items()}
            results[idx] = cross_modal_querying(embeddings, first.labels)
        names = self._datamodule_attr("eval_set_names")
        logged = self.eval_results.setdefault(stage, {})
        for idx, metrics in results.items():
            for metric, value in metrics.items():
                suffix = ""
                if sum(metric in other for other in results.values()) > 1:
                    suffix = f"/{names[idx]}" if names and idx < len(names) else f"/{idx}"
                key = f"{stage}/query_{metric}{suffix}"
                logged[key] = value
                if not metric.endswith("_chance"):
                    self.log(key, value, sync_dist=True, add_dataloader_idx=False)
