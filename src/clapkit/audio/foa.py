"""First-order ambisonics (FOA): ambiX conventions, conversions, checks, rotations, beams.

clapkit's FOA is ambiX: ACN channel order ``(W, Y, Z, X)`` with SN3D normalisation, channels
on axis ``-2`` and time on the last axis (``[..., 4, T]``). Directions follow
:mod:`clapkit.audio.sphere` (x front, y left, z up; azimuth positive to the left). A plane
wave ``s`` from ``(az, el)`` reads ``W = s``, ``Y = s sin(az) cos(el)``, ``Z = s sin(el)``,
``X = s cos(az) cos(el)``, so ``E_xyz = E_w`` for a plane wave and, on average over
directions, for a diffuse field: the format check below rests on that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from clapkit.audio.sphere import direction_to_vector, to_front_matrix, vector_to_direction, yaw_matrix

W, Y, Z, X = 0, 1, 2, 3
# ACN positions of the Cartesian components (x, y, z).
XYZ = (X, Y, Z)

_SQRT2 = math.sqrt(2.0)
_SQRT3 = math.sqrt(3.0)


# --------------------------------------------------------------------------- conversions


def fuma_to_ambix(foa: torch.Tensor) -> torch.Tensor:
    """FuMa ``(W, X, Y, Z)`` with W at -3 dB -> ambiX ``(W, Y, Z, X)`` SN3D.

    At first order FuMa's X, Y, Z weights equal SN3D's; only W (scaled by ``1/sqrt(2)``) and the
    order differ.
    """
    w, x, y, z = foa.unbind(-2)
    return torch.stack([w * _SQRT2, y, z, x], -2)


def ambix_to_fuma(foa: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fuma_to_ambix`."""
    w, y, z, x = foa.unbind(-2)
    return torch.stack([w / _SQRT2, x, y, z], -2)


def n3d_to_sn3d(foa: torch.Tensor) -> torch.Tensor:
    """ACN/N3D -> ACN/SN3D: first-order channels are ``sqrt(3)`` larger in N3D."""
    scale = foa.new_tensor([1.0, 1 / _SQRT3, 1 / _SQRT3, 1 / _SQRT3])
    return foa * scale[:, None]


def sn3d_to_n3d(foa: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`n3d_to_sn3d`."""
    scale = foa.new_tensor([1.0, _SQRT3, _SQRT3, _SQRT3])
    return foa * scale[:, None]


# --------------------------------------------------------------------------- synthesis


def encoding_gains(azimuth, elevation) -> torch.Tensor:
    """ambiX gains ``[..., 4]`` of a plane wave from ``(az, el)`` (radians)."""
    x, y, z = direction_to_vector(azimuth, elevation).unbind(-1)
    return torch.stack([torch.ones_like(x), y, z, x], -1)


def encode_mono(signal: torch.Tensor, azimuth, elevation) -> torch.Tensor:
    """Encode a mono signal ``[..., T]`` as a plane wave from ``(az, el)``: ``[..., 4, T]``."""
    gains = encoding_gains(azimuth, elevation).to(signal)
    return gains[..., :, None] * signal[..., None, :]


def fibonacci_directions(count: int) -> torch.Tensor:
    """``count`` nearly uniform directions on the sphere as ``[count, 2]`` ``(az, el)``."""
    index = torch.arange(count, dtype=torch.float64) + 0.5
    elevation = torch.asin(1 - 2 * index / count)
    azimuth = torch.remainder(index * math.pi * (3 - math.sqrt(5)) + math.pi, 2 * math.pi) - math.pi
    return torch.stack([azimuth, elevation], -1).float()


def diffuse_noise(
    num_samples: int,
    num_directions: int = 64,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A diffuse field ``[4, T]``: independent white noises from near-uniform directions.

    The total power is 1 in W (each plane wave carries ``1/num_directions``).
    """
    directions = fibonacci_directions(num_directions)
    noise = torch.randn(num_directions, num_samples, generator=generator) / math.sqrt(num_directions)
    gains = encoding_gains(directions[:, 0], directions[:, 1])  # [D, 4]
    return gains.T @ noise


# --------------------------------------------------------------------------- format check


class FOAFormatError(ValueError):
    """A file is not ambiX FOA (wrong channel count, order or normalisation).

    Attributes:
        source: the offending path or key.
        reason: what is wrong, with the measured ratio when the check ran.
    """

    def __init__(self, source, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


@dataclass(frozen=True)
class FormatCheck:
    """Outcome of :func:`check_ambix`.

    Attributes:
        ratio: ``E_xyz / E_w`` below the cut-off (1 for ambiX plane waves and diffuse fields).
        tau: tolerance used.
        passed: ``|ratio - 1| <= tau``.
    """

    ratio: float
    tau: float
    passed: bool


def band_energy(signal: torch.Tensor, sample_rate: int, cutoff: float) -> torch.Tensor:
    """Energy of ``signal [..., T]`` below ``cutoff`` Hz (ideal low-pass, via Parseval)."""
    spectrum = torch.fft.rfft(signal.double(), dim=-1)
    freqs = torch.fft.rfftfreq(signal.shape[-1], d=1.0 / sample_rate).to(signal.device)
    return (spectrum.abs() ** 2 * (freqs <= cutoff)).sum(-1)


def ambix_energy_ratio(foa: torch.Tensor, sample_rate: int, cutoff: float = 4000.0) -> float:
    """``E_xyz / E_w`` of an FOA signal ``[4, T]`` after an ideal ``cutoff`` Hz low-pass.

    The low-pass keeps the check away from the spatial aliasing of real microphone arrays,
    whose capsule spacing breaks the first-order model at high frequencies.
    """
    if foa.dim() != 2 or foa.shape[0] != 4:
        raise ValueError(f"expected FOA [4, T], got shape {tuple(foa.shape)}")
    energy = band_energy(foa, sample_rate, cutoff)
    return float(energy[1:].sum() / energy[0].clamp_min(1e-30))


def check_ambix(foa: torch.Tensor, sample_rate: int, tau: float = 0.1, cutoff: float = 4000.0) -> FormatCheck:
    """Test ``|E_xyz / E_w - 1| <= tau`` (after a ``cutoff`` Hz low-pass).

    Flags N3D (ratio 3), FuMa read as ambiX (W at -3 dB: ratio 2), non-ambisonic 4-channel
    audio (about 3 for independent or identical channels) and layouts that do not put W first.
    """
    ratio = ambix_energy_ratio(foa, sample_rate, cutoff)
    return FormatCheck(ratio=ratio, tau=tau, passed=bool(abs(ratio - 1.0) <= tau))


# --------------------------------------------------------------------------- rotations


def rotate(foa: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 rotation (``[..., 3, 3]``, broadcast over the batch) to ``[..., 4, T]``.

    W is invariant; ``(X, Y, Z)`` rotates like a vector, so a source at unit vector ``u`` moves
    to ``R u``. ``rotate(rotate(x, R), R.T)`` restores ``x``.
    """
    rotation = rotation.to(foa)
    turned = rotation @ foa[..., list(XYZ), :]
    w = foa[..., W, :].expand_as(turned[..., 0, :])
    return torch.stack([w, turned[..., 1, :], turned[..., 2, :], turned[..., 0, :]], -2)


def rotate_yaw(foa: torch.Tensor, angle) -> torch.Tensor:
    """Yaw the sound field by ``angle`` (radians): every azimuth grows by ``angle``."""
    return rotate(foa, yaw_matrix(torch.as_tensor(angle, dtype=torch.float32)))


def rotate_to_front(foa: torch.Tensor, azimuth, elevation) -> torch.Tensor:
    """Rotate so the view ``(az, el)`` is at the front (yaw by ``-az``, then pitch by ``el``).

    Scalar angles rotate every item; ``[B]`` angles rotate item ``b`` of ``[B, 4, T]``;
    ``[B, K]`` angles with ``[B, 4, T]`` input give ``[B, K, 4, T]`` (K views per clip).
    """
    rotation = to_front_matrix(torch.as_tensor(azimuth, dtype=torch.float32),
                               torch.as_tensor(elevation, dtype=torch.float32))
    if rotation.dim() == 4:
        foa = foa[:, None]
    return rotate(foa, rotation)


def flip_left_right(foa: torch.Tensor) -> torch.Tensor:
    """Mirror the scene left-right (Y -> -Y): azimuths change sign."""
    sign = foa.new_tensor([1.0, -1.0, 1.0, 1.0])
    return foa * sign[:, None]


# --------------------------------------------------------------------------- analysis


def beamform(foa: torch.Tensor, azimuth, elevation, alpha: float = 0.5) -> torch.Tensor:
    """First-order beam ``alpha*W + (1-alpha)*u.[X, Y, Z]`` steered at ``(az, el)``.

    A plane wave at angle ``theta`` off the look direction comes out with gain
    ``alpha + (1 - alpha) cos(theta)``: ``alpha = 0.5`` is a cardioid (null at 180 degrees),
    ``0.25`` a hypercardioid (null at ``arccos(-1/3)`` = 109.47 degrees), ``1`` omni.

    Args:
        foa: ``[..., 4, T]``.
        azimuth: look azimuth(s) in radians; ``[D]`` angles give ``[..., D, T]``.
        elevation: look elevation(s), same shape as ``azimuth``.
        alpha: pattern parameter.
    """
    look = direction_to_vector(azimuth, elevation).to(foa)  # [..., 3] or [D, 3]
    weights = torch.cat([torch.full_like(look[..., :1], alpha), (1 - alpha) * look[..., 1:2],
                         (1 - alpha) * look[..., 2:3], (1 - alpha) * look[..., 0:1]], -1)  # ACN order
    if weights.dim() == 1:
        return torch.einsum("c,...ct->...t", weights, foa)
    return torch.einsum("dc,...ct->...dt", weights, foa)


def intensity_vector(spec: torch.Tensor) -> torch.Tensor:
    """Active intensity ``Re{conj(W) [X, Y, Z]}`` per bin: complex ``[..., 4, F, N]`` -> ``[..., 3, F, N]``.

    Components come out in Cartesian order (x, y, z).
    """
    w = spec[..., W, :, :]
    xyz = spec[..., list(XYZ), :, :]
    return (w.conj().unsqueeze(-3) * xyz).real


def energy_density(spec: torch.Tensor) -> torch.Tensor:
    """``(|W|^2 + |X|^2 + |Y|^2 + |Z|^2) / 2`` per bin (``[..., 4, F, N]`` -> ``[..., F, N]``).

    In SN3D it bounds the intensity: ``|I| <= E`` with equality for a single plane wave, so
    ``I / E`` is a unit vector for one source and shrinks towards 0 in a diffuse field.
    """
    return 0.5 * (spec.real**2 + spec.imag**2).sum(-3)


def direction_of_arrival(foa: torch.Tensor, n_fft: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Dominant direction ``(az, el)`` from the intensity vector summed over every STFT bin.

    ``foa`` is ``[..., 4, T]``; the result has shape ``[...]``.
    """
    shape = foa.shape[:-2]
    flat = foa.reshape(-1, foa.shape[-1]).float()
    spec = torch.stft(flat, n_fft, hop_length=n_fft // 2, window=torch.hann_window(n_fft, device=foa.device),
                      return_complex=True)
    spec = spec.reshape(-1, 4, *spec.shape[-2:])
    intensity = intensity_vector(spec).sum((-2, -1))
    azimuth, elevation = vector_to_direction(intensity)
    return azimuth.reshape(shape), elevation.reshape(shape)

