"""clapkit: contrastive audio representation learning and query-conditioned separation."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(path, **kwargs):
    """Load a model saved in clapkit's native format (a directory with ``config.yaml`` and
    ``model.safetensors``) or an official checkpoint; see :func:`clapkit.inference.load.load`."""
    from clapkit.inference.load import load as _load

    return _load(path, **kwargs)
