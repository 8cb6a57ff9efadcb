"""The mixture pipeline at corpus scale: building over 100,000 listed files reads the list
only; audio is decoded for the clips a mixture uses and for nothing else."""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest

from clapkit.datamodules import mix_sources
from clapkit.datamodules.mix_sources import FileListSource
from clapkit.datamodules.mixtures import ClipPolicy, MixtureDataModule

N = 100_000
CLASSES = 50


@pytest.fixture
def decodes(monkeypatch):
    """Replace decoding with a counter (the listed files do not exist)."""
    calls = []

    def fake_load_audio(path, *args, **kwargs):
        calls.append(str(path))
        return np.full(800, 0.1 + 0.001 * (len(calls) % 7), dtype=np.float32), 8000

    monkeypatch.setattr(mix_sources, "load_audio", fake_load_audio)
    return calls


def _listing(path, n):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "caption"])
        writer.writerows((f"clips/{i:06d}.wav", f"class {i % CLASSES} sound") for i in range(n))
    return path


def test_datamodule_over_100k_listed_files_builds_without_decoding(tmp_path, decodes):
    train_csv = _listing(tmp_path / "train.csv", N)
    test_csv = train_csv
    start = time.perf_counter()
    dm = MixtureDataModule(
        train_source=FileListSource(train_csv), test_source=FileListSource(test_csv),
        clip=ClipPolicy(sample_rate=8000, clip_seconds=0.1), num_interferers=(1, 3), batch_size=4, num_workers=0,
    )
    train = dm.train_dataloader().dataset
    train.captions()  # the index every worker needs: captions, groups, keys
    test = dm.eval_dataset("test")
    built = time.perf_counter() - start
    print(f"built over {N} listed files in {built:.2f} s")
    # How long it takes is a benchmark figure, not a unit-test bound (the machine may be busy).
    assert decodes == [], f"built in {built:.1f} s with {len(decodes)} decodes"
    assert len(train) == N and len(test) == 5 * N  # standard protocol: 5 mixtures per target

    items = [train[i] for i in range(20)]
    used = sum(1 + item["negative_text"].count(" and ") for item in items)
    assert len(decodes) <= 20 * 4 and len(decodes) >= 20 * 2  # a target + 1..3 interferers each
    for item in items:
        assert item["positive_text"] not in item["negative_text"].split(" and ")
    assert used <= len(decodes)
    spec = test.specs[0]
    assert spec.positive_caption != spec.negative_caption
    before = len(decodes)
    test[0]
    assert len(decodes) == before + 2  # the target and its one interferer, found by key
