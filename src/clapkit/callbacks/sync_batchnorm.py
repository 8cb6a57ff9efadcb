"""BatchNorm over the global batch on any backend (gloo on CPU, NCCL on GPU).

PyTorch's ``nn.SyncBatchNorm`` (what ``Trainer(sync_batchnorm=True)`` installs) runs only on
GPUs. :class:`PortableSyncBatchNorm` is a Lightning ``LayerSync`` plugin that swaps every
BatchNorm for :class:`GlobalBatchNorm`, which computes the batch statistics of all ranks
with two differentiable all-reduces (sums and counts, then centred squares). With it a
data-parallel run normalises exactly as a single process on the concatenated batch, which is
what makes a 2-process CPU run reproduce a 1-process run (``tests/lightning_modules/
test_ddp_fit.py``). On GPUs prefer ``sync_batchnorm: true`` (fused CUDA kernels).

    trainer:
      plugins:
        - class_path: clapkit.callbacks.PortableSyncBatchNorm
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from lightning.pytorch.plugins.layer_sync import LayerSync
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class GlobalBatchNorm(_BatchNorm):
    """A BatchNorm whose training statistics span every rank of the process group.

    Args:
        num_features: channels ``C`` of the ``[B, C, ...]`` input.
        eps: added to the variance.
        momentum: running-statistics momentum (``None``: cumulative average).
        affine: learnable scale and shift.
        track_running_stats: keep running mean and variance for evaluation.
        original: the BatchNorm class this replaces (restored by ``PortableSyncBatchNorm.revert``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, original: type[_BatchNorm] = nn.BatchNorm2d):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.original = original

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _momentum(self) -> float:
        if self.momentum is not None:
            return self.momentum
        return 1.0 / float(self.num_batches_tracked)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        synced = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not synced:
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        x = input.float()
        count = x.new_tensor([x.numel() // x.shape[1]])
        sums = dist_fn.all_reduce(torch.cat([x.sum(dims), count]))
        total = sums[-1]
        mean = sums[:-1] / total
        shape = [1, -1] + [1] * (input.dim() - 2)
        centred = x - mean.view(shape)
        var = dist_fn.all_reduce((centred * centred).sum(dims)) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self._momentum()
                unbiased = var * (total / (total - 1).clamp(min=1))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def _swap(module: nn.Module, make) -> nn.Module:
    replacement = make(module)
    if replacement is not None:
        return replacement
    for name, child in module.named_children():
        new = _swap(child, make)
        if new is not child:
            setattr(module, name, new)
    return module


def _copy_state(source: _BatchNorm, target: _BatchNorm) -> _BatchNorm:
    with torch.no_grad():
        if source.affine:
            target.weight = source.weight
            target.bias = source.bias
        if source.track_running_stats:
            target.running_mean = source.running_mean
            target.running_var = source.running_var
            target.num_batches_tracked = source.num_batches_tracked
    target.train(source.training)
    target.requires_grad_(any(p.requires_grad for p in source.parameters()) if source.affine else False)
    return target


class PortableSyncBatchNorm(LayerSync):
    """Lightning plugin: every ``BatchNorm{1,2,3}d`` becomes a :class:`GlobalBatchNorm`.

    Parameters and buffers are shared with the replaced layers (state-dict keys unchanged),
    so checkpoints load into the plain model and vice versa.
    """

    def apply(self, model: nn.Module) -> nn.Module:
        def make(module: nn.Module):
            if isinstance(module, _BatchNorm) and not isinstance(module, (GlobalBatchNorm, nn.SyncBatchNorm)):
                new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                      module.track_running_stats, original=type(module))
                return _copy_state(module, new)
            return None

        return _swap(model, make)

    def revert(self, model: nn.Module) -> nn.Module:
        def make(module: nn.Module):
            if isinstance(module, GlobalBatchNorm):
                new = module.original(module.num_features, module.eps, module.momentum, module.affine,
                                      module.track_running_stats)
                return _copy_state(module, new)
            return None

        return _swap(model, make)

