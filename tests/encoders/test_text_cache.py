"""TextCache: exact, computes each missing string once, never evicts what a call asks for."""

from __future__ import annotations

import torch

from clapkit.encoders.text_cache import TextCache


def _encoder(calls):
    def compute(texts):
        calls.append(list(texts))
        return torch.tensor([[float(len(t)), float(ord(t[0]))] for t in texts])

    return compute


def test_only_missing_strings_are_computed_and_rows_follow_the_request():
    calls, cache = [], TextCache(4)
    out = cache(["ab", "c", "ab"], _encoder(calls))
    assert calls == [["ab", "c"]]
    assert out.tolist() == [[2.0, 97.0], [1.0, 99.0], [2.0, 97.0]]
    cache(["c", "def"], _encoder(calls))
    assert calls[-1] == ["def"] and len(cache) == 3


def test_requested_strings_survive_eviction_and_over_capacity_bypasses():
    calls, cache = [], TextCache(2)
    cache(["a", "b"], _encoder(calls))
    out = cache(["a", "c"], _encoder(calls))  # "b" (least recent) goes, "a" stays
    assert out[:, 1].tolist() == [97.0, 99.0] and calls[-1] == ["c"]
    cache(["a"], _encoder(calls))
    assert calls[-1] == ["c"]  # "a" was still cached
    out = cache(["x", "y", "z", "x"], _encoder(calls), batch_size=2)  # more than fit: computed, not cached
    assert calls[-2:] == [["x", "y"], ["z"]] and out[:, 1].tolist() == [120.0, 121.0, 122.0, 120.0]
    assert len(cache) == 2
