"""HTSAT: presets, the multi-level features contract, SDPA window attention, LoRA targets, modes.

Numerical parity with laion_clap's HTSAT (fused and unfused, 3/10/25 s) is in
``tests/interop/test_laion_clap.py``.
"""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F

from clapkit.encoders.frontends import ConvLogMel
from clapkit.encoders.htsat import HTSAT, SwinBlock, WindowAttention
from helpers.laion import single_thread


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HTSAT("test", frontend=ConvLogMel()).eval()


@pytest.fixture(scope="module")
def output(model):
    with torch.no_grad():
        return model(torch.randn(2, 480000) * 0.1)


def test_presets():
    for variant, dim, blocks in [("tiny", 768, 12), ("base", 1024, 18), ("large", 2048, 18)]:
        with torch.device("meta"):
            model = HTSAT(variant, frontend=ConvLogMel())
        assert model.output_dim == dim and model.sample_rate == 48000
        assert sum(len(layer.blocks) for layer in model.layers) == blocks
        assert model.layers[0].blocks[0].attn.num_heads == 4 and model.layers[3].blocks[0].attn.num_heads == 32
    with pytest.raises(ValueError, match="unknown HTSAT variant 'huge'"):
        HTSAT("huge")


def test_features_contract(model, output):
    b = 2
    assert output.embedding.shape == (b, 128)
    assert [tuple(f.shape) for f in output.features] == [
        (b, 16, 64, 64), (b, 32, 32, 32), (b, 64, 16, 16), (b, 128, 8, 8), (b, 128, 8, 8)]
    assert [tuple(f.shape) for f in output.extras["stage_outputs_premerge"]] == [
        (b, 16, 64, 64), (b, 32, 32, 32), (b, 64, 16, 16), (b, 128, 8, 8)]
    assert output.tokens.shape == (b, 64, 128)
    assert output.extras["clipwise_logits"].shape == (b, 527)
    assert output.extras["framewise_logits"].shape == (b, 32, 527)
    assert output.extras["mel"].shape == (b, 1, 1024, 64)
    # the embedding is the mean of the final normalised tokens; features[4] precedes that norm
    torch.testing.assert_close(output.embedding, output.tokens.mean(1))
    last = output.features[4].flatten(2).transpose(1, 2)
    torch.testing.assert_close(model.norm(last), output.tokens)
    # the last stage does not merge: its pre- and post-merge outputs are the same map
    torch.testing.assert_close(output.features[4], output.extras["stage_outputs_premerge"][3])


def test_attention_keeps_fused_qkv_and_proj_linears_and_uses_sdpa(model, monkeypatch):
    attn = [m for m in model.modules() if isinstance(m, WindowAttention)]
    assert len(attn) == 8
    assert all(isinstance(a.qkv, torch.nn.Linear) and isinstance(a.proj, torch.nn.Linear) for a in attn)
    calls = []
    original = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    with torch.no_grad():
        model(torch.randn(1, 480000) * 0.1)
    assert len(calls) == 8


def test_window_attention_equals_explicit_softmax_with_bias_and_shift_mask():
    torch.manual_seed(0)
    block = SwinBlock(16, (16, 16), num_heads=2, window_size=8, shift=True)
    attn, mask = block.attn, block.attn_mask
    x = torch.randn(2 * mask.shape[0], 64, 16)
    q, k, v = attn.qkv(x).reshape(x.shape[0], 64, 3, 2, 8).permute(2, 0, 3, 1, 4)
    scores = (q * 8**-0.5) @ k.transpose(-2, -1) + attn.position_bias().unsqueeze(0)
    scores = (scores.view(2, mask.shape[0], 2, 64, 64) + mask[None, :, None]).view(-1, 2, 64, 64)
    expected = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape[0], 64, 16))
    torch.testing.assert_close(attn(x, mask), expected, atol=1e-5, rtol=1e-5)


def test_lora_target_pattern_selects_exactly_the_attention_linears(model):
    # A bare ["qkv", "proj"] would also hit patch_embed.proj (same name as in the reference);
    # CLAPSep adapts the attention linears only, hence this pattern (peft's target_modules regex).
    import re

    hits = [n for n, m in model.named_modules() if re.fullmatch(r".*\.attn\.(qkv|proj)", n)]
    assert len(hits) == 16 and all(isinstance(model.get_submodule(n), torch.nn.Linear) for n in hits)
    assert "patch_embed.proj" not in hits


def test_eval_is_deterministic_and_lengths_repeatpad_short_clips(model):
    clip = torch.randn(48000 * 3) * 0.1
    tiled = torch.cat([clip.repeat(3), torch.zeros(480000 - 3 * clip.numel())])
    padded = torch.zeros(2, 480000 + 9600)
    padded[0, : clip.numel()] = clip
    padded[1] = torch.randn(480000 + 9600) * 0.1
    with torch.no_grad():
        a = model(padded, lengths=torch.tensor([clip.numel(), padded.shape[1]])).embedding
        b = model(padded, lengths=torch.tensor([clip.numel(), padded.shape[1]])).embedding
        alone = model(tiled[None]).embedding
    assert torch.equal(a, b)
    torch.testing.assert_close(a[:1], alone, atol=1e-5, rtol=1e-5)


def test_training_step_with_spec_augment_and_bf16_autocast():
    torch.manual_seed(0)
    model = HTSAT("test", frontend=ConvLogMel()).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 480000) * 0.1)
    assert out.extras["mel"].dtype == torch.float32  # front end and bn0 input stay fp32
    out.embedding.float().sum().backward()
    assert model.layers[0].blocks[0].attn.qkv.weight.grad is not None
    assert model.patch_embed.proj.weight.grad is not None


def test_frame_align_pad_pads_with_the_log_floor_before_bn0():
    torch.manual_seed(0)
    model = HTSAT("test", frontend=ConvLogMel(), frame_align="pad").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 480000) * 0.1)
        floor = torch.full((1, 64, 1, 1), -100.0)
        expected = model.bn0(floor).flatten()
    mel = out.extras["mel"][0, 0]
    assert mel.shape == (1024, 64)
    torch.testing.assert_close(mel[1001:], expected.expand(23, 64))


def test_too_many_frames_is_a_clear_error():
    model = HTSAT("test", frontend=ConvLogMel(), clip_samples=600000).eval()
    with pytest.raises(ValueError, match="at most 1024 frames, got 1251"):
        model(torch.zeros(1, 600000))


def test_inference_gather_path_and_cached_bias_equal_the_training_path(model):
    """Without gradients SwinBlock gathers windows and WindowAttention reuses its bias; the
    numbers must be those of the roll/partition path (run here with gradients on)."""
    wave = torch.randn(2, 480000) * 0.1
    with torch.no_grad():
        fast = model(wave).embedding
        again = model(wave).embedding  # second call: cached biases
    with torch.enable_grad():
        slow = model(wave).embedding
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert torch.equal(fast, again)
    block = next(b for b in model.modules() if isinstance(b, SwinBlock) and b.shift_size)
    with torch.no_grad():  # a changed table is picked up (the cache is keyed on its version)
        table = block.attn.relative_position_bias_table
        saved = table.clone()
        table.add_(torch.randn_like(table))
        changed = model(wave).embedding
        table.copy_(saved)
    assert not torch.allclose(changed, fast)


def test_drop_path_is_timms_in_training_and_the_identity_in_eval():
    from timm.layers import drop_path

    from clapkit.encoders.htsat import DropPath

    x = torch.randn(8, 5, 3)
    layer = DropPath(0.5)
    assert torch.equal(layer.eval()(x), x)
    torch.manual_seed(0)
    ours = layer.train()(x)
    torch.manual_seed(0)
    assert torch.equal(ours, drop_path(x, 0.5, True))
    assert not torch.equal(ours, x)


def test_audioset_head_runs_only_when_its_logits_are_read(model):
    calls = []
    handle = model.tscam_conv.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            out = model(torch.randn(2, 480000) * 0.1)
            assert calls == []  # an embedding never pays for the 527-class head
            clipwise = out.extras["clipwise_logits"]
            framewise = out.extras.get("framewise_logits")
            assert calls == [1]  # one run serves both entries
            frames = model.tscam_conv(_tscam_input(model, out.tokens)).flatten(2)
        torch.testing.assert_close(clipwise, frames.mean(2))
        torch.testing.assert_close(framewise, frames.transpose(1, 2))
        assert set(dict(out.extras)) >= {"clipwise_logits", "framewise_logits", "mel", "longer"}
        copied = pickle.loads(pickle.dumps(out.extras))  # a plain dict of values: no closures
        assert type(copied) is dict and torch.equal(copied["clipwise_logits"], clipwise)
    finally:
        handle.remove()


def _tscam_input(model, tokens):
    b, _, c = tokens.shape
    side, ratio = model.final_grid, model.freq_ratio
    x = tokens.transpose(1, 2).reshape(b, c, side, side)
    return x.reshape(b, c, ratio, side // ratio, side).permute(0, 1, 3, 2, 4).reshape(b, c, side // ratio, -1)
