"""Resampling: soxr for numpy in data workers, torchaudio for tensors already on a device."""

from __future__ import annotations

import numpy as np
import soxr

from clapkit.utils import deps


def resample(wave, orig_sr: int, target_sr: int, quality: str = "HQ"):
    """Resample along the last axis.

    numpy input goes through soxr (fast, high quality; what data workers use); a torch tensor
    goes through ``torchaudio.functional.resample`` so it can stay on the accelerator.
    """
    if orig_sr == target_sr:
        return wave
    if deps.is_tensor(wave):
        return deps.torchaudio().functional.resample(wave, orig_sr, target_sr)
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 1:
        return soxr.resample(wave, orig_sr, target_sr, quality=quality).astype(np.float32)
    # soxr wants [T, C]
    return soxr.resample(wave.T, orig_sr, target_sr, quality=quality).T.astype(np.float32)
