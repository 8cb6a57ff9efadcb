import numpy as np
import pytest
import soundfile as sf
import torch

from clapkit.audio import AudioLoadError, fit_length, int16_roundtrip, load_audio, resample, save_audio


def test_load_resample_and_downmix(tmp_path):
    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)]).astype(np.float32)
    path = save_audio(tmp_path / "s.flac", stereo, 44100)
    wave, sr = load_audio(path, sample_rate=48000)
    assert sr == 48000 and wave.ndim == 1 and abs(len(wave) - 48000) <= 1
    multi, _ = load_audio(path, mono=False)
    assert multi.shape == (2, 44100)
    np.testing.assert_allclose(multi[0], stereo[0], atol=1e-4)


@pytest.mark.parametrize("fixture,reason", [("corrupt_wav", "unreadable"), ("empty_wav", "empty")])
def test_bad_files_raise_one_typed_error_naming_the_file(request, fixture, reason):
    path = request.getfixturevalue(fixture)
    with pytest.raises(AudioLoadError) as info:
        load_audio(path)
    assert str(path) in str(info.value) and reason in str(info.value)


def test_missing_nan_and_silent(tmp_path):
    with pytest.raises(AudioLoadError, match="no such file"):
        load_audio(tmp_path / "nope.wav")
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.1, np.nan, 0.2], dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioLoadError, match="NaN"):
        load_audio(nan)
    silent = save_audio(tmp_path / "z.wav", np.zeros(100, np.float32), 16000)
    assert load_audio(silent)[0].shape == (100,)
    with pytest.raises(AudioLoadError, match="silent"):
        load_audio(silent, reject_silent=True)


def test_bytes_input_names_the_key():
    with pytest.raises(AudioLoadError, match="shard-0/key7"):
        load_audio(b"not audio at all", name="shard-0/key7")


def test_save_is_atomic_and_leaves_no_temp(tmp_path):
    save_audio(tmp_path / "a.wav", np.zeros(10, np.float32), 8000)
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]


def test_fit_length_policies():
    x = np.arange(1, 4, dtype=np.float32)  # 3 samples
    np.testing.assert_array_equal(fit_length(x, 8, "pad"), [1, 2, 3, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(fit_length(x, 8, "repeatpad"), [1, 2, 3, 1, 2, 3, 0, 0])
    np.testing.assert_array_equal(fit_length(x, 8, "repeat"), [1, 2, 3, 1, 2, 3, 1, 2])
    long = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(long, 4, crop="start"), [0, 1, 2, 3])
    np.testing.assert_array_equal(fit_length(long, 4, crop="center"), [3, 4, 5, 6])
    a = fit_length(long, 4, crop="seeded", seed=3)
    np.testing.assert_array_equal(a, fit_length(long, 4, crop="seeded", seed=3))
    t = fit_length(torch.arange(3.0), 8, "repeatpad")
    assert t.tolist() == [0, 1, 2, 0, 1, 2, 0, 0]


def test_int16_roundtrip_matches_reference_formula():
    x = np.array([-2.0, -0.5, 0.123456, 1.5], dtype=np.float32)
    expected = (np.clip(x, -1, 1) * 32767).astype(np.int16).astype(np.float32) / 32767
    np.testing.assert_array_equal(int16_roundtrip(x), expected)
    np.testing.assert_allclose(int16_roundtrip(torch.from_numpy(x)).numpy(), expected)


def test_resample_numpy_and_torch_agree_in_length():
    x = np.random.default_rng(0).standard_normal(44100).astype(np.float32)
    assert resample(x, 44100, 48000).shape == (48000,)
    assert resample(torch.from_numpy(x), 44100, 48000).shape == (48000,)


def test_resample_channels_first_resamples_each_channel_as_alone():
    # [C, T] input (soxr itself wants [T, C]): each row must be that channel resampled, not a
    # mix of channels or of time steps.
    x = np.random.default_rng(0).standard_normal(44100).astype(np.float32)
    mono = resample(x, 44100, 48000)
    out = resample(np.stack([x, -0.5 * x]), 44100, 48000)
    assert out.shape == (2, 48000) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], mono, atol=1e-5)
    np.testing.assert_allclose(out[1], -0.5 * mono, atol=1e-5)
    torch_mono = resample(torch.from_numpy(x), 44100, 48000)
    torch_out = resample(torch.from_numpy(np.stack([x, -0.5 * x])), 44100, 48000)
    torch.testing.assert_close(torch_out, torch.stack([torch_mono, -0.5 * torch_mono]), atol=1e-5, rtol=0)


def test_resample_keeps_a_tone_where_it_was():
    # A 1 kHz tone at 44.1 kHz resampled to 48 kHz is the same tone sampled at 48 kHz (away
    # from the edges, where the filter sees the signal start and stop).
    tone = lambda rate: (0.5 * np.sin(2 * np.pi * 1000 * np.arange(rate) / rate)).astype(np.float32)  # noqa: E731
    out = resample(tone(44100), 44100, 48000)
    np.testing.assert_allclose(out[2000:-2000], tone(48000)[2000:-2000], atol=2e-3)
    torch_out = resample(torch.from_numpy(tone(44100)), 44100, 48000)
    np.testing.assert_allclose(np.asarray(torch_out)[2000:-2000], tone(48000)[2000:-2000], atol=2e-3)
