"""oneDNN fused linear layers for bf16 CPU inference: the same numbers to bf16 rounding, the
aten path wherever the fused one does not apply, and packed weights that follow the weights."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from clapkit.encoders import fused_linear
from clapkit.encoders.htsat import HTSAT, Mlp

pytestmark = pytest.mark.skipif(not fused_linear.AVAILABLE, reason="this torch build or CPU has no oneDNN bf16 linears (AVX-512 or AVX-NE-CONVERT)")


def _layer(n_in=48, n_out=96, bias=True):
    torch.manual_seed(0)
    return nn.Linear(n_in, n_out, bias=bias).to(torch.bfloat16)


def _reference(x, layer, activation=None, residual=None):
    out = torch.nn.functional.linear(x.float(), layer.weight.float(), None if layer.bias is None else layer.bias.float())
    if activation is not None:
        out = activation(out)
    return out if residual is None else out + residual.float()


@pytest.mark.parametrize("case", ["plain", "no-bias", "gelu", "gelu-tanh", "residual"])
def test_fused_equals_fp32_math_to_bf16_rounding(case):
    layer = _layer(bias=case != "no-bias")
    x = torch.randn(3, 37, 48).to(torch.bfloat16)
    activation = {"gelu": nn.GELU(), "gelu-tanh": nn.GELU(approximate="tanh")}.get(case)
    residual = torch.randn(3, 37, 96).to(torch.bfloat16) if case == "residual" else None
    with torch.no_grad():
        assert fused_linear.fusable(x, layer)
        out = fused_linear.linear(x, layer, activation, residual)
        unfused = layer(x) if activation is None else activation(layer(x))
        unfused = unfused if residual is None else unfused + residual
    want = _reference(x, layer, activation, residual)
    assert out.dtype == torch.bfloat16 and out.shape == want.shape
    # bf16 keeps 8 bits: both paths are within a few bf16 steps of the fp32 result
    scale = want.abs().max()
    assert (out.float() - want).abs().max() <= 0.02 * scale
    assert (out.float() - want).abs().max() <= (unfused.float() - want).abs().max() + 0.01 * scale


def test_aten_path_with_gradients_fp32_or_other_activations():
    layer = _layer()
    x = torch.randn(5, 48).to(torch.bfloat16)
    assert not fused_linear.fusable(x, layer)  # gradients are recorded: training keeps aten
    with torch.no_grad():
        assert not fused_linear.fusable(x.float(), copy.deepcopy(layer).float())
        relu = fused_linear.linear(x, layer, nn.ReLU())
        assert torch.equal(relu, torch.relu(layer(x)))
        row = torch.randn(96).to(torch.bfloat16)  # a residual that broadcasts: aten's add, not the epilogue
        assert torch.equal(fused_linear.linear(x, layer, residual=row), layer(x) + row)
    out = fused_linear.linear(x, layer, nn.GELU())
    out.float().sum().backward()
    assert layer.weight.grad is not None


def test_packed_weight_follows_in_place_changes_and_stays_out_of_the_state_dict():
    layer = _layer()
    x = torch.randn(4, 48).to(torch.bfloat16)
    with torch.no_grad():
        before = fused_linear.linear(x, layer)
        layer.weight.mul_(2.0)  # what load_state_dict does: an in-place copy
        after = fused_linear.linear(x, layer)
    want = _reference(x, layer)
    assert (after.float() - want).abs().max() <= 0.02 * want.abs().max()
    assert (before.float() - want).abs().max() > 0.1 * want.abs().max()
    assert set(layer.state_dict()) == {"weight", "bias"}
    clone = copy.deepcopy(layer)
    pickle.loads(pickle.dumps(layer))
    with torch.no_grad():
        assert torch.equal(fused_linear.linear(x, clone), after)


def test_mlp_adds_its_residual_in_eval_and_keeps_the_order_in_training():
    torch.manual_seed(0)
    mlp = Mlp(32, 128).to(torch.bfloat16).eval()
    x, shortcut = torch.randn(2, 9, 32).to(torch.bfloat16), torch.randn(2, 9, 32).to(torch.bfloat16)
    with torch.no_grad():
        fused = mlp(x, residual=shortcut)
        plain = shortcut + mlp(x)
    assert (fused.float() - plain.float()).abs().max() <= 0.05 * plain.abs().max()
    mlp.train()
    with torch.no_grad():
        assert torch.equal(mlp(x, residual=shortcut), shortcut + mlp(x))


def test_bf16_htsat_through_the_fused_path_matches_fp32():
    torch.manual_seed(0)
    model = HTSAT("test").eval()
    wave = torch.randn(2, 480000) * 0.1
    with torch.no_grad():
        want = model(wave).embedding
        trunk = copy.deepcopy(model)
        for name in ("patch_embed", "layers"):
            getattr(trunk, name).to(torch.bfloat16)
        calls = []
        original = fused_linear.packed_weight
        fused_linear.packed_weight = lambda layer, rows: calls.append(layer) or original(layer, rows)
        try:
            x = trunk.frontend(wave).unsqueeze(1).transpose(2, 3)
            got = _bf16_forward(trunk, x)
        finally:
            fused_linear.packed_weight = original
    assert calls, "the bf16 trunk did not take the fused path"
    assert torch.nn.functional.cosine_similarity(got.float(), want).min() > 0.999


def _bf16_forward(model, mel):
    """HTSAT.forward_mel with the trunk in bf16 (what precision bf16-true does, by hand)."""
    x = model.bn0(mel.transpose(1, 3)).transpose(1, 3)
    x = model._interpolate_frames(x)
    tokens = model.patch_embed(model._fold(x).to(torch.bfloat16), None).flatten(2).transpose(1, 2)
    for layer in model.layers:
        _, tokens = layer(tokens)
    return model.norm(tokens.float()).mean(1)


def test_a_lora_wrapped_layer_keeps_its_own_forward():
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16)).to(torch.bfloat16)
    model = inject_adapter_in_model(LoraConfig(r=4, target_modules=["0"], init_lora_weights=False), model)
    wrapped = model[0]
    x = torch.randn(3, 16).to(torch.bfloat16)
    with torch.no_grad():
        assert hasattr(wrapped, "weight") and not fused_linear.fusable(x, wrapped)
        assert torch.equal(fused_linear.linear(x, wrapped), wrapped(x))
        assert not torch.allclose(wrapped(x), wrapped.base_layer(x))  # the adapter does change it
