"""Build a model without its random initialisation when a checkpoint will overwrite every weight.

Constructing HTSAT-tiny + RoBERTa-base draws ~150M random numbers (``uniform_``, ``normal_``,
``trunc_normal_``) that loading the weights replaces a moment later: most of ``clapkit.load``'s
time on a CPU (docs/PERFORMANCE.md). Inside :func:`skip_random_init` those calls return their
tensor untouched. Use it only when a strict load follows (every parameter and persistent buffer
is checked and overwritten); buffers a module computes (window indices, masks, mel filters) are
not random and are built as usual.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import torch


def _keep(tensor, *args, **kwargs):
    return tensor


@contextlib.contextmanager
def skip_random_init() -> Iterator[None]:
    """Make the random in-place initialisers no-ops for the duration of the block."""
    with contextlib.ExitStack() as stack:
        for name in ("uniform_", "normal_"):
            stack.enter_context(mock.patch.object(torch.Tensor, name, _keep))
        for name in ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                     "xavier_uniform_", "xavier_normal_", "orthogonal_"):
            stack.enter_context(mock.patch.object(torch.nn.init, name, _keep))
        yield
