"""Feature fusion: crop rules, the 4-view stack (vs the reference's get_audio_features), AFF, PANN fusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clapkit.audio.crop import fit_length
from clapkit.encoders.frontends import LogMel
from clapkit.encoders.fusion import AttentionalFeatureFusion, ClipBatcher, fusion_crop_starts
from clapkit.encoders.pann import Cnn14
from helpers.laion import single_thread

HTK = {"mel_scale": "htk", "norm": None}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


def test_crop_starts_middle_of_each_third_and_random_within_it():
    total, chunk = 2501, 1001  # 25 s
    thirds = np.array_split(np.arange(total - chunk + 1), 3)
    assert fusion_crop_starts(total, chunk) == [int(t[len(t) // 2]) for t in thirds] == [250, 751, 1251]
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        starts = fusion_crop_starts(total, chunk, "random", gen)
        assert all(t[0] <= s <= t[-1] for s, t in zip(starts, thirds, strict=True))
    assert fusion_crop_starts(1002, 1001) == [0, 1, 0]  # an empty third falls back to 0


@pytest.mark.parametrize("mode,expected", [
    ("repeatpad", [1, 2, 3, 1, 2, 3, 0]), ("pad", [1, 2, 3, 0, 0, 0, 0]), ("repeat", [1, 2, 3, 1, 2, 3, 1])])
def test_fill_modes(mode, expected):
    assert fit_length(torch.tensor([1.0, 2, 3]), 7, mode).tolist() == expected


def test_short_clip_stacks_four_copies_and_long_clip_gets_global_plus_crops():
    frontend = LogMel(**HTK)
    batcher = ClipBatcher(480000, "repeatpad", fusion=True)
    short, long = torch.randn(48000 * 3) * 0.1, torch.randn(48000 * 25) * 0.1
    wave = torch.zeros(2, long.numel())
    wave[0, : short.numel()], wave[1] = short, long
    out = batcher(frontend, wave, torch.tensor([short.numel(), long.numel()]),
                  crop_starts=torch.tensor([[0, 0, 0], [10, 700, 1400]]))
    assert out.mel.shape == (2, 4, 1001, 64) and out.longer.tolist() == [False, True]
    assert all(torch.equal(out.mel[0, 0], out.mel[0, i]) for i in range(1, 4))
    torch.testing.assert_close(out.mel[0, 0], frontend(fit_length(short, 480000, "repeatpad")).T)
    full = frontend(long).T
    for view, start in zip(range(1, 4), (10, 700, 1400), strict=True):
        assert torch.equal(out.mel[1, view], full[start : start + 1001])
    torchvision = pytest.importorskip("torchvision")
    shrunk = torchvision.transforms.Resize(size=[1001, 64])(full[None])[0]
    torch.testing.assert_close(out.mel[1, 0], shrunk)
    with pytest.raises(ValueError, match="fall outside"):
        batcher(frontend, long[None], crop_starts=torch.tensor([[0, 0, 2000]]))


def test_one_hop_longer_than_the_window_keeps_the_whole_mel():
    frontend = LogMel(**HTK)
    out = ClipBatcher(480000, fusion=True)(frontend, torch.randn(1, 480100) * 0.1)
    assert out.longer.tolist() == [False] and out.mel.shape == (1, 4, 1001, 64)


def test_without_fusion_long_clips_are_centre_cropped_in_eval():
    frontend = LogMel()
    wave = torch.randn(1, 480000 + 1000) * 0.1
    out = ClipBatcher(480000)(frontend, wave)
    torch.testing.assert_close(out.mel[0, 0], frontend(wave[0, 500:480500]).T)
    random = ClipBatcher(480000)(frontend, wave, training=True)
    assert random.mel.shape == (1, 1, 1001, 64)


@pytest.mark.parity
def test_stack_matches_reference_get_audio_features():
    from helpers import laion

    _, data = laion.reference()
    cfg = {"sample_rate": 48000, "window_size": 1024, "hop_size": 480, "mel_bins": 64, "fmin": 50, "fmax": 14000}
    frontend = LogMel(f_min=50, f_max=14000, **HTK)
    for seconds in (3, 25):
        wave = torch.from_numpy(laion.test_waves((seconds,))[0])
        with laion.deterministic_reference_crops():
            ref = data.get_audio_features({}, wave, 480000, "fusion", "repeatpad", cfg)
        ours = ClipBatcher(480000, fusion=True)(frontend, wave[None])
        assert ours.longer.tolist() == ref["longer"].tolist()
        torch.testing.assert_close(ours.mel[0], ref["mel_fusion"], atol=1e-4, rtol=1e-5)


@pytest.mark.parity
def test_attentional_feature_fusion_matches_reference_aff():
    from helpers import laion

    laion.reference()
    from laion_clap.clap_module.feature_fusion import AFF

    torch.manual_seed(0)
    ref = AFF(channels=32, type="2D")
    laion.randomize_batchnorm(ref)
    ours = AttentionalFeatureFusion(32)
    ours.load_state_dict(ref.state_dict())
    x, residual = torch.randn(3, 32, 8, 10), torch.randn(3, 32, 8, 10)
    for mode in ("eval", "train"):
        getattr(ref, mode)(), getattr(ours, mode)()
        torch.testing.assert_close(ours(x[:1], residual[:1]), ref(x[:1], residual[:1]))
        torch.testing.assert_close(ours(x, residual), ref(x, residual))


def test_pann_fusion_forward_backward_and_deterministic_eval():
    torch.manual_seed(0)
    model = Cnn14(variant="tiny", fusion=True)
    assert model.frontend.mel.mel_scale.norm is None and model.batcher.clip_samples == 480000
    wave = torch.zeros(2, 48000 * 12)
    wave[0, : 48000 * 4] = torch.randn(48000 * 4) * 0.1
    wave[1] = torch.randn(48000 * 12) * 0.1
    lengths = torch.tensor([48000 * 4, 48000 * 12])
    out = model(wave, lengths=lengths)
    out.embedding.sum().backward()
    assert model.mel_conv2d[0].weight.grad is not None and model.fusion_model.local_att[0].weight.grad is not None
    model.eval()
    with torch.no_grad():
        a, b = model(wave, lengths=lengths).embedding, model(wave, lengths=lengths).embedding
        alone = model(wave[1:], lengths=lengths[1:]).embedding
    assert torch.equal(a, b)
    torch.testing.assert_close(a[1:], alone, atol=1e-5, rtol=1e-5)
