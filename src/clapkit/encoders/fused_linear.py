"""Linear layers through oneDNN with packed weights and fused epilogues, for bf16 CPU inference.

On a CPU, ``F.linear`` in bf16 copies the bias into the output before the matmul, and the GELU
or residual add that follows is another pass over memory; both cost more than the matmul
itself for HTSAT's narrow first stages (a stage-1 MLP of a batch of 8 ten-second clips:
36 ms through aten, 10 ms through here; ``benchmarks/cpu_profile.py``). oneDNN's
``linear_pointwise`` computes bias, activation and residual in the matmul's epilogue, from
fp32 accumulators, and reads a weight reordered once into its blocked layout (what inductor's
freezing does).

:func:`linear` takes that path only where it is exact to the model's own precision: no
gradient recorded (inference), a CPU bf16 input with bf16 weights (``bf16-true``), not
under tracing, ``torch.compile`` or ONNX export, and a torch build that has the operators. Otherwise it is
``F.linear`` followed by the same activation and add. Packed weights live outside the module
(a weak map), so state dicts, copies and pickles never see them; they are rebuilt when the
weight changes (a load, an in-place edit, a move).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

_OPS = getattr(torch.ops, "mkldnn", None)


def _cpu_runs_it() -> bool:
    """Whether this CPU runs oneDNN's bf16 linears: the operators exist in every x86 build, but
    their bf16 path needs AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT and refuses AVX2-only CPUs at the
    first reorder, so ask the operator itself once."""
    if not (torch.backends.mkldnn.is_available() and _OPS is not None
            and hasattr(_OPS, "_linear_pointwise") and hasattr(_OPS, "_reorder_linear_weight")):
        return False
    try:
        _OPS._reorder_linear_weight(torch.zeros(8, 8, dtype=torch.bfloat16), 1)
    except RuntimeError:
        return False
    return True


AVAILABLE = _cpu_runs_it()

#: nn.Linear -> (weight key, packed weight); weak so a dropped model frees its packed copy.
_PACKED: weakref.WeakKeyDictionary[nn.Linear, tuple[tuple, torch.Tensor]] = weakref.WeakKeyDictionary()

#: The activations oneDNN fuses, by nn.GELU's ``approximate`` setting.
_GELU_ALGORITHM = {"none": "none", "tanh": "tanh"}


def fusable(x: torch.Tensor, layer: nn.Linear) -> bool:
    """Whether :func:`linear` takes the fused oneDNN path for this input and layer."""
    return (
        AVAILABLE
        and type(layer) is nn.Linear  # not a LoRA or other wrapper, whose forward adds to the weight's
        and x.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and layer.weight.dtype == torch.bfloat16
        and layer.weight.device.type == "cpu"
        and not torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.compiler.is_compiling()
        and not torch.onnx.is_in_onnx_export()
    )


def packed_weight(layer: nn.Linear, rows: int) -> torch.Tensor:
    """``layer.weight`` reordered for oneDNN (``rows``: the expected input rows, a hint)."""
    weight = layer.weight
    key = (weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape))
    cached = _PACKED.get(layer)
    if cached is None or cached[0] != key:
        cached = (key, _OPS._reorder_linear_weight(weight.detach(), rows))
        _PACKED[layer] = cached
    return cached[1]


def linear(x: torch.Tensor, layer: nn.Linear, activation: nn.Module | None = None,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """``activation(layer(x)) + residual``, fused where :func:`fusable` says so.

    Args:
        x: input ``[..., in_features]``.
        layer: the linear layer (its bias, if any, is fused too).
        activation: ``None`` or an ``nn.GELU``; any other module is applied unfused.
        residual: added to the output (after the activation), same shape as the output.
    """
    gelu = isinstance(activation, nn.GELU) and activation.approximate in _GELU_ALGORITHM
    if not fusable(x, layer) or (activation is not None and not gelu) or (
            residual is not None and (activation is not None or residual.dtype != x.dtype
                                      or residual.shape != (*x.shape[:-1], layer.out_features))):
        out = layer(x)
        if activation is not None:
            out = activation(out)
        return out if residual is None else out + residual
    weight = packed_weight(layer, x.numel() // x.shape[-1])
    bias = layer.bias.detach() if layer.bias is not None else None
    if residual is not None:
        return _OPS._linear_pointwise.binary(x, residual.contiguous(), weight, bias, "add")
    if gelu:
        return _OPS._linear_pointwise(x, weight, bias, "gelu", [], _GELU_ALGORITHM[activation.approximate])
    return _OPS._linear_pointwise(x, weight, bias, "none", [], "")
