"""The generic key map: wrappers, renames, deliberate drops, optional keys, one-line coverage errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clapkit.interop.keymap import (
    CheckpointError,
    KeyMap,
    build_from_config,
    target_shapes,
    unwrap_state_dict,
)
from clapkit.io.errors import PretrainedError

W = torch.zeros(2, 3)


@pytest.mark.parametrize("checkpoint", [
    {"a.weight": W},
    {"state_dict": {"a.weight": W}},
    {"state_dict": {"module.a.weight": W}, "epoch": 3},
    {"state_dict": {"module.module.a.weight": W}},
    {"model": {"a.weight": W}, "optimizer": {"lr": 0.1}},
    {"state_dict": {"a.weight": W}, "pytorch-lightning_version": "2.4", "optimizer_states": [], "global_step": 7},
])
def test_unwrap_finds_the_tensors_in_every_wrapper(checkpoint):
    assert list(unwrap_state_dict(checkpoint)) == ["a.weight"]


def test_unwrap_keeps_a_prefix_not_shared_by_all_keys():
    state = unwrap_state_dict({"module.a": W, "b": W})
    assert set(state) == {"module.a", "b"}


@pytest.mark.parametrize("obj", [[1, 2], {"epoch": 3, "name": "x"}, {}])
def test_unwrap_rejects_non_checkpoints_in_one_line(obj):
    with pytest.raises(CheckpointError) as info:
        unwrap_state_dict(obj)
    assert "\n" not in str(info.value) and "no weights found" in str(info.value)
    assert isinstance(info.value, PretrainedError)


def _target():
    return {"enc.proj.weight": torch.empty(4, 2), "enc.bn.num_batches_tracked": torch.empty((), dtype=torch.long),
            "head.net.0.weight": torch.empty(3, 4)}


def _map(**kwargs):
    return KeyMap(rules=[(r"branch\.(.+)", r"enc.\1"), (r"projection\.(\d+)\.weight", r"head.net.\1.weight")],
                  ignored={r"^transform\.": "only used by an optional loss"}, name="toy", **kwargs)


def test_apply_renames_drops_with_reasons_and_fills_optional_keys():
    source = {"branch.proj.weight": torch.ones(4, 2), "projection.0.weight": torch.ones(3, 4),
              "transform.0.weight": torch.ones(1), "text.embeddings.position_ids": torch.arange(5)}
    out = _map().apply(source, _target())
    assert set(out) == set(_target())
    assert torch.equal(out["enc.proj.weight"], torch.ones(4, 2))
    assert out["enc.bn.num_batches_tracked"].dtype == torch.long  # optional: filled by construction
    dropped = _map().report(source)
    assert dropped == {"transform.0.weight": "only used by an optional loss",
                       "text.embeddings.position_ids": "recomputed by transformers (absent from newer checkpoints)"}


def test_first_matching_rule_wins():
    km = KeyMap(rules=[(r"a\.special", "x.one"), (r"a\.(.+)", r"x.\1")])
    assert km.rename("a.special") == "x.one" and km.rename("a.other") == "x.other"
    assert km.rename("untouched") == "untouched"


def test_coverage_error_lists_both_sides_in_one_line():
    source = {"branch.proj.weight": torch.ones(4, 2), "branch.extra.bias": torch.ones(1)}
    with pytest.raises(CheckpointError) as info:
        _map().apply(source, _target())
    message = str(info.value)
    assert "\n" not in message and message.startswith("toy:")
    assert "1 official keys not consumed (branch.extra.bias (-> enc.extra.bias))" in message
    assert "1 clapkit keys not filled (head.net.0.weight)" in message


def test_shape_mismatch_and_duplicates_are_reported():
    source = {"branch.proj.weight": torch.ones(5, 2), "projection.0.weight": torch.ones(3, 4),
              "enc.proj.weight": torch.ones(4, 2)}
    km = KeyMap(rules=[(r"branch\.(.+)", r"enc.\1"), (r"projection\.(\d+)\.weight", r"head.net.\1.weight")])
    with pytest.raises(CheckpointError) as info:
        km.apply(source, _target())
    message = str(info.value)
    assert "shape mismatches (branch.proj.weight (5, 2) vs enc.proj.weight (4, 2))" in message
    assert "not filled" not in message  # a mismatched key is reported once, as a mismatch

    source = {"branch.proj.weight": torch.ones(4, 2), "enc.proj.weight": torch.ones(4, 2),
              "projection.0.weight": torch.ones(3, 4)}
    with pytest.raises(CheckpointError, match="filled twice"):
        km.apply(source, _target())


def test_long_lists_are_truncated_but_counted():
    source = {f"branch.stray{i}": torch.ones(1) for i in range(20)}
    with pytest.raises(CheckpointError) as info:
        _map().apply(source, {})
    assert "20 official keys not consumed" in str(info.value) and "(12 more)" in str(info.value)


def test_build_from_config_gives_callables_a_partial_and_works_on_meta():
    config = {
        "class_path": "clapkit.encoders.tower.Tower",
        "init_args": {
            "encoder": {"class_path": "clapkit.encoders.htsat.HTSAT",
                        "init_args": {"variant": "test", "frontend": {
                            "class_path": "clapkit.encoders.frontends.ConvLogMel", "init_args": {}}}},
            "projection": {"class_path": "clapkit.encoders.projection.MLPProjection", "init_args": {"out_dim": 8}},
        },
    }
    with torch.device("meta"):
        tower = build_from_config(config)
    shapes = target_shapes(tower)
    assert tuple(shapes["projection.net.0.weight"].shape) == (8, 128)
    assert shapes["encoder.layers.0.blocks.0.attn.qkv.weight"].is_meta
    assert isinstance(tower.projection, nn.Module) and tower.output_dim == 8
