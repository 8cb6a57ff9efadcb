"""Directions on the sphere, equirectangular frames and gnomonic (perspective) crops.

One convention serves audio and video so that a rotated FOA signal and an image crop always
agree (the ambiX convention, right-handed, angles in radians):

- ``x`` points to the front, ``y`` to the left, ``z`` up.
- Azimuth is measured from the front, positive to the left (counter-clockwise seen from
  above); elevation is positive upwards. ``(az, el) -> (cos az cos el, sin az cos el, sin el)``.
- An equirectangular frame ``[..., H, W]`` has the front (azimuth 0) at the centre column,
  azimuth ``+pi`` at the left edge and ``-pi`` at the right edge (the viewer's right is to
  the image's right), elevation ``+pi/2`` at the top row. Pixel ``k``'s centre sits at
  fractional index ``k``.
- A view at ``(az, el)`` is the camera whose optical axis is that direction, with no roll;
  :func:`to_front_matrix` maps world vectors into that camera's frame (front = optical axis).
  :mod:`clapkit.audio.foa` rotates sound fields with the very same matrix.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def direction_to_vector(azimuth: torch.Tensor, elevation: torch.Tensor) -> torch.Tensor:
    """Unit vectors ``[..., 3]`` (x, y, z) for directions in radians."""
    azimuth = torch.as_tensor(azimuth, dtype=torch.get_default_dtype())
    elevation = torch.as_tensor(elevation, dtype=azimuth.dtype, device=azimuth.device)
    cos_el = torch.cos(elevation)
    return torch.stack([torch.cos(azimuth) * cos_el, torch.sin(azimuth) * cos_el, torch.sin(elevation)], -1)


def vector_to_direction(vector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(azimuth, elevation)`` in radians of vectors ``[..., 3]`` (need not be unit length)."""
    x, y, z = vector.unbind(-1)
    return torch.atan2(y, x), torch.atan2(z, torch.hypot(x, y))


def yaw_matrix(angle: torch.Tensor) -> torch.Tensor:
    """Rotation about ``+z`` by ``angle`` (``[...]`` -> ``[..., 3, 3]``): azimuths grow by ``angle``."""
    angle = torch.as_tensor(angle, dtype=torch.get_default_dtype())
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([c, -s, zero, s, c, zero, zero, zero, one], -1).reshape(*c.shape, 3, 3)


def pitch_matrix(angle: torch.Tensor) -> torch.Tensor:
    """Right-handed rotation about ``+y`` (the left axis) by ``angle``.

    A positive angle tips the front downwards: a frontal source at elevation ``e`` ends at
    elevation ``e - angle``. Pitching by a view's elevation thus brings it to the horizon.
    """
    angle = torch.as_tensor(angle, dtype=torch.get_default_dtype())
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([c, zero, s, zero, one, zero, -s, zero, c], -1).reshape(*c.shape, 3, 3)


def to_front_matrix(azimuth: torch.Tensor, elevation: torch.Tensor) -> torch.Tensor:
    """The rotation that brings direction ``(az, el)`` to the front ``(0, 0)``: ``[..., 3, 3]``.

    Yaw by ``-azimuth`` first, then pitch by ``elevation``; the order matters (pitching first
    would tilt about the wrong axis for any view off the front). The transpose maps the
    camera frame of that view back to the world.
    """
    azimuth = torch.as_tensor(azimuth, dtype=torch.get_default_dtype())
    elevation = torch.as_tensor(elevation, dtype=azimuth.dtype, device=azimuth.device)
    return pitch_matrix(elevation) @ yaw_matrix(-azimuth)


def pixel_to_direction(u, v, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Equirectangular fractional pixel indices (column ``u``, row ``v``) -> ``(az, el)``."""
    u = torch.as_tensor(u, dtype=torch.get_default_dtype())
    v = torch.as_tensor(v, dtype=u.dtype, device=u.device)
    azimuth = math.pi - (u + 0.5) * (2 * math.pi / width)
    elevation = math.pi / 2 - (v + 0.5) * (math.pi / height)
    return azimuth, elevation


def direction_to_pixel(azimuth, elevation, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(az, el)`` -> equirectangular fractional pixel indices ``(u, v)``; ``u`` in ``[-0.5, W-0.5)``."""
    azimuth = torch.as_tensor(azimuth, dtype=torch.get_default_dtype())
    elevation = torch.as_tensor(elevation, dtype=azimuth.dtype, device=azimuth.device)
    # Wrap to [-pi, pi) so the seam falls between the last and the first column.
    wrapped = torch.remainder(math.pi - azimuth, 2 * math.pi)
    u = wrapped * (width / (2 * math.pi)) - 0.5
    v = (math.pi / 2 - elevation) * (height / math.pi) - 0.5
    return u, v


def equirect_directions(height: int, width: int, device=None) -> torch.Tensor:
    """Unit vectors ``[H, W, 3]`` of every pixel centre of an equirectangular frame."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=device),
        torch.arange(width, dtype=torch.float32, device=device),
        indexing="ij",
    )
    return direction_to_vector(*pixel_to_direction(u, v, width, height))


def crop_rays(size: int, fov: float, device=None) -> torch.Tensor:
    """Unit rays ``[S, S, 3]`` of a square pinhole camera looking along ``+x``.

    ``fov`` is the horizontal (= vertical) field of view in radians. Image right is the
    viewer's right (``-y``), image up is ``+z``.
    """
    focal = (size / 2) / math.tan(fov / 2)
    offsets = torch.arange(size, dtype=torch.float32, device=device) + 0.5 - size / 2
    row, col = torch.meshgrid(offsets, offsets, indexing="ij")
    rays = torch.stack([torch.full_like(col, focal), -col, -row], -1)
    return F.normalize(rays, dim=-1)


def gnomonic_crop(
    frames: torch.Tensor,
    azimuth: torch.Tensor,
    elevation: torch.Tensor,
    fov: float = math.radians(90.0),
    size: int = 112,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Perspective crops of equirectangular frames at the given view directions.

    One batched ``grid_sample`` call serves every crop: crop rays are rotated into the world by
    the transpose of :func:`to_front_matrix`, so a point at ``(az, el)`` lands at the centre
    of the crop taken at ``(az, el)`` and the crop agrees with FOA rotated by the same matrix.

    Args:
        frames: ``[B, C, H, W]`` equirectangular frames.
        azimuth: ``[B, K]`` view azimuths in radians (``[B]`` for one view per frame).
        elevation: same shape as ``azimuth``.
        fov: horizontal and vertical field of view in radians.
        size: output side length in pixels.
        mode: ``grid_sample`` interpolation.

    Returns:
        ``[B, K, C, size, size]`` (``[B, C, size, size]`` when one view per frame was given).
    """
    single = azimuth.dim() == 1
    if single:
        azimuth, elevation = azimuth[:, None], elevation[:, None]
    batch, channels, height, width = frames.shape
    views = azimuth.shape[1]
    with torch.autocast(device_type=frames.device.type, enabled=False):
        rays = crop_rays(size, fov, device=frames.device)  # [S, S, 3]
        rotation = to_front_matrix(azimuth.float(), elevation.float()).to(frames.device)  # [B, K, 3, 3]
        # world = R^T ray  <=>  world_row = ray_row @ R
        world = torch.einsum("hwc,bkcd->bkhwd", rays, rotation)
        u, v = direction_to_pixel(*vector_to_direction(world), width, height)
        # One column of circular padding on each side makes the seam interpolate correctly.
        padded = torch.cat([frames[..., -1:], frames, frames[..., :1]], dim=-1).float()
        gx = (2 * (u + 1) + 1) / (width + 2) - 1
        gy = (2 * v + 1) / height - 1
        grid = torch.stack([gx, gy], -1).reshape(batch, views * size, size, 2)
        crops = F.grid_sample(padded, grid, mode=mode, padding_mode="border", align_corners=False)
    crops = crops.reshape(batch, channels, views, size, size).transpose(1, 2).to(frames.dtype)
    return crops[:, 0] if single else crops


def sample_viewpoints(
    num_views: int,
    rng: np.random.Generator,
    elevation_range: float = math.radians(20.0),
) -> np.ndarray:
    """``[K, 2]`` view directions ``(az, el)``: azimuths evenly spaced from a random offset.

    Even spacing keeps the K crops of one clip distinct (AVSA contrasts them); elevations are
    uniform in ``[-elevation_range, elevation_range]``.
    """
    offset = rng.uniform(-math.pi, math.pi)
    azimuth = offset + np.arange(num_views) * (2 * math.pi / num_views)
    azimuth = (azimuth + math.pi) % (2 * math.pi) - math.pi
    elevation = rng.uniform(-elevation_range, elevation_range, size=num_views)
    return np.stack([azimuth, elevation], -1).astype(np.float32)
