"""AVC/AVSA losses, the SpatialAlignmentTask and its curriculum, end to end on synthetic scenes."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from clapkit.lightning_modules.spatial import avc_loss, avsa_logits, avsa_loss
from helpers.spatial import tiny_datamodule, tiny_task

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "avsa"


def _orthonormal(batch: int, views: int, dim: int = 128) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, batch * views))
    return q.T.reshape(batch, views, dim)


def _random(batch: int, views: int, dim: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, views, dim, generator=g), dim=-1)


# --------------------------------------------------------------------------- losses


def test_avsa_perfect_embeddings():
    emb = _orthonormal(6, 4)
    result = avsa_loss(emb, emb.clone(), temperature=0.07)
    assert float(result.within_clip_accuracy) == 1.0 and float(result.accuracy) == 1.0
    # positive logit 1/0.07 against K + B - 2 = 8 negatives at 0: loss = log(1 + 8 e^-14.3)
    assert float(result.loss) == pytest.approx(math.log1p(8 * math.exp(-1 / 0.07)), rel=0.05)
    assert float(result.loss) < 1e-4


def test_avsa_random_embeddings_at_chance():
    batch, views = 256, 4
    # temperature 1 keeps the random logits near 0, so the loss is close to log(#candidates)
    result = avsa_loss(_random(batch, views, seed=1), _random(batch, views, seed=2), temperature=1.0)
    assert float(result.within_clip_accuracy) == pytest.approx(1 / views, abs=0.04)
    assert float(result.accuracy) < 0.02  # chance over K + B - 1 candidates is 1/259
    assert float(result.loss) == pytest.approx(math.log(views + batch - 1), rel=0.1)


def test_avsa_logits_candidates_match_a_loop():
    batch, views = 3, 4
    audio, video = _random(batch, views, 16, 3), _random(batch, views, 16, 4)
    logits = avsa_logits(audio, video, temperature=0.5)
    assert logits.shape == (batch, views, views + batch)
    for i in range(batch):
        for j in range(views):
            within = [float(audio[i, j] @ video[i, k]) / 0.5 for k in range(views)]
            across = [float(audio[i, j] @ video[m, j]) / 0.5 if m != i else -math.inf for m in range(batch)]
            torch.testing.assert_close(logits[i, j], torch.tensor(within + across), atol=1e-5, rtol=0)


def test_avsa_only_spatial_mismatch_is_penalised():
    """Audio that matches its clip but not its view fails within-clip, not across clips."""
    video = _orthonormal(4, 4)
    audio = video[:, [1, 2, 3, 0]]  # every view's audio points at the neighbouring crop
    result = avsa_loss(audio, video)
    assert float(result.within_clip_accuracy) == 0.0 and float(result.loss) > 5.0


def test_avc_perfect_and_random():
    emb = _orthonormal(8, 1)[:, 0]
    perfect = avc_loss(emb, emb)
    assert float(perfect.accuracy) == 1.0 and float(perfect.loss) < 1e-4
    rand = avc_loss(_random(512, 1, seed=5)[:, 0], _random(512, 1, seed=6)[:, 0], temperature=1.0)
    assert float(rand.accuracy) < 0.02
    assert float(rand.loss) == pytest.approx(math.log(512), rel=0.1)


# --------------------------------------------------------------------------- module


def _trainer(**kwargs) -> pl.Trainer:
    options = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, accelerator="cpu", devices=1)
    options.update(kwargs)
    return pl.Trainer(**options)


def test_forward_shapes_and_normalisation():
    dm = tiny_datamodule(train_size=4, batch_size=4, duration=0.2)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    task = tiny_task(context=True)
    out = task(batch)
    assert out.audio_views.shape == (4, 4, 128) and out.video_views.shape == (4, 4, 128)
    assert out.audio_clip.shape == (4, 128) and out.video_clip.shape == (4, 128)
    torch.testing.assert_close(out.audio_views.norm(dim=-1), torch.ones(4, 4))
    audio, crops = task.model.views(batch)
    assert audio.shape == (4, 4, 4, batch["audio"].shape[-1]) and crops.shape == (4, 4, 3, 32, 32)


@pytest.mark.parametrize("intensity,context", [(True, True), (False, False)])
def test_fast_dev_run(intensity, context):
    """The slow training test's setup, one batch of fit and validate."""
    task = tiny_task(intensity=intensity, context=context)
    trainer = _trainer(fast_dev_run=True)
    trainer.fit(task, tiny_datamodule(batch_size=4, duration=0.2))
    metrics = trainer.callback_metrics
    for key in ("train/avc_loss", "train/avsa_loss", "train/avsa_acc", "val/avsa_acc", "val/avc_acc"):
        assert key in metrics and torch.isfinite(metrics[key])


class _RecordCurriculum(pl.Callback):
    def __init__(self):
        self.active: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.active.append(pl_module.avsa_active)


def test_curriculum_switches_avsa_on_after_avc_steps():
    recorder = _RecordCurriculum()
    task = tiny_task(avc_steps=2)
    trainer = _trainer(max_steps=4, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(task, tiny_datamodule(batch_size=2, duration=0.1))
    assert recorder.active == [False, False, True, True]


def test_curriculum_counts_epochs_by_default():
    recorder = _RecordCurriculum()
    task = tiny_task(avc_epochs=1)
    trainer = _trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(task, tiny_datamodule(batch_size=2, duration=0.1))
    assert recorder.active == [False, False, True, True]


def test_training_step_loss_follows_curriculum():
    dm = tiny_datamodule(train_size=4, batch_size=4, duration=0.2)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    task = tiny_task(avc_epochs=1, avsa_weight=2.0)
    task.eval()  # deterministic BatchNorm so both evaluations see the same embeddings
    values = task._losses(batch)
    task.log = lambda *a, **k: None
    task.log_dict = lambda *a, **k: None
    torch.testing.assert_close(task.training_step(batch, 0), values["avc_loss"])
    task.avc_epochs = 0
    torch.testing.assert_close(task.training_step(batch, 0), values["avc_loss"] + 2.0 * values["avsa_loss"])


def test_predict_and_bf16_autocast():
    dm = tiny_datamodule(train_size=4, batch_size=4, duration=0.2)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    task = tiny_task(context=True).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = task(batch)
        pred = task.predict_step(batch, 0)
    assert torch.isfinite(out.audio_views.float()).all()
    assert pred["audio"].shape == (4, 128) and pred["key"] == batch["key"]


def test_synthetic_config_fast_dev_run(tmp_path):
    from clapkit.cli import lightning_main
    from helpers.training import moved_parameters

    cli = lightning_main(["fit", "--config", str(CONFIGS / "synthetic.yaml"), "--trainer.fast_dev_run=true",
                          "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}",
                          "--trainer.callbacks+=helpers.training.RecordStartWeights",
                          "--data.init_args.num_workers=0", "--data.init_args.batch_size=2",
                          "--data.init_args.train_size=4", "--data.init_args.val_size=2",
                          "--data.init_args.duration=0.2"])
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    losses = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if "loss" in k}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    moved = {name.removeprefix("model.") for name in moved_parameters(cli.trainer, cli.model)}
    for part in ("audio_encoder.", "image_encoder.", "heads.avc_audio.", "heads.avc_video."):
        assert any(name.startswith(part) for name in moved), (part, sorted(moved)[:5])


def _probe(encoder, steps: int, **data) -> float:
    """Linear probe (ClassificationTask, frozen encoder) on single-source synthetic clips."""
    from functools import partial

    from clapkit.lightning_modules.classification import ClassificationTask

    probe = ClassificationTask(encoder, num_classes=8, freeze_encoder=True,
                               optimizer=partial(torch.optim.AdamW, lr=1e-2))
    dm = tiny_datamodule(sources_per_clip=1, seed=100, **data)
    trainer = _trainer(max_steps=steps, limit_val_batches=0)
    trainer.fit(probe, dm)
    assert all(not p.requires_grad for p in encoder.parameters())
    (metrics,) = _trainer().validate(probe, dm, verbose=False)
    return metrics["val/acc"]


def test_linear_probe_on_frozen_audio_encoder():
    task = tiny_task()
    before = {k: v.clone() for k, v in task.model.audio_encoder.state_dict().items()}
    accuracy = _probe(task.model.audio_encoder, steps=2, train_size=8, val_size=4, batch_size=4, duration=0.2)
    assert 0.0 <= accuracy <= 1.0
    for key, value in task.model.audio_encoder.state_dict().items():
        torch.testing.assert_close(value, before[key])  # frozen: BatchNorm statistics untouched too


# --------------------------------------------------------------------------- slow: learning


def _train(intensity: bool, steps: int, seed: int = 0) -> dict[str, float]:
    pl.seed_everything(seed)
    task = tiny_task(intensity=intensity)
    dm = tiny_datamodule(train_size=steps * 16, val_size=256, batch_size=16)
    trainer = _trainer(max_steps=steps, limit_val_batches=0)
    trainer.fit(task, dm)
    (metrics,) = _trainer().validate(task, dm, verbose=False)
    return {"avsa_acc": metrics["val/avsa_acc"], "avc_acc": metrics["val/avc_acc"], "task": task}


@pytest.fixture
def one_thread():
    # on a shared 2-core CPU one intra-op thread wastes less time spinning
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_avsa_learns_and_intensity_beats_logmel(one_thread):
    """On synthetic 360 scenes (4 views, chance 0.25) AVSA is learned, and better with the
    intensity vector than with log-mel alone (which loses the sign of Y and X)."""
    steps = 200
    with_iv = _train(True, steps)
    logmel = _train(False, steps)
    # a linear probe on the frozen AVSA-trained audio encoder: class of a single source
    probe_data = dict(steps=100, train_size=1600, val_size=256, batch_size=16)
    probe = _probe(with_iv["task"].model.audio_encoder, **probe_data)
    pl.seed_everything(0)
    baseline = _probe(tiny_task().model.audio_encoder, **probe_data)  # same encoder, random weights
    print(f"\nval AVSA within-clip accuracy after {steps} steps (chance 0.25): intensity "
          f"{with_iv['avsa_acc']:.3f}, log-mel only {logmel['avsa_acc']:.3f}; val AVC accuracy "
          f"{with_iv['avc_acc']:.3f} / {logmel['avc_acc']:.3f}; linear probe (8 classes) {probe:.3f}, "
          f"random-init encoder {baseline:.3f}")
    assert with_iv["avsa_acc"] >= 0.6
    assert with_iv["avsa_acc"] >= logmel["avsa_acc"] + 0.1
    assert probe >= baseline + 0.15
