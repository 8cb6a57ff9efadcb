"""Shard streams: URL forms, rank x worker split, equal epoch lengths, mixing, text/tag parsing."""

from __future__ import annotations

import io
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch

from clapkit.datamodules.pipeline import AudioPolicy
from clapkit.datamodules.shards import ShardSource, Slot, assign_shards, expand_shards, resolve
from clapkit.datamodules.webdataset import EpochLoader, ShardDataModule, ShardStream
from helpers.fixtures import flac_bytes, tone, write_shards

POLICY = AudioPolicy(sample_rate=8000, clip_seconds=0.25)


def _keys(stream: ShardStream, rank: int, world: int, workers: int, epochs: int = 1):
    """Keys per epoch and batch counts seen by one simulated rank through a real DataLoader."""
    stream.rank, stream.world_size, stream.num_workers_hint = rank, world, workers
    loader = EpochLoader(stream, batch_size=None, num_workers=workers)
    out = []
    for _ in range(epochs):
        batches = list(loader)
        out.append(([k for b in batches for k in b["key"]], len(batches)))
    return out


def test_url_forms(tmp_path):
    write_shards(tmp_path / "a", 3, 2)
    d = str(tmp_path / "a")
    assert expand_shards(d) == [f"{d}/{i}.tar" for i in range(3)]
    assert expand_shards(f"{d}/{{0..1}}.tar") == [f"{d}/0.tar", f"{d}/1.tar"]
    assert expand_shards(f"{d}/*.tar") == expand_shards(d)
    assert expand_shards([f"pipe:cat {d}/0.tar"]) == [f"pipe:cat {d}/0.tar"]
    with pytest.raises(FileNotFoundError, match="7.tar: shard not found"):
        expand_shards(f"{d}/7.tar")
    src = resolve(ShardSource(f"{d}/{{0..2}}.tar"))
    assert src.sizes == [2, 2, 2]
    # remote shards take sizes from an explicit file
    remote = resolve(ShardSource([f"pipe:cat {d}/{i}.tar" for i in range(3)], sizes=f"{d}/sizes.json"))
    assert remote.num_samples == 6
    stream = ShardStream([remote], POLICY, batch_size=4, stage="eval")
    assert sorted(k for b in stream for k in b["key"]) == [f"{i:06d}" for i in range(6)]


def test_assignment_is_a_partition():
    for shards in (8, 3, 13):
        seen = Counter()
        for rank in range(2):
            for worker in range(2):
                a = assign_shards(shards, Slot(rank, 2, worker, 2), seed=5, epoch=1)
                if a.stride == 1:
                    seen.update(a.shards)
                else:
                    seen.update((s, a.offset) for s in a.shards)
        assert all(v == 1 for v in seen.values())


def test_two_ranks_two_workers_see_every_sample_once_per_epoch(tmp_path):
    written = write_shards(tmp_path, 8, 6)  # 48 samples
    everything = sorted(written.keys)
    orders = []
    per_rank_batches = []
    epochs: list[list[str]] = [[], []]
    for rank in range(2):
        stream = ShardStream([resolve(str(tmp_path))], POLICY, batch_size=4, stage="train", shuffle_buffer=5)
        for epoch, (keys, batches) in enumerate(_keys(stream, rank, 2, 2, epochs=2)):
            epochs[epoch] += keys
            per_rank_batches.append(batches)
            orders.append(keys)
        assert len(stream) == 6  # 48 / (4 * 2 ranks)
    for keys in epochs:
        assert sorted(keys) == everything  # exactly once across ranks and workers
    assert per_rank_batches == [6, 6, 6, 6]
    assert orders[0] != orders[1]  # reshuffled between epochs


def test_uneven_shards_give_equal_steps_per_rank(tmp_path):
    write_shards(tmp_path / "a", 3, 7)
    write_shards(tmp_path / "b", 2, 2, start=100)
    sources = [resolve(str(tmp_path / "a")), resolve(str(tmp_path / "b"))]
    counts = []
    for rank in range(2):
        stream = ShardStream(sources, POLICY, batch_size=3, stage="train", shuffle_buffer=0)
        (keys, batches), = _keys(stream, rank, 2, 1)
        counts.append(batches)
        assert batches == len(stream) == 5  # ceil(25 / (3 * 2))
        assert len(keys) == 15
    assert counts[0] == counts[1]


def test_eval_reads_exactly_once_even_with_fewer_shards_than_slots(tmp_path):
    write_shards(tmp_path, 2, 5)
    keys = []
    for rank in range(2):
        stream = ShardStream([resolve(str(tmp_path))], POLICY, batch_size=2, stage="eval")
        (got, batches), = _keys(stream, rank, 2, 2)
        assert batches == len(stream)
        keys += got
    assert sorted(keys) == [f"{i:06d}" for i in range(10)]


def test_sources_mix_by_weight(tmp_path):
    write_shards(tmp_path / "a", 2, 10)
    write_shards(tmp_path / "b", 2, 10, start=500)
    a = resolve(ShardSource(str(tmp_path / "a"), weight=3.0))
    b = resolve(ShardSource(str(tmp_path / "b"), weight=1.0))
    stream = ShardStream([a, b], POLICY, batch_size=20, stage="train", samples_per_epoch=800, shuffle_buffer=0)
    keys = [k for batch in stream for k in batch["key"]]
    share = np.mean([int(k) < 500 for k in keys])
    assert len(keys) == 800 and 0.69 < share < 0.81


def test_text_lists_tags_and_fusion_windows(tmp_path):
    write_shards(tmp_path / "s", 1, 4, tags=True, list_text=True, seconds=0.6)
    index = tmp_path / "class_labels_indices.csv"
    index.write_text('index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/0bt9lr,"Dog"\n2,/m/05tny_,"Bark"\n')
    policy = AudioPolicy(sample_rate=8000, clip_seconds=0.25, max_seconds=0.5)
    dm = ShardDataModule(train=str(tmp_path / "s"), val=str(tmp_path / "s"), audio=policy, batch_size=4,
                         num_workers=0, class_index=str(index))
    dm.setup("fit")
    assert dm.class_names == ["Speech", "Dog", "Bark"]
    batch = next(iter(dm.val_dataloader()))
    assert batch["audio"].shape == (4, 4000)
    assert batch["lengths"].tolist() == [4000] * 4  # 0.6 s clips cropped to max_seconds
    assert batch["captions"][1] == ["caption 1 a", "caption 1 b"]
    assert batch["text"][1] in batch["captions"][1]
    assert torch.equal(batch["label"], torch.tensor([[0, 1, 1], [1, 0, 0], [0, 1, 1], [1, 0, 0.0]]))
    train = next(iter(dm.train_dataloader()))
    assert set(train) >= {"audio", "lengths", "text", "captions", "label", "skipped", "key"}


def test_bad_samples_are_skipped_and_reported(tmp_path):
    write_shards(tmp_path, 2, 6, bad={1: "corrupt", 2: "empty", 7: "silent", 8: "nan"})
    with tarfile.open(tmp_path / "2.tar", "w") as tar:  # broken JSON, audio-less and caption-less samples
        for name, data in (("a.flac", flac_bytes(tone(1))), ("a.json", b"{oops"), ("b.json", b'{"text": "x"}'),
                           ("c.flac", flac_bytes(tone(2))), ("c.json", b'{"text": []}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    stream = ShardStream([resolve(str(tmp_path))], POLICY, batch_size=3, stage="eval")
    batches = list(stream)
    skipped = Counter()
    for b in batches:
        skipped.update(b["skipped"])
    assert skipped == {"unreadable": 1, "empty": 1, "silent": 1, "nonfinite": 1, "bad_metadata": 1,
                       "missing": 1, "no_text": 1}
    assert sum(len(b["key"]) for b in batches) == 8


def test_missing_sizes_need_samples_per_epoch(tmp_path):
    write_shards(tmp_path, 1, 2)
    (tmp_path / "sizes.json").unlink()
    with pytest.raises(ValueError, match="set samples_per_epoch"):
        ShardStream([resolve(str(tmp_path))], POLICY, batch_size=2, stage="train")
    stream = ShardStream([resolve(str(tmp_path))], POLICY, batch_size=2, stage="train", samples_per_epoch=4)
    assert len(list(stream)) == 2
    bad = tmp_path / "bad" / "sizes.json"
    bad.parent.mkdir()
    write_shards(bad.parent, 1, 1)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="sizes.json: not valid JSON"):
        resolve(str(bad.parent))
