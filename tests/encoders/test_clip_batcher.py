"""ClipBatcher's one-gather path equals filling and cropping each row on its own, so the
fast path cannot drift from the simple one."""

from __future__ import annotations

import pytest
import torch

from clapkit.audio.crop import fit_length
from clapkit.encoders.fusion import ClipBatcher


@pytest.mark.parametrize("pad_mode", ["repeatpad", "repeat", "pad"])
def test_fit_rows_matches_fit_length_and_centre_crop_row_by_row(pad_mode):
    window = 50
    lengths = torch.tensor([50, 7, 1, 0, 23, 80, 51])
    waveform = torch.randn(len(lengths), 80)
    for i, n in enumerate(lengths.tolist()):
        waveform[i, n:] = 0.0
    out = ClipBatcher(window, pad_mode, fusion=False).fit_rows(waveform, lengths)
    for i, n in enumerate(lengths.tolist()):
        row = waveform[i, :n]
        expected = fit_length(row, window, pad_mode) if n <= window else row[(n - window) // 2:(n - window) // 2 + window]
        torch.testing.assert_close(out[i], expected, rtol=0, atol=0)


def test_training_crops_lie_inside_the_clip():
    lengths = torch.tensor([90, 60])
    waveform = torch.arange(180, dtype=torch.float32).reshape(2, 90)
    out = ClipBatcher(50, "repeatpad").fit_rows(waveform, lengths, training=True)
    for i, n in enumerate(lengths.tolist()):
        start = int(out[i, 0] - waveform[i, 0])
        assert 0 <= start <= n - 50
        torch.testing.assert_close(out[i], waveform[i, start:start + 50])
