"""Symmetric InfoNCE (CLIP) loss, exact across processes.

Under data parallelism every rank holds a slice of the global batch. To contrast each
example with *all* others, features are all-gathered **with gradients**
(:func:`gather_with_grad`): the backward pass sums each rank's gradient for every slice and
sends it back to the owner, so after DDP averages parameter gradients they equal the
gradients of the single-process loss on the global batch.

Two modes (as in open_clip):

- ``local_loss=False``: every rank computes the full ``[N, N]`` logits of the global batch;
  the loss value is the global loss on every rank.
- ``local_loss=True``: a rank computes only its own rows against all gathered columns
  (``[n, N]``), which saves memory and compute. Each rank's value is the loss over its own
  rows; their mean over ranks equals the global loss, and so do the averaged gradients.

Without an initialised process group (or with one process) both modes are the plain
single-process loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F


def world_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather ``tensor`` ``[n, ...]`` from every rank along dim 0, keeping the autograd graph.

    Ranks may hold different ``n`` (a last, smaller batch): rows are padded to the largest
    ``n`` for the collective and the padding is cut out again.

    Returns:
        ``(gathered [N, ...], offset)``: the concatenation in rank order and where this rank's
        rows start in it.
    """
    rank, world = world_info()
    if world == 1:
        return tensor, 0
    n = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    largest = max(sizes)
    padded = tensor
    if tensor.shape[0] < largest:
        padding = tensor.new_zeros((largest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, padding])
    parts = dist_fn.all_gather(padded.contiguous())
    gathered = torch.cat([part[:size] for part, size in zip(parts, sizes)])
    return gathered, sum(sizes[:rank])


@dataclass
class ContrastiveLossOutput:
    """Result of :func:`contrastive_loss`.

    Attributes:
        loss: ``(ce(a -> b) + ce(b -> a)) / 2``.
        loss_a2b: cross-entropy of each ``a`` row over the ``b`` columns.
        loss_b2a: cross-entropy of each ``b`` row over the ``a`` columns.
        logits: the ``a -> b`` logits this rank computed (``[n, N]`` local, ``[N, N]`` global).
    """

    loss: torch.Tensor
    loss_a2b: torch.Tensor
    loss_b2a: torch.Tensor
    logits: torch.Tensor


def contrastive_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    local_loss: bool = False,
    gather: bool = True,
) -> ContrastiveLossOutput:
    """Symmetric InfoNCE between paired rows of ``a`` and ``b``.

    Row ``i`` of ``a`` is the positive of row ``i`` of ``b``; every other row of the (global)
    batch is a negative. Embeddings are expected L2-normalised; logits are
    ``logit_scale * a @ b.T`` computed in fp32 (safe under bf16 autocast).

    Args:
        a: ``[n, D]`` embeddings of the first modality on this rank.
        b: ``[n, D]`` embeddings of the second modality on this rank.
        logit_scale: the (already exponentiated and clamped) inverse temperature.
        local_loss: compute only this rank's rows against all gathered columns.
        gather: gather features across ranks (``False`` gives a per-rank loss, e.g. for
            validation where no gradient flows).
    """
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"paired embeddings differ in batch size: {a.shape[0]} vs {b.shape[0]}")
    # fp32 at least: bf16/fp16 logits lose the small differences the softmax depends on
    dtype = torch.promote_types(a.dtype, torch.float32)
    a, b = a.to(dtype), b.to(dtype)
    rank, world = world_info()
    if gather and world > 1:
        all_a, offset = gather_with_grad(a)
        all_b, _ = gather_with_grad(b)
    else:
        all_a, all_b, offset = a, b, 0

    if local_loss:
        logits_a2b = logit_scale * a @ all_b.T
        logits_b2a = logit_scale * b @ all_a.T
        targets = torch.arange(a.shape[0], device=a.device) + offset
    else:
        logits_a2b = logit_scale * all_a @ all_b.T
        logits_b2a = logits_a2b.T
        targets = torch.arange(all_a.shape[0], device=a.device)
    loss_a2b = F.cross_entropy(logits_a2b, targets)
    loss_b2a = F.cross_entropy(logits_b2a, targets)
    return ContrastiveLossOutput(
        loss=(loss_a2b + loss_b2a) / 2, loss_a2b=loss_a2b, loss_b2a=loss_b2a, logits=logits_a2b
    )
