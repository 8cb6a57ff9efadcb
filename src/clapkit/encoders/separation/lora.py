"""LoRA on an encoder's attention projections (peft), with everything else frozen.

CLAPSep tunes its HTSAT copy with rank-16 LoRA on every window-attention ``qkv`` and
``proj`` linear, ``alpha = 1`` (so the update is scaled by ``alpha / r = 1/16``), and trains
the biases of those layers too (loralib's ``bias="lora_only"``).
"""

from __future__ import annotations

import re

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

#: Module names LoRA attaches to by default: the attention projections of Swin/ViT blocks.
DEFAULT_TARGETS = r".*attn\.(qkv|proj)"


def apply_lora(
    module: nn.Module,
    rank: int = 16,
    alpha: float = 1.0,
    target_modules: str = DEFAULT_TARGETS,
    dropout: float = 0.0,
    train_bias: bool = True,
) -> nn.Module:
    """Inject LoRA adapters into ``module`` in place and freeze every other weight.

    Args:
        module: the encoder to adapt.
        rank: LoRA rank ``r``.
        alpha: LoRA alpha; the update is scaled by ``alpha / rank``.
        target_modules: regular expression (full match) over module names to adapt.
        dropout: dropout on the LoRA branch input.
        train_bias: also train the biases of the adapted layers.

    Returns:
        ``module`` with ``lora_A`` / ``lora_B`` adapters; only they (and optionally the adapted
        layers' biases) require gradients.

    Raises:
        ValueError: no module name matches ``target_modules``.
    """
    pattern = re.compile(target_modules)
    targets = [name for name, sub in module.named_modules() if pattern.fullmatch(name) and isinstance(sub, nn.Linear)]
    if not targets:
        raise ValueError(f"no nn.Linear in {type(module).__name__} matches LoRA targets {target_modules!r}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    module = inject_adapter_in_model(config, module)
    for name, param in module.named_parameters():
        param.requires_grad = "lora_" in name
    if train_bias:
        for name in targets:
            bias = module.get_submodule(name).base_layer.bias
            if bias is not None:
                bias.requires_grad = True
    return module


def lora_targets(module: nn.Module) -> list[str]:
    """Names of the modules carrying LoRA adapters."""
    return [name for name, sub in module.named_modules() if hasattr(sub, "lora_A") and hasattr(sub, "base_layer")]
