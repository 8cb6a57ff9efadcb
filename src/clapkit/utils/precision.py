"""Inference precision policies: which dtype each part of a tower runs in.

``32``: everything fp32. ``bf16`` / ``16``: autocast around the forward pass. ``bf16-true``:
the tower's trunk is *stored* in bf16 (no casts inside the network, half the memory traffic of
every copy, norm and residual add), while the front end (STFT, mel, log, the batch norm over
mel bins) and the last norm and projection stay fp32; each module casts its input to its own
dtype. On a CPU with bf16 matrix units this is both faster than autocast and closer to fp32
(measured in docs/PERFORMANCE.md). ``auto`` is ``bf16-true`` on a CPU with AMX or AVX512-BF16
and ``32`` everywhere else.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
from torch import nn

PRECISIONS: dict[str, torch.dtype | None] = {
    "32": None, "bf16": torch.bfloat16, "16": torch.float16, "bf16-true": torch.bfloat16,
}
CHOICES = ("auto", *PRECISIONS)
AUTOCAST = ("bf16", "16")

#: Names (relative to a tower) kept in fp32 under ``bf16-true``: the front end and what follows
#: the trunk. Names a tower does not have are ignored.
FP32_MODULES = ("encoder.frontend", "encoder.bn0", "encoder.norm", "encoder.fc_audioset", "projection")


@functools.lru_cache(maxsize=1)
def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX-BF16 or AVX512-BF16).

    ``torch.backends.cpu.get_cpu_capability()`` reports the vector ISA (``AVX512``) but not the
    bf16 extensions, so the kernel's CPU flags are read (Linux); elsewhere the answer is no.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"amx_bf16", "avx512_bf16"} & flags)
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16-true`` on a CPU with bf16 matrix units, else ``32``; others unchanged."""
    if precision not in CHOICES:
        raise ValueError(f"precision must be one of {', '.join(CHOICES)}, not {precision!r}")
    if precision != "auto":
        return precision
    return "bf16-true" if torch.device(device).type == "cpu" and cpu_has_bf16_matmul() else "32"


def _cast_input(module: nn.Module, args: tuple, kwargs: dict):
    dtype = getattr(module, "_clapkit_dtype", None)
    if dtype is None:
        return None
    cast = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    return cast, kwargs


def store_in_dtype(tower: nn.Module, dtype: torch.dtype = torch.bfloat16,
                   keep_fp32: Iterable[str] = FP32_MODULES) -> nn.Module:
    """Convert ``tower``'s trunk to ``dtype`` in place, keeping ``keep_fp32`` submodules fp32.

    Every module with its own parameters or buffers casts its floating inputs to its dtype (a
    forward pre-hook), so the values cross from the fp32 front end into the trunk and back into
    the fp32 head without autocast.
    """
    keep = tuple(keep_fp32)
    kept = {name for name, _ in tower.named_modules() if any(name == k or name.startswith(k + ".") for k in keep)}
    for name, module in tower.named_modules():
        own = [t for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)) if t.is_floating_point()]
        if not own:
            continue
        target = torch.float32 if name in kept else dtype
        for param in module.parameters(recurse=False):
            if param.is_floating_point():
                param.data = param.data.to(target)
        for key, buf in module._buffers.items():
            if buf is not None and buf.is_floating_point():
                module._buffers[key] = buf.to(target)
        module._clapkit_dtype = target
        if not getattr(module, "_clapkit_cast_hook", False):
            module.register_forward_pre_hook(_cast_input, with_kwargs=True)
            module._clapkit_cast_hook = True
    return tower
