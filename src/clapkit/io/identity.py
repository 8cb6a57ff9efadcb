"""Exact identity of a model: the full content hash of its weights, stored at save, verified at load.

A model's *fingerprint* names the exact model that made an embeddings file: ``clapkit retrieve``
refuses an index embedded by another model, and ``clapkit embed``'s resume never reuses parts of
another model. Two models that differ in any weight must never share one, so the fingerprint
covers every byte of the weights:

- :func:`save_pretrained <clapkit.hub.native.save_pretrained>` records the sha256 of
  ``model.safetensors`` in ``config.yaml`` (``weights_sha256``), computed once while saving;
- reading a directory hashes the weights again (streamed in 4 MiB chunks) and refuses a mismatch
  in one line naming the file: the weights were changed, swapped or corrupted after saving;
- a directory saved before the hash was recorded loads as before, its hash computed on load.

The fingerprint of a native directory is the sha256 of ``config.yaml`` and of the weights' digest
(``sha256:<64 hex digits>``); of any other model file (an official checkpoint, a Hugging Face
directory) the sha256 of every file's bytes. Hashes are cached per process by file identity
(device, inode, size, modification time), so a lazily built tower does not hash the file again.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path

from clapkit.io.errors import PretrainedError

#: The ``config.yaml`` key holding the sha256 of ``model.safetensors``.
HASH_KEY = "weights_sha256"

#: Prefix of every fingerprint: an older clapkit wrote 16 hex digits of a sampled hash instead
#: (size and first / last MiB), which :func:`is_exact` tells apart.
PREFIX = "sha256:"

_CHUNK = 4 << 20
_HEX = re.compile(r"[0-9a-f]{64}")
_cache: dict[tuple, str] = {}
_lock = threading.Lock()


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 (hex) of a file's bytes, streamed in 4 MiB chunks (memory flat in its size);
    cached per process while the file's device, inode, size and modification time stay the same."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    with _lock:
        if key in _cache:
            return _cache[key]
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    value = digest.hexdigest()
    with _lock:
        _cache[key] = value
    return value


def files_fingerprint(*paths: str | os.PathLike) -> str:
    """The fingerprint of model files read whole (an official checkpoint, a Hugging Face
    directory's config and weights): the sha256 of every file's name and content hash."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{Path(path).name}\0{file_sha256(path)}\n".encode())
    return PREFIX + digest.hexdigest()


def is_exact(fingerprint: str) -> bool:
    """Whether ``fingerprint`` covers every byte of the weights (written by this clapkit), rather
    than an older clapkit's sampled hash."""
    return fingerprint.startswith(PREFIX)


def recorded_sha256(config_path: str | os.PathLike) -> str | None:
    """The weights hash a native ``config.yaml`` records (``None``: saved before it was recorded).

    Raises:
        PretrainedError: the recorded value is not a sha256 hex digest.
    """
    import yaml

    try:
        document = yaml.safe_load(Path(config_path).read_text())
    except (OSError, yaml.YAMLError):
        return None  # reading the config proper reports it
    value = document.get(HASH_KEY) if isinstance(document, dict) else None
    if value is None:
        return None
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise PretrainedError(f"{config_path}: {HASH_KEY} is not a sha256 hex digest ({str(value)[:80]!r})")
    return value


def check_weights(weights: str | os.PathLike, config_path: str | os.PathLike, actual: str | None = None) -> str:
    """The sha256 of ``weights``, refused when ``config_path`` records another one.

    Args:
        weights: the directory's ``model.safetensors``.
        config_path: its ``config.yaml``.
        actual: the hash if already computed, else it is computed here (or taken from the cache).

    Raises:
        PretrainedError: one line naming both files and both hashes.
    """
    recorded = recorded_sha256(config_path)
    actual = actual or file_sha256(weights)
    if recorded is not None and recorded != actual:
        raise PretrainedError(
            f"{weights}: content hash sha256 {actual[:16]}... differs from the {recorded[:16]}... recorded in "
            f"{Path(config_path).name}: the weights were changed or replaced after the model was saved; "
            "save the model again (or restore its weights)")
    return actual


def native_fingerprint(config_path: str | os.PathLike, weights: str | os.PathLike) -> str:
    """The fingerprint of a native model directory: sha256 of ``config.yaml``'s bytes and of the
    weights' (verified) content hash."""
    digest = hashlib.sha256(Path(config_path).read_bytes())
    digest.update(b"\0" + check_weights(weights, config_path).encode())
    return PREFIX + digest.hexdigest()
