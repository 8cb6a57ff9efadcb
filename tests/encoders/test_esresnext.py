"""ESResNeXt-FBSP: FBSP filters, the reference front-end formula, shapes and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clapkit.encoders.esresnext import ESResNeXtFBSP
from clapkit.encoders.fbsp import FBSPSpectrogram, LinearFBSP


def _reference_weights(m, fb, fc, in_features, normalized=True, eps=1e-8):
    """The AudioCLIP reference formula, transcribed literally (complex power via polar form)."""
    t = math.pi * torch.linspace(-1.0, 1.0, in_features).reshape(1, -1, 1) + eps
    m, fb, fc = m.reshape(-1, 1, 1), fb.reshape(-1, 1, 1), fc.reshape(-1, 1, 1)
    kernel = torch.cat((torch.cos(fc * t), -torch.sin(fc * t)), dim=-1)
    x = fb * t / (m + eps)
    win = torch.where(x == 0, torch.ones_like(x), torch.sin(x) / x)
    mag, phase = win.abs(), torch.atan2(torch.zeros_like(win), win)
    mag_out = (mag**2) ** (0.5 * m)
    win = mag_out * torch.cat((torch.cos(m * phase), torch.sin(m * phase)), dim=-1)
    weights = fb.sqrt() * torch.cat(
        (win[..., :1] * kernel[..., :1] - win[..., 1:] * kernel[..., 1:],
         win[..., :1] * kernel[..., 1:] + win[..., 1:] * kernel[..., :1]), dim=-1)
    return weights / in_features**0.5 if normalized else weights


def _reference_log_power(wave, window, weights, n_fft, hop, win_length, bands=3):
    """Reference framing (pad to cover, split zeros), pad frames to n_fft, bank, band split, dB."""
    n = wave.shape[-1]
    frames_n = 1 if n <= win_length else 1 + math.ceil((n - win_length) / hop)
    missing = (frames_n - 1) * hop + win_length - n
    padded = torch.cat((torch.zeros(missing // 2), wave, torch.zeros(missing - missing // 2)))
    idx = torch.arange(win_length)[None] + torch.arange(frames_n)[:, None] * hop
    frames = padded[idx] * window
    pad = n_fft - win_length
    frames = F.pad(frames, [pad // 2, pad - pad // 2])
    re = F.linear(frames, weights[..., 0])
    im = F.linear(frames, weights[..., 1])
    power = (re**2 + im**2).T  # [bins, frames]
    height = power.shape[0] // bands
    power = power[: bands * height].reshape(bands, height, -1)
    return 10 * torch.log10(torch.where(power > 0, power, torch.full_like(power, 1e-18)))


def test_fbsp_init_is_normalised_finite_and_differentiable():
    bank = LinearFBSP(129, normalized=True)
    weights = bank.weights(256)
    assert weights.shape == (129, 256, 2) and torch.isfinite(weights).all()
    reg = bank.regularizer(weights)
    assert reg.item() == pytest.approx(0.0, abs=1e-10)
    frames = torch.randn(4, 256)
    loss = bank.apply_weights(frames, weights).square().sum() + bank.regularizer(bank.weights(256))
    loss.backward()
    for name in ("m", "fb", "fc"):
        grad = getattr(bank, name).grad
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
        # the reference's gradient normalisation: unit max-norm
        assert grad.abs().max().item() == pytest.approx(1.0, rel=1e-4)
    # moving away from the DFT init makes the regulariser positive, with finite gradients
    with torch.no_grad():
        bank.m.add_(0.3)
        bank.fb.mul_(1.5)
    bank.zero_grad()
    reg = bank.regularizer(bank.weights(256))
    assert reg.item() > 1e-4
    reg.backward()
    assert all(torch.isfinite(getattr(bank, n).grad).all() for n in ("m", "fb", "fc"))


def test_fbsp_unnormalised_target_is_sqrt_nfft():
    bank = LinearFBSP(65, normalized=False)
    assert bank.regularizer(bank.weights(128)).item() == pytest.approx(0.0, abs=1e-6)


def test_fbsp_matches_reference_formula_for_trained_like_parameters():
    gen = torch.Generator().manual_seed(0)
    front = FBSPSpectrogram(n_fft=256, hop_length=61, win_length=200)
    with torch.no_grad():
        front.fbsp.m.copy_(torch.rand(129, generator=gen) * 2 - 0.5)
        front.fbsp.fb.copy_(torch.rand(129, generator=gen) + 0.5)
        front.fbsp.fc.add_(torch.randn(129, generator=gen))
    ref_w = _reference_weights(front.fbsp.m, front.fbsp.fb, front.fbsp.fc, 256)
    assert torch.allclose(front.fbsp.weights(256), ref_w, atol=1e-5)
    for n in (150, 200, 1000, 1001):  # shorter than, equal to and longer than the window
        wave = torch.randn(n, generator=gen) * 0.3
        ours = front(wave[None]).log_power[0, 0]
        ref = _reference_log_power(wave, front.window, ref_w, 256, 61, 200)
        assert ours.shape == ref.shape
        assert torch.allclose(ours, ref, atol=1e-3), (n, (ours - ref).abs().max())


def test_blackman_harris_window_matches_scipy():
    sps = pytest.importorskip("scipy.signal")
    front = FBSPSpectrogram()
    expected = torch.from_numpy(sps.get_window("blackmanharris", 1654, fftbins=True)).float()
    assert torch.allclose(front.window, expected, atol=1e-7)
    assert front.band_height == 341 and front.fbsp.out_features == 1025


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_encoder_shapes_and_gradients(channels):
    model = ESResNeXtFBSP("tiny", sample_rate=16000)
    wave = torch.randn(2, channels, 4000) * 0.1 if channels > 1 else torch.randn(2, 4000) * 0.1
    out = model(wave)
    assert out.embedding.shape == (2, 64) == (2, model.output_dim)
    assert len(out.features) == 4 and out.features[-1].shape[:2] == (2, 256)
    (out.embedding.square().mean() + out.extras["aux_loss"]).backward()
    for name in ("frontend.fbsp.fc", "conv1.weight", "att1.conv_point.weight", "layer4.0.conv3.weight", "fc.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_channels_are_summed_and_input_scale_is_explicit():
    model = ESResNeXtFBSP("tiny", sample_rate=16000).eval()
    wave = torch.randn(2, 3000) * 0.1
    with torch.no_grad():
        mono = model(wave)
        stereo = model(torch.stack((wave, wave), 1))
        assert torch.allclose(stereo.extras["pooled"], 2 * mono.extras["pooled"], atol=1e-5)
        int16 = ESResNeXtFBSP("tiny", sample_rate=16000, input_scale=1.0).eval()
        int16.load_state_dict(model.state_dict())
        assert torch.allclose(int16(wave * 32768.0).embedding, mono.embedding, atol=1e-4)


def test_front_end_stays_fp32_under_autocast():
    model = ESResNeXtFBSP("tiny", sample_rate=16000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spec = model.spectrogram(torch.randn(1, 2000) * 0.1)
        out = model(torch.randn(2, 2000) * 0.1)
    assert spec.log_power.dtype == torch.float32
    assert torch.isfinite(out.embedding.float()).all()


def test_base_preset_has_reference_geometry():
    with torch.device("meta"):
        model = ESResNeXtFBSP("base")
    assert model.fc.in_features == 2048 and model.output_dim == 1024
    assert model.layer2[0].conv2.groups == 32 and model.layer1[0].conv2.out_channels == 128
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert (model.frontend.n_fft, model.frontend.hop_length, model.frontend.win_length) == (2048, 561, 1654)
    assert model.att5.conv_depth.kernel_size == (3, 5) and model.att2.conv_depth.kernel_size == (1, 5)


def test_weights_from_official_layouts(tmp_path):
    source = ESResNeXtFBSP("tiny", sample_rate=16000, output_dim=10)
    official = {k.removeprefix("frontend."): v for k, v in source.state_dict().items()}
    torch.save(official, tmp_path / "ESRNXFBSP.pt")
    torch.save({"audio." + k: v for k, v in official.items()}, tmp_path / "AudioCLIP.pt")
    tagger_init = ESResNeXtFBSP("tiny", sample_rate=16000, weights=str(tmp_path / "ESRNXFBSP.pt"))
    assert torch.equal(tagger_init.layer4[0].conv2.weight, source.layer4[0].conv2.weight)
    assert tagger_init.fc.out_features == 64  # 10-class head left at its initialisation
    full = ESResNeXtFBSP("tiny", sample_rate=16000, output_dim=10, weights=str(tmp_path / "AudioCLIP.pt"))
    assert torch.equal(full.fc.weight, source.fc.weight)
    assert torch.equal(full.frontend.fbsp.fc, source.frontend.fbsp.fc)
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        ESResNeXtFBSP("tiny", weights=str(tmp_path / "bad.pt"))
