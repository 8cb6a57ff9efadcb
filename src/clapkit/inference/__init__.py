"""Inference objects and corpus work: :func:`load` a model, :class:`CLAPModel` (embed audio and
text), :class:`TaggerModel`, :class:`SeparationModel`, :class:`OnnxCLAPModel` (all
:class:`InferenceModel`), corpus embedding (:mod:`.embedding`, its decoder :mod:`.decoding`, its
file format :mod:`.embeddings`) and search.

The names are imported on first use, so ``import clapkit.inference`` stays light (the
separation model pulls in peft only when asked for).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "load": "clapkit.inference.load",
    "CLAPModel": "clapkit.inference.clap",
    "TaggerModel": "clapkit.inference.tagger",
    "SeparationModel": "clapkit.inference.separation",
    "InferenceModel": "clapkit.inference.base",
    "OnnxCLAPModel": "clapkit.inference.onnx",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clapkit.inference' has no attribute {name!r}")
