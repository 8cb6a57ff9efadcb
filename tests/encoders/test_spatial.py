"""FOA feature front end, the spatial audio CNN, the crop CNN and the view transformer."""

from __future__ import annotations

import math

import pytest
import torch

from clapkit.audio import foa
from clapkit.encoders.base import EncoderOutput
from clapkit.encoders.spatial import (
    CropImageEncoder,
    FOAFeatures,
    SpatialAudioEncoder,
    ViewTransformer,
)

SR = 16000


def _features(**kwargs) -> FOAFeatures:
    return FOAFeatures(sample_rate=SR, n_fft=512, hop_length=160, n_mels=32, **kwargs)


def test_features_shape_and_channels():
    x = torch.randn(2, 4, SR // 2)
    out = _features()(x)
    assert out.shape == (2, 7, 32, SR // 2 // 160 + 1)
    assert _features(intensity=False)(x).shape[1] == 4
    # extra leading dimensions pass through (B, K views)
    assert _features()(torch.randn(2, 3, 4, 1600)).shape == (2, 3, 7, 32, 11)


def test_intensity_channels_point_at_a_plane_wave():
    az, el = math.radians(-50.0), math.radians(20.0)
    signal = foa.encode_mono(torch.randn(SR // 2), az, el)[None]
    iv = _features()(signal)[0, 4:]  # [3, mels, frames], Cartesian x, y, z
    expected = torch.tensor([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
    # one plane wave: the normalised intensity is the unit source direction in every band
    torch.testing.assert_close(iv.mean((1, 2)), expected, atol=1e-3, rtol=0)
    assert (iv - expected[:, None, None]).abs().max() < 1e-3


def test_intensity_shrinks_in_a_diffuse_field_and_logmel_matches_power():
    diffuse = foa.diffuse_noise(SR, 64, torch.Generator().manual_seed(0))[None]
    out = _features()(diffuse)[0]
    # a plane wave gives norm 1 in every bin; few-bin low bands stay noisy, so look at the average
    assert out[4:].norm(dim=0).mean() < 0.4
    # log-mel of W against torchaudio's MelSpectrogram with the same settings
    import torchaudio

    reference = torchaudio.transforms.MelSpectrogram(SR, n_fft=512, hop_length=160, n_mels=32, f_min=50.0,
                                                     f_max=SR / 2, power=2.0, mel_scale="htk", norm=None)
    expected = 10 * torch.log10(reference(diffuse[0, 0]).clamp_min(1e-10))
    torch.testing.assert_close(out[0], expected, atol=1e-3, rtol=1e-4)


def test_features_run_in_fp32_under_autocast():
    x = torch.randn(1, 4, 1600)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _features()(x)
    assert out.dtype == torch.float32


def test_features_reject_wrong_channels():
    with pytest.raises(ValueError, match="4, T"):
        _features()(torch.randn(1, 2, 1600))


@pytest.mark.parametrize("intensity", [True, False])
def test_audio_encoder_tiny(intensity):
    enc = SpatialAudioEncoder("tiny", sample_rate=SR, intensity=intensity, n_mels=32, hop_length=160)
    out = enc(torch.randn(3, 4, 1600))
    assert isinstance(out, EncoderOutput)
    assert out.embedding.shape == (3, enc.output_dim) and enc.sample_rate == SR
    assert enc.body.input_norm.num_features == (7 if intensity else 4)
    # mono input is encoded as a frontal plane wave
    assert enc(torch.randn(3, 1600)).embedding.shape == (3, enc.output_dim)


def test_audio_encoder_loads_weights(tmp_path):
    from safetensors.torch import save_file

    enc = SpatialAudioEncoder("tiny", sample_rate=SR, n_mels=32)
    ckpt = tmp_path / "task.ckpt"
    torch.save({"state_dict": {f"audio_encoder.{k}": v for k, v in enc.state_dict().items()}}, ckpt)
    save_file(enc.state_dict(), tmp_path / "enc.safetensors")
    for path in (ckpt, tmp_path / "enc.safetensors"):
        again = SpatialAudioEncoder("tiny", sample_rate=SR, n_mels=32, weights=str(path))
        for key, value in enc.state_dict().items():
            torch.testing.assert_close(again.state_dict()[key], value)
    torch.save({"state_dict": {"other.weight": torch.zeros(1)}}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="bad.ckpt: no weights under 'audio_encoder.'"):
        SpatialAudioEncoder("tiny", weights=str(tmp_path / "bad.ckpt"))


def test_image_encoder_tiny():
    enc = CropImageEncoder("tiny")
    assert enc.image_size == 32
    out = enc(torch.rand(5, 3, 32, 32))
    assert out.embedding.shape == (5, enc.output_dim)
    assert CropImageEncoder("tiny", image_size=48).image_size == 48


def test_view_transformer_is_permutation_equivariant():
    block = ViewTransformer(64, "tiny").eval()
    x = torch.randn(2, 4, 64)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(block(x)[:, perm], block(x[:, perm]), atol=1e-5, rtol=0)
    # and views do see each other
    y = x.clone()
    y[:, 0] = torch.randn(2, 64)
    assert (block(y)[:, 1] - block(x)[:, 1]).abs().max() > 1e-4
