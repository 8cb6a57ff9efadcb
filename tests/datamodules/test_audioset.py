"""AudioSet official metadata, label captions, keyword table and rebalancing samplers."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from clapkit.datamodules.audioset import AudioSetDataModule, read_segments
from clapkit.datamodules.captions import CaptionTemplate, join_names
from clapkit.datamodules.clips import LayoutError
from clapkit.datamodules.pipeline import AudioPolicy
from clapkit.datamodules.sampling import ClassBalancedSampler, WeightedLabelSampler, inverse_frequency_weights
from helpers.fixtures import AS_CLASSES, write_audioset

POLICY = AudioPolicy(sample_rate=16000, clip_seconds=0.5)


def test_segments_labels_and_captions(tmp_path):
    truth = write_audioset(tmp_path)
    (tmp_path / "eval_segments" / f"Y{truth.keys[-1].rsplit('_', 1)[0]}.wav").unlink()  # an unavailable video
    dm = AudioSetDataModule(str(tmp_path), sampler="none", audio=POLICY, batch_size=4, num_workers=0)
    assert dm.class_names == [n for _, n in AS_CLASSES] and dm.multi_label
    train = dm.sets["fit"].records
    assert [r.key for r in train] == truth.keys[:10]
    for rec in train:
        assert rec.label == truth.labels[rec.key]
        names = [AS_CLASSES[i][1] for i in rec.label]
        assert rec.texts == ["The sound of " + join_names(names)]
    batches = list(dm.val_dataloader())
    keys = [k for b in batches for k in b["key"]]
    assert keys == truth.keys[10:13]
    target = torch.cat([b["label"] for b in batches])
    assert target.shape == (3, 5)
    for k, row in zip(keys, target):
        assert torch.nonzero(row).flatten().tolist() == truth.labels[k]
    assert "captions" not in batches[0]


def test_keyword_captions_and_ontology_names(tmp_path):
    truth = write_audioset(tmp_path)
    (tmp_path / "captions.csv").write_text('keyword,caption\nMusic,a band plays a song\n/m/04rlf,music plays\n'
                                           '"Dog;Bark",a dog barks loudly\n')
    (tmp_path / "ontology.json").write_text('[{"id": "/m/04rlf", "name": "Music (ontology)"}]')
    dm = AudioSetDataModule(str(tmp_path), ontology="ontology.json", keyword_captions="captions.csv",
                            template=CaptionTemplate(multiple="The sounds of {}"), sampler="none",
                            audio=POLICY, num_workers=0)
    dm.setup()
    music = dm.sets["fit"].records[0]
    assert truth.labels[music.key] == [4]
    assert music.texts == ["music plays", "The sound of Music (ontology)"]
    dog_bark = [r for r in dm.sets["fit"].records if r.label == [2, 3]]
    for rec in dog_bark:
        assert rec.texts == ["a dog barks loudly", "The sounds of Dog and Bark"]


def test_segment_header_is_checked(tmp_path):
    bad = tmp_path / "segments.csv"
    bad.write_text('--abc, 0.000, 10.000, "/m/09x0r"\n')
    with pytest.raises(LayoutError, match=r"segments\.csv: expected a comment line"):
        read_segments(bad)


def test_samplers_rebalance_rare_classes(tmp_path):
    labels = [[0]] * 90 + [[1]] * 9 + [[2, 0]]
    weights = inverse_frequency_weights(labels, 3)
    assert weights[99] == pytest.approx(1 / 91 + 1)
    for sampler_cls in (WeightedLabelSampler, ClassBalancedSampler):
        sampler = sampler_cls(labels, 3, num_samples=3000, seed=1)
        first, second = list(sampler), list(sampler)
        assert len(first) == 3000 and first != second  # new draw every epoch
        again = sampler_cls(labels, 3, num_samples=3000, seed=1)
        assert list(again) == first  # same seed, same epoch -> same indices on every rank
        counts = Counter(labels[i][0] for i in first)
        rare = sum(1 for i in first if i == 99)
        assert counts[1] > 600 and rare > 300, (sampler_cls, counts, rare)


def test_datamodule_uses_the_balanced_sampler(tmp_path):
    write_audioset(tmp_path)
    dm = AudioSetDataModule(str(tmp_path), samples_per_epoch=40, audio=POLICY, batch_size=8, num_workers=0)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, ClassBalancedSampler) and len(loader) == 5
    batch = next(iter(loader))
    assert batch["label"].shape == (8, 5) and len(batch["text"]) == 8
    # the only Music clip (index 0) is drawn once per round over the 5 classes: 8 rounds in 40 draws
    assert list(loader.sampler).count(0) >= 8
