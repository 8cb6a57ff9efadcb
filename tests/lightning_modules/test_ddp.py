"""Two CPU processes (gloo, real DistributedDataParallel) reproduce the single-process global batch.

Loss and every tower's gradients (and the logit scale's) must equal the single-process
full-batch result (float64, rtol 1e-5), with the full global matrix, with ``local_loss`` (each rank's value is the
loss over its own rows; their mean is the global loss), and with uneven per-rank batches.
"""

from __future__ import annotations

import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from clapkit.lightning_modules import ContrastiveTask
from clapkit.lightning_modules.losses import contrastive_loss
from helpers.training import DDP_CASES, ddp_worker, slice_batch, tiny_batch, tiny_towers

WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    context = mp.spawn(ddp_worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("DDP workers did not finish within 300 s")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _single_process(local_loss: bool):
    torch.manual_seed(0)
    task = ContrastiveTask(tiny_towers(), local_loss=local_loss).double().eval()
    batch = tiny_batch(8, seed=5, dtype=torch.float64)
    out = task.compute_loss(batch)
    out.loss.backward()
    grads = {name: p.grad for name, p in task.named_parameters()}
    return task, batch, out, grads


@pytest.mark.parametrize("case", list(DDP_CASES))
def test_ddp_matches_single_process(ranks, case):
    local_loss, rows = DDP_CASES[case]
    task, batch, full, grads = _single_process(local_loss)
    rank_losses = [ranks[r][case]["loss"] for r in range(WORLD)]
    if local_loss:
        # rank r's value: loss over its own rows against every column of the global batch
        with torch.no_grad():
            emb = task(batch)
            scale = task.logit_scale("audio", "text")
            logits = scale * emb["audio"] @ emb["text"].T
            target = torch.arange(8)
            for r in range(WORLD):
                lo, hi = sum(rows[:r]), sum(rows[: r + 1])
                a2b = torch.nn.functional.cross_entropy(logits[lo:hi], target[lo:hi])
                b2a = torch.nn.functional.cross_entropy(logits.T[lo:hi], target[lo:hi])
                torch.testing.assert_close(rank_losses[r], (a2b + b2a) / 2, rtol=1e-5, atol=0)
        torch.testing.assert_close(torch.stack(rank_losses).mean(), full.loss.detach(), rtol=1e-5, atol=0)
    else:
        for loss in rank_losses:
            torch.testing.assert_close(loss, full.loss.detach(), rtol=1e-5, atol=0)
    assert len(grads) == len(ranks[0][case]["grads"]) > 0
    for r in range(WORLD):
        for name, grad in grads.items():
            torch.testing.assert_close(ranks[r][case]["grads"][name], grad, rtol=1e-5, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def test_single_process_reference_is_not_a_per_half_loss():
    # Guards the test itself: the global loss differs from the mean of per-half losses, so
    # equality above really needs the gathered features.
    task, batch, full, _ = _single_process(False)
    with torch.no_grad():
        halves = []
        for lo, hi in ((0, 4), (4, 8)):
            emb = task(slice_batch(batch, lo, hi))
            halves.append(contrastive_loss(emb["audio"], emb["text"], task.logit_scale("audio", "text")).loss)
    assert abs(torch.stack(halves).mean().item() - full.loss.item()) > 1e-3
