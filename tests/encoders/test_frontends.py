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


def _conv_path(frontend, wave):
    """ConvLogMel through its two DFT convolutions (the FFT shortcut switched off)."""
    from unittest import mock

    with mock.patch.object(type(frontend), "fft_window", return_value=None):
        return frontend(wave)


def test_conv_logmel_fft_path_equals_its_convolutions():
    from clapkit.encoders.frontends import ConvLogMel

    torch.manual_seed(0)
    frontend = ConvLogMel()
    t = torch.arange(48000) / 48000
    wave = torch.stack([0.1 * torch.randn(48000), 0.5 * torch.sin(2 * torch.pi * 440 * t), 1e-4 * torch.randn(48000)])
    assert frontend.fft_window() is not None
    fast, slow = frontend(wave), _conv_path(frontend, wave)
    assert fast.shape == slow.shape == (3, 64, 101)
    # Float rounding only: loud bins agree to 1e-4 dB; the tone's leakage floor (~100 dB down)
    # may differ by a few hundredths of a dB.
    assert (fast[0] - slow[0]).abs().max() < 1e-3 and (fast[2] - slow[2]).abs().max() < 1e-3
    loud = slow[1] > slow[1].max() - 60
    assert (fast[1] - slow[1])[loud].abs().max() < 1e-3
    assert (fast[1] - slow[1]).abs().max() < 0.2


def test_conv_logmel_keeps_the_convolutions_for_kernels_that_are_not_a_windowed_dft():
    from clapkit.encoders.frontends import ConvLogMel

    frontend = ConvLogMel(n_fft=256, hop_length=128, n_mels=16)
    wave = torch.randn(2, 4000)
    assert frontend.fft_window() is not None
    with torch.no_grad():
        frontend.conv_imag[3, 0, 7] += 0.01  # an edited kernel: the FFT would no longer be the same transform
    assert frontend.fft_window() is None
    torch.testing.assert_close(frontend(wave), _conv_path(frontend, wave))
    state = ConvLogMel(n_fft=256, hop_length=128, n_mels=16).state_dict()
    frontend.load_state_dict(state)  # standard kernels again: the check is redone
    assert frontend.fft_window() is not None


def test_reflect_pad_is_the_padding_kernels_result_bit_for_bit():
    from clapkit.encoders.frontends import reflect_pad

    x = torch.randn(3, 2000)
    for pad in (1, 512, 1999):
        want = torch.nn.functional.pad(x.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        assert torch.equal(reflect_pad(x, pad), want)
    with pytest.raises(RuntimeError):  # too short to reflect: the kernel's own error
        reflect_pad(torch.randn(1, 10), 10)
