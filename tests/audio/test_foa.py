"""FOA conventions, format check, rotations, flip and beamformer gains."""

from __future__ import annotations

import math

import pytest
import torch

from clapkit.audio import foa
from clapkit.audio.sphere import pitch_matrix, to_front_matrix, yaw_matrix

SR = 16000
DIRECTIONS = [(0.0, 0.0), (30.0, 10.0), (-120.0, -40.0), (170.0, 70.0), (-75.0, 25.0), (90.0, -80.0)]


def _source(seconds: float = 0.5, seed: int = 0) -> torch.Tensor:
    return torch.randn(int(SR * seconds), generator=torch.Generator().manual_seed(seed))


def _angle_diff(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def _doa_degrees(signal: torch.Tensor) -> tuple[float, float]:
    az, el = foa.direction_of_arrival(signal)
    return math.degrees(float(az)), math.degrees(float(el))


def _diffuse(seed: int = 1) -> torch.Tensor:
    return foa.diffuse_noise(SR, 64, torch.Generator().manual_seed(seed))


def test_encoding_is_ambix_acn_sn3d():
    gains = foa.encoding_gains(math.radians(90.0), 0.0)  # hard left
    torch.testing.assert_close(gains, torch.tensor([1.0, 1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    gains = foa.encoding_gains(0.0, math.radians(90.0))  # straight up
    torch.testing.assert_close(gains, torch.tensor([1.0, 0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    az, el = math.radians(30.0), math.radians(20.0)
    expected = [1.0, math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el)]
    torch.testing.assert_close(foa.encoding_gains(az, el), torch.tensor(expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize("az,el", DIRECTIONS)
def test_direction_recovered_from_intensity_vector(az, el):
    signal = foa.encode_mono(_source(), math.radians(az), math.radians(el))
    signal = signal + 0.05 * _diffuse()[:, : signal.shape[-1]]  # a little diffuse noise must not bias the estimate much
    got_az, got_el = _doa_degrees(signal)
    assert abs(got_el - el) <= 1.0
    if abs(el) < 89.0:
        assert _angle_diff(got_az, az) <= 1.0


@pytest.mark.parametrize("az,el", DIRECTIONS)
def test_to_front_rotation_reads_zero(az, el):
    signal = foa.encode_mono(_source(), math.radians(az), math.radians(el))
    front = foa.rotate_to_front(signal, math.radians(az), math.radians(el))
    got_az, got_el = _doa_degrees(front)
    assert _angle_diff(got_az, 0.0) <= 1e-3 and abs(got_el) <= 1e-3
    # the front plane wave has W = X and no Y or Z
    torch.testing.assert_close(front[foa.X], front[foa.W], atol=1e-5, rtol=0)
    assert front[[foa.Y, foa.Z]].abs().max() < 1e-5


def test_rotation_order_matters():
    az, el = math.radians(60.0), math.radians(30.0)
    signal = foa.encode_mono(_source(), az, el)
    # the matrix product applies the right factor first: this pitches, then yaws
    pitched_first = foa.rotate(signal, yaw_matrix(torch.tensor(-az)) @ pitch_matrix(torch.tensor(el)))
    got_az, got_el = _doa_degrees(pitched_first)
    assert _angle_diff(got_az, 0.0) > 5.0 or abs(got_el) > 5.0


@pytest.mark.parametrize("alpha", [25.0, -100.0, 170.0])
def test_yaw_adds_to_azimuth_and_flip_negates(alpha):
    az, el = 40.0, 15.0
    signal = foa.encode_mono(_source(), math.radians(az), math.radians(el))
    got_az, got_el = _doa_degrees(foa.rotate_yaw(signal, math.radians(alpha)))
    assert _angle_diff(got_az, az + alpha) <= 1e-3 and abs(got_el - el) <= 1e-3
    got_az, got_el = _doa_degrees(foa.flip_left_right(signal))
    assert _angle_diff(got_az, -az) <= 1e-3 and abs(got_el - el) <= 1e-3


def test_rotation_preserves_w_and_energy_and_inverts():
    signal = foa.encode_mono(_source(), 0.3, -0.2) + _diffuse()[:, : int(SR * 0.5)]
    rotation = to_front_matrix(torch.tensor(2.1), torch.tensor(-0.7))
    turned = foa.rotate(signal, rotation)
    torch.testing.assert_close(turned[foa.W], signal[foa.W])
    xyz = list(foa.XYZ)
    torch.testing.assert_close(turned[xyz].pow(2).sum(), signal[xyz].pow(2).sum(), rtol=1e-5, atol=0)
    torch.testing.assert_close(foa.rotate(turned, rotation.T), signal, atol=1e-5, rtol=0)


def test_batched_rotation_to_many_views():
    batch = torch.stack([foa.encode_mono(_source(seed=i), 0.5 * i, 0.1 * i) for i in range(3)])  # [3, 4, T]
    az = torch.tensor([[0.0, 1.0], [0.5, -2.0], [1.0, 3.0]])
    el = torch.tensor([[0.0, 0.2], [0.1, -0.3], [0.2, 0.5]])
    out = foa.rotate_to_front(batch, az, el)
    assert out.shape == (3, 2, 4, batch.shape[-1])
    torch.testing.assert_close(out[2, 1], foa.rotate_to_front(batch[2], az[2, 1], el[2, 1]))
    # view 0 of item i was placed at the source: it now reads (0, 0)
    got_az, got_el = foa.direction_of_arrival(out[:, 0])
    assert got_az.abs().max() < 1e-3 and got_el.abs().max() < 1e-3


def test_conversions_roundtrip():
    signal = foa.encode_mono(_source(), 0.4, 0.3)
    torch.testing.assert_close(foa.fuma_to_ambix(foa.ambix_to_fuma(signal)), signal)
    torch.testing.assert_close(foa.n3d_to_sn3d(foa.sn3d_to_n3d(signal)), signal)
    fuma = foa.ambix_to_fuma(signal)
    torch.testing.assert_close(fuma[0], signal[foa.W] / math.sqrt(2))  # FuMa W at -3 dB
    torch.testing.assert_close(fuma[1], signal[foa.X])  # FuMa order W, X, Y, Z


# Measured E_xyz / E_w (ideal 4 kHz low-pass, 1 s at 16 kHz, seeds as below):
# plane waves 1.000, diffuse (64 directions) 0.977, N3D plane 3.000 / diffuse 2.930,
# FuMa read as ambiX plane 2.000 / diffuse 1.954, W moved to the last channel 5.115,
# W swapped with Y 5.012, independent 4-channel noise 2.953.
@pytest.mark.parametrize("az,el", DIRECTIONS)
def test_format_check_passes_sn3d_plane_waves(az, el):
    result = foa.check_ambix(foa.encode_mono(_source(1.0), math.radians(az), math.radians(el)), SR)
    assert result.passed and abs(result.ratio - 1.0) < 1e-4


def test_format_check_passes_diffuse_field():
    result = foa.check_ambix(_diffuse(), SR)
    assert result.passed
    assert result.ratio == pytest.approx(0.977, abs=0.01)


@pytest.mark.parametrize(
    "make,ratio",
    [
        (lambda d, p: foa.sn3d_to_n3d(p), 3.0),
        (lambda d, p: foa.sn3d_to_n3d(d), 2.930),
        (lambda d, p: foa.ambix_to_fuma(p), 2.0),
        (lambda d, p: foa.ambix_to_fuma(d), 1.954),
        (lambda d, p: d[[3, 1, 2, 0]], 5.115),
        (lambda d, p: d[[1, 0, 2, 3]], 5.012),
        (lambda d, p: torch.randn(4, SR, generator=torch.Generator().manual_seed(3)), 2.953),
    ],
    ids=["n3d-plane", "n3d-diffuse", "fuma-plane", "fuma-diffuse", "w-last", "w-y-swapped", "independent"],
)
def test_format_check_fails_wrong_formats(make, ratio):
    plane = foa.encode_mono(_source(1.0), math.radians(30.0), math.radians(10.0))
    result = foa.check_ambix(make(_diffuse(), plane), SR)
    assert not result.passed
    assert result.ratio == pytest.approx(ratio, abs=0.05)


def test_format_check_low_pass_ignores_high_band():
    # Energy above the cut-off (where real arrays alias) must not affect the verdict.
    t = torch.arange(SR) / SR
    plane = foa.encode_mono(_source(1.0), 0.5, 0.2)
    junk = torch.zeros(4, SR)
    junk[1:] = torch.sin(2 * math.pi * 6000 * t)  # loud XYZ-only tone at 6 kHz
    assert foa.check_ambix(plane + junk, SR).passed
    assert not foa.check_ambix(plane + junk, SR, cutoff=8000).passed


def test_format_check_rejects_bad_shape():
    with pytest.raises(ValueError, match="expected FOA"):
        foa.check_ambix(torch.randn(2, 100), SR)


@pytest.mark.parametrize(
    "alpha,theta,gain",
    [
        (0.5, 0.0, 1.0), (0.5, 90.0, 0.5), (0.5, 180.0, 0.0),
        (0.25, 0.0, 1.0), (0.25, 90.0, 0.25), (0.25, 180.0, -0.5),
        (0.25, math.degrees(math.acos(-1.0 / 3.0)), 0.0),  # hypercardioid null, 109.47 degrees
        (1.0, 123.0, 1.0),
    ],
)
def test_beamformer_gains(alpha, theta, gain):
    assert math.degrees(math.acos(-1.0 / 3.0)) == pytest.approx(109.47, abs=0.01)
    look_az, look_el = math.radians(35.0), math.radians(20.0)
    source = _source(0.1)
    # put the source theta degrees away from the look direction (a rotation about the vertical
    # then a tilt, to avoid the trivially aligned case)
    signal = foa.encode_mono(source, math.radians(theta), 0.0)
    signal = foa.rotate(signal, to_front_matrix(torch.tensor(look_az), torch.tensor(look_el)).T)
    out = foa.beamform(signal, look_az, look_el, alpha)
    expected = alpha + (1 - alpha) * math.cos(math.radians(theta))
    assert expected == pytest.approx(gain, abs=1e-9)
    torch.testing.assert_close(out, gain * source, atol=1e-5, rtol=0)


def test_beamformer_many_directions():
    signal = foa.encode_mono(_source(0.1), 0.0, 0.0)
    az = torch.tensor([0.0, math.pi / 2, math.pi])
    out = foa.beamform(signal, az, torch.zeros(3), 0.5)
    assert out.shape == (3, signal.shape[-1])
    rms = out.pow(2).mean(-1).sqrt() / signal[0].pow(2).mean().sqrt()
    torch.testing.assert_close(rms, torch.tensor([1.0, 0.5, 0.0]), atol=1e-5, rtol=0)
