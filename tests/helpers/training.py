"""Tiny towers and batches for contrastive-training tests (milliseconds on CPU, no files), and a
callback telling which weights a fit moved."""

from __future__ import annotations

import hashlib

import torch
from lightning.pytorch import Callback
from torch import nn

from clapkit.encoders.base import AudioEncoder, EncoderOutput, TextEncoder, module_device
from clapkit.encoders.projection import LinearProjection, MLPProjection
from clapkit.encoders.tower import Tower


class TinyAudio(AudioEncoder):
    """Frames the waveform, maps each frame through Linear-BatchNorm-ReLU, mean-pools valid frames.

    Has a BatchNorm so tests can check frozen towers keep their running statistics.
    """

    def __init__(self, frame: int = 32, width: int = 16, rate: int = 16000):
        super().__init__()
        self.frame, self.width, self.rate = frame, width, rate
        self.linear = nn.Linear(frame, width)
        self.norm = nn.BatchNorm1d(width)

    @property
    def output_dim(self) -> int:
        return self.width

    @property
    def sample_rate(self) -> int:
        return self.rate

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        batch, samples = waveform.shape
        frames = waveform[:, : samples - samples % self.frame].reshape(batch, -1, self.frame)
        hidden = self.linear(frames)  # [B, F, W]
        hidden = torch.relu(self.norm(hidden.transpose(1, 2)).transpose(1, 2))
        mask = torch.ones(hidden.shape[:2], device=hidden.device)
        if lengths is not None:
            valid = (lengths.to(hidden.device) // self.frame).clamp(min=1)
            mask = (torch.arange(hidden.shape[1], device=hidden.device) < valid[:, None]).float()
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return EncoderOutput(embedding=pooled, tokens=hidden)


class TinyText(TextEncoder):
    """Hashes character trigrams into an EmbeddingBag, then a LayerNorm (deterministic, no vocab file)."""

    def __init__(self, buckets: int = 257, width: int = 16):
        super().__init__()
        self.buckets, self.width = buckets, width
        self.bag = nn.EmbeddingBag(buckets, width, mode="mean")
        self.norm = nn.LayerNorm(width)

    @property
    def output_dim(self) -> int:
        return self.width

    def _ids(self, text: str) -> list[int]:
        padded = f"  {text.lower()} "
        grams = [padded[i : i + 3] for i in range(len(padded) - 2)]
        return [int(hashlib.md5(g.encode()).hexdigest()[:8], 16) % self.buckets for g in grams]

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        ids = [self._ids(t) for t in texts]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
        return {"input_ids": torch.tensor([x for i in ids for x in i]), "offsets": offsets}

    def forward(self, texts) -> EncoderOutput:
        tokens = self.tokenize(texts) if isinstance(texts, (list, tuple)) else texts
        device = module_device(self)
        pooled = self.bag(tokens["input_ids"].to(device), tokens["offsets"].to(device))
        return EncoderOutput(embedding=self.norm(pooled))


def tiny_towers(dim: int = 8, three: bool = False) -> dict[str, Tower]:
    """``audio`` (MLP head) and ``text`` (linear head) towers; ``three`` adds a second text-like ``image`` stand-in."""
    towers = {
        "audio": Tower(TinyAudio(), lambda d: MLPProjection(d, out_dim=dim, hidden_dim=12)),
        "text": Tower(TinyText(), lambda d: LinearProjection(d, out_dim=dim)),
    }
    if three:
        towers["image"] = Tower(TinyText(buckets=101), lambda d: LinearProjection(d, out_dim=dim))
    return towers


def tiny_batch(
    n: int = 6, samples: int = 320, seed: int = 0, captions: int = 2, dtype: torch.dtype = torch.float32
) -> dict:
    """A batch dict in the :mod:`clapkit.datamodules.base` layout with distinct captions."""
    gen = torch.Generator().manual_seed(seed)
    words = ["dog", "bell", "rain", "siren", "engine", "bird", "door", "water", "wind", "drum", "horn", "clock"]
    caps = [[f"a {words[(i + seed) % len(words)]} sound number {i} take {j}" for j in range(captions)] for i in range(n)]
    return {
        "audio": torch.randn(n, samples, generator=gen, dtype=dtype),
        "lengths": torch.full((n,), samples),
        "text": [c[0] for c in caps],
        "captions": caps,
        "key": [f"clip{seed}_{i}" for i in range(n)],
    }


class LossModule(nn.Module):
    """Adapter so DistributedDataParallel can wrap a ContrastiveTask: ``forward(batch) -> loss``."""

    def __init__(self, task):
        super().__init__()
        self.task = task

    def forward(self, batch: dict) -> torch.Tensor:
        return self.task.compute_loss(batch).loss


def slice_batch(batch: dict, start: int, stop: int) -> dict:
    """Rows ``start:stop`` of every entry of a batch dict."""
    return {key: value[start:stop] for key, value in batch.items()}


DDP_CASES = {  # name -> (local_loss, rows per rank)
    "global": (False, (4, 4)),
    "local": (True, (4, 4)),
    "global_uneven": (False, (5, 3)),
}


def ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One gloo rank: DDP-wrapped tiny ContrastiveTask on its slice of a global batch of 8.

    Saves ``{case: {"loss", "grads"}}`` to ``out_dir/rank{rank}.pt``. Towers run in eval mode
    so BatchNorm uses running statistics (per-rank batch statistics are a separate matter,
    handled by SyncBatchNorm), and in float64 so that summation order cannot blur the
    comparison: what is left is the algorithm, which must be exact.
    """
    import os

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from clapkit.lightning_modules import ContrastiveTask

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        batch = tiny_batch(8, seed=5, dtype=torch.float64)
        for case, (local_loss, rows) in DDP_CASES.items():
            torch.manual_seed(0)
            task = ContrastiveTask(tiny_towers(), local_loss=local_loss).double().eval()
            model = DistributedDataParallel(LossModule(task))
            start = sum(rows[:rank])
            loss = model(slice_batch(batch, start, start + rows[rank]))
            loss.backward()
            results[case] = {
                "loss": loss.detach(),
                "grads": {name: p.grad.clone() for name, p in task.named_parameters()},
            }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()



class RecordStartWeights(Callback):
    """Keeps a copy of the module's parameters as fit starts, so a test can tell which moved
    (``trainer.callbacks: [{class_path: helpers.training.RecordStartWeights}]`` in a config)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        self.weights = {name: p.detach().clone() for name, p in pl_module.named_parameters()}


def moved_parameters(trainer, module) -> set[str]:
    """Names of the fitted ``module``'s parameters that differ from what :class:`RecordStartWeights` saw."""
    (recorder,) = [c for c in trainer.callbacks if isinstance(c, RecordStartWeights)]
    return {name for name, p in module.named_parameters() if not torch.equal(p.detach(), recorder.weights[name])}
