"""Shard streams resume mid-epoch: a loader restored from another loader's state, after any
number of batches, yields exactly the batches (samples, random crops, caption picks, skip
counts) the uninterrupted loader yields from there on, per rank, with several workers, a
shuffle buffer, two mixed sources and bad samples."""

from __future__ import annotations

import pytest
import torch

from clapkit.datamodules.pipeline import AudioPolicy
from clapkit.datamodules.shards import resolve
from clapkit.datamodules.stream_state import EpochLoader
from clapkit.datamodules.webdataset import ShardStream
from helpers.fixtures import write_shards

# a random crop of longer clips, so the decoding draws matter
POLICY = AudioPolicy(sample_rate=8000, clip_seconds=0.1)


def _stream(root, rank: int, workers: int) -> ShardStream:
    sources = [resolve(str(root / "a")), resolve(str(root / "b"))]
    stream = ShardStream(sources, POLICY, batch_size=3, stage="train", shuffle_buffer=4, seed=7)
    stream.rank, stream.world_size, stream.num_workers_hint = rank, 2, workers
    return stream


def _loader(root, rank: int, workers: int, epoch: list[int]) -> EpochLoader:
    return EpochLoader(_stream(root, rank, workers), batch_size=None, num_workers=workers,
                       epoch_fn=lambda: epoch[0])


def _key(batch) -> tuple:
    return (tuple(batch["key"]), tuple(batch["text"]), round(float(batch["audio"].double().sum()), 9),
            tuple(sorted(batch["skipped"].items())))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_shards(root / "a", 5, 5, list_text=True, seconds=0.3, bad={3: "corrupt", 11: "silent"})
    write_shards(root / "b", 3, 4, start=100, list_text=True, seconds=0.3)
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_shard_stream_sees_exactly_the_uninterrupted_batches(shards, workers):
    for rank in range(2):
        epoch = [3]
        loader = _loader(shards, rank, workers, epoch)
        full = [_key(b) for b in loader]
        assert len(full) == len(loader.dataset) >= 7  # ceil(37 / (3 * 2)), rounded up to the workers
        epoch[0] = 4
        next_epoch = [_key(b) for b in loader]
        assert sorted(next_epoch) != sorted(full)
        for stop in (1, 4):  # 4 with 2 workers: worker 0 produced 2, worker 1 two as well; 1: uneven
            epoch[0] = 3
            killed = _loader(shards, rank, workers, epoch)
            for trained, batch in enumerate(killed, start=1):
                killed.mark(3, trained, batch["stream"])
                if trained == stop:
                    break
            state = killed.state_dict()
            resumed_epoch = [3]
            resumed = _loader(shards, rank, workers, resumed_epoch)
            resumed.load_state_dict(state)
            assert [_key(b) for b in resumed] == full[stop:], (rank, workers, stop)
            resumed_epoch[0] = 4  # the next epoch starts from its beginning, as uninterrupted
            assert [_key(b) for b in resumed] == next_epoch


def test_state_holds_every_slot_and_loads_with_weights_only(shards):
    import io

    epoch = [0]
    loader = _loader(shards, 1, 2, epoch)
    for trained, batch in enumerate(loader, start=1):
        loader.mark(0, trained, batch["stream"])
        if trained == 3:
            break
    state = loader.state_dict()
    assert state["epoch"] == 0 and state["world_size"] == 2 and list(state["ranks"]) == [1]
    slots = {s for s, _, _ in state["ranks"][1]["slots"]}
    assert slots == {2, 3}  # rank 1's two workers
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == state
