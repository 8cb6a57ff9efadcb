"""AudioCLIP training: querying metrics, the tri-modal task, and the staged configs on fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from clapkit.lightning_modules.querying import cross_modal_querying, label_relevance, querying_metrics

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "audioclip").glob("*.yaml"))


# --------------------------------------------------------------------------- querying metrics
def test_querying_metrics_known_values():
    queries = torch.eye(3)
    items = F.normalize(torch.tensor([[1.0, 0.1, 0], [0, 1.0, 0], [1.0, 0, 0.2], [0, 0, 1.0]]), dim=-1)
    labels_q, labels_i = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 0, 2])
    out = querying_metrics(queries, items, label_relevance(labels_q, labels_i))
    # query 0: both class-0 items rank 1 and 2 -> P@1 1, R@1 1/2, AP 1
    # query 1: its item ranks first; query 2: item 3 first
    assert out["P@1"] == pytest.approx(1.0)
    assert out["R@1"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert out["mAP"] == pytest.approx(1.0)
    assert out["R@1_chance"] == pytest.approx(1 / 4)
    reversed_out = querying_metrics(-queries, items, label_relevance(labels_q, labels_i))
    assert reversed_out["P@1"] == 0.0 and reversed_out["mAP"] < 0.5


def test_cross_modal_querying_covers_every_ordered_pair():
    emb = F.normalize(torch.randn(6, 8), dim=-1)
    result = cross_modal_querying({"audio": emb, "image": emb.clone(), "text": emb.clone()})
    for pair in ("a2i", "i2a", "a2t", "t2a", "i2t", "t2i"):
        assert result[f"{pair}_R@1"] == pytest.approx(1.0)  # identical embeddings, pairing relevance
    multi = cross_modal_querying({"audio": emb, "image": emb}, labels=torch.tensor([[1, 0], [0, 1]] * 3).float())
    assert 0.0 < multi["a2i_R@1"] <= 1.0


# ---------------------------------------------------------------------------- the task itself
def _tiny_task(**kw):
    from clapkit.encoders.clip import CLIPImageEncoder, CLIPTextEncoder
    from clapkit.encoders.esresnext import ESResNeXtFBSP
    from clapkit.encoders.tower import Tower
    from clapkit.lightning_modules.audioclip import AudioCLIPTask

    towers = {
        "audio": Tower(ESResNeXtFBSP("tiny", sample_rate=16000)),
        "image": Tower(CLIPImageEncoder("tiny")),
        "text": Tower(CLIPTextEncoder("tiny")),
    }
    return AudioCLIPTask(towers, **kw)


def test_loss_adds_fbsp_regulariser_and_respects_frozen_teachers():
    task = _tiny_task(frozen=["image", "text"], pairs=[("audio", "text"), ("audio", "image")])
    with torch.no_grad():
        task.model.towers["audio"].encoder.frontend.fbsp.fb.mul_(1.5)  # regulariser > 0
    batch = {"audio": torch.randn(4, 4000) * 0.1, "image": torch.randn(4, 3, 64, 64), "text": ["a", "b", "c", "d"]}
    task.train()
    out = task.compute_loss(batch, gather=False)
    assert task._last_aux is not None and task._last_aux > 0
    assert torch.allclose(out.loss, sum(out.pair_losses.values()) + task._last_aux)
    out.loss.backward()
    assert task.model.towers["audio"].encoder.frontend.fbsp.fb.grad is not None
    assert task.model.towers["image"].encoder.visual.conv1.weight.grad is None
    assert not task.model.towers["image"].training and task.logit_scale("audio", "text").item() == pytest.approx(100.0)


# ------------------------------------------------------------------------------ stage configs
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_stage_configs_parse(config, capsys):
    from clapkit.cli import lightning_main

    with pytest.raises(SystemExit) as exit_info:
        lightning_main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("clapkit.lightning_modules.")


def _tiny_towers(towers: dict) -> None:
    towers["audio"]["init_args"]["encoder"]["init_args"].update(variant="tiny", sample_rate=8000, weights=None)
    for name in ("image", "text"):
        towers[name]["init_args"]["encoder"]["init_args"].update(arch="tiny", weights=None)


def _run(config: dict, tmp_path: Path):
    from clapkit.cli import lightning_main

    config["trainer"].update(fast_dev_run=1, accelerator="cpu", devices=1, logger=False,
                             default_root_dir=str(tmp_path / "run"),
                             callbacks=[{"class_path": "helpers.training.RecordStartWeights"}])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return lightning_main(["fit", "--config", str(path)])


def _assert_trained(cli, trained: set[str], frozen: set[str] = frozenset()) -> None:
    """One training step and one validation pass ran, with finite logged values; every ``trained``
    sub-module's weights moved, no ``frozen`` one's did."""
    import torch

    from helpers.training import moved_parameters

    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    metrics = cli.trainer.callback_metrics
    assert any(k.startswith("train/") for k in metrics), sorted(metrics)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in metrics.values()), dict(metrics)
    moved = {k.removeprefix("model.") for k in moved_parameters(cli.trainer, cli.model)}  # the task's model
    for name in trained | frozen:
        inside = sorted(k for k in moved if k.startswith(f"{name}."))
        assert bool(inside) is (name in trained), (name, inside[:5])


@pytest.mark.parametrize("stage", ["b_audio_vs_frozen_clip", "c_all_towers"])
def test_tri_modal_stages_run_on_av_shards(stage, tmp_path):
    from helpers.audioclip import write_av_shards

    shards, class_index = write_av_shards(tmp_path, missing_frame=2)
    config = yaml.safe_load((ROOT / f"configs/audioclip/{stage}.yaml").read_text())
    _tiny_towers(config["model"]["init_args"]["towers"])
    data = config["data"]["init_args"]
    data.update(train=str(shards), val=str(shards), class_index=str(class_index), image_size=64,
                batch_size=2, num_workers=0, shuffle_buffer=2)
    data["audio"].update(sample_rate=8000, clip_seconds=0.25)
    data["augment"]["length"] = 2000
    frozen = set(config["model"]["init_args"]["frozen"])
    towers = {f"towers.{name}" for name in ("audio", "image", "text")}
    _assert_trained(_run(config, tmp_path), trained=towers - {f"towers.{n}" for n in frozen},
                    frozen={f"towers.{n}" for n in frozen})


def test_stage_a_tagger_runs_on_audioset_fixture(tmp_path):
    from helpers.fixtures import write_audioset

    write_audioset(tmp_path / "audioset")
    config = yaml.safe_load((ROOT / "configs/audioclip/a_tagger_audioset.yaml").read_text())
    model = config["model"]["init_args"]
    model["encoder"]["init_args"].update(variant="tiny", sample_rate=8000, output_dim=5)
    model["num_classes"] = 5
    data = config["data"]["init_args"]
    data.update(root=str(tmp_path / "audioset"), batch_size=2, num_workers=0)
    data["audio"].update(sample_rate=8000, clip_seconds=0.25)
    data["augment"]["length"] = 2000
    _assert_trained(_run(config, tmp_path), trained={"encoder"})


@pytest.mark.parametrize("stage", ["d_esc50_finetune", "d_us8k_finetune"])
def test_stage_d_finetune_runs_per_fold(stage, tmp_path):
    from helpers.fixtures import write_esc50, write_urbansound8k

    esc = stage == "d_esc50_finetune"
    (write_esc50 if esc else write_urbansound8k)(tmp_path / "data")
    config = yaml.safe_load((ROOT / f"configs/audioclip/{stage}.yaml").read_text())
    model = config["model"]["init_args"]
    model["encoder"]["init_args"].update(variant="tiny", sample_rate=8000, weights=None)
    assert model["head"]["class_path"].endswith("TextPromptClassifier")  # AudioCLIP's text classifier
    model["head"]["init_args"]["text"]["init_args"].update(arch="tiny", weights=None)
    model["num_classes"] = 5 if esc else 4
    data = config["data"]["init_args"]
    data.update(root=str(tmp_path / "data"), test_folds=[2], batch_size=2, num_workers=0)
    data["audio"].update(sample_rate=8000, clip_seconds=0.25)
    data["augment"]["length"] = 2000
    cli = _run(config, tmp_path)
    names = cli.datamodule.class_names
    assert cli.model.model.head.class_names == names and len(names) == model["num_classes"]


def test_synthetic_tri_modal_fast_dev_run_reports_querying(tmp_path):
    """The fast twin of the slow training test: same config, one batch."""
    config = yaml.safe_load((ROOT / "configs/audioclip/synthetic_tiny.yaml").read_text())
    config["data"]["init_args"].update(train_size=8, eval_size=8, batch_size=4, clip_seconds=0.25)
    cli = _run(config, tmp_path)
    metrics = cli.trainer.callback_metrics
    for name in ("train/loss", "train/aux_loss", "val/query_a2i_R@1", "val/query_t2a_R@1",
                 "val/query_i2t_mAP", "val/query_a2t_P@1", "val/zeroshot_top1", "val/t2a_R@1"):
        assert name in metrics, name
    assert "val/query_a2i_R@1_chance" in cli.model.eval_results["val"]


@pytest.mark.slow
@pytest.mark.timeout(5400)  # 256 steps: 40 min wall on a shared 2-core CPU under load 10-14
def test_tiny_tri_modal_model_learns_cross_modal_querying(tmp_path):
    """A few hundred CPU steps on the synthetic shapes + sounds + captions set: audio->image and
    text->audio R@1 rise well above chance (class-based relevance, 90 evaluation items)."""
    config = yaml.safe_load((ROOT / "configs/audioclip/synthetic_tiny.yaml").read_text())
    config["trainer"].update(logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                             enable_progress_bar=False)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    from clapkit.cli import lightning_main

    cli = lightning_main(["fit", "--config", str(path)])
    assert cli.trainer.global_step >= 250
    results = cli.model.eval_results["val"]
    print({k: round(v, 3) for k, v in sorted(results.items()) if "R@1" in k or "P@1" in k or "zeroshot" in k})
    for pair in ("a2i", "t2a"):
        value, chance = results[f"val/query_{pair}_R@1"], results[f"val/query_{pair}_R@1_chance"]
        assert value > 5 * chance, (pair, value, chance)
        assert results[f"val/query_{pair}_P@1"] > 5 * results[f"val/query_{pair}_P@1_chance"]


def _reference_audioclip_loss(task, batch):
    """The AudioCLIP reference's ``forward`` + ``loss_fn``, written out: per present pair
    ``ce(logits) + ce(logits.T)`` with scales clamped to [1, 100], summed, divided by ``n!``
    (``scale = scale * (idx + 1)`` over the present pairs), plus the FBSP regulariser."""
    import math

    feats = {}
    aux = torch.zeros(())
    for name in ("audio", "image", "text"):
        out = task.model.towers[name](batch[name])
        feats[name] = out.embedding / out.embedding.norm(dim=-1, keepdim=True)
        if out.encoder.extras and "aux_loss" in out.encoder.extras:
            aux = out.encoder.extras["aux_loss"]
    reference = torch.arange(len(batch["text"]))
    loss, present = torch.zeros(()), 0
    for key, (a, b) in {"audio__image": ("audio", "image"), "audio__text": ("audio", "text"),
                        "image__text": ("image", "text")}.items():
        scale = torch.clamp(task.model.logit_scales[key].exp(), min=1.0, max=100.0)
        logits = scale * feats[a] @ feats[b].T
        loss = loss + F.cross_entropy(logits, reference) + F.cross_entropy(logits.transpose(-1, -2), reference)
        present += 1
    return loss / math.factorial(present) + aux


def test_audioclip_loss_matches_the_reference_reduction():
    task = _tiny_task()  # the AudioCLIPTask defaults: the reference's three pairs and reduction
    with torch.no_grad():
        task.model.towers["audio"].encoder.frontend.fbsp.fb.mul_(1.5)  # regulariser > 0
        for key, value in zip(sorted(task.model.logit_scales), (2.0, 3.0, 4.0)):
            task.model.logit_scales[key].fill_(value)
    task.eval()  # dropout/BatchNorm identical in both computations
    torch.manual_seed(0)
    batch = {"audio": torch.randn(4, 4000) * 0.1, "image": torch.randn(4, 3, 64, 64),
             "text": ["a dog", "rain", "a bell", "speech"]}
    ours = task.compute_loss(batch, gather=False)  # with gradients: the regulariser counts then
    reference = _reference_audioclip_loss(task, batch)
    pair_mean = torch.stack(list(ours.pair_losses.values())).mean()
    assert task.pair_reduction == "audioclip"
    assert ours.loss.item() == pytest.approx(reference.item(), rel=1e-5)
    # three pairs: the reference's value is the mean of the symmetric losses, not their sum
    assert ours.loss.item() - task._last_aux.item() == pytest.approx(pair_mean.item(), rel=1e-5)


@pytest.mark.parametrize("config", [p for p in CONFIGS if "pairs:" in p.read_text()], ids=lambda p: p.stem)
def test_audioclip_configs_use_the_reference_reduction(config):
    model = yaml.safe_load(config.read_text())["model"]
    assert model["init_args"]["pair_reduction"] == "audioclip"
    assert len(model["init_args"]["pairs"]) == 3
