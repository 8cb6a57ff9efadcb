"""W&B offline: a short fit writes spectrograms, audio, a retrieval table and a confusion matrix to the run dir."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader

from clapkit.callbacks import RunConfigSaver, WandbMedia
from clapkit.callbacks.wandb_media import head, spectrogram_image
from clapkit.lightning_modules.contrastive import ContrastiveTask
from helpers.training import tiny_towers

CLASSES = ["dog", "bell", "rain"]


def caption_batch(seed: int, n: int = 6, samples: int = 4000) -> dict:
    gen = torch.Generator().manual_seed(seed)
    caps = [[f"a {CLASSES[i % 3]} sound, take {seed}.{i}", f"{CLASSES[i % 3]} again"] for i in range(n)]
    return {"audio": 0.1 * torch.randn(n, samples, generator=gen), "lengths": torch.full((n,), samples),
            "text": [c[0] for c in caps], "captions": caps, "key": [f"r{seed}_{i}" for i in range(n)]}


def labelled_batch(seed: int, n: int = 6, samples: int = 4000) -> dict:
    gen = torch.Generator().manual_seed(100 + seed)
    return {"audio": 0.1 * torch.randn(n, samples, generator=gen), "lengths": torch.full((n,), samples),
            "label": torch.arange(n) % len(CLASSES), "key": [f"z{seed}_{i}" for i in range(n)]}


class TinyData(pl.LightningDataModule):
    """Two train batches; validation = a retrieval loader and a labelled zero-shot loader."""

    class_names = CLASSES

    def train_dataloader(self):
        return DataLoader([caption_batch(i) for i in range(2)], batch_size=None)

    def val_dataloader(self):
        return [DataLoader([caption_batch(10)], batch_size=None),
                DataLoader([labelled_batch(0), labelled_batch(1)], batch_size=None)]


def test_helpers():
    batch = head({"audio": torch.zeros(5, 3), "key": list("abcde"), "n": 1}, 2)
    assert batch["audio"].shape == (2, 3) and batch["key"] == ["a", "b"] and batch["n"] == 1
    image = spectrogram_image(torch.tensor([[0.0, -10.0], [-100.0, -50.0]]))
    assert image.dtype.name == "uint8" and image.shape == (2, 2)
    assert image[1, 0] == 255  # loudest bin, drawn at the bottom row (low frequency)
    assert image[0, 0] == 0  # 100 dB below the peak: clipped at the 80 dB floor


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    yield tmp_path
    import wandb

    if wandb.run is not None:
        wandb.finish()


def fit_once(tmp_path: Path, name: str) -> tuple[WandbLogger, RunConfigSaver]:
    torch.manual_seed(0)
    logger = WandbLogger(project="clapkit-test", save_dir=str(tmp_path), offline=True, name=name)
    saver = RunConfigSaver()
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
        callbacks=[WandbMedia(num_examples=3), saver],
    )
    trainer.fit(ContrastiveTask(towers=tiny_towers(), lr=1e-3), datamodule=TinyData())
    import wandb

    wandb.finish()
    return logger, saver


def test_offline_run_dir_holds_media_table_and_confusion(offline_wandb):
    logger, saver = fit_once(offline_wandb, "media")
    runs = list((offline_wandb / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = runs[0] / "files"
    media = [p.relative_to(files).as_posix() for p in files.rglob("*") if p.is_file()]
    assert any(m.startswith("media/images/media/audio_spectrogram") and m.endswith(".png") for m in media), media
    assert sum(m.startswith("media/audio/media/audio_") and m.endswith(".wav") for m in media) >= 3, media
    tables = [m for m in media if m.startswith("media/table/") and m.endswith(".table.json")]
    retrieval = [m for m in tables if "retrieval" in m]
    confusion = [m for m in tables if "confusion" in m]
    assert retrieval and confusion, tables
    table = json.loads((files / retrieval[0]).read_text())
    assert table["columns"][:3] == ["key", "audio", "caption"]
    assert len(table["data"]) == 3  # num_examples rows
    assert all(1 <= row[6] <= 3 for row in table["data"])  # rank of the true caption among 3
    matrix = json.loads((files / confusion[0]).read_text())
    counts = sum(row[-1] for row in matrix["data"])
    assert counts == 12  # every labelled validation clip (2 batches x 6) counted once
    assert {row[0] for row in matrix["data"]} <= set(CLASSES)
    # the run's own record (no network) exists and the config landed in this run's files
    assert list(runs[0].glob("run-*.wandb"))
    assert saver.saved_path == files / "clapkit_config.yaml"


def test_without_wandb_logger_nothing_breaks(tmp_path):
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=tmp_path, callbacks=[WandbMedia()])
    with pytest.warns(UserWarning, match="WandbLogger"):
        trainer.fit(ContrastiveTask(towers=tiny_towers()), datamodule=TinyData())
    assert os.listdir(tmp_path) == [] or not list(tmp_path.rglob("*.png"))
