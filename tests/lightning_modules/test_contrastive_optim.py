"""ContrastiveTask takes an OptimizerCallable / LRSchedulerCallable like the other tasks
(one way to configure optimisation everywhere)."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch

from clapkit.lightning_modules import ContrastiveTask
from helpers.training import tiny_towers


def test_optimizer_and_scheduler_callables_get_the_decay_groups():
    task = ContrastiveTask(
        tiny_towers(), weight_decay=0.05,
        optimizer=functools.partial(torch.optim.SGD, lr=0.5, momentum=0.9),
        scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3, gamma=0.1),
    )
    config = task.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]
    assert isinstance(optimizer, torch.optim.SGD)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    assert all(g["lr"] == 0.5 and g["momentum"] == 0.9 for g in optimizer.param_groups)
    assert isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.StepLR) and scheduler["interval"] == "step"
    assert "optimizer" not in task.hparams and "scheduler" not in task.hparams


def test_default_is_adamw_with_warmup_cosine(monkeypatch):
    task = ContrastiveTask(tiny_towers(), lr=2e-3, warmup_steps=2, min_lr_ratio=0.1)
    monkeypatch.setattr(ContrastiveTask, "trainer", SimpleNamespace(estimated_stepping_batches=10), raising=False)
    config = task.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.AdamW)
    assert config["optimizer"].param_groups[0]["lr"] == 2e-3 * (1 / 3)  # warmup step 0 of 2
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.LambdaLR)


def test_every_task_shares_the_base_and_its_monitor_convention():
    from clapkit.lightning_modules.base import BaseTask
    from clapkit.lightning_modules.classification import ClassificationTask
    from clapkit.lightning_modules.separation import SeparationTask
    from clapkit.lightning_modules.spatial import SpatialAlignmentTask

    for task in (ContrastiveTask, ClassificationTask, SeparationTask, SpatialAlignmentTask):
        assert issubclass(task, BaseTask)
    from helpers.separation import tiny_task

    sep = tiny_task()
    config = sep.configure_optimizers()
    assert sep.monitor == "val/si_sdri"
    assert config["lr_scheduler"]["monitor"] == "val/si_sdri" and config["lr_scheduler"]["interval"] == "epoch"
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    trainable = {id(p) for g in config["optimizer"].param_groups for p in g["params"]}
    assert trainable == {id(p) for p in sep.parameters() if p.requires_grad} and trainable
