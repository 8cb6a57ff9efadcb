"""Tiny AVC/AVSA models and data for the spatial tests (seconds on CPU)."""

from __future__ import annotations

from functools import partial

import torch

from clapkit.datamodules.foa import Synthetic360DataModule
from clapkit.encoders.spatial import CropImageEncoder, SpatialAudioEncoder, ViewTransformer
from clapkit.lightning_modules.spatial import SpatialAlignmentTask

SR = 16000


def tiny_task(intensity: bool = True, context: bool = False, lr: float = 2e-3, **kwargs) -> SpatialAlignmentTask:
    """A tiny SpatialAlignmentTask on 16 kHz FOA and 32 px crops."""
    return SpatialAlignmentTask(
        SpatialAudioEncoder("tiny", sample_rate=SR, intensity=intensity, n_mels=32, hop_length=160),
        CropImageEncoder("tiny"),
        view_transformer=partial(ViewTransformer, variant="tiny") if context else None,
        optimizer=partial(torch.optim.AdamW, lr=lr, weight_decay=1e-4),
        **kwargs,
    )


def tiny_datamodule(**kwargs) -> Synthetic360DataModule:
    """Synthetic 360 scenes: 3 sources per clip, 0.5 s at 16 kHz, 64x128 frames, 4 views."""
    options = dict(train_size=64, val_size=32, batch_size=16, sample_rate=SR, duration=0.5, height=64,
                   num_views=4, sources_per_clip=3)
    options.update(kwargs)
    return Synthetic360DataModule(**options)
