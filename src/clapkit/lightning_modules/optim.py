"""Optimiser + scheduler from LightningCLI factories, shared by the tasks that take them.

Tasks receive ``optimizer`` / ``scheduler`` as callables (``OptimizerCallable``,
``LRSchedulerCallable``) so YAML chooses the class and its arguments; this turns them into
what ``configure_optimizers`` returns. Only parameters that require gradients are handed to
the optimiser: frozen towers and LoRA-wrapped bases would otherwise get optimiser state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def optimizers_from_factories(
    module: nn.Module,
    optimizer_factory: Callable[..., torch.optim.Optimizer],
    scheduler_factory: Callable[[torch.optim.Optimizer], Any] | None,
    parameters: Any = None,
    **scheduler_config: Any,
) -> torch.optim.Optimizer | dict[str, Any]:
    """``configure_optimizers`` output for ``module``.

    Args:
        module: the LightningModule (its trainable parameters are optimised).
        optimizer_factory: builds the optimiser from the parameters.
        scheduler_factory: builds the LR scheduler from the optimiser; ``None`` for none.
        parameters: what the optimiser gets (parameters or groups); default: the module's
            trainable parameters.
        **scheduler_config: Lightning's scheduler keys (``monitor``, ``interval``, ...).
    """
    if parameters is None:
        parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = optimizer_factory(parameters)
    if scheduler_factory is None:
        return optimizer
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler_factory(optimizer), **scheduler_config}}
