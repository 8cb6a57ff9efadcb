"""GlobalBatchNorm: two gloo processes normalise (and backpropagate) like one process on the whole batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from clapkit.callbacks.sync_batchnorm import GlobalBatchNorm, PortableSyncBatchNorm


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 5, 3))


def _data() -> torch.Tensor:
    return torch.randn(8, 1, 6, 5, generator=torch.Generator().manual_seed(1)) * 3 + 5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = PortableSyncBatchNorm().apply(_model())
        x = _data().chunk(world)[rank]
        # every rank's loss is its share of the global mean, as DDP would average gradients
        loss = model(x).square().sum() / 8.0
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        for g in grads:
            dist.all_reduce(g)
        bn = model[1]
        torch.save({"grads": grads, "mean": bn.running_mean, "var": bn.running_var}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_apply_and_revert_keep_state_dict():
    model = _model()
    keys = set(model.state_dict())
    synced = PortableSyncBatchNorm().apply(model)
    assert isinstance(synced[1], GlobalBatchNorm)
    assert set(synced.state_dict()) == keys
    reverted = PortableSyncBatchNorm().revert(synced)
    assert type(reverted[1]) is nn.BatchNorm2d
    assert set(reverted.state_dict()) == keys


def test_single_process_matches_batchnorm():
    plain, synced = _model(), PortableSyncBatchNorm().apply(_model())
    x = _data()
    torch.testing.assert_close(synced(x), plain(x))
    torch.testing.assert_close(synced[1].running_var, plain[1].running_var)


def _run_workers(out_dir: str) -> None:
    # A fresh interpreter forks the two ranks: forking pytest itself is unsafe once other tests
    # started threads (OpenMP pools, W&B's service) whose locks the children would inherit.
    torch.set_num_threads(1)
    mp.start_processes(_worker, args=(2, _free_port(), out_dir), nprocs=2, join=True, start_method="fork")


def test_two_gloo_processes_match_one_process(tmp_path):
    done = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    reference = _model()
    (reference(_data()).square().sum() / 8.0).backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for g, p in zip(got["grads"], reference.parameters()):
            torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got["mean"], reference[1].running_mean)
        torch.testing.assert_close(got["var"], reference[1].running_var)


if __name__ == "__main__":
    _run_workers(sys.argv[1])
