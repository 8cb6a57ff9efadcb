"""clapkit.io.checkpoint: the one-line key report of strict loading (shared with the key maps)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clapkit.io.checkpoint import PretrainedError, describe_problems, load_state_dict_strict


def test_describe_problems_counts_previews_and_skips_empty_lists():
    keys = [f"k{i}" for i in range(10)]
    assert describe_problems([("{n} gone", keys), ("empty", []), ("odd", ["x"])]) == \
        "10 gone (k0, k1, k2, k3, k4, k5, k6, k7, ... (2 more)); odd (x)"
    assert describe_problems([("none", [])]) == ""


def test_strict_load_names_missing_unexpected_and_mismatched_keys():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = {"0.weight": torch.zeros(3, 2), "1.weight": torch.zeros(2, 3), "extra": torch.zeros(1)}
    with pytest.raises(PretrainedError) as info:
        load_state_dict_strict(model, state, what="w.pt")
    assert str(info.value) == ("w.pt does not fit the model: missing 2 keys (0.bias, 1.bias); "
                               "unexpected 1 keys (extra); shape mismatch (1.weight (2, 3) vs (1, 3))")
    good = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    load_state_dict_strict(model, good)
    assert all(torch.equal(v, good[k]) for k, v in model.state_dict().items())
