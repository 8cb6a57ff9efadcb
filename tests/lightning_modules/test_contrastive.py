"""ContrastiveTask on tiny towers: steps, freezing, optimiser groups, logit scales, evaluation."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from clapkit.lightning_modules import ContrastiveTask
from clapkit.lightning_modules.contrastive import WarmupCosine
from clapkit.lightning_modules.metrics import retrieval_metrics, zeroshot_single_label
from helpers.training import tiny_batch, tiny_towers


def _trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    return pl.Trainer(**{**defaults, **kwargs})


def _loader(batches: list[dict]) -> DataLoader:
    return DataLoader(batches, batch_size=None, collate_fn=lambda b: b)


class EvalData(pl.LightningDataModule):
    """Two eval loaders following the protocol: captions (retrieval) and int labels (zero-shot)."""

    class_names = ["dog", "bell", "rain"]
    eval_set_names = ["retrieval", "zeroshot"]

    def __init__(self):
        super().__init__()
        self.retrieval = [tiny_batch(4, seed=s, captions=3) for s in range(2)]
        # the second batch repeats two clips, as a distributed sampler's padding would
        dup = tiny_batch(4, seed=0, captions=3)
        self.retrieval.append({k: v[:2] for k, v in dup.items()})
        gen = torch.Generator().manual_seed(3)
        self.zeroshot = [
            {"audio": torch.randn(5, 320, generator=gen), "label": torch.tensor([0, 1, 2, 1, 0]),
             "key": [f"z{s}_{i}" for i in range(5)]}
            for s in range(2)
        ]

    def val_dataloader(self):
        return [_loader(self.retrieval), _loader(self.zeroshot)]

    def train_dataloader(self):
        return _loader([tiny_batch(6, seed=s) for s in range(3)])


def test_compute_loss_and_state_dict_layout():
    task = ContrastiveTask(tiny_towers(three=True), pairs=[("audio", "text"), ("audio", "image"), ("image", "text")])
    keys = set(task.model.state_dict())
    assert {"logit_scales.audio__text", "logit_scales.audio__image", "logit_scales.image__text"} <= keys
    assert any(k.startswith("towers.audio.encoder.") for k in keys)
    assert any(k.startswith("towers.text.projection.") for k in keys)
    batch = tiny_batch()
    out = task.compute_loss(batch)  # no "image" in the batch: only audio__text is present
    assert set(out.pair_losses) == {"audio__text"}
    batch["image"] = batch["text"][::-1]
    out = task.compute_loss(batch)
    assert set(out.pair_losses) == {"audio__text", "audio__image", "image__text"}
    assert out.loss.item() == pytest.approx(torch.stack(list(out.pair_losses.values())).mean().item())
    task.pair_reduction = "sum"
    summed = task.compute_loss(batch)
    assert summed.loss.item() == pytest.approx(sum(v.item() for v in summed.pair_losses.values()), rel=1e-5)


def test_embed_is_normalised_and_audio_gets_lengths():
    task = ContrastiveTask(tiny_towers()).eval()
    batch = tiny_batch()
    emb = task.embed("audio", batch["audio"], lengths=batch["lengths"])
    assert emb.shape == (6, 8)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(6))
    # lengths reach the audio encoder: a shorter valid length changes the pooled embedding
    short = task.embed("audio", batch["audio"], lengths=torch.full((6,), 64))
    assert not torch.allclose(emb, short)
    text = task.embed("text", ["a dog barks", "a bell rings"])
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))


def test_logit_scale_init_and_clamp():
    task = ContrastiveTask(tiny_towers())
    assert task.logit_scale("audio", "text").item() == pytest.approx(1 / 0.07, rel=1e-6)
    param = task.model.logit_scales["audio__text"]
    with torch.no_grad():
        param.fill_(10.0)
    assert task.logit_scale("audio", "text").item() == pytest.approx(100.0, rel=1e-6)
    with torch.no_grad():
        param.fill_(-3.0)
    assert task.logit_scale("audio", "text").item() == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="logit_scale_min"):
        ContrastiveTask(tiny_towers(), logit_scale_init=200.0)


def test_training_steps_clamp_stored_scale_and_update_weights():
    task = ContrastiveTask(tiny_towers(), lr=1e-2)
    with torch.no_grad():
        task.model.logit_scales["audio__text"].fill_(7.0)  # beyond ln(100)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    _trainer(max_steps=2).fit(task, train_dataloaders=_loader([tiny_batch(6, seed=s) for s in range(2)]))
    assert task.model.logit_scales["audio__text"].item() <= math.log(100.0) + 1e-6
    changed = [k for k, v in task.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("towers.audio.") for k in changed)
    assert any(k.startswith("towers.text.") for k in changed)


@pytest.mark.parametrize("frozen", ["audio", "text.encoder"])
def test_frozen_towers_are_untouched_and_not_optimised(frozen):
    task = ContrastiveTask(tiny_towers(), frozen=[frozen], lr=1e-2, weight_decay=0.1)
    prefix = f"towers.{frozen}."
    before = {k: v.clone() for k, v in task.model.state_dict().items() if k.startswith(prefix)}
    assert before
    trainer = _trainer(max_steps=2)
    trainer.fit(task, train_dataloaders=_loader([tiny_batch(6, seed=s) for s in range(2)]))
    for key, value in before.items():  # includes BatchNorm running statistics of a frozen audio tower
        assert torch.equal(task.model.state_dict()[key], value), key
    frozen_ids = {id(p) for p in task.model.towers.get_submodule(frozen).parameters()}
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert frozen_ids and not frozen_ids & optimised
    task.train()
    assert not task.model.towers.get_submodule(frozen).training
    assert all(not m.training for m in task.model.towers.get_submodule(frozen).modules())


def test_unknown_frozen_path_is_an_error():
    with pytest.raises(ValueError, match="frozen entry"):
        ContrastiveTask(tiny_towers(), frozen=["speech"])


def test_weight_decay_groups():
    task = ContrastiveTask(tiny_towers(), weight_decay=0.05)
    decay, no_decay = task.parameter_groups()
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in task.model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed == {
        "towers.audio.encoder.linear.weight",
        "towers.audio.projection.net.0.weight",
        "towers.audio.projection.net.2.weight",
        "towers.text.encoder.bag.weight",
        "towers.text.projection.linear.weight",
    }
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scales.audio__text" in exempt
    assert {"towers.audio.encoder.norm.weight", "towers.text.encoder.norm.weight", "towers.audio.encoder.linear.bias"} <= exempt
    assert len(decayed) + len(exempt) == len(list(task.parameters()))


def test_warmup_cosine_schedule():
    schedule = WarmupCosine(warmup=4, total=14, floor=0.1)
    assert schedule(0) == pytest.approx(1 / 5)
    assert schedule(3) == pytest.approx(4 / 5)
    assert schedule(4) == pytest.approx(1.0)
    assert schedule(9) == pytest.approx(0.1 + 0.9 * 0.5)
    assert schedule(14) == pytest.approx(0.1) and schedule(100) == pytest.approx(0.1)


def test_prompt_ensemble_averages_normalised_text_embeddings():
    templates = ["This is a sound of {}.", "a recording of {}"]
    task = ContrastiveTask(tiny_towers(), prompt_templates=templates).eval()
    classes = task.zeroshot_classifier(["dog", "bell"])
    first = task.embed("text", ["This is a sound of dog.", "This is a sound of bell."])
    second = task.embed("text", ["a recording of dog", "a recording of bell"])
    torch.testing.assert_close(classes, F.normalize((first + second) / 2, dim=-1))
    with pytest.raises(ValueError, match="placeholder"):
        ContrastiveTask(tiny_towers(), prompt_templates=["no placeholder"])


def test_text_cache_is_exact_for_frozen_encoders():
    towers = tiny_towers()
    plain = ContrastiveTask(towers, frozen=["text.encoder"]).eval()
    cached = ContrastiveTask(towers, frozen=["text.encoder"], text_cache_size=3).eval()
    texts = ["a dog", "a bell", "a dog", "rain", "wind", "a bell"]
    torch.testing.assert_close(cached.embed("text", texts), plain.embed("text", texts))
    assert len(cached._text_cache["text"]) <= 4  # over the limit the cache restarts
    torch.testing.assert_close(cached.embed("text", texts[:2]), plain.embed("text", texts[:2]))
    assert ContrastiveTask(towers, text_cache_size=10)._text_cache == {}  # trainable: never cached


def test_validation_protocol_retrieval_and_zeroshot():
    task = ContrastiveTask(tiny_towers())
    data = EvalData()
    trainer = _trainer()
    metrics = trainer.validate(task, datamodule=data, verbose=False)[0]
    results = task.eval_results["val"]
    # de-duplicated: 8 unique clips with 3 captions each
    assert results["val/t2a_R@1_chance"] == pytest.approx(1 / 8)
    assert results["val/zeroshot_top1_chance"] == pytest.approx(1 / 3)
    # recompute from scratch on the unique clips
    task.eval()
    with torch.no_grad():
        clips = [tiny_batch(4, seed=s, captions=3) for s in range(2)]
        audio = torch.cat([task.embed("audio", b["audio"], lengths=b["lengths"]) for b in clips])
        captions = torch.cat([task.embed("text", [c for caps in b["captions"] for c in caps]) for b in clips])
        expected = retrieval_metrics(audio @ captions.T, torch.arange(8).repeat_interleave(3))
        za = torch.cat([task.embed("audio", b["audio"]) for b in data.zeroshot])
        zl = torch.cat([b["label"] for b in data.zeroshot])
        zero = zeroshot_single_label(za @ task.zeroshot_classifier(EvalData.class_names).T, zl)
    for key in ("t2a_R@1", "a2t_R@1", "a2t_mAP@10", "t2a_medR"):
        assert metrics[f"val/{key}"] == pytest.approx(expected[key], abs=1e-6), key
    assert metrics["val/zeroshot_top1"] == pytest.approx(zero["zeroshot_top1"])
    assert "val/loss" in metrics


def test_multilabel_zeroshot_and_missing_class_names_warns():
    class Multi(pl.LightningDataModule):
        class_names = ["a", "b", "c", "d"]

        def val_dataloader(self):
            gen = torch.Generator().manual_seed(1)
            target = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0], [1, 1, 0, 0]]).float()
            return _loader([{"audio": torch.randn(4, 320, generator=gen), "label": target, "key": list("wxyz")}])

    task = ContrastiveTask(tiny_towers())
    metrics = _trainer().validate(task, datamodule=Multi(), verbose=False)[0]
    assert 0.0 <= metrics["val/zeroshot_mAP"] <= 1.0

    class NoNames(Multi):
        class_names = None

    with pytest.warns(UserWarning, match="class_names"):
        _trainer().validate(ContrastiveTask(tiny_towers()), datamodule=NoNames(), verbose=False)


def test_several_sets_of_the_same_kind_get_their_names_appended():
    class TwoCaptionSets(pl.LightningDataModule):
        eval_set_names = ["clotho", "audiocaps"]

        def val_dataloader(self):
            return [_loader([tiny_batch(4, seed=1)]), _loader([tiny_batch(5, seed=2)])]

    metrics = _trainer().validate(ContrastiveTask(tiny_towers()), datamodule=TwoCaptionSets(), verbose=False)
    merged = {k: v for m in metrics for k, v in m.items()}
    assert {"val/t2a_R@1/clotho", "val/t2a_R@1/audiocaps", "val/loss", "val/loss/audiocaps"} <= set(merged)
    assert "val/t2a_R@1" not in merged


def test_batches_whose_every_clip_was_bad_are_skipped_in_training_and_evaluation():
    from clapkit.datamodules.pipeline import Skipped, collate_with_skips

    empty = collate_with_skips([Skipped("corrupt", "a"), Skipped("empty", "b")])
    assert empty["audio"].shape[0] == 0 and empty["skipped"] == {"corrupt": 1, "empty": 1}

    class WithBadBatches(EvalData):
        def val_dataloader(self):
            return [_loader([*self.retrieval, empty]), _loader([empty, *self.zeroshot])]

        def train_dataloader(self):
            return _loader([tiny_batch(6, seed=0), empty, tiny_batch(6, seed=1)])

    task = ContrastiveTask(tiny_towers())
    trainer = _trainer(max_epochs=1)
    trainer.fit(task, datamodule=WithBadBatches())  # the empty batch gives no loss and no gradient
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    clean = _trainer().validate(ContrastiveTask(tiny_towers()), datamodule=EvalData(), verbose=False)
    bad = _trainer().validate(ContrastiveTask(tiny_towers()), datamodule=WithBadBatches(), verbose=False)
    assert set(bad[0]) == set(clean[0]) and "val/zeroshot_top1" in bad[0]
