"""Log training throughput, step time, peak memory and model FLOPs utilisation (MFU).

Timing is taken over windows of ``window`` optimizer steps with one device synchronisation
at each window edge, so measuring costs nothing between edges. FLOPs per sample are
either given (``flops_per_sample``) or counted once with ``torch.utils.flop_counter`` around
the first training batch (forward + backward + optimizer), which is excluded from timing.
MFU divides achieved FLOP/s by the device's peak for the run's compute dtype
(``lightning.fabric.utilities.throughput.get_available_flops``: H100 SXM 989 TFLOP/s bf16).
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.callbacks import Callback


def batch_size_of(batch: Any) -> int:
    """Rows in a batch: the leading size of ``batch["audio"]`` or of its first tensor."""
    if isinstance(batch, dict):
        if isinstance(batch.get("audio"), torch.Tensor):
            return int(batch["audio"].shape[0])
        values = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    else:
        values = [batch]
    for value in values:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
        if isinstance(value, (list, tuple)):
            return len(value)
    raise ValueError(f"cannot infer the batch size of a {type(batch).__name__}")


def compute_dtype(trainer: pl.Trainer) -> torch.dtype:
    """The matmul dtype the trainer's precision implies (bf16/fp16 under mixed precision)."""
    precision = str(trainer.precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


class Throughput(Callback):
    """Training samples/s, step time, peak memory and MFU, logged as ``perf/*``.

    Args:
        window: optimizer steps per measurement window (the first window starts after the
            first step, so compilation and FLOP counting are excluded).
        flops_per_sample: training FLOPs per sample (forward + backward); ``None`` counts them
            on the first batch when ``count_flops`` is set.
        count_flops: count FLOPs on the first training batch with ``FlopCounterMode``.
        log_to_progress_bar: also show samples/s in the progress bar.
    """

    def __init__(
        self,
        window: int = 20,
        flops_per_sample: float | None = None,
        count_flops: bool = True,
        log_to_progress_bar: bool = False,
    ):
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self.flops_per_sample = flops_per_sample
        self.count_flops = count_flops and flops_per_sample is None
        self.log_to_progress_bar = log_to_progress_bar
        self._counter = None
        self._window_start: float | None = None
        self._window_samples = 0
        self._window_steps = 0
        self.last: dict[str, float] = {}

    def _sync(self, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.count_flops and self._counter is None and self.flops_per_sample is None:
            from torch.utils.flop_counter import FlopCounterMode

            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
            self._counter_rows = batch_size_of(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            total = self._counter.get_total_flops()
            self._counter = None
            self.count_flops = False
            if total > 0:
                self.flops_per_sample = total / self._counter_rows
            self._sync(pl_module)
            self._window_start = time.perf_counter()
            return
        if self._window_start is None:
            self._sync(pl_module)
            self._window_start = time.perf_counter()
            if pl_module.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(pl_module.device)
            return
        self._window_samples += batch_size_of(batch)
        self._window_steps += 1
        if self._window_steps >= self.window:
            self._sync(pl_module)
            now = time.perf_counter()
            self._emit(trainer, pl_module, now - self._window_start)
            self._window_start, self._window_samples, self._window_steps = now, 0, 0

    def _emit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, elapsed: float) -> None:
        world = trainer.world_size
        samples_per_sec = self._window_samples * world / elapsed
        metrics = {
            "perf/train_samples_per_sec": samples_per_sec,
            "perf/step_time_ms": 1000.0 * elapsed / self._window_steps,
        }
        if pl_module.device.type == "cuda":
            metrics["perf/peak_memory_gb"] = torch.cuda.max_memory_allocated(pl_module.device) / 1e9
        if self.flops_per_sample:
            achieved = self.flops_per_sample * samples_per_sec / world  # per device
            metrics["perf/tflops_per_device"] = achieved / 1e12
            peak = get_available_flops(pl_module.device, compute_dtype(trainer))
            if peak:
                metrics["perf/mfu"] = achieved / peak
        self.last = metrics
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=True, on_epoch=False, rank_zero_only=True,
                          prog_bar=self.log_to_progress_bar and name == "perf/train_samples_per_sec")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # the dataloader restart between epochs is not a training step
        self._window_start, self._window_samples, self._window_steps = None, 0, 0
