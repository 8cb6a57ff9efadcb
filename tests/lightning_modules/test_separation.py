"""SeparationTask: LoRA-only gradients, query sides, metrics, loss, and a Trainer smoke run."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from clapkit.datamodules.mixtures import ClipPolicy, MixtureDataModule
from clapkit.lightning_modules.sep_metrics import separation_loss, separation_metrics, si_snr, snr
from helpers.separation import SAMPLE_RATE, synthetic_source, tiny_batch, tiny_task


def test_gradients_reach_only_lora_and_separator_heads_and_frozen_weights_stay():
    task = tiny_task(query_probs=(0.0, 0.0, 1.0))
    frozen = {n: p.detach().clone() for n, p in task.named_parameters() if not p.requires_grad}
    frozen_buffers = {n: b.clone() for n, b in task.model.separator.encoder.named_buffers()}
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("query.") for n in trainable)
    encoder_trainable = {n for n in trainable if n.startswith("separator.encoder.")}
    assert encoder_trainable and all("lora_" in n or n.endswith("base_layer.bias") for n in encoder_trainable)
    optimizer = task.configure_optimizers()["optimizer"]
    task.train()
    loss = task.training_step(tiny_batch(query_audio=True), 0)
    loss.backward()
    assert all(p.grad is None for n, p in task.named_parameters() if n in frozen)
    lora_grads = [p.grad for n, p in task.named_parameters() if "lora_B" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in lora_grads)
    optimizer.step()
    after = dict(task.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    assert all(torch.equal(b, frozen_buffers[n]) for n, b in task.model.separator.encoder.named_buffers())
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in after.items() if "lora_B" in n)


@pytest.mark.parametrize("sides", ["positive", "negative", "both"])
def test_positive_only_negative_only_and_both_queries_run(sides):
    task = tiny_task(eval_query=sides, compute_sdr=False).eval()
    with torch.no_grad():
        values = task._eval_step(tiny_batch(), "val")
    assert set(values) == {"si_sdr", "si_sdri", "snr", "snri"}
    assert all(torch.isfinite(v).all() for v in values.values())


def test_mixture_scores_zero_improvement_and_loss_formula():
    target = torch.randn(3, 8000)
    mixture = target + 0.5 * torch.randn(3, 8000)
    metrics = separation_metrics(mixture, mixture, target)
    for name in ("sdri", "si_sdri", "snri"):
        assert torch.allclose(metrics[name], torch.zeros(3), atol=1e-5), name
    estimate = target + 0.1 * torch.randn(3, 8000)
    expected = -(0.9 * snr(estimate, target) + 0.1 * si_snr(estimate, target)).mean()
    assert torch.allclose(separation_loss(estimate, target, 0.9), expected)
    assert separation_metrics(estimate, mixture, target)["si_sdri"].mean() > 0


def test_trainer_fit_and_test_on_synthetic_mixtures(tmp_path):
    data = MixtureDataModule(
        train_source=synthetic_source(8, "train"), test_source=synthetic_source(6),
        clip=ClipPolicy(sample_rate=SAMPLE_RATE, clip_seconds=0.5), eval_per_target=1, eval_max_targets=2,
        batch_size=2, num_workers=0,
    )
    task = tiny_task(compute_sdr=False)
    trainer = pl.Trainer(max_steps=2, limit_val_batches=1, limit_test_batches=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
                         num_sanity_val_steps=0, enable_model_summary=False)
    trainer.fit(task, datamodule=data)
    results = trainer.test(task, datamodule=data, verbose=False)[0]
    assert {"test/si_sdri", "test/snri", "test/si_sdr"} <= set(results)


def test_sdr_is_right_with_several_threads():
    # torch 2.11's batched CPU LU solve breaks with >1 thread; sdr must not depend on it.
    from clapkit.lightning_modules.sep_metrics import sdr

    previous = torch.get_num_threads()
    target = torch.randn(3, 4000)
    estimate = target + 0.3 * torch.randn(3, 4000)
    try:
        torch.set_num_threads(1)
        one = sdr(estimate, target)
        torch.set_num_threads(2)
        two = sdr(estimate, target)
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(two).all()


def test_scheduler_steps_per_optimiser_step_when_asked():
    def cosine(optimizer):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4, eta_min=0.0)

    config = tiny_task(scheduler=cosine, scheduler_interval="step").configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "step"
    assert tiny_task().configure_optimizers()["lr_scheduler"]["interval"] == "epoch"  # the plateau default
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    base = optimizer.param_groups[0]["lr"]
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(base * 0.5)  # cos(pi/2): halfway at step 2 of 4
    with pytest.raises(ValueError, match="scheduler_interval"):
        tiny_task(scheduler_interval="batch")


def test_clapsep_quickstart_is_budgeted_in_steps_and_its_cosine_ends_at_the_last_step():
    from pathlib import Path

    import yaml

    config = yaml.safe_load((Path(__file__).parents[2] / "src/clapkit/configs/quickstart/clapsep.yaml").read_text())
    trainer, model = config["trainer"], config["model"]["init_args"]
    assert "max_time" not in trainer  # a time cap would make the figures depend on the machine
    assert model["scheduler_interval"] == "step"
    assert model["scheduler"]["init_args"]["T_max"] == trainer["max_steps"]
