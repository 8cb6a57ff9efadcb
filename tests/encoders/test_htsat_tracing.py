"""HTSAT's window attention keeps the batch axis symbolic under ``torch.export`` (what the ONNX
exporter traces): its inference path loops over the clips of a batch, which tracing would unroll
and so fix the batch size; while tracing it takes the batched path instead."""

from __future__ import annotations

import torch

from clapkit.encoders.htsat import WindowAttention


class _Shifted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = WindowAttention(16, 4, 2).eval()
        mask = torch.zeros(4, 16, 16)
        mask[1:, :8, 8:] = -100.0  # a shifted-window mask: the path with the per-clip loop
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x.flatten(0, 1), mask=self.mask)


def test_shifted_window_attention_exports_with_a_dynamic_batch():
    module = _Shifted()
    x = torch.randn(2, 4, 16, 16)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        program = torch.export.export(module, (x,), dynamic_shapes={"x": {0: batch}}, strict=False)
        traced = program.module()
        for n in (1, 3):
            y = torch.randn(n, 4, 16, 16)
            # the traced (batched) path computes what the eager per-clip loop computes
            assert torch.allclose(traced(y), module(y), atol=1e-6)
    (placeholder,) = [node for node in program.graph.nodes if node.op == "placeholder" and node.name == "x"]
    assert not isinstance(placeholder.meta["val"].shape[0], int)
