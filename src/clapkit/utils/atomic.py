"""Atomic outputs: files and folders appear complete or not at all, and replace only what we own.

Files: a temporary file next to the target, renamed onto it only on success
(:func:`atomic_path`). A reader (or a crashed run's restart) sees either the complete old file
or the complete new one, never a half-written one; a failed write leaves nothing behind.
Published files get the usual permissions (``0666`` less the umask), not the ``0600`` of a
fresh temporary file, so outputs on a shared cluster stay readable by the group.

Folders (model directories, ONNX and Hugging Face exports): :func:`replace_output` is the one
place every writing command goes through. It refuses a target that is, contains or lies inside
one of the command's inputs, and (even with ``--overwrite``) an existing non-empty folder that is
not of the output's kind by its marker files; it holds an advisory lock beside the target so a
second writer is refused instead of racing; it writes into a staging folder and swaps it in with
one ``renameat2(RENAME_EXCHANGE)`` (two renames where the file system lacks it, the old version
being restored by the next run if a kill falls between them).

Disk full (``ENOSPC``, ``EDQUOT``, ``EFBIG``, or a library wrapping one, as safetensors'
``SafetensorError`` does) becomes an :class:`OutputError` naming the output path, after the
partial file or folder is removed.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import errno
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

#: errno values that mean "the output did not fit": disk full, quota, file size limit.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# What libraries that wrap the OSError leave of it in their message (safetensors: "I/O error: No
# space left on device (os error 28)"; numpy's np.save into a full disk: "N requested and M written").
_DISK_FULL_TEXT = re.compile(r"no space left on device|disk quota exceeded|file too large|os error (28|122|27)\b"
                             r"|\d+ requested and \d+ written", re.IGNORECASE)


class OutputError(OSError):
    """An output refused or not written: ``filename`` is the output path, ``strerror`` the problem.

    An ``OSError`` so that the CLI prints it as one line (``<filename>: <strerror>``); ``errno``
    tells a refusal (``EEXIST``, ``EBUSY``, ``EINVAL``) from a failed write (:data:`DISK_FULL`).
    """


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the output did not fit."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL:
            return True
        if _DISK_FULL_TEXT.search(str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False


def _disk_full_errno(exc: BaseException) -> int:
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, OSError) and current.errno in DISK_FULL:
            return current.errno
        current = current.__cause__ or current.__context__
    text = str(exc).lower()
    if "quota" in text or "os error 122" in text:
        return errno.EDQUOT
    if "too large" in text or "os error 27" in text:
        return errno.EFBIG
    return errno.ENOSPC


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Name ``path`` in a write failure raised inside the block.

    Disk full (however a library wraps it) and an ``OSError`` that names no file become an
    :class:`OutputError` for ``path``; an outer block renames an inner one, so the message names
    what the user asked for, not a staging file. Refusals pass through unchanged.
    """
    try:
        yield
    except OutputError as exc:
        if exc.errno not in DISK_FULL:
            raise
        raise OutputError(exc.errno, exc.strerror, os.fspath(path)) from None
    except Exception as exc:
        if is_disk_full(exc):
            code = _disk_full_errno(exc)
            raise OutputError(code, f"disk full ({os.strerror(code)}) while writing it; nothing half-written was left",
                              os.fspath(path)) from None
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            raise OutputError(exc.errno, f"write failed ({exc.strerror or exc})", os.fspath(path)) from None
        raise


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
            # A symlink in the tree points at a file we did not write: chmod would follow it.
            for name in dirnames:
                if not os.path.islink(os.path.join(dirpath, name)):
                    os.chmod(os.path.join(dirpath, name), 0o777 & ~mask)
            for name in filenames:
                if not os.path.islink(os.path.join(dirpath, name)):
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
        with writing(path):
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


# --------------------------------------------------------------------------- owned folders


@dataclass(frozen=True)
class OutputKind:
    """A kind of output folder, recognised by its marker files.

    Args:
        name: what the folder is, for messages ("model directory").
        markers: alternative groups of paths (relative to the folder); a folder holding every
            path of one group is of this kind, and ``--overwrite`` may replace it.
    """

    name: str
    markers: tuple[tuple[str, ...], ...]

    def owns(self, folder: str | os.PathLike) -> bool:
        """Whether ``folder`` holds one complete group of markers."""
        folder = Path(folder)
        return any(all(os.path.lexists(folder / m) for m in group) for group in self.markers)

    def describe_markers(self) -> str:
        return " or ".join(" + ".join(group) for group in self.markers)


#: What an export or a convert may replace: a native model directory, an ONNX export, a
#: Hugging Face model directory (any of them, so one can be re-exported in another format).
MODEL_DIRECTORY = OutputKind("model directory", (("config.yaml", "model.safetensors"), ("onnx.json",),
                                                 ("config.json", "model.safetensors")))
#: A ``clapkit make-shards`` output folder (its resume state).
SHARD_FOLDER = OutputKind("make-shards folder", ((".make_shards",),))


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def check_not_input(target: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], *,
                    folder: bool = True) -> None:
    """Refuse an output that is one of ``inputs`` (symlinks resolved, hard links told apart by
    ``samefile``) and, for an output ``folder``, one that contains or lies inside an input:
    writing it would destroy an input of the same command. Raises :class:`OutputError` (one line).
    """
    shown = os.fspath(target)
    real = os.path.realpath(target)
    for source in inputs:
        if source is None:
            continue
        source_real = os.path.realpath(source)
        if real == source_real or _same_file(target, source):
            raise OutputError(errno.EINVAL, f"is also an input of this command ({os.fspath(source)}); "
                                            "choose another output", shown)
        if folder and _inside(source_real, real):
            raise OutputError(errno.EINVAL, f"contains {os.fspath(source)}, an input of this command; "
                                            "choose another output", shown)
        if folder and _inside(real, source_real):
            raise OutputError(errno.EINVAL, f"lies inside {os.fspath(source)}, an input of this command; "
                                            "choose another output", shown)


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # either does not exist (yet)
        return False


def check_target(target: str | os.PathLike, *, kind: OutputKind = MODEL_DIRECTORY,
                 inputs: Iterable[str | os.PathLike | None] = (), overwrite: bool = False) -> None:
    """Refuse an output folder we may not write (raises :class:`OutputError`, one line).

    Refused: a target that is, contains or lies inside one of ``inputs`` (symlinks resolved);
    an existing file or dangling link; a non-empty folder without ``overwrite``; and, even with
    ``overwrite``, a non-empty folder that is not of ``kind`` by its markers, since replacing it
    would delete files no clapkit command wrote.
    """
    check_not_input(target, inputs)
    shown = os.fspath(target)
    if not os.path.lexists(target):
        return
    if not os.path.isdir(target):
        raise OutputError(errno.EEXIST, f"already exists and is not a folder (a {kind.name} is a folder); "
                                        "choose another output", shown)
    with os.scandir(target) as entries:
        if not any(entries):
            return
    if not overwrite:
        raise OutputError(errno.EEXIST, "already exists (pass --overwrite to replace it)", shown)
    if not kind.owns(target):
        raise OutputError(errno.EEXIST, f"is a non-empty folder but not a {kind.name} (no "
                                        f"{kind.describe_markers()}); clapkit replaces or adds to only a folder "
                                        "it wrote, so it is left alone: choose another output", shown)


@contextlib.contextmanager
def output_lock(target: str | os.PathLike) -> Iterator[Path]:
    """Hold an advisory lock on ``target`` (``.<name>.lock`` beside it) for the block.

    A second writer to the same output is refused with an :class:`OutputError` (``EBUSY``)
    instead of racing the first (deleting its temporary files, swapping in a mix of both). The
    lock file is removed on exit; a lock left by a killed process is free again (the kernel
    drops ``flock`` locks with the process). File systems without ``flock`` run unlocked.
    """
    target = Path(os.path.abspath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.lock"
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no advisory locks to take
        yield lock
        return
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(errno.EBUSY, f"another process is writing it (it holds {lock}); wait for it to "
                                           "finish or choose another output", os.fspath(target)) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
        # The previous holder unlinks the file as it leaves: a lock on an unlinked file guards nothing.
        try:
            current = os.stat(lock)
            held = os.fstat(fd)
            if (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _leftovers(target: Path, what: str) -> list[Path]:
    pattern = re.compile(re.escape(f".{target.name}.{what}-") + r"[A-Za-z0-9_]+")
    return sorted((p for p in target.parent.iterdir() if pattern.fullmatch(p.name)),
                  key=lambda p: p.lstat().st_mtime)


def _recover(target: Path) -> None:
    """Undo what a writer killed mid-replace left: restore the old version if the target is
    missing, delete the staging folders and old versions it no longer needs (only names this
    module makes; called under the target's lock)."""
    olds = _leftovers(target, "old")
    if olds and not os.path.lexists(target):
        os.rename(olds.pop(), target)
    for path in olds + _leftovers(target, "tmp"):
        _remove(path)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(b))


def _swap(staging: Path, target: Path) -> None:
    """Put ``staging`` at ``target``; the old target is deleted only once the new one is in place."""
    if not os.path.lexists(target) or (target.is_dir() and not target.is_symlink() and not any(target.iterdir())):
        os.replace(staging, target)
        return
    if _exchange(staging, target):
        _remove(staging)  # now the old version
        return
    # No atomic swap here: move the old aside first; a kill between the two renames leaves
    # ``.<name>.old-<pid>``, which the next writer of this target restores (``_recover``).
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old, target)
        raise
    _remove(old)


@contextlib.contextmanager
def replace_output(target: str | os.PathLike, *, kind: OutputKind = MODEL_DIRECTORY,
                   inputs: Iterable[str | os.PathLike | None] = (), overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``target`` in one step.

    Under :func:`output_lock`, after :func:`check_target` (with ``inputs`` and ``overwrite``).
    The staging folder gets the usual permissions (``0777`` / ``0666`` less the umask, not
    ``mkdtemp``'s ``0700``) before it is published. On any error, disk full included (raised as
    an :class:`OutputError` naming ``target``), the staging folder is removed and ``target`` is
    left as it was.
    """
    absolute = Path(os.path.abspath(target))
    inputs = list(inputs)
    with output_lock(absolute):
        _recover(absolute)
        check_target(target, kind=kind, inputs=inputs, overwrite=overwrite)
        staging = Path(tempfile.mkdtemp(dir=absolute.parent, prefix=f".{absolute.name}.tmp-"))
        try:
            with writing(target):
                yield staging
                normal_permissions(staging)
                _swap(staging, absolute)
        except BaseException:
            _remove(staging)
            raise
