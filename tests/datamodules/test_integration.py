"""The datamodules drive the real ContrastiveTask: zero-shot, multi-label and retrieval
evaluation, shard training with skip logging, and every config of this area parses."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import yaml

from clapkit.callbacks.data_health import DataHealth
from clapkit.datamodules.captionsets import ClothoDataModule
from clapkit.datamodules.evalsets import ESC50DataModule, FSD50KDataModule
from clapkit.datamodules.pipeline import AudioPolicy
from clapkit.datamodules.webdataset import ShardDataModule
from clapkit.lightning_modules import ContrastiveTask
from helpers.fixtures import write_clotho, write_esc50, write_fsd50k, write_shards
from helpers.training import tiny_towers

POLICY = AudioPolicy(sample_rate=16000, clip_seconds=0.25)
ROOT = Path(__file__).resolve().parents[2]


def _trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


def test_zero_shot_single_and_multi_label(tmp_path):
    write_esc50(tmp_path / "esc")
    write_fsd50k(tmp_path / "fsd")
    task = ContrastiveTask(tiny_towers())
    trainer = _trainer(callbacks=[DataHealth()])
    esc = trainer.validate(task, ESC50DataModule(str(tmp_path / "esc"), audio=POLICY, batch_size=8,
                                                 num_workers=0), verbose=False)[0]
    assert 0.0 <= esc["val/zeroshot_top1"] <= 1.0 and esc["data/val_skipped_total"] == 0
    fsd = trainer.validate(task, FSD50KDataModule(str(tmp_path / "fsd"), audio=POLICY, batch_size=3,
                                                  num_workers=0), verbose=False)[0]
    assert 0.0 <= fsd["val/zeroshot_mAP"] <= 1.0


def test_retrieval_on_clotho(tmp_path):
    write_clotho(tmp_path)
    task = ContrastiveTask(tiny_towers())
    out = _trainer().test(task, ClothoDataModule(str(tmp_path), audio=POLICY, batch_size=2, num_workers=0),
                          verbose=False)[0]
    assert 0.0 <= out["test/t2a_R@1"] <= 1.0 and 0.0 <= out["test/a2t_R@1"] <= 1.0


def test_contrastive_training_on_shards_with_bad_audio(tmp_path):
    write_shards(tmp_path, 2, 6, bad={0: "corrupt", 7: "empty"})
    dm = ShardDataModule(train=str(tmp_path), audio=POLICY, batch_size=4, num_workers=1, shuffle_buffer=4)
    trainer = _trainer(max_epochs=1, callbacks=[DataHealth()])
    trainer.fit(ContrastiveTask(tiny_towers(), lr=1e-3), dm)
    assert trainer.global_step == 3
    assert trainer.logged_metrics["data/skipped_unreadable"] >= 1
    assert trainer.logged_metrics["data/skipped_empty"] >= 1


def test_eval_configs_build_their_datamodules():
    """The ``data:`` and ``trainer.callbacks`` sections of every eval config instantiate
    (the full files, model included, are parsed by the repository-wide config test)."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch import Callback, LightningDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--data", type=LightningDataModule)
    parser.add_argument("--callbacks", type=list[Callback])
    for name in ("esc50_zeroshot", "us8k_zeroshot", "audiocaps_retrieval", "clotho_retrieval"):
        config = yaml.safe_load((ROOT / f"configs/eval/{name}.yaml").read_text())
        built = parser.instantiate(parser.parse_object({"data": config["data"],
                                                        "callbacks": config["trainer"]["callbacks"]}))
        assert built.data.audio.sample_rate == 48000 and built.data.audio.clip_seconds == 10.0
        assert isinstance(built.callbacks[0], DataHealth)


def test_pretrain_config_parses(capsys):
    from clapkit.cli import lightning_main

    with pytest.raises(SystemExit):
        lightning_main(["fit", "--config", str(ROOT / "configs/clap/htsat_roberta.yaml"), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert [s["weight"] for s in printed["data"]["init_args"]["train"]] == [1.0, 1.0, 2.0, 2.0]
    audio = printed["model"]["init_args"]["towers"]["audio"]["init_args"]["encoder"]
    assert audio["class_path"] == "clapkit.encoders.htsat.HTSAT" and audio["init_args"]["variant"] == "tiny"
