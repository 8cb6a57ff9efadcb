"""Optional and fragile dependencies, imported when first needed with an error that says why.

torchaudio ships a compiled extension built against one exact torch release: a mismatched pair
(torch 2.11.0 with torchaudio 2.11.1, say) fails inside ``import torchaudio`` with an undefined
symbol. Importing it here, lazily, keeps ``import clapkit`` and every command that does not
compute a spectrogram working, and turns the failure into one line that names the installed
versions and the fix. Extras (matplotlib, onnxruntime, faiss, wandb) go through
:func:`optional_import` so the error names the extra to install.
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata
from types import ModuleType

__all__ = ["DependencyError", "installed_version", "is_tensor", "optional_import", "torchaudio", "versions"]

# Distributions whose versions `clapkit --version` reports, in that order.
REPORTED = ("clapkit", "torch", "torchaudio", "torchvision", "lightning", "transformers")


class DependencyError(ImportError):
    """A dependency is missing or does not load; the message names it and the fix."""


def is_tensor(value: object) -> bool:
    """``isinstance(value, torch.Tensor)`` without importing torch.

    A tensor can only exist once torch is imported, so modules that accept numpy or torch
    input check with this and stay importable without torch: the commands fork their
    decoding workers before ``import torch`` (2-3 s) and decode while it loads.
    """
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def installed_version(distribution: str) -> str | None:
    """Version of an installed distribution, read from its metadata without importing it."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    """Installed versions of clapkit and the libraries that decide its numerics."""
    return {name: installed_version(name) or "not installed" for name in REPORTED}


def torchaudio() -> ModuleType:
    """``import torchaudio``, or a :class:`DependencyError` naming the torch/torchaudio pair."""
    try:
        return importlib.import_module("torchaudio")
    except (ImportError, OSError) as exc:
        torch_v = installed_version("torch") or "not installed"
        audio_v = installed_version("torchaudio") or "not installed"
        raise DependencyError(
            f"torchaudio does not load (torch {torch_v}, torchaudio {audio_v}): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. torchaudio must be "
            "built for the installed torch: reinstall the locked pair with `make install` "
            "(requirements/lock.txt), or `pip install torch==X torchaudio==X` of one release"
        ) from exc


def optional_import(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise a :class:`DependencyError` that names the extra to install.

    Args:
        module: import name (``"matplotlib.pyplot"``).
        extra: clapkit extra that provides it (``"plots"``).
        purpose: what needs it, for the message (``"--plot"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise DependencyError(
            f"{purpose} needs {top}, which is not installed ({exc}): pip install 'clapkit[{extra}]'"
        ) from exc
