"""Speed switches applied to a built model: ``torch.compile`` per network, channels-last CNNs.

Both are callbacks so a run turns them on with an overlay (``--config
configs/overlays/compile.yaml``) and the model code stays eager and readable.

:class:`TorchCompile` compiles *submodules in place* (``nn.Module.compile``), never the
LightningModule itself: the training loop, loss and metrics stay eager, parameter names keep
no ``_orig_mod.`` prefix, and checkpoints written with or without compilation are
interchangeable. By default it compiles every outermost clapkit encoder (each tower's
encoder for CLAP/AudioCLIP; CLAPSep's query encoders and its LoRA-tuned HTSAT), CLAPSep's
decoder and mask network, plus the modules a LightningModule lists in an optional
``compile_targets`` attribute; ``modules`` names them explicitly instead.

:class:`ChannelsLast` converts 4-D weights to ``torch.channels_last`` so cuDNN picks NHWC
kernels (tensor-core friendly) for the CNN encoders (PANN, ESResNeXt, HTSAT's patch embed).
"""

from __future__ import annotations

from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from clapkit.encoders.base import Encoder

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


def default_compile_types() -> tuple[type[nn.Module], ...]:
    """Network types compiled by default: encoders, and CLAPSep's decoder and mask network."""
    from clapkit.encoders.separation.decoder import SeparationDecoder
    from clapkit.encoders.separation.masknet import MaskNet

    return (Encoder, SeparationDecoder, MaskNet)


def outermost_networks(root: nn.Module, types: tuple[type[nn.Module], ...] | None = None) -> dict[str, nn.Module]:
    """Qualified names of the submodules of ``root`` of ``types`` that no other selected one contains."""
    types = types or default_compile_types()
    found: dict[str, nn.Module] = {}
    for name, module in root.named_modules():
        if not name or not isinstance(module, types):
            continue
        if any(name.startswith(prefix + ".") for prefix in found):
            continue
        found[name] = module
    return found


def compile_targets(root: nn.Module, names: list[str] | None = None) -> dict[str, nn.Module]:
    """Modules :class:`TorchCompile` would compile in ``root``.

    Args:
        root: usually the LightningModule.
        names: explicit qualified submodule names; ``None`` means the outermost encoders,
            separation decoders and mask networks, plus ``root.compile_targets`` (a list of
            names) when the module declares it.

    Raises:
        ValueError: a name does not exist in ``root`` (the message lists the candidates).
    """
    if names is None:
        targets = outermost_networks(root)
        names = list(getattr(root, "compile_targets", []) or [])
    else:
        targets = {}
    available = dict(root.named_modules())
    for name in names:
        if name not in available:
            candidates = ", ".join(n for n in available if n and "." not in n)
            raise ValueError(f"TorchCompile: no submodule named {name!r}; top-level modules are: {candidates}")
        # a module inside an already selected one would be compiled twice
        if not any(name.startswith(prefix + ".") for prefix in targets):
            targets[name] = available[name]
    return targets


class TorchCompile(Callback):
    """Compile the model's networks with ``torch.compile`` before training/evaluation starts.

    Args:
        modules: qualified submodule names to compile (``towers.audio.encoder``). ``None``
            compiles every outermost encoder plus the LightningModule's ``compile_targets``.
        mode: ``torch.compile`` mode; ``max-autotune-no-cudagraphs`` is the fastest safe
            choice for training on a GPU, ``default`` compiles quickest.
        fullgraph: fail on graph breaks instead of falling back to eager for that region.
        dynamic: ``None`` lets dynamo mark shapes dynamic after the first recompile (text
            lengths vary with ``padding=longest``); ``False`` specialises on every shape.
        backend: ``inductor`` (default) or any registered backend (``aot_eager`` for debugging).
    """

    def __init__(
        self,
        modules: list[str] | None = None,
        mode: CompileMode = "default",
        fullgraph: bool = False,
        dynamic: bool | None = None,
        backend: str = "inductor",
    ):
        super().__init__()
        self.modules = modules
        self.mode = mode
        self.fullgraph = fullgraph
        self.dynamic = dynamic
        self.backend = backend
        self.compiled: list[str] = []

    def apply(self, pl_module: nn.Module) -> list[str]:
        """Compile the selected submodules of ``pl_module`` in place; returns their names."""
        options = {"fullgraph": self.fullgraph, "dynamic": self.dynamic, "backend": self.backend}
        if self.backend == "inductor":
            options["mode"] = self.mode
        names = []
        for name, module in compile_targets(pl_module, self.modules).items():
            if getattr(module, "_compiled_call_impl", None) is None:
                module.compile(**options)
            names.append(name)
        return names

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # setup runs before the strategy wraps the model (DDP/FSDP), so the wrappers see
        # compiled submodules and DDP's bucketing stays unchanged.
        if not self.compiled:
            self.compiled = self.apply(pl_module)


class ChannelsLast(Callback):
    """Store 4-D weights (conv kernels) in ``channels_last`` memory format.

    Inputs stay as they are: a convolution with channels-last weights returns channels-last
    activations, so the layout propagates through the CNN from the first conv on.

    Args:
        modules: qualified submodule names to convert; ``None`` converts the whole model
            (only 4-D tensors change, so transformers and linear layers are unaffected).
    """

    def __init__(self, modules: list[str] | None = None):
        super().__init__()
        self.modules = modules

    def apply(self, pl_module: nn.Module) -> None:
        available = dict(pl_module.named_modules())
        for name in self.modules or [""]:
            if name not in available:
                raise ValueError(f"ChannelsLast: no submodule named {name!r}")
            available[name].to(memory_format=torch.channels_last)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.apply(pl_module)
