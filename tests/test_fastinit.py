"""Loading a native model skips random initialisation without changing a single weight."""

from __future__ import annotations

import torch

import clapkit
from clapkit.hub.directory import read_directory
from clapkit.hub.native import instantiate_model, read_native_weights
from clapkit.utils.fastinit import skip_random_init
from helpers.models import save_tiny_native, tone


def test_initialisers_are_no_ops_inside_and_restored_after():
    before = (torch.Tensor.normal_, torch.nn.init.trunc_normal_)
    with skip_random_init():
        t = torch.zeros(3)
        assert torch.nn.init.trunc_normal_(t) is t and torch.equal(t.normal_(), torch.zeros(3))
        assert torch.equal(torch.nn.init.kaiming_uniform_(t), torch.zeros(3))
    assert (torch.Tensor.normal_, torch.nn.init.trunc_normal_) == before
    assert torch.zeros(1000).normal_().std() > 0.5


def test_load_gives_the_weights_of_a_normally_built_model(tmp_path):
    directory = save_tiny_native(tmp_path / "model")
    config = read_directory(directory).model
    plain = instantiate_model(config)
    plain.load_state_dict(read_native_weights(directory))
    fast = clapkit.load(directory)
    for (name, a), (_, b) in zip(plain.state_dict().items(), fast.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    wave = tone(1.0, 16000)
    expected = clapkit.inference.clap.CLAPModel(plain.eval(), fast.inference).embed_audio(wave, 16000)
    assert torch.equal(fast.embed_audio(wave, 16000), expected)
