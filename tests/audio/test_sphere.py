"""Equirectangular <-> direction, gnomonic crops, and their agreement with FOA rotation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clapkit.audio import foa
from clapkit.audio.sphere import (
    direction_to_pixel,
    direction_to_vector,
    equirect_directions,
    gnomonic_crop,
    pixel_to_direction,
    sample_viewpoints,
    to_front_matrix,
    vector_to_direction,
)

H, W = 64, 128
VIEWS = [(0.0, 0.0), (40.0, 15.0), (-100.0, -30.0), (175.0, 20.0), (-179.0, 0.0), (60.0, 70.0)]


def _paint_blob(az: float, el: float, radius: float = math.radians(8.0)) -> torch.Tensor:
    """A white disc on black, drawn on the sphere (not distorted by the projection)."""
    centre = direction_to_vector(torch.tensor(az), torch.tensor(el))
    angle = torch.arccos((equirect_directions(H, W) @ centre).clamp(-1, 1))
    return (angle < radius).float().expand(3, H, W).clone()


def _centroid(image: torch.Tensor) -> tuple[float, float]:
    weight = image[0]
    rows, cols = torch.meshgrid(torch.arange(weight.shape[0]), torch.arange(weight.shape[1]), indexing="ij")
    total = weight.sum()
    return float((rows * weight).sum() / total), float((cols * weight).sum() / total)


def test_pixel_direction_roundtrip_and_layout():
    u = torch.tensor([0.0, 63.5, 100.25, 127.0])
    v = torch.tensor([0.0, 31.5, 10.0, 63.0])
    az, el = pixel_to_direction(u, v, W, H)
    u2, v2 = direction_to_pixel(az, el, W, H)
    torch.testing.assert_close(u2, u, atol=1e-4, rtol=0)
    torch.testing.assert_close(v2, v, atol=1e-4, rtol=0)
    # the centre of the frame is the front, the left half is positive azimuth, the top is up
    az, el = pixel_to_direction(W / 2 - 0.5, H / 2 - 0.5, W, H)
    assert float(az) == pytest.approx(0.0, abs=1e-6) and float(el) == pytest.approx(0.0, abs=1e-6)
    az, _ = pixel_to_direction(W / 4 - 0.5, H / 2 - 0.5, W, H)
    assert float(az) == pytest.approx(math.pi / 2)
    _, el = pixel_to_direction(0, -0.5, W, H)
    assert float(el) == pytest.approx(math.pi / 2)


def test_vector_direction_roundtrip():
    az = torch.tensor([0.3, -2.0, 3.0])
    el = torch.tensor([0.1, -1.2, 0.7])
    back_az, back_el = vector_to_direction(direction_to_vector(az, el))
    torch.testing.assert_close(back_az, az)
    torch.testing.assert_close(back_el, el)


def test_to_front_matrix_maps_view_to_front():
    az, el = torch.tensor(1.1), torch.tensor(-0.4)
    front = to_front_matrix(az, el) @ direction_to_vector(az, el)
    torch.testing.assert_close(front, torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("az,el", VIEWS)
def test_blob_appears_at_crop_centre_and_audio_reads_front(az, el):
    az, el = math.radians(az), math.radians(el)
    frame = _paint_blob(az, el)[None]
    crop = gnomonic_crop(frame, torch.tensor([az]), torch.tensor([el]), fov=math.radians(60.0), size=33)[0]
    row, col = _centroid(crop)
    assert abs(row - 16.0) < 0.5 and abs(col - 16.0) < 0.5
    # the same direction, through the audio path: rotate the FOA to the view, read (0, 0)
    signal = foa.encode_mono(torch.randn(4000), az, el)
    got_az, got_el = foa.direction_of_arrival(foa.rotate_to_front(signal, az, el))
    assert abs(math.degrees(float(got_az))) < 1e-2 and abs(math.degrees(float(got_el))) < 1e-2


@pytest.mark.parametrize("offset_az,offset_el", [(20.0, 0.0), (0.0, 15.0), (-18.0, -12.0)])
def test_off_centre_source_lands_where_rotated_audio_points(offset_az, offset_el):
    """A blob away from the view centre sits in the crop where the rotated FOA says it is."""
    view_az, view_el = math.radians(-70.0), math.radians(10.0)
    src = to_front_matrix(torch.tensor(view_az), torch.tensor(view_el)).T @ direction_to_vector(
        torch.tensor(math.radians(offset_az)), torch.tensor(math.radians(offset_el)))
    src_az, src_el = (float(a) for a in vector_to_direction(src))
    size, fov = 65, math.radians(90.0)
    crop = gnomonic_crop(_paint_blob(src_az, src_el, math.radians(5.0))[None], torch.tensor([view_az]),
                         torch.tensor([view_el]), fov=fov, size=size)[0]
    row, col = _centroid(crop)
    # where the audio says the source is, in the camera frame of the view
    signal = foa.rotate_to_front(foa.encode_mono(torch.randn(4000), src_az, src_el), view_az, view_el)
    a_az, a_el = (float(a) for a in foa.direction_of_arrival(signal))
    camera = direction_to_vector(torch.tensor(a_az), torch.tensor(a_el))
    focal = (size / 2) / math.tan(fov / 2)
    expected_col = size / 2 - 0.5 - focal * float(camera[1] / camera[0])  # left is -column
    expected_row = size / 2 - 0.5 - focal * float(camera[2] / camera[0])  # up is -row
    assert abs(col - expected_col) < 0.6 and abs(row - expected_row) < 0.6
    assert (col < 32) == (offset_az > 0) or offset_az == 0.0  # a source to the left is on the image's left


def test_batched_crops_match_single_crops_and_wrap_the_seam():
    torch.manual_seed(0)
    frames = torch.rand(2, 3, H, W)
    az = torch.tensor([[0.0, math.pi - 0.01, -2.0], [1.0, -math.pi + 0.02, 0.5]])
    el = torch.tensor([[0.0, 0.1, -0.5], [0.3, 0.0, 1.2]])
    crops = gnomonic_crop(frames, az, el, size=16)
    assert crops.shape == (2, 3, 3, 16, 16)
    single = gnomonic_crop(frames[1:2], az[1, 1:2], el[1, 1:2], size=16)
    torch.testing.assert_close(crops[1, 1], single[0])
    # a crop straddling the seam is continuous: its left and right halves come from opposite edges
    seam = gnomonic_crop(torch.arange(W).float().expand(1, 1, H, W), torch.tensor([math.pi]),
                         torch.tensor([0.0]), fov=math.radians(20.0), size=8)[0, 0]
    # facing the back, the viewer's left is azimuth -pi + d (the image's right edge), and vice versa
    assert seam[4, 0] > W - 10 and seam[4, 7] < 10


def test_crop_is_gradient_friendly_and_dtype_preserving():
    frames = torch.rand(1, 3, H, W, dtype=torch.float64, requires_grad=True)
    crop = gnomonic_crop(frames, torch.tensor([0.2]), torch.tensor([0.1]), size=8)
    assert crop.dtype == torch.float64
    crop.sum().backward()
    assert frames.grad is not None and frames.grad.abs().sum() > 0


def test_sample_viewpoints_even_azimuths():
    views = sample_viewpoints(4, np.random.default_rng(0), math.radians(10.0))
    assert views.shape == (4, 2) and views.dtype == np.float32
    steps = np.diff(np.unwrap(views[:, 0]))
    np.testing.assert_allclose(steps, math.pi / 2, atol=1e-5)
    assert np.all(np.abs(views[:, 1]) <= math.radians(10.0))
