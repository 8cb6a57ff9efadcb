"""One-line errors for ``clapkit fit|validate|test|predict`` (LightningCLI + jsonargparse).

jsonargparse reports a bad value deep inside a config as a nested tree (one ``Parser key``
level per ``class_path``, the rejected union alternatives, then the whole given namespace):
~100 lines for one wrong float. :func:`config_error_line` keeps what a user needs: the config
file that set the value, the dotted key, and the innermost problem. Weights & Biases without
credentials is the other trainer failure a new user meets first: :func:`wandb_offline_fallback`
turns it into offline logging with one line saying so.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Lines of jsonargparse's report that describe the union machinery, not the user's mistake.
_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
          "Expected a <class 'NoneType'>", "Problem with given class_path")
_KEY = re.compile(r'Parser key "([^"]+)"')


def config_files(argv: Sequence[str]) -> list[Path]:
    """The ``--config`` / ``-c`` files of a trainer command line, in the order given."""
    files = []
    for index, arg in enumerate(argv):
        name, sep, value = arg.partition("=")
        if name not in ("--config", "-c"):
            continue
        if not sep:
            value = argv[index + 1] if index + 1 < len(argv) else ""
        if value and "\n" not in value and Path(value).is_file():
            files.append(Path(value))
    return files


def _innermost(message: str) -> tuple[list[str], str]:
    """``(Parser keys leading to the deepest problem, that problem)`` of a jsonargparse report."""
    lines = [line for line in message.splitlines() if line.strip()]
    best, depth = None, -1
    for index, line in enumerate(lines):
        text = line.strip().lstrip("- ").strip()
        if not text or _KEY.fullmatch(text.rstrip(":")) or text.startswith(_NOISE):
            continue
        indent = len(line) - len(line.lstrip())
        if indent > depth:
            best, depth = index, indent
    if best is None:
        return [], lines[0].strip() if lines else ""
    keys: list[str] = []
    level = depth
    for line in reversed(lines[:best]):
        indent = len(line) - len(line.lstrip())
        match = _KEY.search(line)
        if match and indent < level:
            keys.insert(0, match.group(1))
            level = indent
    return keys, lines[best].strip().lstrip("- ").strip()


def _find(tree: Any, keys: list[str], value: str | None, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """Dotted path in a YAML tree of the leaf named ``keys[-1]`` (or holding ``value``)."""
    if isinstance(tree, Mapping):
        for key, child in tree.items():
            here = (*path, str(key))
            if keys and str(key) == keys[-1] and not isinstance(child, (Mapping, list)):
                return here
            if not keys and value is not None and isinstance(child, str) and child == value:
                return here
            found = _find(child, keys, value, here)
            if found:
                return found
    elif isinstance(tree, list):
        for number, child in enumerate(tree):
            if not keys and value is not None and isinstance(child, str) and child == value:
                return (*path, str(number))
            found = _find(child, keys, value, (*path, str(number)))
            if found:
                return found
    return None


def _quoted_value(problem: str) -> str | None:
    """The value a problem line names: ``Got value: X`` or a leading ``path: ...``."""
    match = re.search(r"Got value: (.+)$", problem)
    if match:
        return match.group(1).strip()
    head = problem.split(": ", 1)[0]
    return head if head != problem else None


def config_error_line(message: str, argv: Sequence[str]) -> str:
    """``FILE: dotted.key: problem`` for a jsonargparse parse or instantiation error.

    The file is the last ``--config`` that sets the key (later files override earlier ones);
    a key no file sets came from the command line and is named as such.
    """
    import yaml

    keys, problem = _innermost(message)
    value = _quoted_value(problem)
    located = None
    for path in reversed(config_files(argv)):
        try:
            tree = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        found = _find(tree, keys, None) if keys else None
        if found is None and value is not None:
            found = _find(tree, [], value)
        if found:
            located = f"{path}: {'.'.join(found)}"
            break
    if located is None:
        where = ".".join(keys) if keys else ""
        located = f"command line: {where}" if where else "command line"
    return f"{located}: {problem}"


def is_config_error(exc: BaseException) -> bool:
    """Whether ``exc`` is jsonargparse's report of a value that does not fit a config key."""
    text = str(exc)
    return isinstance(exc, (ValueError, TypeError)) and (
        "Union subtypes" in text or "Problem with given class_path" in text or text.startswith("Parser key"))


def uses_wandb(tree: Any) -> bool:
    """Whether a parsed trainer config names lightning's ``WandbLogger`` anywhere."""
    if isinstance(tree, Mapping):
        return any(uses_wandb(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return any(uses_wandb(v) for v in tree)
    if hasattr(tree, "__dict__") and not isinstance(tree, type):
        return uses_wandb(vars(tree))
    return isinstance(tree, str) and tree.rsplit(".", 1)[-1] == "WandbLogger"


def wandb_credentials() -> bool:
    """Whether wandb could log in without asking: an API key in the environment or a netrc
    entry for its host (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_offline_fallback(trainer_config: Any) -> str | None:
    """Switch wandb to offline mode when the config logs to W&B, no ``WANDB_MODE`` is set and
    there are no credentials; returns the line to print, or ``None`` when nothing changed.

    Without this, wandb either prompts for a key (a hang under a scheduler) or fails with a
    long traceback once the run has built the model.
    """
    if os.environ.get("WANDB_MODE") or not uses_wandb(trainer_config) or wandb_credentials():
        return None
    os.environ["WANDB_MODE"] = "offline"
    return ("clapkit: W&B logger without credentials (no WANDB_API_KEY, no `wandb login`) and no WANDB_MODE: "
            "logging offline; upload later with `wandb sync`, or set WANDB_MODE=online after `wandb login`")
