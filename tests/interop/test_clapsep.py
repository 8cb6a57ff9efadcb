"""Released CLAPSep layout: full and tuned-only dicts load with full coverage; gaps are named."""

from __future__ import annotations

import pytest
import torch

from clapkit.encoders.separation import build_condition
from clapkit.interop.clapsep import load_clapsep, released_layout
from clapkit.interop.keymap import CheckpointError
from helpers.separation import EMBED_DIM, tiny_batch, tiny_task


@pytest.fixture(scope="module")
def trained():
    task = tiny_task().model
    with torch.no_grad():  # non-zero LoRA so a mapping mistake changes the output
        for name, p in task.separator.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return task.eval()


def _extras(task):
    """Keys the reference file carries that clapkit recomputes or reads elsewhere."""
    ref_enc = task.query.audio_encoder.state_dict()
    return {
        "stft.conv_real.weight": torch.zeros(513, 1, 1024),
        "istft.reverse.weight": torch.zeros(1024, 513, 1),
        "audio_branch.layers.0.blocks.0.attn.relative_position_index": torch.zeros(64, 64, dtype=torch.long),
        "decoder_model.layers.0.blocks.0.attn.relative_position_index": torch.zeros(4, 4, dtype=torch.long),
        "audio_branch.head.weight": torch.zeros(527, 128),
        "clap_model.model.logit_scale_a": torch.zeros(()),
        "clap_model.model.audio_branch.bn0.weight": ref_enc["bn0.weight"],
    }


def _output(task):
    batch = tiny_batch()
    cond = build_condition(torch.randn(2, EMBED_DIM, generator=torch.Generator().manual_seed(1)), None)
    with torch.no_grad():
        return task(batch["mixture"], cond).waveform


def test_full_released_layout_lightning_wrapped_loads_with_full_coverage(trained):
    official = {**released_layout(trained), **_extras(trained)}
    assert any(k.endswith("attn.qkv.lora_A") for k in official)
    assert any(k.startswith("decoder_model.mask_net.2.layers.0.self_attn") for k in official)
    fresh = tiny_task().model
    fresh.query.load_state_dict(trained.query.state_dict())
    load_clapsep({"state_dict": official, "epoch": 149, "global_step": 1}, fresh)
    assert torch.allclose(_output(fresh), _output(trained), atol=1e-6)


def test_tuned_only_flat_dict_takes_the_encoder_base_from_the_clap(trained):
    tuned = {k: v for k, v in released_layout(trained).items()
             if "lora" in k or k.endswith(("attn.qkv.bias", "attn.proj.bias")) or k.startswith("decoder_model.")}
    assert not any(k.endswith("qkv.weight") and k.startswith("audio_branch") for k in tuned)
    fresh = tiny_task().model
    fresh.query.load_state_dict(trained.query.state_dict())
    load_clapsep(tuned, fresh)
    assert torch.allclose(_output(fresh), _output(trained), atol=1e-6)


def test_gaps_and_strays_are_listed(trained):
    official = released_layout(trained)
    missing = {k: v for k, v in official.items() if not k.startswith("decoder_model.film.")}
    with pytest.raises(CheckpointError, match=r"not filled.*bottleneck"):
        load_clapsep(missing, tiny_task().model)
    with pytest.raises(CheckpointError, match="decoder_model.bogus"):
        load_clapsep({**official, "decoder_model.bogus.weight": torch.zeros(1)}, tiny_task().model)
