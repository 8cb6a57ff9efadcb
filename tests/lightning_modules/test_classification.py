"""ClassificationTask: single-label CE + accuracy, multi-label BCE + mAP, linear probe, aux loss."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from clapkit.lightning_modules.classification import ClassificationTask
from helpers.audioclip import ToyAudioEncoder, tone_batches


def _trainer(**kw) -> pl.Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
    defaults.update(kw)
    return pl.Trainer(**defaults)


def _adam(params):
    return torch.optim.Adam(params, lr=1e-2)


def test_single_label_learns_and_reports_accuracy():
    task = ClassificationTask(ToyAudioEncoder(), num_classes=3, optimizer=_adam)
    train, val = tone_batches(12), tone_batches(3, seed=1)
    trainer = _trainer(max_epochs=4)
    trainer.fit(task, train_dataloaders=train, val_dataloaders=val)
    metrics = trainer.callback_metrics
    assert {"val/loss", "val/acc"} <= set(metrics)
    assert metrics["val/acc"] > 0.8  # chance is 1/3


def test_multi_label_reports_map():
    task = ClassificationTask(ToyAudioEncoder(), num_classes=3, multi_label=True, optimizer=_adam)
    trainer = _trainer(max_epochs=4)
    train, val = tone_batches(12, multi_label=True), tone_batches(3, multi_label=True, seed=1)
    trainer.fit(task, train_dataloaders=train, val_dataloaders=val)
    assert trainer.callback_metrics["val/mAP"] > 0.8
    assert "val/AUROC" in trainer.callback_metrics
    [result] = trainer.test(task, dataloaders=val, verbose=False)
    assert 0.0 <= result["test/mAP"] <= 1.0


def test_linear_probe_freezes_encoder_and_its_statistics():
    encoder = ToyAudioEncoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    task = ClassificationTask(encoder, num_classes=3, freeze_encoder=True, optimizer=_adam)
    head_before = [p.clone() for p in task.model.head.parameters()]
    _trainer(max_steps=5).fit(task, train_dataloaders=tone_batches(5))
    after = encoder.state_dict()
    for key, value in before.items():  # weights AND BatchNorm running stats untouched
        assert torch.equal(value, after[key]), key
    assert not encoder.training
    assert any(not torch.equal(a, b) for a, b in zip(head_before, task.model.head.parameters()))
    opt = task.configure_optimizers()
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in task.model.head.parameters())


def test_aux_loss_added_unless_frozen():
    batch = next(iter(tone_batches(1)))
    base = ClassificationTask(ToyAudioEncoder(), num_classes=3).eval()
    torch.manual_seed(0)
    aux = ClassificationTask(ToyAudioEncoder(aux=2.0), num_classes=3, aux_loss_weight=0.5).eval()
    aux.load_state_dict(base.state_dict())
    loss_base, _, _ = base._step(batch)
    loss_aux, _, _ = aux._step(batch)
    assert torch.allclose(loss_aux, loss_base + 1.0)


def test_no_head_needs_matching_width():
    with pytest.raises(ValueError, match="output_dim"):
        ClassificationTask(ToyAudioEncoder(dim=8), num_classes=3, use_head=False)
    task = ClassificationTask(ToyAudioEncoder(dim=3), num_classes=3, use_head=False)
    assert task(next(iter(tone_batches(1)))).shape == (8, 3)
