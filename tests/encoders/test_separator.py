"""CLAPSep building blocks: STFT round trip, patch expansion, FiLM, LoRA, decoders, shapes."""

from __future__ import annotations

import pytest
import torch

from clapkit.encoders.separation import STFT, FiLM, build_condition, lora_targets
from clapkit.encoders.separation.decoder import PatchExpand
from helpers.separation import EMBED_DIM, SAMPLE_RATE, tiny_separator


def test_istft_of_all_ones_mask_reproduces_mixture():
    sep = tiny_separator(with_encoder=False)
    mixture = 0.3 * torch.randn(2, SAMPLE_RATE)
    spec = sep.stft.analyze(mixture)
    assert spec.magnitude.shape == (2, SAMPLE_RATE // 320 + 1, 513)
    out = sep.reconstruct(spec, torch.ones_like(spec.magnitude))
    assert out.waveform.shape == mixture.shape
    assert (out.waveform - mixture).abs().max() < 1e-4


def test_stft_is_fp32_under_bf16_autocast():
    stft = STFT()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spec = stft.analyze(torch.randn(1, 8000))
        wave = stft.synthesize(spec.magnitude, spec.phase, 8000)
    assert spec.magnitude.dtype == torch.float32 and wave.dtype == torch.float32


def _reference_patch_expand(x: torch.Tensor) -> torch.Tensor:
    """The CLAPSep reference's channel shuffle + pixel shuffle, written out literally."""
    b, h, w, c = x.shape
    x0, x2, x1, x3 = x.chunk(4, dim=-1)
    x = torch.stack((x0, x1, x2, x3), dim=-1)
    x = torch.cat(torch.chunk(x, c // 4, dim=-2), dim=-1).squeeze(-2)
    x = torch.nn.functional.pixel_shuffle(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    return x


def test_patch_expand_matches_reference_layout():
    layer = PatchExpand(8, 4)
    x = torch.randn(2, 3, 5, 8)
    expected = layer.norm(_reference_patch_expand(layer.expand(x)))
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert layer(x).shape == (2, 6, 10, 4)


def test_film_starts_as_identity_and_modulates():
    film = FiLM(6, 4)
    x, c = torch.randn(2, 3, 3, 4), torch.randn(2, 6)
    assert torch.equal(film(x, c), x)
    torch.nn.init.normal_(film.beta.weight)
    assert not torch.allclose(film(x, c), x)


def test_condition_is_normalised_with_zeros_for_a_missing_side():
    pos = torch.randn(3, EMBED_DIM)
    cond = build_condition(pos, None)
    assert cond.shape == (3, 2 * EMBED_DIM)
    assert torch.allclose(cond.norm(dim=-1), torch.ones(3))
    assert torch.all(cond[:, EMBED_DIM:] == 0)
    assert torch.all(build_condition(None, pos)[:, :EMBED_DIM] == 0)
    with pytest.raises(ValueError):
        build_condition(None, None)


@pytest.mark.parametrize("kind", ["swin", "unet"])
def test_separator_shapes(kind):
    sep = tiny_separator(kind, with_encoder=True).eval()
    mixture = 0.1 * torch.randn(2, SAMPLE_RATE // 2)
    out = sep(mixture, build_condition(torch.randn(2, EMBED_DIM), torch.randn(2, EMBED_DIM)))
    frames = mixture.shape[1] // 320 + 1
    assert out.waveform.shape == mixture.shape
    assert out.mask.shape == out.magnitude.shape == (2, frames, 513)
    assert 0.0 <= float(out.mask.min()) and float(out.mask.max()) <= 1.0
    assert torch.isfinite(out.waveform).all()


def test_lora_only_on_attention_projections_with_scale_one_sixteenth():
    sep = tiny_separator(with_encoder=True)
    targets = lora_targets(sep.encoder)
    assert targets and all(t.endswith(("attn.qkv", "attn.proj")) for t in targets)
    layer = sep.encoder.get_submodule(targets[0])
    assert layer.r["default"] == 16 and layer.scaling["default"] == pytest.approx(1 / 16)
    trainable = [n for n, p in sep.encoder.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.endswith("base_layer.bias") for n in trainable)
    assert sep.encoder.frame_align == "pad"


def test_htsat_and_pann_declare_the_separation_encoder_contract():
    # CLAPSep relies on the declared FeatureAudioEncoder steps, not on duck typing; the same
    # method names run the same steps in both families.
    from clapkit.encoders.base import FeatureAudioEncoder
    from clapkit.encoders.htsat import HTSAT
    from clapkit.encoders.pann import Cnn6
    from helpers.separation import tiny_htsat

    samples = 9600
    for encoder in (tiny_htsat(), Cnn6(variant="tiny", clip_samples=samples)):
        assert isinstance(encoder, FeatureAudioEncoder)
        encoder.eval()
        wave = 0.1 * torch.randn(2, encoder.batcher.clip_samples)
        with torch.no_grad():
            whole = encoder.forward_mel(encoder.mel(wave))
            direct = encoder(wave)
        assert whole.features is not None or isinstance(encoder, Cnn6)
        torch.testing.assert_close(whole.embedding, direct.embedding)
    htsat = tiny_htsat()
    assert htsat.frame_align == "interpolate"
    htsat.align_frames_by_padding()
    assert htsat.frame_align == "pad"
    assert isinstance(HTSAT, type)


def test_conditioned_masknet_starts_as_the_plain_one_and_then_follows_the_query():
    from clapkit.encoders.separation import MaskNet

    torch.manual_seed(0)
    plain = MaskNet(feature_dim=8, d_model=16, num_heads=2, num_layers=1).eval()
    conditioned = MaskNet(feature_dim=8, d_model=16, num_heads=2, num_layers=1, cond_dim=6).eval()
    own = set(conditioned.state_dict()) - set(plain.state_dict())
    assert own == {"film.gamma.weight", "film.gamma.bias", "film.beta.weight", "film.beta.bias"}
    conditioned.load_state_dict(plain.state_dict(), strict=False)
    magnitude, features = torch.rand(2, 7, 513), torch.randn(2, 9, 8)
    first, second = torch.randn(2, 6), torch.randn(2, 6)
    with torch.no_grad():
        # FiLM starts as the identity: the same mask as the unconditioned head, whatever the query.
        assert torch.allclose(conditioned(magnitude, features, first), plain(magnitude, features), atol=1e-6)
        torch.nn.init.normal_(conditioned.film.beta.weight)
        assert not torch.allclose(conditioned(magnitude, features, first), conditioned(magnitude, features, second))
    assert plain(magnitude, features, first).shape == (2, 7, 513)  # an unconditioned head ignores the query
    with pytest.raises(ValueError, match="pass the query condition"):
        conditioned(magnitude, features)
