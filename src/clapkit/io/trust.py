"""A model directory, a run folder's config and an ONNX export are data: reading one runs no code.

Users load directories other people made (a colleague's run, a hub download, a tarball attached
to an issue). Everything clapkit reads from one goes through :func:`read_untrusted_config`, which
refuses, before anything is imported, every value that would make clapkit import or run code the
user did not choose, and every path that leaves the directory:

- a ``class_path`` outside the allow-list (:data:`ALLOWED_CLASS_PATHS` plus the caller's
  ``allow``);
- any other string jsonargparse would import: a dotted name (``some_module.Thing``, taken as a
  class for an ``nn.Module`` argument and as a callable for a ``Callable`` one) or a type
  expression naming one (``list[some_module.Thing]``), when it names an importable module outside
  the allow-list;
- a path that resolves outside the directory (``./../x``, an absolute path, a symlink leading
  out), unless the caller substitutes one the user gave (``clapkit.load(DIR, text_model=...)``);
- ``package:NAME``, which elsewhere imports ``NAME`` to ask it where its files are
  (:func:`clapkit.utils.resources.resolve_model_path`): inside a model directory the package is only
  looked up (:func:`package_files`), never imported.

Allowed dotted names are checked once more where the model is built
(:func:`check_resolved_names`): a name under an allowed prefix can still reach another module
(``clapkit.hub.native.os.system``), so the object it names must itself be defined inside the
allow-list.

The other code paths a directory could open are closed where they are read: TorchScript archives
(:func:`clapkit.io.checkpoint.read_state_dict`, only under :func:`trusting_code`), transformers'
remote code (``trust_remote_code=False`` on every ``from_pretrained``) and ``pipe:`` shard names
(:func:`clapkit.datamodules.shards.expand_shards`).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from clapkit.io.errors import PretrainedError

#: Module prefixes a model directory's config may name without the caller's say-so: clapkit's
#: own classes, torch's layers, and torch's optimisers / LR schedulers (the factories a task's
#: config carries). Anything else must be passed explicitly (``allow=``).
ALLOWED_CLASS_PATHS: tuple[str, ...] = ("clapkit", "torch.nn", "torch.optim")

PACKAGE_PREFIX = "package:"

#: ``a.b.C``: what jsonargparse's ``import_object`` accepts (identifiers joined by dots).
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")

#: Config keys whose outside paths ``clapkit.load(DIR, text_model=...)`` may replace: the text
#: tower's model and tokenizer directories (exports made before assets were copied in can name
#: the training machine's copy).
TEXT_PATH_KEYS = ("model", "tokenizer")


def is_allowed(name: str, allow: Iterable[str] = ()) -> bool:
    """Whether a dotted name lies inside the allow-list (by module, not by string prefix:
    ``clapkitx.Evil`` is outside ``clapkit``)."""
    prefixes = tuple(ALLOWED_CLASS_PATHS) + tuple(allow)
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _importable(root: str) -> bool:
    # find_spec on a top-level name searches sys.path without executing anything.
    try:
        return importlib.util.find_spec(root) is not None
    except (ImportError, ValueError):
        return True  # in sys.modules without a spec (__main__): assume it resolves


def _names_in(text: str) -> list[str]:
    """The dotted names jsonargparse could import from one string value."""
    if _DOTTED.fullmatch(text):
        return [text]
    if "[" in text or "|" in text:
        # A type expression (``list[a.B] | None``) for a ``type`` / union argument: every
        # attribute chain in it is imported.
        try:
            tree = ast.parse(text, mode="eval")
        except (SyntaxError, ValueError):
            return []
        return [ast.unparse(node) for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and _DOTTED.fullmatch(ast.unparse(node))]
    return []


def _walk(tree: Any, key: str = ""):
    """``(key path, mapping key, value)`` of every leaf and mapping in a config tree."""
    if isinstance(tree, Mapping):
        for name, value in tree.items():
            child = f"{key}.{name}" if key else str(name)
            yield child, name, value
            yield from _walk(value, child)
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            child = f"{key}[{index}]"
            yield child, index, value
            yield from _walk(value, child)


def check_code_values(tree: Any, allow: Iterable[str] = (), *, where: str, key: str = "") -> None:
    """Refuse any value of ``tree`` that jsonargparse would import outside the allow-list.

    Args:
        tree: a config section (``model:``, ``data:``).
        allow: module prefixes or full names trusted beyond :data:`ALLOWED_CLASS_PATHS`.
        where: the file to name in the error.
        key: the section's name, prefixed to the key paths in errors.

    A ``class_path`` without a dot (a short class name) is allowed here: jsonargparse resolves it
    among the classes already imported, so it cannot bring in new code (which class it would pick
    is checked where the model is built, :func:`check_resolved_names`). Any other dotted string
    is refused when its first component is an importable module: a string that names nothing
    importable cannot import anything.

    Raises:
        PretrainedError: one line naming the file, the key and the value.
    """
    allow = tuple(allow)
    prefixes = ", ".join(tuple(ALLOWED_CLASS_PATHS) + allow)
    for path, name, value in _walk(tree, key):
        if not isinstance(value, str):
            continue
        if name == "class_path":
            if "." in value and not is_allowed(value, allow):
                raise PretrainedError(
                    f"{where}: {path}: class_path {value!r} is outside the allowed modules ({prefixes}); "
                    "a model directory may not import other code: pass allow=[...] if you trust it")
            continue
        for dotted in _names_in(value):
            if not is_allowed(dotted, allow) and _importable(dotted.split(".")[0]):
                raise PretrainedError(
                    f"{where}: {path}: {value!r} names {dotted!r}, outside the allowed modules ({prefixes}); "
                    "a model directory may not import other code: pass allow=[...] if you trust it")


def check_resolved_names(tree: Any, allow: Iterable[str] = (), *, where: str = "config") -> None:
    """Refuse an allowed dotted name whose object is defined outside the allow-list.

    ``clapkit.hub.native.os.system`` starts with ``clapkit`` yet names ``os.system``. Only modules
    inside the allow-list are imported to find out (the names were checked by
    :func:`check_code_values` first), which is what building the model imports anyway. A short
    ``class_path`` is refused when an imported class of that name lives outside the allow-list.
    """
    allow = tuple(allow)
    short = []
    for path, name, value in _walk(tree):
        if not isinstance(value, str) or (name != "class_path" and not _names_in(value)):
            continue
        if name == "class_path" and "." not in value:
            short.append((path, value))
            continue
        for dotted in ([value] if name == "class_path" else _names_in(value)):
            if "." not in dotted or not is_allowed(dotted, allow):
                continue
            home = _home(dotted)
            if home is not None and not is_allowed(home, allow):
                raise PretrainedError(f"{where}: {path}: {dotted!r} is {home!r}, outside the allowed modules; "
                                      "pass allow=[...] if you trust it")
    # jsonargparse gives a short name to the one imported subclass of that name: it must not be
    # a class of some other installed package (one whose __init__ would load code, say).
    for path, value in short:
        outside = [found for found in _classes_named(value) if not is_allowed(found, allow)]
        if outside:
            raise PretrainedError(f"{where}: {path}: class_path {value!r} would be {outside[0]!r}, outside the "
                                  "allowed modules; write the full class path")


def _classes_named(name: str) -> list[str]:
    """Full paths of the imported module, optimiser and LR scheduler classes called ``name``
    (the bases a model tree's short ``class_path`` names resolve against)."""
    import torch

    found, seen = [], set()
    stack: list[type] = [torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        if cls.__name__ == name:
            found.append(f"{cls.__module__}.{cls.__qualname__}")
        stack.extend(cls.__subclasses__())
    return found


def _home(dotted: str) -> str | None:
    """Where the object ``dotted`` names is defined (``None``: not found, or no such notion)."""
    module_name, _, attribute = dotted.rpartition(".")
    parts = module_name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for part in [*parts[cut:], attribute]:
                obj = getattr(obj, part)
        except AttributeError:
            return None  # jsonargparse will fail on it too, importing nothing more
        if inspect.ismodule(obj):
            return obj.__name__
        if inspect.isclass(obj) or inspect.isroutine(obj):
            module = getattr(obj, "__module__", None)
            return f"{module}.{obj.__qualname__}" if module else None
        return None
    return None


# --------------------------------------------------------------------------- paths


def package_files(name: str, *, where: str, key: str) -> Path:
    """The files of ``package:NAME`` found without importing ``NAME`` (no code runs).

    A packaged model keeps its files in the package folder or in its ``model/`` sub-folder (the
    layout whose ``get_model_path()`` :func:`clapkit.utils.resources.resolve_model_path` calls when the
    user names the package). Only top-level packages: finding ``a.b`` would import ``a``.
    """
    if not name.isidentifier():
        raise PretrainedError(f"{where}: {key}: {PACKAGE_PREFIX}{name} is not a top-level package name "
                              "(a model directory may not import code to find its files)")
    spec = importlib.util.find_spec(name)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise PretrainedError(f"{where}: {key}: {PACKAGE_PREFIX}{name}: no installed package of that name")
    folder = Path(locations[0])
    return folder / "model" if (folder / "model").is_dir() else folder


def inside(root: Path, value: str, *, where: str, key: str) -> Path:
    """``root / value`` resolved (symlinks followed), refused unless it stays inside ``root``."""
    target = (root / value).resolve()
    base = root.resolve()
    if target != base and base not in target.parents:
        raise PretrainedError(f"{where}: {key}: path {value!r} leads outside the model directory {root}")
    return target


def _outside_path(value: str) -> bool:
    return (value.startswith(("/", "~", "../")) or "/../" in value or value == ".."
            or bool(re.match(r"[A-Za-z]:[\\/]", value)))


def check_paths(tree: Any, root: Path, *, where: str, key: str = "",
                replace: Mapping[str, str] | None = None) -> Any:
    """``tree`` with its paths checked against ``root`` and its ``package:`` names looked up.

    Args:
        tree: a config section or document.
        root: the directory every path must stay in.
        where: the file to name in errors.
        key: the section's name (prefixed to key paths in errors).
        replace: config key name -> a path the user gave for it; an outside path under that key
            becomes the user's path (``clapkit.load(DIR, text_model=...)``) instead of an error.

    ``./name`` paths stay as written (the loaders resolve them against ``root``; they are
    checked here to resolve inside it, symlinks included); an absolute path, ``~`` or ``../``
    is refused; ``package:NAME`` becomes the package's folder (:func:`package_files`).
    """
    replace = dict(replace or {})

    def walk(value, path, name):
        if isinstance(value, Mapping):
            return {k: walk(v, f"{path}.{k}" if path else str(k), k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{path}[{i}]", name) for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value
        if value.startswith("./"):
            inside(root, value, where=where, key=path)
            return value
        if value.startswith(PACKAGE_PREFIX):
            if name in replace:
                return replace[name]
            return str(package_files(value[len(PACKAGE_PREFIX):], where=where, key=path))
        if _outside_path(value):
            if name in replace:
                return replace[name]
            hint = "; pass text_model=... (CLI: --text-model) to use a local copy" if name in TEXT_PATH_KEYS else ""
            raise PretrainedError(f"{where}: {path}: path {value!r} lies outside the model directory {root} "
                                  f"(a model directory must carry its own files){hint}")
        return value

    return walk(tree, key, None)


# --------------------------------------------------------------------------- the one reader


def read_document(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML or JSON mapping, parsed as plain data (``yaml.safe_load``: no tags, no objects).

    Raises:
        PretrainedError: unreadable, invalid, or not a mapping (one line naming the file).
    """
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise PretrainedError(f"{path}: cannot read ({exc.strerror if isinstance(exc, OSError) else exc})") from None
    except yaml.YAMLError as exc:
        raise PretrainedError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise PretrainedError(f"{path}: nested more than Python can read; not a config") from None
    if not isinstance(document, dict):
        raise PretrainedError(f"{path}: expected a mapping, found {type(document).__name__}")
    problem = _out_of_bounds(document)
    if problem:
        raise PretrainedError(f"{path}: {problem}; not a config")
    return document


#: Far more values, and deeper nesting, than any config clapkit writes (a model tree has a few
#: hundred values, nested about ten deep).
MAX_VALUES = 100_000
MAX_DEPTH = 100


def _out_of_bounds(tree: Any) -> str | None:
    """Why a parsed document is too big to walk (``None``: it is not). YAML aliases nest a few
    lines into billions of values, and every walk over them (ours, jsonargparse's) would hang."""
    budget = MAX_VALUES
    stack = [(tree, 0)]
    while stack:
        value, depth = stack.pop()
        budget -= 1
        if budget < 0:
            return f"more than {MAX_VALUES:,} values (nested YAML aliases?)"
        if depth > MAX_DEPTH:
            return f"nested more than {MAX_DEPTH} levels deep"
        if isinstance(value, Mapping):
            stack.extend((child, depth + 1) for child in value.values())
        elif isinstance(value, list):
            stack.extend((child, depth + 1) for child in value)
    return None


def read_untrusted_config(path: str | os.PathLike, *, code_sections: Sequence[str] = ("model",),
                          allow: Iterable[str] = (), root: str | os.PathLike | None = None,
                          replace: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Read a config someone else wrote, refusing (before any import) what would run code.

    The one reader of a model directory's ``config.yaml``, a run folder's ``config.yaml``
    (``clapkit export RUN/checkpoints/last.ckpt``) and an ONNX export's ``onnx.json``.

    Args:
        path: the file (YAML or JSON).
        code_sections: top-level sections handed to jsonargparse (checked with
            :func:`check_code_values`); a missing one is skipped.
        allow: module prefixes the caller trusts beyond :data:`ALLOWED_CLASS_PATHS`.
        root: when given, every path in the document must stay inside this directory and
            ``package:`` names are looked up without importing (:func:`check_paths`).
        replace: see :func:`check_paths`.

    Returns:
        the document, its paths checked (``package:`` names replaced by folders when ``root``
        is given).
    """
    document = read_document(path)
    for section in code_sections:
        if section in document:
            check_code_values(document[section], allow, where=str(path), key=section)
    if root is not None:
        document = check_paths(document, Path(root), where=str(path), replace=replace)
    return document


def lookup_packages(tree: Any, *, where: str, key: str = "") -> Any:
    """``tree`` with every ``package:NAME`` replaced by the package's folder, found without
    importing it (:func:`package_files`): for a run folder's config, whose other paths are the
    training machine's and are not confined to the folder."""
    if isinstance(tree, Mapping):
        return {k: lookup_packages(v, where=where, key=f"{key}.{k}" if key else str(k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [lookup_packages(v, where=where, key=f"{key}[{i}]") for i, v in enumerate(tree)]
    if isinstance(tree, str) and tree.startswith(PACKAGE_PREFIX):
        return str(package_files(tree[len(PACKAGE_PREFIX):], where=where, key=key))
    return tree
