"""AudioCLIP interop: official key layout -> clapkit with full coverage, native round trip."""

from __future__ import annotations

import pytest
import torch

from clapkit.hub.convert import build_converted, save_converted
from clapkit.hub.native import load_native
from clapkit.interop.audioclip import CHECKPOINT_FORMAT, convert_audioclip
from clapkit.interop.keymap import CheckpointError
from helpers.audioclip import official_audioclip_state_dict


def test_full_size_layout_has_full_key_coverage():
    state = official_audioclip_state_dict(tiny=False)
    assert "audio.fbsp.bias" in state and state["audio.fbsp.bias"].numel() == 0
    assert CHECKPOINT_FORMAT.matches({"state_dict": state})
    converted = convert_audioclip({f"module.{k}": v for k, v in state.items()})  # DDP prefix
    assert len(converted.state_dict) == len(state)
    assert converted.state_dict["logit_scales.audio__image"] is state["logit_scale_ai"]
    assert converted.state_dict["towers.audio.encoder.frontend.window"] is state["audio.window"]
    assert converted.state_dict["towers.text.encoder.text.text_projection"] is state["text_projection"]
    assert converted.inference.sample_rate == 44100 and converted.inference.clip_samples == 220500


def test_missing_and_extra_keys_are_listed():
    state = official_audioclip_state_dict(tiny=False)
    del state["audio.att5.bn.weight"]
    state["audio.bogus"] = state["audio.window"]
    with pytest.raises(CheckpointError, match=r"att5\.bn\.weight.*|audio\.bogus"):
        convert_audioclip(state)


def _embed(model, wave, images, texts):
    with torch.no_grad():
        return (model.embed("audio", wave), model.embed("image", images), model.embed("text", texts))


def test_tiny_checkpoint_round_trips_through_native_format(tmp_path):
    state = official_audioclip_state_dict(tiny=True)
    converted = convert_audioclip(state, audio_variant="tiny", clip_arch="tiny", sample_rate=16000, clip_seconds=0.5)
    model = build_converted(converted)
    wave, images, texts = torch.randn(2, 8000) * 0.1, torch.randn(2, 3, 64, 64), ["a dog", "rain"]
    reference = _embed(model, wave, images, texts)
    assert torch.allclose(model.logit_scale("audio", "text"), torch.tensor(50.0))
    directory = save_converted(converted, tmp_path / "audioclip")
    reloaded, _, inference = load_native(directory)
    assert inference.sample_rate == 16000 and inference.pad == "pad"
    for before, after in zip(reference, _embed(reloaded, wave, images, texts)):
        assert torch.equal(before, after)


def test_esrnxfbsp_tagger_layout(tmp_path):
    from clapkit.encoders.esresnext import ESResNeXtFBSP

    encoder = ESResNeXtFBSP("tiny", sample_rate=16000, output_dim=10)
    state = {k.removeprefix("frontend."): v for k, v in encoder.state_dict().items()}
    converted = convert_audioclip(state, audio_variant="tiny", sample_rate=16000, clip_seconds=0.5)
    model = build_converted(converted)
    assert model.multi_label and model.num_classes == 10
    wave = torch.randn(2, 8000) * 0.1
    with torch.no_grad():
        assert torch.allclose(model({"audio": wave}), encoder.eval()(wave).embedding, atol=1e-6)
    reloaded, _, _ = load_native(save_converted(converted, tmp_path / "tagger"))
    with torch.no_grad():
        assert torch.equal(reloaded({"audio": wave}), model({"audio": wave}))
