"""The embedded synthetic corpus: determinism, held-out classes, audible attributes, files, batches."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from clapkit.audio import load_audio
from clapkit.datamodules.synthetic import (
    ALL_CLASSES,
    ENVELOPES,
    REGISTERS,
    RHYTHMS,
    SOURCES,
    SoundAttributes,
    SyntheticCLAPDataModule,
    SyntheticSoundCorpus,
    write_corpus,
)


def _centroid(wave: np.ndarray, sr: int) -> float:
    power = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / sr)
    return float((power * freqs).sum() / power.sum())


def test_deterministic_by_seed():
    a, b = SyntheticSoundCorpus(seed=3), SyntheticSoundCorpus(seed=3)
    for split in ("train", "val_retrieval", "test_zeroshot"):
        x, y = a.sample(split, 11), b.sample(split, 11)
        np.testing.assert_array_equal(x.waveform, y.waveform)
        assert x.texts == y.texts and x.label == y.label and x.key == y.key
    other = SyntheticSoundCorpus(seed=4).sample("train", 11)
    assert not np.array_equal(other.waveform, a.sample("train", 11).waveform)
    # splits differ from each other too
    assert not np.array_equal(a.sample("val_retrieval", 0).waveform, a.sample("test_retrieval", 0).waveform)


def test_heldout_classes_are_disjoint_from_training_yet_compositional():
    corpus = SyntheticSoundCorpus()
    held, train = set(corpus.heldout_classes), set(corpus.train_classes)
    assert held and not held & train and held | train == set(ALL_CLASSES)
    seen = {corpus.attributes("train", i, corpus.rng("train", i)).class_name for i in range(500)}
    assert seen == train
    assert not seen & held
    # every attribute value of every held-out class occurs in some training class
    for name in held:
        reg, src, rhy = ALL_CLASSES[name]
        assert any(ALL_CLASSES[t][0] == reg for t in train)
        assert any(ALL_CLASSES[t][1] == src for t in train)
        assert any(ALL_CLASSES[t][2] == rhy for t in train)
    with pytest.raises(ValueError, match="unknown held-out"):
        SyntheticSoundCorpus(heldout_classes=["purple siren"])


def test_eval_splits_have_the_right_content():
    corpus = SyntheticSoundCorpus()
    zero = [corpus.sample("val_zeroshot", i) for i in range(18)]
    assert all(s.texts == [] and corpus.heldout_classes[s.label] == s.meta["class_name"] for s in zero)
    assert {s.label for s in zero} == set(range(len(corpus.heldout_classes)))
    attrs = [corpus.attributes("val_retrieval", i, corpus.rng("val_retrieval", i)) for i in range(100)]
    assert len({(a.class_name, a.envelope) for a in attrs}) == 100  # distinct descriptions: well posed
    assert all(a.class_name in corpus.train_classes for a in attrs)
    retrieval = [corpus.sample("val_retrieval", i) for i in range(3)]
    assert all(len(s.texts) == 5 and s.label is None for s in retrieval)


def test_captions_describe_the_attributes():
    corpus = SyntheticSoundCorpus()
    rng = np.random.default_rng(0)
    attrs = SoundAttributes(source="chirp", register="high", rhythm="repeating", envelope="fade_out")
    captions = corpus.captions(attrs, rng)
    assert captions[0] == "a high chirp repeating, fading out"
    assert len(set(captions)) == len(captions) == 5
    assert attrs.class_name == "high chirp repeating"


def test_waveforms_and_audible_attributes():
    corpus = SyntheticSoundCorpus(sample_rate=16000, clip_seconds=0.5)
    rng = np.random.default_rng(1)
    centroids = {}
    for reg in REGISTERS:
        wave = corpus.render(SoundAttributes("tone", reg, "continuous", "steady"), rng)
        assert wave.dtype == np.float32 and wave.shape == (8000,)
        assert np.isfinite(wave).all() and 0.2 < np.abs(wave).max() <= 1.0
        centroids[reg] = _centroid(wave, 16000)
    assert centroids["low"] < centroids["mid"] < centroids["high"]
    chirp = corpus.render(SoundAttributes("chirp", "mid", "continuous", "steady"), rng)
    assert _centroid(chirp[4000:], 16000) > _centroid(chirp[:4000], 16000)  # rising
    fade = corpus.render(SoundAttributes("noise", "mid", "continuous", "fade_in"), rng)
    assert np.abs(fade[-2000:]).mean() > 3 * np.abs(fade[:2000]).mean()
    single = corpus.render(SoundAttributes("buzz", "low", "single", "steady"), rng)
    assert (np.abs(single) < 0.01).mean() > 0.3  # one event leaves most of the clip quiet
    for src in SOURCES:
        for rhy in RHYTHMS:
            for env in ENVELOPES:
                assert np.isfinite(corpus.render(SoundAttributes(src, "high", rhy, env), rng)).all()


def test_write_corpus_round_trip(tmp_path):
    corpus = SyntheticSoundCorpus(sample_rate=16000, clip_seconds=0.25)
    csv_path = write_corpus(tmp_path, 3, split="val_zeroshot", corpus=corpus)
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 3 and rows[0]["file_name"] == "val_zeroshot_000000.wav"
    assert rows[0]["label"] == "0" and rows[0]["class_name"] == corpus.heldout_classes[0]
    assert rows[0]["caption_1"] and rows[0]["caption_5"]
    wave, rate = load_audio(tmp_path / "audio" / rows[1]["file_name"])
    assert rate == 16000
    np.testing.assert_allclose(wave, corpus.sample("val_zeroshot", 1).waveform, atol=1e-4)
    assert not list(tmp_path.glob(".metadata-*"))  # no temp file left behind


def test_datamodule_batches_follow_the_eval_protocol():
    dm = SyntheticCLAPDataModule(
        sample_rate=16000, clip_seconds=0.25, train_size=8, retrieval_size=6, zeroshot_per_class=1,
        batch_size=4, eval_batch_size=5,
    )
    train = next(iter(dm.train_dataloader()))
    assert train["audio"].shape == (4, 4000) and len(train["text"]) == 4 and "label" not in train
    retrieval, zeroshot = dm.val_dataloader()
    batch = next(iter(retrieval))
    assert len(batch["captions"]) == 5 and all(len(c) == 5 for c in batch["captions"]) and "label" not in batch
    batch = next(iter(zeroshot))
    assert batch["label"].dtype.is_floating_point is False and "captions" not in batch
    assert len(dm.class_names) == 9 and dm.eval_set_names == ["retrieval", "zeroshot"]
    assert len(retrieval.dataset) == 6 and len(zeroshot.dataset) == 9
    assert [len(loader.dataset) for loader in dm.test_dataloader()] == [6, 9]


def test_workers_render_the_same_clips():
    kwargs = dict(sample_rate=16000, clip_seconds=0.25, retrieval_size=4, zeroshot_per_class=1, eval_batch_size=4)
    plain = next(iter(SyntheticCLAPDataModule(num_workers=0, **kwargs).val_dataloader()[0]))
    workers = next(iter(SyntheticCLAPDataModule(num_workers=2, **kwargs).val_dataloader()[0]))
    np.testing.assert_array_equal(plain["audio"].numpy(), workers["audio"].numpy())
    assert plain["captions"] == workers["captions"]


def test_sibling_groups_share_a_training_class_and_differ_in_envelope():
    corpus = SyntheticSoundCorpus(sibling_group=3)
    groups = [[corpus.attributes("train", 3 * g + j, corpus.rng("train", 3 * g + j)) for j in range(3)]
              for g in range(400)]
    for group in groups:
        assert len({a.class_name for a in group}) == 1
        assert sorted(a.envelope for a in group) == sorted(ENVELOPES)
    # held-out classes stay out of training; every training class still occurs
    seen = {group[0].class_name for group in groups}
    assert not seen & set(corpus.heldout_classes) and seen == set(corpus.train_classes)
    with pytest.raises(ValueError, match="sibling_group"):
        SyntheticSoundCorpus(sibling_group=4)


def test_datamodule_keeps_sibling_groups_in_one_batch():
    dm = SyntheticCLAPDataModule(sample_rate=16000, clip_seconds=0.25, train_size=12, batch_size=4,
                                 sibling_group=2)
    loader = dm.train_dataloader()
    assert len(loader) == 3  # 6 groups of 2, 2 groups a batch
    for batch in loader:
        indices = [int(key.split("/")[1]) for key in batch["key"]]
        assert batch["audio"].shape == (4, 4000) and len(batch["text"]) == 4
        assert [i // 2 for i in indices[::2]] == [i // 2 for i in indices[1::2]]
        assert all(i % 2 == 0 for i in indices[::2])
    seen = sorted(int(key.split("/")[1]) for batch in loader for key in batch["key"])
    assert seen == list(range(12))
    with pytest.raises(ValueError, match="multiple of sibling_group"):
        SyntheticCLAPDataModule(batch_size=5, sibling_group=2)
