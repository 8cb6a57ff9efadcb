"""Inference and tool subcommands of the ``clapkit`` CLI, one module each.

Each module exposes ``main(argv: list[str]) -> int`` and raises :class:`CommandError` for
user-facing failures (bad input file, wrong checkpoint): the CLI prints it on one line and
exits non-zero, with no traceback.
"""

from __future__ import annotations


class CommandError(RuntimeError):
    """A user-facing failure of a CLI command; its message names the file and the problem."""
