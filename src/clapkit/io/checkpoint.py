"""Checkpoint I/O: safe reading, unwrapping, strict filling, and safetensors-ready tensors.

The one place that turns a weights file into a ``{key: tensor}`` dict and a dict into a
module. Encoders (loading their own pretrained weights), the interop key maps, and the native
format all use it; it imports nothing else of clapkit, so every layer may depend on it.

- :func:`read_checkpoint`: ``torch.load`` with ``weights_only=True`` unless told to trust.
- :func:`unwrap_state_dict` / :func:`read_state_dict` / :func:`module_state`: the tensors
  inside the usual wrappers (``state_dict``, ``model``, DDP ``module.``) and of one sub-module.
- :func:`load_state_dict_strict`: fill a module, naming every missing/unexpected key.
- :func:`unique_tensors` / :func:`compact_buffers`: what safetensors accepts (no shared or
  view storage).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import pickle
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clapkit.io.errors import CheckpointError, PretrainedError

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


# Set only by the caller's own choice (``clapkit.load(trust_pickle=True)``, ``--trust-checkpoint``),
# never by a value read from a file: a model directory's config cannot switch it on.
_TRUST_CODE: contextvars.ContextVar[bool] = contextvars.ContextVar("clapkit_trust_code", default=False)


@contextlib.contextmanager
def trusting_code(trust: bool = True) -> Iterator[None]:
    """Within this block, weights files that are code (TorchScript archives) may be loaded.

    What ``--trust-checkpoint`` / ``trust_pickle=True`` turn on around a load, so that a CLIP
    tower deep inside a model reads OpenAI's TorchScript ``.pt`` only when the user said so.
    ``trust=False`` leaves the current setting as it is.
    """
    token = _TRUST_CODE.set(True) if trust else None
    try:
        yield
    finally:
        if token is not None:
            _TRUST_CODE.reset(token)


def code_trusted() -> bool:
    """Whether the caller opened :func:`trusting_code`."""
    return _TRUST_CODE.get()


def is_torchscript(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding ``code/``), read without loading it."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def preview(items: list[str], limit: int = 8) -> str:
    """The first ``limit`` items, comma-separated, with a count of the rest."""
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def describe_problems(problems: Sequence[tuple[str, list[str]]]) -> str:
    """``"label (a, b, ...); ..."`` for every non-empty list of ``(label, items)``, ``{n}`` in a
    label standing for its count: the one-line key report of strict loading and key maps."""
    return "; ".join(f"{label.format(n=len(items))} ({preview(items)})" for label, items in problems if items)


def read_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> Mapping[str, Any]:
    """``torch.load`` a checkpoint on CPU, safely (``weights_only=True``) unless ``trust_pickle``.

    Raises:
        PretrainedError: missing, truncated, not a checkpoint, or a pickle that needs code.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise PretrainedError(f"{path}: empty file, not a checkpoint")
    if not trust_pickle and is_torchscript(path):
        # torch.load would warn and dispatch to torch.jit.load, which runs the archive's code.
        raise PretrainedError(f"{path}: a TorchScript archive is code, not weights, and is not loaded; if you "
                              "trust the file, pass trust_pickle=True (CLI: --trust-checkpoint)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise PretrainedError(
                f"{path}: refusing to unpickle code from the checkpoint ({reason}); "
                "if you trust the file, pass trust_pickle=True (CLI: --trust-checkpoint)"
            ) from None
        raise PretrainedError(f"{path}: not a PyTorch checkpoint ({reason})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PretrainedError(f"{path}: truncated or not a PyTorch checkpoint ({reason})") from None
    if not isinstance(checkpoint, Mapping):
        raise PretrainedError(f"{path}: expected a dict checkpoint, found {type(checkpoint).__name__}")
    return checkpoint


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def unwrap_state_dict(checkpoint: Any, prefixes: tuple[str, ...] = ("module.",)) -> dict[str, torch.Tensor]:
    """The ``{key: tensor}`` dict inside a loaded checkpoint, wrapper prefixes removed.

    Looks through ``state_dict`` / ``model`` / ``model_state_dict`` / ``module`` entries (nested
    wrappers too) and drops any of ``prefixes`` shared by every key (repeatedly, so
    ``module.module.`` from nested DDP also goes). Non-tensor entries next to the tensors
    (Lightning metadata) are ignored.

    Raises:
        CheckpointError: no tensor dictionary found.
    """
    obj = checkpoint
    for _ in range(4):
        if _is_state_dict(obj):
            break
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
            obj = tensors if tensors else obj
            break
        obj = inner
    if not _is_state_dict(obj):
        kind = f"a dict with keys {preview([str(k) for k in obj][:8])}" if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"no weights found: expected a state dict (or one under 'state_dict'), found {kind}")
    state = dict(obj)
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def read_state_dict(path: str | os.PathLike, what: str = "weights", torchscript: bool = False) -> dict[str, torch.Tensor]:
    """The flat state dict in a local weights file, whatever wraps it.

    Reads ``.safetensors`` or a ``torch.save`` file (``weights_only=True``, via
    :func:`read_checkpoint`), then :func:`unwrap_state_dict` (Lightning ``state_dict``,
    ``model``, ``module.`` prefixes). With ``torchscript``, a TorchScript archive (OpenAI's
    released CLIP ``.pt`` files) is read through ``torch.jit.load`` as a fallback, but only
    inside :func:`trusting_code`: loading TorchScript runs the code it carries.

    Raises:
        FileNotFoundError: no file at ``path`` (the message says which ``what``).
        PretrainedError: the file is truncated, not a checkpoint, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if torchscript and code_trusted() and is_torchscript(path):
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    try:
        checkpoint = read_checkpoint(path)
    except PretrainedError as error:
        if not torchscript or not code_trusted():
            raise
        try:
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except Exception:
            raise PretrainedError(f"{error} (nor a TorchScript archive)") from None
    try:
        return unwrap_state_dict(checkpoint)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None


def module_state(state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...], marker: str) -> dict[str, torch.Tensor]:
    """The entries of one module inside a larger state dict, with its prefix removed.

    ``prefixes`` are tried in order (most specific first) and the first one under which
    ``marker`` (a key prefix only that module has, such as ``conv1.``) occurs is stripped;
    entries outside it are dropped. When none matches, ``state`` is returned as it is (the
    file already holds the bare module).
    """
    for prefix in prefixes:
        if any(k.startswith(prefix + marker) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "weights") -> None:
    """``load_state_dict`` that names every missing/unexpected key and shape mismatch on failure."""
    expected = model.state_dict()
    state_dict = fill_aliases(expected, state_dict)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    problems = describe_problems([("missing {n} keys", missing), ("unexpected {n} keys", unexpected),
                                  ("shape mismatch", mismatched)])
    if problems:
        raise PretrainedError(f"{what} does not fit the model: {problems}")
    model.load_state_dict(dict(state_dict), strict=True)


def fill_aliases(expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A module registered under two names (HTSAT's front end is also ``batcher.frontend``)
    shows its tensors under both; a checkpoint fills one, so copy it to the other names."""
    groups: dict[tuple, list[str]] = {}
    for key, tensor in expected.items():
        if tensor.numel() and tensor.device.type != "meta":
            groups.setdefault((tensor.data_ptr(), tuple(tensor.shape), tensor.dtype), []).append(key)
    filled = dict(state_dict)
    for keys in groups.values():
        if len(keys) < 2:
            continue
        present = [k for k in keys if k in state_dict]
        if present:
            for k in keys:
                filled.setdefault(k, state_dict[present[0]])
    return filled


def unique_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Compact, contiguous CPU copies with each shared tensor stored once (under its first name).

    safetensors refuses views and shared storage; the names left out are aliases (tied weights,
    a module registered twice) that :func:`fill_aliases` restores on load.
    """
    seen: set[tuple] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                    tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() and identity in seen:
            continue
        seen.add(identity)
        out[name] = tensor.detach().to("cpu", copy=True).contiguous()
    return out


def compact_buffers(module: nn.Module) -> None:
    """Give every buffer that views a larger storage its own copy, in place.

    ``torch.hann_window(periodic=True)`` returns a slice of an ``N + 1`` storage (torchaudio's
    front-end window is one); safetensors refuses to save such tensors, and a module that keeps
    them would save differently from one that was loaded.
    """
    for sub in module.modules():
        for name, buf in list(sub._buffers.items()):
            if buf is not None and buf.untyped_storage().nbytes() != buf.numel() * buf.element_size():
                sub._buffers[name] = buf.clone()
