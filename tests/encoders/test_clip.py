"""CLIP image and text towers through open_clip: shapes, tokenizer, local weights, key layout."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

from clapkit.encoders.clip import TINY_CONFIG, CLIPImageEncoder, CLIPTextEncoder


@pytest.fixture(scope="module")
def tiny_clip():
    from open_clip.model import CLIP

    torch.manual_seed(1)
    return CLIP(**copy.deepcopy(TINY_CONFIG), quick_gelu=True).eval()


def test_tiny_towers_shapes_tokenizer_and_gradients():
    image, text = CLIPImageEncoder("tiny"), CLIPTextEncoder("tiny")
    assert image.output_dim == text.output_dim == 64 and image.image_size == 64
    tokens = text.tokenize(["a red circle", "a dog barks"])["input_ids"]
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    assert (tokens.argmax(-1) > 0).all()  # EOT (the largest id) after the words
    out_t = text(["a red circle", "a dog barks"]).embedding
    out_i = image(torch.randn(2, 3, 64, 64)).embedding
    assert out_t.shape == out_i.shape == (2, 64)
    (out_t.sum() + out_i.sum()).backward()
    assert text.text.token_embedding.weight.grad is not None
    assert image.visual.conv1.weight.grad.abs().sum() > 0
    copy.deepcopy(text)  # the cached tokenizer must not break copies (EMA, checkpoint callbacks)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_local_weights_reproduce_open_clip(tiny_clip, tmp_path, fmt):
    state = {k: v.clone() for k, v in tiny_clip.state_dict().items()}
    if fmt == "pt":
        path = tmp_path / "clip.pt"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        path = tmp_path / "clip.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    image = CLIPImageEncoder("tiny", weights=str(path)).eval()
    text = CLIPTextEncoder("tiny", weights=str(path)).eval()
    pixels = torch.randn(2, 3, 64, 64)
    captions = ["a blue square", "rain on a roof"]
    with torch.no_grad():
        from open_clip.tokenizer import tokenize

        assert torch.allclose(image(pixels).embedding, tiny_clip.encode_image(pixels), atol=1e-5)
        assert torch.allclose(text(captions).embedding, tiny_clip.encode_text(tokenize(captions)), atol=1e-5)


def test_bad_weights_are_reported_with_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        CLIPImageEncoder("tiny", weights=str(tmp_path / "missing.pt"))
    wrong = tmp_path / "wrong.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="wrong.pt"):
        CLIPImageEncoder("tiny", weights=str(wrong))
    with pytest.raises(ValueError, match="wrong.pt"):
        CLIPTextEncoder("tiny", weights=str(wrong))
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        CLIPImageEncoder("no-such-arch")


def test_rn50_key_layout_matches_clip():
    from open_clip import get_model_config
    from open_clip.model import CLIP

    with torch.device("meta"):
        reference = set(CLIP(**get_model_config("RN50"), quick_gelu=True).state_dict())
        image, text = CLIPImageEncoder("RN50"), CLIPTextEncoder("RN50")
    ours = set(image.state_dict()) | {k.removeprefix("text.") for k in text.state_dict()}
    assert ours == reference - {"logit_scale"}
    assert image.output_dim == text.output_dim == 1024 and image.image_size == 224
