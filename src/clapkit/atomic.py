"""Atomic file writes: a temporary file next to the target, renamed onto it only on success.

A reader (or a crashed run's restart) sees either the complete old file or the complete new
one, never a half-written one; a failed write leaves nothing behind. Published files get the
usual permissions (``0666`` less the umask), not the ``0600`` of a fresh temporary file, so
outputs on a shared cluster stay readable by the group.
"""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename a finished temporary file onto ``path`` with normal permissions."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def normal_permissions(root: str | os.PathLike) -> None:
    """Give a staged file or directory tree the usual modes (``0777`` / ``0666`` less the umask).

    ``tempfile.mkdtemp`` makes ``0700`` directories and safetensors writes ``0600`` files;
    a model directory published with those modes is unreadable to the group on a cluster.
    """
    mask = _umask()
    root = Path(root)
    if root.is_dir():
        os.chmod(root, 0o777 & ~mask)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o777 & ~mask)
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o666 & ~mask)
    else:
        os.chmod(root, 0o666 & ~mask)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    """Write a CSV with a header row to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    return Path(path)
