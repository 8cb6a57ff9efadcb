import numpy as np
import pytest
import torch

from clapkit.encoders.frontends import LogMel


def test_logmel_matches_librosa_within_1e3_db():
    librosa = pytest.importorskip("librosa")
    x = (np.random.default_rng(0).standard_normal(48000 * 2) * 0.1).astype(np.float32)
    ours = LogMel()(torch.from_numpy(x)).numpy()
    mel = librosa.feature.melspectrogram(
        y=x, sr=48000, n_fft=1024, hop_length=480, win_length=1024, window="hann", center=True,
        pad_mode="reflect", power=2.0, n_mels=64, fmin=50, fmax=14000, htk=False, norm="slaney",
    )
    ref = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
    assert ours.shape == ref.shape == (64, 201)
    assert np.abs(ours - ref).max() <= 1e-3


def test_ten_seconds_gives_1001_frames_and_stays_fp32_under_autocast():
    frontend = LogMel()
    x = torch.randn(2, 480000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = frontend(x)
    assert out.shape == (2, 64, 1001) and out.dtype == torch.float32
    assert frontend.num_frames(480000) == 1001


def test_spec_augment_drops_narrow_stripes_and_keeps_the_rest():
    from clapkit.encoders.frontends import spec_augment

    torch.manual_seed(0)
    x = torch.rand(8, 1, 200, 64) + 1.0  # no zeros of its own
    out = spec_augment(x)
    zero = out == 0
    for clip in range(8):
        frames = zero[clip, 0].all(dim=1).sum()  # whole frames dropped
        bins = zero[clip, 0].all(dim=0).sum()  # whole mel bins dropped
        assert frames <= 2 * 63 and bins <= 2 * 7
        kept = ~zero[clip]
        torch.testing.assert_close(out[clip][kept], x[clip][kept])
    assert zero.any()  # something was dropped
