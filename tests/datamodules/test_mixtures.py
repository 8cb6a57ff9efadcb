"""MixtureDataModule: deterministic evaluation mixtures, CSV round trip, level matching, queries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clapkit.datamodules.mixtures import (
    ClipPolicy,
    Mixer,
    MixtureDataModule,
    QueryAugment,
    read_specs_csv,
    signal_level,
)
from helpers.separation import SAMPLE_RATE, synthetic_source

CLIP = ClipPolicy(sample_rate=SAMPLE_RATE, clip_seconds=0.5)


def _module(seed=0, **kwargs):
    return MixtureDataModule(train_source=synthetic_source(8, "train"), test_source=synthetic_source(6),
                             clip=CLIP, eval_seed=seed, batch_size=3, num_workers=0, **kwargs)


def test_evaluation_mixtures_identical_across_builds_with_the_same_seed():
    a = next(iter(_module(seed=3).test_dataloader()))
    b = next(iter(_module(seed=3).test_dataloader()))
    assert torch.equal(a["mixture"], b["mixture"]) and torch.equal(a["target"], b["target"])
    assert a["positive_text"] == b["positive_text"] and a["negative_text"] == b["negative_text"]
    c = next(iter(_module(seed=4).test_dataloader()))
    assert not torch.equal(a["mixture"], c["mixture"])


def test_standard_protocol_five_distinct_interferers_per_target_at_0_db():
    specs = _module().eval_specs("test")
    assert len(specs) == 6 * 5
    for start in range(0, len(specs), 5):
        group = specs[start : start + 5]
        assert len({s.source for s in group}) == 1
        assert len({s.noise for s in group}) == 5
        assert all(s.snr_db == (0.0,) and s.negative_caption != s.positive_caption for s in group)


def test_csv_export_and_import_reproduce_the_mixtures(tmp_path):
    module = _module()
    path = module.export_csv(tmp_path / "bench.csv")
    header = path.read_text().splitlines()[0]
    assert header.startswith("source_file,positive_caption,noise_file,negative_caption")
    assert read_specs_csv(path) == module.eval_specs("test")
    from_csv = _module(test_csv=str(path))
    a, b = next(iter(module.test_dataloader())), next(iter(from_csv.test_dataloader()))
    assert torch.equal(a["mixture"], b["mixture"])


def test_rms_level_matching_and_peak_protection():
    rng = np.random.default_rng(0)
    target = (0.5 * rng.standard_normal(16000)).astype(np.float32)
    noise = (0.05 * rng.standard_normal(16000)).astype(np.float32)
    mixture, scaled = Mixer("rms").mix(target, [noise], [0.0], SAMPLE_RATE)
    assert signal_level(scaled, SAMPLE_RATE) - signal_level(mixture - scaled, SAMPLE_RATE) == pytest.approx(0.0, abs=1e-3)
    assert np.abs(mixture).max() == pytest.approx(0.9, rel=1e-5)  # it would have clipped
    assert not np.allclose(scaled, target)  # target scaled together with the mixture
    loud_mix, loud_t = Mixer("lufs").mix(target * 0.1, [noise], [5.0], SAMPLE_RATE)
    assert signal_level(loud_t, SAMPLE_RATE, "lufs") - signal_level(loud_mix - loud_t, SAMPLE_RATE, "lufs") \
        == pytest.approx(5.0, abs=0.1)


def test_training_batches_with_augmented_audio_queries():
    module = _module(query_audio=True, augment=QueryAugment(), snr_range=(-5, 5), num_interferers=(1, 2))
    batch = next(iter(module.train_dataloader()))
    n = int(0.5 * SAMPLE_RATE)
    assert batch["mixture"].shape == batch["target"].shape == (3, n)
    assert batch["positive_audio"].shape == batch["negative_audio"].shape == (3, int(0.5 * 48000))
    assert len(batch["positive_text"]) == len(batch["negative_text"]) == 3
    assert all(p != q for p, q in zip(batch["positive_text"], batch["negative_text"]))
    assert batch["mixture"].abs().max() <= 1.0
