"""Count how many times a class is constructed (e.g. text encoders an audio-only command builds)."""

from __future__ import annotations

import functools


def count_constructions(cls, setattr=setattr) -> list:
    """Wrap ``cls.__init__`` so each construction appends to the returned list.

    ``setattr``: how to install the wrapper (pass ``monkeypatch.setattr`` to undo it after a
    test; the default patches for the rest of the process, which suits a child process).
    """
    built: list = []
    original = cls.__init__

    @functools.wraps(original)  # jsonargparse reads the signature through it
    def counting(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    setattr(cls, "__init__", counting)
    return built
