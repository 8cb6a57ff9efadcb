"""Separation objective and metrics, each named for what it computes.

- **SNR**: plain signal-to-noise ratio ``10 log10(|s|^2 / |s - s_hat|^2)``.
- **SI-SNR / SI-SDR**: scale-invariant SNR (the same quantity; torchmetrics' SI-SDR with
  zero-mean signals).
- **SDR**: BSS-eval style signal-to-distortion ratio (torchmetrics ``signal_distortion_ratio``:
  a 512-tap distortion filter is allowed), which is what CLAPSep reports as SDR.
- An **i** suffix is the improvement over using the mixture itself as the estimate, so the
  mixture scores exactly 0 dB on every ``*i`` metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchmetrics.functional.audio import (
    scale_invariant_signal_distortion_ratio,
    scale_invariant_signal_noise_ratio,
    signal_distortion_ratio,
    signal_noise_ratio,
)

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def snr(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Plain SNR in dB per row (``[..., T] -> [...]``)."""
    return signal_noise_ratio(estimate.float(), target.float())


def si_snr(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SNR in dB per row (zero-mean)."""
    return scale_invariant_signal_noise_ratio(estimate.float(), target.float())


def si_sdr(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SDR in dB per row (zero-mean; equals SI-SNR)."""
    return scale_invariant_signal_distortion_ratio(estimate.float(), target.float(), zero_mean=True)


def sdr(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BSS-eval style SDR in dB per row (torchmetrics, 512-tap filter, computed in float64)."""
    estimate, target = estimate.double(), target.double()
    if estimate.device.type == "cpu" and estimate.dim() > 1 and estimate.shape[0] > 1:
        # torch 2.11's CPU batched LU solve (MKL) returns invalid pivots with more than one
        # thread; one row at a time is correct and costs little next to the 512-tap solve.
        rows = [signal_distortion_ratio(e[None], t[None]) for e, t in zip(estimate, target)]
        return torch.cat(rows).float()
    return signal_distortion_ratio(estimate, target).float()


#: Reported metrics: name -> per-row metric. Improvements are taken against the mixture.
METRICS: dict[str, Metric] = {"sdr": sdr, "si_sdr": si_sdr, "snr": snr}


def improvement(metric: Metric, estimate: torch.Tensor, mixture: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``metric(estimate, target) - metric(mixture, target)`` per row."""
    return metric(estimate, target) - metric(mixture, target)


def separation_metrics(estimate: torch.Tensor, mixture: torch.Tensor, target: torch.Tensor,
                       names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Reported metrics per row: absolute ``sdr``, ``si_sdr``, ``snr`` and their ``*i``
    (``names`` picks some of :data:`METRICS`; default all)."""
    out = {}
    for name in names if names is not None else METRICS:
        metric = METRICS[name]
        value = metric(estimate, target)
        out[name] = value
        out[f"{name}i"] = value - metric(mixture, target)
    return out


def separation_loss(estimate: torch.Tensor, target: torch.Tensor, snr_weight: float = 0.9) -> torch.Tensor:
    """CLAPSep's objective ``-(w * SNR + (1 - w) * SI-SNR)``, averaged over the batch."""
    return -(snr_weight * snr(estimate, target) + (1.0 - snr_weight) * si_snr(estimate, target)).mean()
