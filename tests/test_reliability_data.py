"""Nothing silently wrong in training data: every unreadable shard met in an epoch is counted, not only those before
the first batch."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from clapkit.datamodules.pipeline import AudioPolicy
from clapkit.datamodules.shards import resolve
from clapkit.datamodules.webdataset import ShardStream
from helpers.fixtures import write_shards

POLICY = AudioPolicy(sample_rate=8000, clip_seconds=0.25)


def _corpus(root):
    """Shards 0-1 good (6 samples each); 2 truncated mid-member, 3 garbage bytes, 4 zero bytes."""
    written = write_shards(root, 3, 6)
    data = (root / "2.tar").read_bytes()
    (root / "2.tar").write_bytes(data[: len(data) // 2 + 100])
    (root / "3.tar").write_bytes(b"this is not a tar file" * 50)
    (root / "4.tar").write_bytes(b"")
    sizes = json.loads((root / "sizes.json").read_text())
    sizes.update({"3.tar": 6, "4.tar": 6})
    (root / "sizes.json").write_text(json.dumps(sizes))
    return written


def _skips(batches) -> Counter:
    total = Counter()
    for batch in batches:
        total.update(batch["skipped"])
    return total


def test_eval_counts_every_bad_shard_after_the_first_batch(tmp_path):
    written = _corpus(tmp_path)
    stream = ShardStream([resolve(str(tmp_path))], POLICY, batch_size=2, stage="eval")
    batches = list(stream)
    keys = [k for b in batches for k in b["key"]]
    assert _skips(batches)["bad_shard"] == 3
    assert set(written.keys[:12]) <= set(keys)  # no sample of a good shard lost


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_train_counts_every_bad_shard_met(tmp_path, seed, caplog):
    _corpus(tmp_path)
    stream = ShardStream([resolve(str(tmp_path))], POLICY, batch_size=2, stage="train", samples_per_epoch=16,
                         shuffle_buffer=1, seed=seed)
    with caplog.at_level("WARNING", logger="clapkit.datamodules.webdataset"):
        batches = list(stream)
    met = sum("skipping unreadable shard" in r.getMessage() for r in caplog.records)
    assert len(batches) == 8 and met >= 1
    # every bad shard the epoch read (a warning each) is in the epoch's counts
    assert _skips(batches)["bad_shard"] == met


def test_resumable_sampler_order_state_and_skip():
    from clapkit.datamodules.resumable import ResumableLoader, ResumableSampler

    data = list(range(10))
    sampler = ResumableSampler(data, seed=3)
    sampler.set_epoch(2)
    epoch2 = list(sampler)
    assert sorted(epoch2) == data and epoch2 == ResumableSampler(data, seed=3).order(2) != sampler.order(1)
    loader = ResumableLoader(data, batch_size=3, sampler=sampler, drop_last=True)
    sampler.mark(2, 2)  # two batches of epoch 2 trained on
    state = loader.state_dict()
    fresh = ResumableSampler(data, seed=99)
    resumed = ResumableLoader(data, batch_size=3, sampler=fresh, drop_last=True)
    resumed.load_state_dict(state)
    assert [b.tolist() for b in resumed] == [epoch2[6:9]]  # the rest of epoch 2, same seed
    assert list(fresh) == fresh.order(2)  # the skip applies once
    sampler.mark(2, 3)  # the whole epoch: continue with the next
    again = ResumableSampler(data, seed=0)
    ResumableLoader(data, batch_size=3, sampler=again, drop_last=True).load_state_dict(loader.state_dict())
    assert again.epoch == 3 and list(again) == again.order(3)


def test_random_mixtures_depend_on_epoch_and_index_only():
    from clapkit.datamodules.mixtures import ClipPolicy, Mixer, MixtureDataset
    from helpers.separation import synthetic_source

    def make():
        return MixtureDataset(synthetic_source(8, split="train"), ClipPolicy(sample_rate=32000, clip_seconds=0.5),
                              Mixer())

    first, second = make(), make()
    first.set_epoch(1)
    second.set_epoch(1)
    _ = second[0], second[5]  # draws made before must not change what index 3 gives
    a, b = first[3], second[3]
    assert a["key"] == b["key"] and (a["mixture"] == b["mixture"]).all()
    second.set_epoch(2)
    assert not (second[3]["mixture"] == a["mixture"]).all()
